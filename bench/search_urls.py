"""clinik.urls with the FHIR API at fhir/R4/ (bench/search_settings.py)."""

from django.urls import URLPattern, URLResolver, include, path

from clinik.urls import urlpatterns as site

urlpatterns: list[URLPattern | URLResolver] = [
    *(p for p in site if "fhir" not in str(p.pattern)),
    path("fhir/R4/", include("clinik.fhir.urls")),
]

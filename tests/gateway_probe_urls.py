"""The project's URLs with trivial endpoints behind the gateway instead of the FHIR
views, for tests about the gateway itself (`pytest.mark.urls`) and the gateway bench.

`metadata` answers a minimal CapabilityStatement; every other FHIR-shaped path
answers `{"ok": true}` and, for requests with a body, the number of bytes it
received. They touch no database and no store, so what a test counts or times
through them is the gateway's alone."""

import json

from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, URLResolver, include, path
from django.views.decorators.csrf import csrf_exempt

from clinik.urls import urlpatterns as site

FHIR_JSON = "application/fhir+json; charset=utf-8"


@csrf_exempt
def metadata(request: HttpRequest) -> HttpResponse:
    body = {
        "resourceType": "CapabilityStatement",
        "status": "draft",
        "kind": "instance",
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{"mode": "server"}],
    }
    return HttpResponse(json.dumps(body), content_type=FHIR_JSON)


@csrf_exempt
def probe(request: HttpRequest, **_parts: str) -> HttpResponse:
    body: dict[str, object] = {"ok": True}
    if request.method in ("POST", "PUT", "PATCH"):
        body["received"] = len(request.body)
    return HttpResponse(json.dumps(body), content_type=FHIR_JSON)


fhir_patterns = [
    path("", probe),
    path("metadata", metadata),
    path("<str:a>", probe),
    path("<str:a>/<str:b>", probe),
    path("<str:a>/<str:b>/<str:c>", probe),
    path("<str:a>/<str:b>/<str:c>/<str:d>", probe),
]

urlpatterns: list[URLPattern | URLResolver] = [
    path("fhir/R4", probe),
    path("fhir/R4/", include(fhir_patterns)),
    *(
        p
        for p in site
        if isinstance(p, URLPattern | URLResolver) and not str(p.pattern).startswith("fhir/")
    ),
]

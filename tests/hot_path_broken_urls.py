"""The project's URLs with one API view that breaks the hot path's rule
(docs/architecture.md, "The API's hot path"): it writes tenant data outside
`clinik.fhir.tenancy`, so its write commits before the key re-check runs. For
tests/test_hot_path_rules.py, which must catch it (`pytest.mark.urls`)."""

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

from clinik import audit
from clinik.fhir import views
from clinik.urls import urlpatterns as site


def create_outside_tenancy(request: HttpRequest, resource_type: str) -> HttpResponse:
    """POST Observation: audits (and would store) the create with a plain statement,
    in autocommit, instead of inside `tenant_transaction`; the rest as usual."""
    if request.method != "POST" or resource_type != "Observation":
        return views.type_root(request, resource_type)
    audit.record(
        "fhir.create",
        org=request.org,  # type: ignore[attr-defined]
        actor=request.api_key,  # type: ignore[attr-defined]
        target=None,
        request=request,
    )
    return JsonResponse({"resourceType": resource_type, "id": "broken"}, status=201)


urlpatterns = [path("fhir/R4/<str:resource_type>", create_outside_tenancy), *site]

"""TEMPORARY: stand-in endpoints behind the gateway, replaced by clinik.fhir.urls when
the FHIR views land (swap the import in clinik/urls.py).

They let the gateway be tested and benchmarked through the whole middleware stack:
`metadata` answers a minimal CapabilityStatement; every other allowed shape answers
`{"ok": true}` and, for requests with a body, the number of bytes it received. The
gateway does not depend on them."""

import json

from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

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


base = probe

urlpatterns = [
    path("", probe),
    path("metadata", metadata),
    path("<str:a>", probe),
    path("<str:a>/<str:b>", probe),
    path("<str:a>/<str:b>/<str:c>", probe),
    path("<str:a>/<str:b>/<str:c>/<str:d>", probe),
]

"""The project's URLs plus one FHIR-shaped endpoint that fails (500), for the request
log and audit tests of server errors (`pytest.mark.urls`). No tests here."""

from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from clinik.urls import urlpatterns


@csrf_exempt
def crash(request: HttpRequest, resource_type: str, resource_id: str) -> HttpResponse:
    # PHI in the exception's message (spelled backwards so this source line, which
    # tracebacks quote, does not hold it).
    raise ZeroDivisionError("30-20-1691 nrob ,emanterceS nolubeZ"[::-1])


urlpatterns = [path("fhir/R4/<str:resource_type>/<str:resource_id>/$crash", crash), *urlpatterns]

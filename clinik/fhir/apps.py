from django.apps import AppConfig


class FhirConfig(AppConfig):
    name = "clinik.fhir"
    label = "fhir"

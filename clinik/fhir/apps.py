from django.apps import AppConfig


class FhirConfig(AppConfig):
    name = "clinik.fhir"
    label = "fhir"

    def ready(self) -> None:
        from clinik.fhir.store import healthlake_checks  # noqa: F401 (registers the check)

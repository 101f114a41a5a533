"""`manage.py check --deploy`: with FHIR_STORE=healthlake, the datastore is described
and every reason it may not hold our PHI is an error."""

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.core.checks import CheckMessage, Error, Info, register

from clinik.fhir.store.healthlake_setup import describe_configured


@register("clinik", deploy=True)
def healthlake_datastore(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    if settings.FHIR_STORE != "healthlake":
        return []
    try:
        info = describe_configured()
    except (BotoCoreError, ClientError) as error:
        return [
            Error(
                f"The HealthLake datastore cannot be described ({type(error).__name__})",
                hint="Check HEALTHLAKE_DATASTORE_ID, HEALTHLAKE_REGION, the AWS credentials"
                " and the healthlake:DescribeFHIRDatastore permission",
                id="clinik.E101",
            )
        ]
    problems = info.problems(production=not settings.DEBUG)
    if problems:
        return [Error(f"HealthLake: {p}", id="clinik.E102") for p in problems]
    return [
        Info(
            f"HealthLake datastore {info.id} is ACTIVE, FHIR R4, encrypted with a"
            f" {info.cmk_type.replace('_', ' ').lower()}",
            id="clinik.I101",
        )
    ]

"""Build the HealthLake store from settings: describe the datastore first and refuse
to start on one that may not hold our PHI (not ACTIVE, not R4, or, with DEBUG=false,
not encrypted with a customer-managed KMS key)."""

import redis
from django.conf import settings

from clinik.fhir.store.healthlake import HealthLakeStore
from clinik.fhir.store.healthlake_client import (
    DatastoreInfo,
    DatastoreRefused,
    HealthLakeClient,
    describe,
)
from clinik.fhir.store.healthlake_quota import Quota


def describe_configured() -> DatastoreInfo:
    return describe(
        settings.HEALTHLAKE_DATASTORE_ID,
        region=settings.HEALTHLAKE_REGION,
        endpoint_url=settings.HEALTHLAKE_ENDPOINT_URL or None,
    )


def checked_datastore() -> DatastoreInfo:
    info = describe_configured()
    problems = info.problems(production=not settings.DEBUG)
    if problems:
        raise DatastoreRefused("HealthLake datastore refused: " + "; ".join(problems))
    return info


def build_store() -> HealthLakeStore:
    info = checked_datastore()
    client = redis.Redis.from_url(settings.REDIS_URL)
    quota = Quota(
        client,
        info.id,
        {
            "crud": settings.HEALTHLAKE_CRUD_PER_SECOND,
            "search": settings.HEALTHLAKE_SEARCH_PER_SECOND,
        },
    )
    timeout = settings.HEALTHLAKE_TIMEOUT_MS / 1000
    http = HealthLakeClient(
        info.endpoint,
        region=settings.HEALTHLAKE_REGION,
        quota=quota,
        connect_timeout=min(timeout, 3.0),
        read_timeout=timeout,
        max_attempts=settings.HEALTHLAKE_MAX_ATTEMPTS,
        retry_budget=settings.HEALTHLAKE_RETRY_BUDGET_MS / 1000,
    )
    return HealthLakeStore(http, client)

"""Conditional operations, idempotency and bundle isolation (tests/test_fhir_conditional.py,
tests/test_fhir_bundle_isolation.py) run again on the HealthLake store."""

from typing import Any

import pytest

from tests import test_fhir_bundle_isolation as bundle_isolation
from tests import test_fhir_conditional as conditional
from tests.healthlake_fixtures import rerun_on_healthlake

_ROWS = "counts PostgreSQL rows (test_healthlake_store.py has the HealthLake version)"
_TRANSACTION = "a transaction bundle: refused on HealthLake"
SKIPPED: dict[str, str] = {
    "test_conditional_create_never_matches_another_tenant": _ROWS,
    "test_conditional_create_outcomes": _ROWS,
    "test_idempotency_keys_are_per_tenant": _ROWS,
    "test_idempotency_window_is_24_hours": _ROWS,
    "test_idempotent_retry_returns_the_original_and_creates_nothing": _ROWS,
    "test_parallel_conditional_updates_keep_versions_consistent": _ROWS,
    "test_parallel_idempotent_retries_create_once": _ROWS,
    "test_parallel_identical_conditional_creates_make_one_resource": _ROWS,
    "test_idempotent_bundle_replay": _TRANSACTION,
    "test_conditional_delete_ignores_another_tenants_match": _TRANSACTION,
    "test_conditional_put_ignores_another_tenants_match": _TRANSACTION,
    "test_delete_of_another_tenants_id_is_missing": _TRANSACTION,
    "test_if_match_on_another_tenants_id_fails": _TRANSACTION,
    "test_if_none_exist_ignores_another_tenants_match": _TRANSACTION,
    "test_put_onto_another_tenants_id_creates_in_own_tenant": _TRANSACTION,
    "test_urn_reference_cannot_point_at_another_tenants_resource": _TRANSACTION,
}

rerun_on_healthlake(conditional, SKIPPED, globals())
rerun_on_healthlake(bundle_isolation, SKIPPED, globals())
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("reached_the_datastore")]


@pytest.fixture
def victim(api: Any, healthlake: Any) -> dict[str, Any]:
    """test_fhir_bundle_isolation's victim, on HealthLake (no row-level security)."""
    return api.post("Patient", bundle_isolation.PATIENT).json()

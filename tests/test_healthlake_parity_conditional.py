"""Conditional operations, idempotency and bundle isolation (tests/test_fhir_conditional.py,
tests/test_fhir_bundle_isolation.py) run again on the HealthLake store."""

from typing import Any

import pytest

from tests import test_fhir_bundle_isolation as bundle_isolation
from tests import test_fhir_conditional as conditional
from tests.healthlake_fixtures import rerun_on_healthlake

_ROWS = "counts PostgreSQL rows (test_healthlake_store.py has the HealthLake version)"
SKIPPED: dict[str, str] = {
    "test_conditional_create_never_matches_another_tenant": _ROWS,
    "test_conditional_create_outcomes": _ROWS,
    "test_idempotency_keys_are_per_tenant": _ROWS,
    "test_idempotency_window_is_24_hours": _ROWS,
    "test_idempotent_retry_returns_the_original_and_creates_nothing": _ROWS,
    "test_parallel_conditional_updates_keep_versions_consistent": _ROWS,
    "test_parallel_idempotent_retries_create_once": _ROWS,
    "test_parallel_identical_conditional_creates_make_one_resource": _ROWS,
    # Update-as-create is not offered on HealthLake (test_healthlake_store.py).
    "test_put_onto_another_tenants_id_creates_in_own_tenant": "no update-as-create",
    "test_urn_reference_cannot_point_at_another_tenants_resource": "own version",
}

rerun_on_healthlake(conditional, SKIPPED, globals())
rerun_on_healthlake(bundle_isolation, SKIPPED, globals())
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("reached_the_datastore")]


@pytest.fixture
def victim(api: Any, healthlake: Any) -> dict[str, Any]:
    """test_fhir_bundle_isolation's victim, on HealthLake (no row-level security)."""
    return api.post("Patient", bundle_isolation.PATIENT).json()


@pytest.fixture(autouse=True)
def _count_in_the_datastore(healthlake: Any, monkeypatch: Any) -> None:
    """test_fhir_conditional counts PostgreSQL rows; here the tenant's live resources
    the datastore holds (test_idempotent_bundle_replay uses it)."""

    def count(org_id: Any, resource_type: str = "Patient") -> int:
        live = healthlake.live(str(org_id))
        return sum(1 for r in live if r["resourceType"] == resource_type)

    monkeypatch.setattr(conditional, "_count", count)

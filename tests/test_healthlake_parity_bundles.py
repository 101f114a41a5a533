"""Batch and transaction bundles (tests/test_fhir_bundles.py) run again on the
HealthLake store, where a transaction is one HealthLake transaction bundle."""

from typing import Any

import pytest

from tests import test_fhir_bundles as bundles
from tests.healthlake_fake import FakeHealthLake
from tests.healthlake_fixtures import rerun_on_healthlake

SKIPPED: dict[str, str] = {
    # 300 entries: more than HealthLake's 160 resources per bundle (the usual
    # not-supported outcome: test_healthlake_store.py).
    "test_synthea_bundle_loads_with_every_reference_resolved": "over HealthLake's 160",
    # Sets its state up with update-as-create (PUT Patient/123a), not offered here.
    "test_hl7_example_transaction_bundle": "no update-as-create (own version below)",
    # DELETE then PUT of one resource in one transaction: each resource is written once
    # per HealthLake transaction (own version below).
    "test_entries_are_processed_delete_post_put_get": "one write per resource (below)",
}

# Refused by validation or our own limits before any store call (same on every store).
NEVER_REACH_THE_STORE = {
    "test_caps_and_bad_bundles",
    "test_transaction_is_all_or_nothing_on_an_invalid_resource",
}

rerun_on_healthlake(bundles, SKIPPED, globals())
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("reached_the_datastore")]


@pytest.fixture(autouse=True)
def _count_in_the_datastore(healthlake: FakeHealthLake, monkeypatch: Any) -> None:
    """test_fhir_bundles counts PostgreSQL rows; here what the datastore holds: the
    tenant's live resources, and every version it keeps (fhir_history)."""

    def count(org_id: Any, table: str = "fhir_resource") -> int:
        if table == "fhir_history":
            return healthlake.kept_versions(str(org_id))
        return len(healthlake.live(str(org_id)))

    monkeypatch.setattr(bundles, "_count", count)

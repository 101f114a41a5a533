"""The FHIR REST and cross-tenant isolation tests the PostgreSQL store passes, run
again on the HealthLake store (against the local fake datastore).

Which ones: every test of tests/test_fhir_rest.py and tests/test_fhir_isolation.py
about interactions the HealthLake store offers. Left out, with the reason, in
SKIPPED: what differs by design (README, "HealthLake store"), and the tests that look
at PostgreSQL rows or row-level security (there are none on HealthLake).
"""

from typing import Any

import pytest

from tests import test_fhir_isolation as isolation
from tests import test_fhir_rest as rest
from tests.healthlake_fixtures import rerun_on_healthlake

SKIPPED = {
    # Type- and system-level history are not offered (no tenant filter on them).
    "test_history_levels_count_since_and_paging": "type/system history not offered",
    "test_type_and_system_listings_and_history_hold_only_own_data": "system history",
    "test_spoofed_tenant_query_parameters_find_nothing": "system history part",
    # Ids are one namespace per datastore, so update-as-create is not offered: a PUT of
    # an id the tenant does not have is 400 not-supported, another tenant's id or not
    # (test_healthlake_store.py).
    "test_update_onto_another_tenants_id_creates_in_own_tenant_only": "no update-as-create",
    "test_update_as_create_with_client_id": "no update-as-create",
    # A delete erases every version at once ($erase): no history after a delete.
    "test_delete_is_410_at_once_then_history_shows_it": "history erased at delete",
    "test_update_after_delete_revives_with_a_new_version": "versions restart after erase",
    "test_expunge_erases_every_version_at_once": "counts PostgreSQL rows",
    # The capability statement differs on purpose (own test).
    "test_capability_statement_declares_what_is_implemented": "statement differs",
    # PostgreSQL rows and row-level security.
    "test_without_a_tenant_the_database_returns_no_rows": "PostgreSQL only",
    "test_the_app_role_cannot_switch_row_level_security_off": "PostgreSQL only",
    "test_rows_of_another_tenant_cannot_be_written": "PostgreSQL only",
    "test_rows_of_another_tenant_cannot_be_updated_or_deleted": "PostgreSQL only",
}


# Refused by validation or routing before any store call (same answer on every store).
NEVER_REACH_THE_STORE = {
    "test_bad_bodies_are_400",
    "test_unknown_endpoints_are_404_operation_outcomes",
    "test_update_body_id_must_match_url",
    "test_a_refused_transaction_bundle_is_audited",
}

rerun_on_healthlake(rest, SKIPPED, globals())
rerun_on_healthlake(isolation, SKIPPED, globals())
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("reached_the_datastore")]


@pytest.fixture
def walls(healthlake: Any) -> str:
    """test_fhir_isolation's walls: on HealthLake the tag is the only wall."""
    return "tag-only"


victim = isolation.victim

"""Search isolation (tests/test_fhir_search_isolation.py) run again on the HealthLake
store."""

from typing import Any

import pytest

from tests import test_fhir_search_isolation as search_isolation
from tests.healthlake_fixtures import rerun_on_healthlake

SKIPPED: dict[str, str] = {
    # Rerun below on the searches the fake datastore implements.
    "test_an_outsider_finds_and_counts_nothing": "parametrized again below",
    # Ids are one namespace per datastore: the outsider's PUT of the same ids gets 409.
    "test_colliding_ids_never_cross_tenants": "409 by design",
    # PostgreSQL rows and row-level security.
    "test_store_search_under_row_level_security_alone": "PostgreSQL only",
    "test_index_rows_of_another_tenant_cannot_be_written": "PostgreSQL only",
}

rerun_on_healthlake(search_isolation, SKIPPED, globals())
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("reached_the_datastore")]


@pytest.fixture
def walls(healthlake: Any) -> str:
    return "tag-only"


victim = search_isolation.victim

# The fake datastore answers 400 to what it does not implement (:contains, _security,
# quantities, composites, nested _has, :below), so those stay on PostgreSQL only.
_FAKE_LACKS = ("contains", "_security", "quantity", "_has:Patient", "url:below")


@pytest.mark.parametrize(
    "path", [p for p in search_isolation.SEARCHES if not any(x in p for x in _FAKE_LACKS)]
)
def test_an_outsider_finds_and_counts_nothing_on_healthlake(
    path: str, victim: Any, outsider_api: Any
) -> None:
    search_isolation.test_an_outsider_finds_and_counts_nothing(path, victim, outsider_api)

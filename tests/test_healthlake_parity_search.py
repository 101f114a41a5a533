"""Search isolation (tests/test_fhir_search_isolation.py) run again on the HealthLake
store."""

from typing import Any

import pytest

from tests import test_fhir_search_isolation as search_isolation
from tests.healthlake_fixtures import rerun_on_healthlake

SKIPPED: dict[str, str] = {
    # Rerun below on the searches the fake datastore implements.
    "test_an_outsider_finds_and_counts_nothing": "parametrized again below",
    # Ids are one namespace per datastore and update-as-create is not offered: the
    # outsider cannot hold the same ids (test_healthlake_store.py has the PUT's answer).
    "test_colliding_ids_never_cross_tenants": "ids are one namespace per datastore",
    # PostgreSQL rows and row-level security.
    "test_store_search_under_row_level_security_alone": "PostgreSQL only",
    "test_index_rows_of_another_tenant_cannot_be_written": "PostgreSQL only",
}

rerun_on_healthlake(search_isolation, SKIPPED, globals())
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("reached_the_datastore")]


@pytest.fixture
def walls(healthlake: Any) -> str:
    return "tag-only"


@pytest.fixture
def victim(api: Any, walls: str) -> Any:
    """test_fhir_search_isolation's victim. Its resources have ids of their own, and
    HealthLake offers no update-as-create (PUT): the store creates them with those ids."""
    from clinik.fhir.store import get_store

    for resource in search_isolation.RESOURCES:
        get_store().create(api.org.pk, resource, resource_id=resource["id"])
    return api


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

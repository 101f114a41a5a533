"""Fixtures that put the FHIR API on the HealthLake store, against the local fake
(tests/healthlake_fake.py). Loaded for every test module by tests/conftest.py."""

import functools
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

from clinik.fhir import capability
from clinik.fhir.store import _store
from tests.healthlake_fake import ACCESS_KEY, REGION, SECRET_KEY, FakeHealthLake


def _clear() -> None:
    _store.cache_clear()
    capability.statement_json.cache_clear()


def use_fake(settings: Any, monkeypatch: Any, fake: FakeHealthLake) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    settings.FHIR_STORE = "healthlake"
    settings.HEALTHLAKE_DATASTORE_ID = fake.datastore_id
    settings.HEALTHLAKE_REGION = REGION
    settings.HEALTHLAKE_ENDPOINT_URL = fake.origin
    settings.HEALTHLAKE_RETRY_BUDGET_MS = 3000
    _clear()


@pytest.fixture
def healthlake(settings: Any, monkeypatch: Any) -> Iterator[FakeHealthLake]:
    """The API on the HealthLake store, against a fresh local fake datastore."""
    fake = FakeHealthLake().start()
    use_fake(settings, monkeypatch, fake)
    try:
        yield fake
    finally:
        _clear()
        fake.stop()


@pytest.fixture(params=["postgres", "healthlake"])
def store_backend(request: Any, settings: Any, monkeypatch: Any) -> Iterator[str]:
    """Run a test on each store: PostgreSQL, then HealthLake (the local fake)."""
    if request.param == "postgres":
        _clear()
        yield "postgres"
        _clear()
        return
    fake = FakeHealthLake().start()
    use_fake(settings, monkeypatch, fake)
    try:
        yield "healthlake"
    finally:
        _clear()
        fake.stop()


def rerun_on_healthlake(
    module: ModuleType, skipped: dict[str, str], namespace: dict[str, Any]
) -> None:
    """Put every test of `module` not in `skipped` (name: reason) into `namespace`,
    to run again on the HealthLake store (the `healthlake` fixture)."""

    def on_healthlake(test: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(test)
        def run(*args: Any, **kwargs: Any) -> Any:
            return test(*args, **kwargs)

        return pytest.mark.usefixtures("healthlake")(run)

    for name in dir(module):
        if name.startswith("test_") and name not in skipped:
            namespace[name] = on_healthlake(getattr(module, name))


@pytest.fixture
def reached_the_datastore(request: Any, healthlake: FakeHealthLake) -> Iterator[None]:
    """A test re-run on HealthLake really went to the (fake) datastore (except those
    its module names in NEVER_REACH_THE_STORE: refused before any store call)."""
    yield
    exempt = getattr(request.module, "NEVER_REACH_THE_STORE", ())
    if "api" in request.fixturenames and request.node.originalname not in exempt:
        assert healthlake.requests, "no request reached the HealthLake datastore"

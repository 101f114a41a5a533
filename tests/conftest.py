"""Shared fixtures: the test database is created and migrated as the owner role, then
every test connects as the ordinary application role (docs/architecture.md, "Database
roles")."""

import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from django.conf import settings
from django.core.cache import cache
from django.db import connections
from django.test import Client
from django.test.utils import setup_databases, teardown_databases

from tests.factories import MembershipFactory, OrganizationFactory, UserFactory

pytest_plugins = ["tests.healthlake_fixtures"]  # the HealthLake store's fixtures


def _use_credentials(credentials: dict[str, Any]) -> None:
    connection = connections["default"]
    connection.close()
    connection.settings_dict.update(credentials)


@pytest.fixture(scope="session")
def django_db_setup(django_test_environment: None, django_db_blocker: Any) -> Iterator[None]:
    app_credentials = {
        "USER": connections["default"].settings_dict["USER"],
        "PASSWORD": connections["default"].settings_dict["PASSWORD"],
    }
    with django_db_blocker.unblock():
        _use_credentials(settings.DATABASE_OWNER_CREDENTIALS)
        old_config = setup_databases(verbosity=0, interactive=False, keepdb=False)
        _use_credentials(app_credentials)
    yield
    with django_db_blocker.unblock():
        _use_credentials(settings.DATABASE_OWNER_CREDENTIALS)
        teardown_databases(old_config, verbosity=0)


@pytest.fixture(autouse=True)
def _clean_cache() -> Iterator[None]:
    cache.clear()  # the test Redis database (15) only
    yield


class Persona:
    def __init__(self, user: Any, org: Any, membership: Any, password: str) -> None:
        self.user, self.org, self.membership, self.password = user, org, membership, password

    def client(self) -> Client:
        client = Client()
        client.force_login(self.user)
        return client


PASSWORD = "correct horse battery staple"


@pytest.fixture
def owner(db: None) -> Persona:
    org = OrganizationFactory(name="Acme Health")
    user = UserFactory(email="owner@acme.test", name="Olivia Owner", password=PASSWORD)
    return Persona(user, org, MembershipFactory(user=user, org=org, role="owner"), PASSWORD)


@pytest.fixture
def teammate(owner: Persona) -> Persona:
    user = UserFactory(email="dev@acme.test", name="Devon Dev", password=PASSWORD)
    membership = MembershipFactory(user=user, org=owner.org, role="developer")
    return Persona(user, owner.org, membership, PASSWORD)


@pytest.fixture
def admin(owner: Persona) -> Persona:
    user = UserFactory(email="admin@acme.test", name="Ada Admin", password=PASSWORD)
    membership = MembershipFactory(user=user, org=owner.org, role="admin")
    return Persona(user, owner.org, membership, PASSWORD)


@pytest.fixture
def outsider(db: None) -> Persona:
    org = OrganizationFactory(name="Other Clinic")
    user = UserFactory(email="out@other.test", name="Oscar Outsider", password=PASSWORD)
    return Persona(user, org, MembershipFactory(user=user, org=org, role="owner"), PASSWORD)


class Api:
    """A FHIR API client through the full middleware stack, with one org's key."""

    def __init__(self, key: str, org: Any) -> None:
        self.key, self.org = key, org
        self.client = Client()

    def _headers(self, headers: dict[str, str] | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", **(headers or {})}

    def get(self, path: str, headers: dict[str, str] | None = None, **kw: Any) -> Any:
        return self.client.get(f"/fhir/R4/{path}", headers=self._headers(headers), **kw)

    def send(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        content_type: str = "application/fhir+json",
    ) -> Any:
        import json

        data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
        payload = (data or "").encode() if isinstance(data, str) or data is None else data
        return self.client.generic(
            method,
            f"/fhir/R4/{path}",
            data=payload,
            content_type=content_type,
            headers=self._headers(headers),
            CONTENT_LENGTH=str(len(payload)),
            CONTENT_TYPE=content_type,
        )

    def post(self, path: str, body: Any, **kw: Any) -> Any:
        return self.send("POST", path, body, **kw)

    def put(self, path: str, body: Any, **kw: Any) -> Any:
        return self.send("PUT", path, body, **kw)

    def patch(self, path: str, body: Any, **kw: Any) -> Any:
        kw.setdefault("content_type", "application/json-patch+json")
        return self.send("PATCH", path, body, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.send("DELETE", path, **kw)


def _api_for(persona: Persona, scopes: str = "read-write") -> Api:
    from clinik.keys.actions import do_create_key

    _key, plaintext = do_create_key(
        org=persona.org,
        actor=persona.user,
        name="tests",
        scopes=scopes,
        expires_at=None,
        request=None,
    )
    return Api(plaintext, persona.org)


@pytest.fixture
def api(owner: Persona) -> Api:
    return _api_for(owner)


@pytest.fixture
def outsider_api(outsider: Persona) -> Api:
    return _api_for(outsider)


@pytest.fixture
def real_worker() -> Iterator[None]:
    """A real Celery worker thread on the test Redis broker (tasks are eager otherwise)."""
    from clinik.celery import app as celery_app

    celery_app.conf.task_always_eager = False
    try:
        with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
            yield
    finally:
        celery_app.conf.task_always_eager = True


def wait_for(condition: Any, timeout: float = 30.0) -> bool:
    """Poll condition() until it holds or timeout seconds pass (work done by a worker)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False

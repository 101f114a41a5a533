"""The rules of the API's hot path (docs/architecture.md, "The API's hot path"), checked
on every API view whose route skips the key lookup for a key this process knows.

Such a view must read and write tenant data only through `clinik.fhir.tenancy`, whose
first statement carries the key re-check (clinik.keys.recheck): a view that writes
any other way commits before a revoked key is caught. So, for every URL of the FHIR
API on a rechecked route, with a known key revoked since: the gateway's 401, nothing
returned, nothing stored, nothing audited. A view added to such a route without an
interaction here fails the first test; a view that writes outside the tenant
transaction fails the second (shown with tests/hot_path_broken_urls.py)."""

import json
from typing import Any

import pytest
from django.urls import URLPattern, resolve, reverse
from django.utils import timezone

from clinik.audit.models import AuditEvent
from clinik.fhir import urls as fhir_urls
from clinik.gateway import checks
from clinik.gateway.middleware import _RECHECKED_ROUTES

BASE = "/fhir/R4/"
PATIENT = {"resourceType": "Patient", "name": [{"family": "Hotpath"}]}
OBSERVATION = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}


def _bundle(kind: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [{"resource": PATIENT, "request": {"method": "POST", "url": "Patient"}}],
    }


# name: (method, path under the base with {pid}, body, extra headers)
INTERACTIONS: dict[str, tuple[str, str, Any, dict[str, str]]] = {
    "transaction": ("POST", "", _bundle("transaction"), {}),
    "batch": ("POST", "", _bundle("batch"), {}),
    "system search": ("GET", "?_type=Patient", None, {}),
    "system search by POST": ("POST", "_search", "_type=Patient", {}),
    "system history": ("GET", "_history", None, {}),
    "create": ("POST", "Patient", PATIENT, {}),
    "conditional create": ("POST", "Patient", PATIENT, {"If-None-Exist": "family=Nobody"}),
    "search": ("GET", "Patient?family=Hotpath", None, {}),
    "search by POST": ("POST", "Patient/_search", "family=Hotpath", {}),
    "type history": ("GET", "Patient/_history", None, {}),
    "read": ("GET", "Patient/{pid}", None, {}),
    "update": ("PUT", "Patient/{pid}", {**PATIENT, "id": "{pid}", "active": True}, {}),
    "patch": ("PATCH", "Patient/{pid}", [{"op": "add", "path": "/active", "value": True}], {}),
    "delete": ("DELETE", "Patient/{pid}", None, {}),
    "instance history": ("GET", "Patient/{pid}/_history", None, {}),
    "vread": ("GET", "Patient/{pid}/_history/1", None, {}),
    "compartment": ("GET", "Patient/{pid}/Observation", None, {}),
    "compartment, every type": ("GET", "Patient/{pid}/*", None, {}),
    "compartment by POST": ("POST", "Patient/{pid}/Observation/_search", "code=x", {}),
    "compartment by POST, every type": ("POST", "Patient/{pid}/_search", "_count=1", {}),
}

# URL names of the FHIR URLconf that need no interaction here, and why.
EXEMPT = {"fhir_unknown": "the catch-all answers 404 and touches no data"}

_SAMPLE = {
    "resource_type": "Patient",
    "compartment": "Patient",
    "resource_id": "sample",
    "version_id": "1",
    "group_id": "sample",
}


def _send(api: Any, interaction: tuple[str, str, Any, dict[str, str]], pid: str) -> Any:
    method, path, body, headers = interaction
    path = path.replace("{pid}", pid)
    if isinstance(body, str):  # a search by POST
        return api.send(method, path, body, content_type="application/x-www-form-urlencoded")
    if body is not None:
        body = json.loads(json.dumps(body).replace("{pid}", pid))
    if method == "GET":
        return api.client.get(f"{BASE}{path}", headers=api._headers(headers))
    if method == "PATCH":
        return api.patch(path, body, headers=headers)
    return api.send(method, path, body, headers=headers)


def test_every_view_on_a_rechecked_route_has_an_interaction_here() -> None:
    """Walks the FHIR URLconf: a URL whose route the gateway rechecks (so its view
    must keep the rules) is exercised by at least one interaction below."""
    covered = {
        resolve(BASE + path.split("?")[0].replace("{pid}", "x")).url_name
        for _m, path, _b, _h in INTERACTIONS.values()
    }
    missing = []
    for pattern in fhir_urls.urlpatterns:
        assert isinstance(pattern, URLPattern)
        if pattern.name in EXEMPT:
            continue
        kwargs = {name: _SAMPLE[name] for name in pattern.pattern.converters}
        path = reverse(pattern.name, kwargs=kwargs)
        kind = checks.guard_path(path.rstrip("/") if path != BASE else path).kind
        if kind in _RECHECKED_ROUTES and pattern.name not in covered:
            missing.append(f"{pattern.name} ({path}, route kind {kind})")
    assert not missing, f"add an interaction to INTERACTIONS for: {missing}"
    kinds = {
        checks.guard_path(f"{BASE}{p.split('?')[0].replace('{pid}', 'x')}".rstrip("/") or BASE).kind
        for _m, p, _b, _h in INTERACTIONS.values()
    }
    assert kinds >= _RECHECKED_ROUTES, _RECHECKED_ROUTES - kinds


def _refused_with_nothing_done(
    api: Any, owner: Any, interaction: tuple[str, str, Any, dict[str, str]]
) -> None:
    from clinik.fhir.tenancy import tenant_query
    from clinik.gateway.ratelimit import known_keys
    from clinik.keys.models import ApiKey

    created = api.post("Patient", {**PATIENT, "name": [{"family": "Known"}]})
    assert created.status_code == 201, created.content
    pid = created.json()["id"]
    assert api.get(f"Patient/{pid}").status_code == 200  # the key is known now
    digest = api.get(f"Patient/{pid}").wsgi_request.key_digest
    assert known_keys.key(digest) is not None

    def state() -> tuple[Any, ...]:
        stored = tenant_query(
            owner.org.pk,
            "SELECT count(*), sum(version_id), count(deleted_at) FROM fhir_resource",
            [],
        )
        history = tenant_query(owner.org.pk, "SELECT count(*) FROM fhir_history", [])
        return stored, history, AuditEvent.objects.filter(org_id=owner.org.pk).count()

    before = state()
    # Revoked by another process: this one still knows the key, so it skips the lookup.
    ApiKey.objects.filter(org=owner.org).update(revoked_at=timezone.now())
    refused = _send(api, interaction, pid)
    assert refused.wsgi_request.key_recheck, "the request skipped the lookup"
    assert refused.status_code == 401, (refused.status_code, refused.content[:300])
    assert refused.json()["issue"][0]["code"] == "login"
    assert pid not in refused.content.decode() and "Known" not in refused.content.decode()
    assert state() == before, "written or audited before the key was re-checked"


# Committed for real: inside a test's transaction the view's COMMIT would be a
# savepoint release that waits in the queue (clinik.lib.pgbackend) and never runs.
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("interaction", list(INTERACTIONS))
def test_a_revoked_known_key_gets_nothing_read_written_or_audited(
    api: Any, owner: Any, interaction: str
) -> None:
    _refused_with_nothing_done(api, owner, INTERACTIONS[interaction])


@pytest.mark.django_db(transaction=True)
@pytest.mark.urls("tests.hot_path_broken_urls")
def test_a_view_writing_outside_the_tenant_transaction_is_caught(api: Any, owner: Any) -> None:
    """The check above fails for a view that breaks the rule: its write commits before
    the gateway's after-the-view re-check answers 401."""
    with pytest.raises(AssertionError, match="before the key was re-checked"):
        _refused_with_nothing_done(api, owner, ("POST", "Observation", OBSERVATION, {}))


# Middleware after the gateway serves the dashboard only: the gateway calls API views
# itself, so none of it runs for /fhir/ (docs/architecture.md, "The API's hot path").
DASHBOARD_ONLY = [
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]


def test_no_middleware_is_added_after_the_gateway_unnoticed() -> None:
    """A middleware added after the gateway would never see an API request: what
    every API request needs goes into the gateway or the view. Adding one for the
    dashboard means adding it here too, knowing that."""
    from django.conf import settings

    gateway = settings.MIDDLEWARE.index("clinik.gateway.middleware.GatewayMiddleware")
    assert settings.MIDDLEWARE[gateway + 1 :] == DASHBOARD_ONLY


@pytest.mark.django_db
def test_an_api_request_passes_no_middleware_after_the_gateway(api: Any) -> None:
    """The dashboard's middleware leaves marks an API answer must not carry: no
    session cookie, no CSRF cookie, no X-Frame-Options from the clickjacking
    middleware, no Vary: Cookie."""
    response = api.get("Patient?family=Nobody")
    assert response.status_code == 200
    assert not response.cookies
    assert "X-Frame-Options" not in response
    assert "Cookie" not in response.get("Vary", "")

"""The dashboard's API keys page."""

import re
from typing import Any

import pytest
from django.core import mail
from django.test import Client

from clinik.audit.models import AuditEvent
from clinik.gateway.models import AllowedOrigin
from clinik.keys import tokens
from clinik.keys.models import ApiKey
from tests.conftest import Persona
from tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db

KEY = re.compile(r"ck_live_[0-9A-Za-z]{38}")


def url(persona: Persona, suffix: str = "") -> str:
    return f"/o/{persona.org.pk}/keys/{suffix}"


def make_key(persona: Persona, name: str = "Existing") -> ApiKey:
    return ApiKey.issue(
        org=persona.org, name=name, scopes="read", expires_at=None, created_by=persona.user
    )[0]


def create(client: Client, persona: Persona, **data: str) -> Any:
    form = {"name": "Staging server", "scopes": "read-write", "expires": "90", **data}
    return client.post(url(persona, "new/"), form)


# --- personas and methods ---------------------------------------------------------------


def test_outsiders_get_404_everywhere(owner: Persona, outsider: Persona) -> None:
    key = make_key(owner)
    client = outsider.client()
    assert client.get(url(owner)).status_code == 404
    assert create(client, owner).status_code == 404
    assert client.post(url(owner, f"{key.pk}/revoke/")).status_code == 404
    assert client.post(url(owner, "origins/"), {"origin": "https://x.test"}).status_code == 404
    key.refresh_from_db()
    assert key.revoked_at is None


def test_a_key_of_another_org_is_404_even_for_an_owner(owner: Persona, outsider: Persona) -> None:
    theirs = make_key(outsider)
    assert owner.client().post(url(owner, f"{theirs.pk}/revoke/")).status_code == 404


def test_wrong_methods_are_405(owner: Persona) -> None:
    key = make_key(owner)
    client = owner.client()
    assert client.post(url(owner)).status_code == 405
    assert client.get(url(owner, "new/")).status_code == 405
    assert client.get(url(owner, f"{key.pk}/revoke/")).status_code == 405
    assert client.get(url(owner, "origins/")).status_code == 405


def test_signed_out_visitors_are_sent_to_sign_in(owner: Persona) -> None:
    response = Client().get(url(owner))
    assert response.status_code == 302
    assert "/accounts/signin/" in response["Location"]


def test_developers_see_keys_but_cannot_create_or_revoke(teammate: Persona, owner: Persona) -> None:
    key = make_key(owner)
    client = teammate.client()
    page = client.get(url(teammate))
    assert page.status_code == 200
    assert key.display in page.content.decode()
    assert "Create a key" not in page.content.decode()
    assert create(client, teammate).status_code == 403
    assert client.post(url(teammate, f"{key.pk}/revoke/")).status_code == 403
    assert client.post(url(teammate, "origins/"), {"origin": "https://x.test"}).status_code == 403
    assert ApiKey.objects.count() == 1


def test_the_sidebar_links_to_the_keys_page(owner: Persona) -> None:
    page = owner.client().get(f"/o/{owner.org.pk}/")
    assert f'href="{url(owner)}"' in page.content.decode()


# --- the list ------------------------------------------------------------------------------


def test_the_list_shows_each_key_without_its_secret(owner: Persona) -> None:
    key, plaintext = ApiKey.issue(
        org=owner.org, name="Prod", scopes="read", expires_at=None, created_by=owner.user
    )
    response = owner.client().get(url(owner))
    html = response.content.decode()
    assert "Prod" in html and key.display in html and "Read only" in html
    assert plaintext not in html and tokens.random_part(plaintext) not in html
    assert "HX-Request" in response["Vary"]


# --- create ---------------------------------------------------------------------------------


def test_creating_shows_the_key_exactly_once(owner: Persona) -> None:
    client = owner.client()
    response = create(client, owner, expires="30")
    assert response.status_code == 200
    shown = KEY.findall(response.content.decode())
    assert len(set(shown)) == 1
    plaintext = shown[0]
    assert 'data-copy="new-key"' in response.content.decode()
    assert "no-store" in response["Cache-Control"]
    key = ApiKey.objects.get()
    assert key.key_hash == tokens.digest(plaintext)
    assert key.name == "Staging server" and key.scopes == "read-write"
    assert key.created_by == owner.user and key.expires_at is not None
    assert 29 <= (key.expires_at - key.created_at).days <= 30
    later = client.get(url(owner)).content.decode()
    assert key.display in later
    assert plaintext not in later and not KEY.search(later)


def test_admins_create_keys_that_never_expire(admin: Persona) -> None:
    assert create(admin.client(), admin, expires="never", scopes="read").status_code == 200
    key = ApiKey.objects.get()
    assert key.expires_at is None and key.scopes == "read"


@pytest.mark.parametrize(
    "data",
    [{"name": ""}, {"scopes": "admin"}, {"expires": "7"}, {"name": "x" * 101}],
)
def test_invalid_forms_are_400_and_create_nothing(owner: Persona, data: dict[str, str]) -> None:
    response = create(owner.client(), owner, **data)
    assert response.status_code == 400
    assert not KEY.search(response.content.decode())
    assert not ApiKey.objects.exists()


def test_creating_audits_and_alerts_the_owners_without_the_key(
    owner: Persona, admin: Persona, django_capture_on_commit_callbacks: Any
) -> None:
    MembershipFactory(org=owner.org, role="owner", user__email="owner2@acme.test")
    with django_capture_on_commit_callbacks(execute=True):
        response = create(admin.client(), admin)
    plaintext = KEY.findall(response.content.decode())[0]
    event = AuditEvent.objects.get(action="key.create")
    key = ApiKey.objects.get()
    assert (event.actor_type, event.actor_id) == ("user", str(admin.user.pk))
    assert (event.target_type, event.target_id) == ("keys.apikey", str(key.pk))
    assert event.org_id == owner.org.pk
    # One email per owner: owners do not see each other's addresses.
    assert sorted(m.to[0] for m in mail.outbox) == sorted([owner.user.email, "owner2@acme.test"])
    assert all(len(m.to) == 1 for m in mail.outbox)
    message = mail.outbox[0]
    assert "new API key" in message.subject
    html = message.alternatives[0][0]  # type: ignore[attr-defined]
    for part in (message.subject, message.body, html):
        assert plaintext not in str(part)
        assert tokens.random_part(plaintext) not in str(part)
    assert key.display in message.body and "Ada Admin" in message.body


# --- revoke ------------------------------------------------------------------------------------


def test_revoking_with_htmx_returns_the_row(
    owner: Persona, django_capture_on_commit_callbacks: Any
) -> None:
    key = make_key(owner, "Old laptop")
    with django_capture_on_commit_callbacks(execute=True):
        response = owner.client().post(url(owner, f"{key.pk}/revoke/"), HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith(f'<tr id="key-{key.pk}">')
    assert "<html" not in html and "Revoked" in html and "hx-post" not in html
    assert "HX-Request" in response["Vary"]
    key.refresh_from_db()
    assert key.revoked_at is not None
    event = AuditEvent.objects.get(action="key.revoke")
    assert event.target_id == str(key.pk) and event.actor_id == str(owner.user.pk)
    assert len(mail.outbox) == 1 and "revoked" in mail.outbox[0].subject
    assert "Old laptop" in mail.outbox[0].body


def test_revoking_without_htmx_redirects_to_the_list(owner: Persona) -> None:
    key = make_key(owner)
    response = owner.client().post(url(owner, f"{key.pk}/revoke/"))
    assert response.status_code == 302 and response["Location"] == url(owner)
    assert "HX-Request" in response["Vary"]


def test_the_revoke_button_asks_for_confirmation_and_posts_with_htmx(owner: Persona) -> None:
    key = make_key(owner, "Build server")
    html = owner.client().get(url(owner)).content.decode()
    form = re.search(r"<form[^>]*revoke/[^>]*>", html, re.S)
    assert form
    assert f'hx-post="{url(owner, f"{key.pk}/revoke/")}"' in form.group(0)
    assert "data-confirm=" in form.group(0) and "Build server" in form.group(0)


def test_revoking_twice_is_harmless_and_audited_once(owner: Persona) -> None:
    key = make_key(owner)
    client = owner.client()
    client.post(url(owner, f"{key.pk}/revoke/"))
    first = ApiKey.objects.get().revoked_at
    assert client.post(url(owner, f"{key.pk}/revoke/")).status_code == 302
    assert ApiKey.objects.get().revoked_at == first
    assert AuditEvent.objects.filter(action="key.revoke").count() == 1


# --- CORS origins ------------------------------------------------------------------------


def test_owners_allow_and_remove_origins(owner: Persona) -> None:
    client = owner.client()
    response = client.post(url(owner, "origins/"), {"origin": "https://App.Acme.test/"})
    assert response.status_code == 302
    allowed = AllowedOrigin.objects.get()
    assert allowed.origin == "https://app.acme.test"
    assert "https://app.acme.test" in client.get(url(owner)).content.decode()
    duplicate = client.post(url(owner, "origins/"), {"origin": "https://app.acme.test"})
    assert duplicate.status_code == 400
    assert client.post(url(owner, "origins/"), {"origin": "not an origin"}).status_code == 400
    assert client.post(url(owner, f"origins/{allowed.pk}/remove/")).status_code == 302
    assert not AllowedOrigin.objects.exists()
    actions = list(AuditEvent.objects.order_by("id").values_list("action", flat=True))
    assert actions == ["cors.origin_add", "cors.origin_remove"]

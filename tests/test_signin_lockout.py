"""A sign-in lockout is written once to the audit trail of every organization the
account belongs to (HIPAA log-in monitoring), and nowhere for an unknown email."""

import pytest
from django.forms.models import model_to_dict
from django.test import Client

from clinik.accounts.models import Organization
from clinik.audit.models import AuditEvent
from tests.conftest import Persona
from tests.factories import MembershipFactory, OrganizationFactory

pytestmark = pytest.mark.django_db


def _fail(client: Client, email: str, times: int) -> list[int]:
    return [
        client.post(
            "/accounts/signin/", {"email": email, "password": "not the password"}
        ).status_code
        for _ in range(times)
    ]


def test_a_lockout_reaches_each_trail_of_the_user_once(
    settings, owner: Persona, outsider: Persona
) -> None:
    settings.SIGNIN_MAX_FAILURES = 3
    second = OrganizationFactory.create(name="Second Clinic")
    MembershipFactory(user=owner.user, org=second, role="developer")
    closed = OrganizationFactory(name="Gone Clinic", status=Organization.Status.CLOSED)
    MembershipFactory(user=owner.user, org=closed, role="owner")
    client = Client(REMOTE_ADDR="198.51.100.7")

    assert _fail(client, "Owner@Acme.test", 2) == [400, 400]
    assert not AuditEvent.objects.filter(action="account.lockout").exists()
    assert _fail(client, "owner@acme.test", 1) == [400]  # the third failure locks
    assert _fail(client, "owner@acme.test", 2) == [429, 429]  # no new entry while locked

    events = AuditEvent.objects.filter(action="account.lockout")
    assert sorted(str(e.org_id) for e in events) == sorted([str(owner.org.pk), str(second.pk)])
    for event in events:
        assert (event.target_type, event.target_id) == ("accounts.user", str(owner.user.pk))
        assert event.outcome == "denied"
        assert event.ip == "198.51.100.7"
        assert "acme.test" not in str(model_to_dict(event))  # an id, never the address
    assert not AuditEvent.objects.filter(action="account.lockout", org_id=outsider.org.pk)


def test_an_unknown_email_locks_without_a_trail(settings, owner: Persona) -> None:
    settings.SIGNIN_MAX_FAILURES = 2
    assert _fail(Client(), "nobody@acme.test", 3) == [400, 400, 429]
    assert not AuditEvent.objects.filter(action="account.lockout").exists()

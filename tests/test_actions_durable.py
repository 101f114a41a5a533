"""Top-level dashboard actions run in a durable transaction (as Zulip's do_* actions do):
a caller's transaction can never swallow their audit row or their after-commit email.
Called inside another transaction, they refuse before doing anything.

Not durable, on purpose: do_create_org and do_create_key (the `create_org` command
creates the user, the organization and the key in one all-or-nothing transaction, and
do_signup composes do_create_org), and the FHIR export actions (called from the API)."""

import inspect
from collections.abc import Callable
from typing import Any

import pytest
from django.db import transaction

from clinik.accounts import actions as accounts
from clinik.audit import export_actions as audit_exports
from clinik.gateway import actions as gateway
from clinik.keys import actions as keys
from clinik.privacy import closure, deletion

DURABLE: list[Callable[..., Any]] = [
    accounts.do_signup,
    accounts.do_note_lockout,
    accounts.do_invite,
    accounts.do_revoke_invitation,
    accounts.do_update_org,
    accounts.do_accept_invitation,
    accounts.do_change_role,
    accounts.do_remove_member,
    accounts.do_supabase_signin,
    keys.do_revoke_key,
    gateway.do_allow_origin,
    gateway.do_remove_origin,
    closure.do_request_closure,
    closure.do_cancel_closure,
    deletion.do_request_deletion,
    deletion.do_cancel_deletion,
    audit_exports.start_export,
]


@pytest.mark.django_db
@pytest.mark.parametrize("action", DURABLE, ids=lambda a: a.__name__)
def test_an_action_refuses_to_run_inside_a_callers_transaction(action: Any) -> None:
    # The arguments are never looked at: the durable block refuses on entry.
    with transaction.atomic(), pytest.raises(RuntimeError, match="durable"):
        action(**dict.fromkeys(inspect.signature(action).parameters, None))

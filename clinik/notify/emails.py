"""`send(kind, template, to, context)`: the one way ClinikAPI sends email (see the
package docstring in clinik/notify/__init__.py)."""

import json
from collections.abc import Iterable
from functools import partial
from typing import Any

from django.db import transaction

from clinik.accounts.models import User, normalize_email
from clinik.notify.catalogue import CATALOGUE, render
from clinik.notify.delivery import deliver, deliver_email
from clinik.notify.models import EmailKind, EmailRecord

__all__ = ["CATALOGUE", "render", "send", "send_now"]

Recipient = User | str


def _check(kind: str, template: str, context: dict[str, Any]) -> None:
    entry = CATALOGUE.get(template)
    if entry is None:
        raise ValueError(f"{template!r} is not in clinik.notify.catalogue.CATALOGUE")
    if kind != entry.kind or kind not in EmailKind.values:
        raise ValueError(f"{template!r} is a {entry.kind} email, not {kind!r}")
    json.dumps(context)  # the task's arguments travel as JSON: fail here, not in a worker


def _recipients(to: Recipient | Iterable[Recipient]) -> list[tuple[User | None, str]]:
    items = [to] if isinstance(to, User | str) else list(to)
    seen: set[str] = set()
    result: list[tuple[User | None, str]] = []
    for item in items:
        user, address = (item, item.email) if isinstance(item, User) else (None, item)
        address = normalize_email(address)
        if address and address not in seen:
            seen.add(address)
            result.append((user, address))
    return result


def send(
    kind: str, template: str, to: Recipient | Iterable[Recipient], context: dict[str, Any]
) -> list[EmailRecord]:
    """Record one email per recipient now and queue its delivery after commit."""
    _check(kind, template, context)
    records = []
    for user, address in _recipients(to):
        record = EmailRecord.objects.create(kind=kind, template=template, user=user)
        records.append(record)
        transaction.on_commit(partial(deliver_email.delay, record.pk, address, template, context))
    return records


def send_now(
    kind: str, template: str, to: Recipient | Iterable[Recipient], context: dict[str, Any]
) -> None:
    """Send at once, in this process (a worker job that must know it went)."""
    _check(kind, template, context)
    for user, address in _recipients(to):
        record = EmailRecord.objects.create(kind=kind, template=template, user=user)
        deliver(record.pk, address, template, context)

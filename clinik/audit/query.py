"""Finding audit events: one organization's, filtered, newest first, keyset-paged
(the index on (org_id, time DESC, id DESC) keeps every page equally fast)."""

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from django.db.models import Q, QuerySet

from clinik.audit.models import AuditEvent


@dataclass
class AuditFilter:
    actor: str = ""
    """`user:12`, `key:3`, `system` or `anonymous`."""
    action: str = ""
    """An action name, or a namespace as `fhir.*`."""
    target_type: str = ""
    outcome: str = ""
    since: datetime | None = None
    until: datetime | None = None
    request_id: str = ""

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("since", "until"):
            data[name] = data[name].isoformat() if data[name] else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "AuditFilter":
        values = dict(data)
        for name in ("since", "until"):
            values[name] = datetime.fromisoformat(values[name]) if values.get(name) else None
        return cls(**values)

    def apply(self, events: QuerySet[AuditEvent]) -> QuerySet[AuditEvent]:
        if self.actor:
            kind, _, ident = self.actor.partition(":")
            events = events.filter(actor_type=kind)
            if ident:
                events = events.filter(actor_id=ident)
        if self.action.endswith(".*"):
            events = events.filter(action__startswith=self.action[:-1])
        elif self.action:
            events = events.filter(action=self.action)
        if self.target_type:
            events = events.filter(target_type=self.target_type)
        if self.outcome:
            events = events.filter(outcome=self.outcome)
        if self.since:
            events = events.filter(time__gte=self.since)
        if self.until:
            events = events.filter(time__lt=self.until)
        if self.request_id:
            events = events.filter(request_id=self.request_id)
        return events


def events_of(org_id: UUID, flt: AuditFilter) -> QuerySet[AuditEvent]:
    return flt.apply(AuditEvent.objects.filter(org_id=org_id))


def _beyond(cursor: tuple[datetime, int], newest_first: bool) -> Q:
    at, ident = cursor
    if newest_first:
        return Q(time__lte=at) & (Q(time__lt=at) | Q(id__lt=ident))
    return Q(time__gte=at) & (Q(time__gt=at) | Q(id__gt=ident))


@dataclass
class Page:
    rows: list[AuditEvent]
    newer: tuple[datetime, int] | None
    older: tuple[datetime, int] | None


def page(
    events: QuerySet[AuditEvent],
    *,
    before: tuple[datetime, int] | None = None,
    after: tuple[datetime, int] | None = None,
    size: int = 50,
) -> Page:
    if after is not None:
        found = list(events.filter(_beyond(after, False)).order_by("time", "id")[: size + 1])
        more = len(found) > size
        found = found[:size][::-1]
        newer = (found[0].time, found[0].id) if found and more else None
        return Page(found, newer, (found[-1].time, found[-1].id) if found else None)
    rows = events.filter(_beyond(before, True)) if before else events
    found = list(rows.order_by("-time", "-id")[: size + 1])
    more = len(found) > size
    found = found[:size]
    newer = (found[0].time, found[0].id) if found and before else None
    return Page(found, newer, (found[-1].time, found[-1].id) if found and more else None)


def iterate(events: QuerySet[AuditEvent], chunk: int = 2000) -> Iterator[AuditEvent]:
    """Every event, oldest first, in keyset chunks."""
    cursor: tuple[datetime, int] | None = None
    while True:
        rows = events.filter(_beyond(cursor, False)) if cursor else events
        found = list(rows.order_by("time", "id")[:chunk])
        yield from found
        if len(found) < chunk:
            return
        cursor = (found[-1].time, found[-1].id)

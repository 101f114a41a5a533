"""Tamper evidence without a lock on every write.

Events are inserted unchained (record() is one plain INSERT). The sealer, a beat
job, later chains each organization's committed events, in the order it finds
them, into the insert-only `audit_auditseal` table:

    hash = sha256(canonical([prev_hash, seq, id, time, org, actor, action, target,
                             outcome, request_id]))

ip and user_agent are left out, so erasing them breaks nothing. A retention purge
removes a prefix of a chain and keeps its last hash as the chain's anchor.
`verify(chain)` walks a chain from its anchor and reports the first broken link.

Finding every committed event exactly once: events are found by an anti-join
above a watermark. The watermark moves to the previous run's highest id only once
every transaction that was in progress at that run has ended (PostgreSQL snapshot
xmin/xmax), so an event whose transaction commits late is still sealed.
"""

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
from django.db import connection, transaction

NO_ORG = "none"
GENESIS = ""
BATCH = 5000
_LOCK = 0x61756469  # pg advisory lock id for the sealer: one sealer at a time

_EVENT_COLUMNS = (
    "e.id, e.time, e.org_id, e.actor_type, e.actor_id, e.action, e.target_type,"
    " e.target_id, e.outcome, e.request_id"
)


def chain_of(org_id: UUID | str | None) -> str:
    return str(org_id) if org_id else NO_ORG


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def link_hash(prev_hash: str, seq: int, row: tuple[Any, ...]) -> str:
    """row: the event's (id, time, org_id, actor_type, actor_id, action,
    target_type, target_id, outcome, request_id)."""
    event_id, time, org_id, *rest = row
    canonical = [prev_hash, seq, event_id, _instant(time), str(org_id or ""), *rest]
    return hashlib.sha256(orjson.dumps(canonical)).hexdigest()


def _head(cursor: Any, chain: str) -> tuple[int, str]:
    cursor.execute(
        "SELECT seq, hash FROM audit_auditseal WHERE chain = %s ORDER BY seq DESC LIMIT 1",
        [chain],
    )
    row = cursor.fetchone()
    if row is None:
        row = _anchor(cursor, chain)
    return (int(row[0]), str(row[1])) if row else (0, GENESIS)


def _anchor(cursor: Any, chain: str) -> tuple[int, str] | None:
    cursor.execute(
        "SELECT seq, hash FROM audit_auditanchor WHERE chain = %s ORDER BY seq DESC LIMIT 1",
        [chain],
    )
    row = cursor.fetchone()
    return (int(row[0]), str(row[1])) if row else None


def seal(batch: int = BATCH) -> int:
    """Seal up to `batch` events; returns how many. Safe to run concurrently (one
    waits its turn) and to kill at any point: each run is one transaction."""
    return _seal(batch, 0)[0]


def _seal(batch: int, after: int) -> tuple[int, int]:
    """One batch above max(watermark, after): returns (events sealed, last id seen).
    `after` lets one seal_all() walk a backlog once instead of rescanning it per
    batch; only a pass from the watermark itself may move the watermark."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [_LOCK])
        if not cursor.fetchone()[0]:
            return 0, after
        cursor.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
        (xmin,) = cursor.fetchone()
        cursor.execute(
            "INSERT INTO audit_sealerstate (id, watermark, pending_max_id, pending_xmax,"
            " updated_at) VALUES (1, 0, 0, '', now()) ON CONFLICT (id) DO NOTHING"
        )
        cursor.execute(
            "SELECT watermark, pending_max_id, pending_xmax FROM audit_sealerstate"
            " WHERE id = 1 FOR UPDATE"
        )
        watermark, pending_max, pending_xmax = cursor.fetchone()
        settled = bool(pending_xmax) and int(xmin) >= int(pending_xmax)
        cursor.execute(
            f"SELECT {_EVENT_COLUMNS} FROM audit_auditevent e"  # noqa: S608
            " WHERE e.id > %s AND NOT EXISTS"
            " (SELECT 1 FROM audit_auditseal s WHERE s.event_id = e.id)"
            " ORDER BY e.id LIMIT %s",
            [max(watermark, after), batch + 1],
        )
        rows = cursor.fetchall()
        complete = len(rows) <= batch and after <= watermark
        rows = rows[:batch]
        heads: dict[str, tuple[int, str]] = {}
        links = []
        for row in rows:
            chain = chain_of(row[2])
            seq, prev = heads.get(chain) or _head(cursor, chain)
            seq += 1
            digest = link_hash(prev, seq, row)
            links.append((chain, seq, row[0], prev, digest))
            heads[chain] = (seq, digest)
        if links:
            cursor.executemany(
                "INSERT INTO audit_auditseal (chain, seq, event_id, prev_hash, hash, sealed_at)"
                " VALUES (%s, %s, %s, %s, %s, now())",
                links,
            )
        if complete:
            # Every event up to the last run's highest id is now final and sealed.
            if settled:
                watermark = max(watermark, pending_max)
            cursor.execute(
                "SELECT coalesce(max(id), 0) FROM audit_auditevent WHERE id > %s", [watermark]
            )
            newest = max(int(cursor.fetchone()[0]), watermark)
            # Taken after the max: whoever holds an id <= newest has an older xid.
            cursor.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text")
            (xmax,) = cursor.fetchone()
            if settled or not pending_xmax:
                pending_max, pending_xmax = newest, xmax
        cursor.execute(
            "UPDATE audit_sealerstate SET watermark = %s, pending_max_id = %s,"
            " pending_xmax = %s, updated_at = now() WHERE id = 1",
            [watermark, pending_max, pending_xmax],
        )
        return len(links), (rows[-1][0] if rows else after)


def seal_all(batch: int = BATCH) -> int:
    """Seal everything committed: a backlog in one walk, then a pass from the
    watermark (which finds late commits and may move the watermark)."""
    total, after = 0, 0
    while True:
        sealed, after = _seal(batch, after)
        total += sealed
        if sealed < batch:
            break
    return total + (_seal(batch, 0)[0] if after else 0)


@dataclass(frozen=True)
class Break:
    chain: str
    seq: int
    event_id: int | None
    reason: str

    def __str__(self) -> str:
        event = f" (event {self.event_id})" if self.event_id is not None else ""
        return f"chain {self.chain}: link {self.seq}{event}: {self.reason}"


def chains(org_id: UUID | str | None = None) -> list[str]:
    if org_id is not None:
        return [chain_of(org_id)]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT chain FROM audit_auditseal UNION SELECT chain FROM audit_auditanchor ORDER BY 1"
        )
        return [row[0] for row in cursor.fetchall()]


def _links(chain: str, after_seq: int, chunk: int = 5000) -> Iterator[tuple[Any, ...]]:
    """(seq, event id, prev hash, hash, *event fields or Nones), in chain order. Links
    and events are read in two indexed queries per chunk (a join lets the planner
    scan the whole event table per chunk)."""
    while True:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT seq, event_id, prev_hash, hash FROM audit_auditseal"
                " WHERE chain = %s AND seq > %s ORDER BY seq LIMIT %s",
                [chain, after_seq, chunk],
            )
            links = cursor.fetchall()
            if not links:
                return
            cursor.execute(
                f"SELECT {_EVENT_COLUMNS} FROM audit_auditevent e"  # noqa: S608
                " WHERE e.id = ANY(%s)",
                [[link[1] for link in links]],
            )
            events = {row[0]: row for row in cursor.fetchall()}
        missing = (None,) * 10
        for link in links:
            yield (*link, *events.get(link[1], missing))
        if len(links) < chunk:
            return
        after_seq = links[-1][0]


def verify(chain: str) -> tuple[int, Break | None]:
    """Walk one chain; returns (links checked, the first broken link or None)."""
    with connection.cursor() as cursor:
        anchor = _anchor(cursor, chain)
    seq, prev = anchor or (0, GENESIS)
    checked = 0
    for link_seq, event_id, prev_hash, digest, *event in _links(chain, seq):
        checked += 1
        if link_seq != seq + 1:
            return checked, Break(chain, seq + 1, None, "link missing (seal deleted)")
        if prev_hash != prev:
            return checked, Break(chain, link_seq, event_id, "does not follow the previous link")
        if event[0] is None:
            return checked, Break(chain, link_seq, event_id, "event missing (row deleted)")
        if chain_of(event[2]) != chain:
            return checked, Break(chain, link_seq, event_id, "event moved to another chain")
        if link_hash(prev, link_seq, tuple(event)) != digest:
            return checked, Break(chain, link_seq, event_id, "event changed after sealing")
        seq, prev = link_seq, digest
    return checked, None


def unsealed_below_watermark(org_id: UUID | str | None = None) -> list[int]:
    """Events the sealer has passed without sealing: inserted behind its back."""
    sql = (
        "SELECT e.id FROM audit_auditevent e, audit_sealerstate st"
        " WHERE st.id = 1 AND e.id <= st.watermark AND NOT EXISTS"
        " (SELECT 1 FROM audit_auditseal s WHERE s.event_id = e.id)"
    )
    params: list[Any] = []
    if org_id is not None:
        if chain_of(org_id) == NO_ORG:
            sql += " AND e.org_id IS NULL"
        else:
            sql += " AND e.org_id = %s"
            params.append(str(org_id))
    with connection.cursor() as cursor:
        cursor.execute(sql + " ORDER BY e.id LIMIT 10", params)
        return [row[0] for row in cursor.fetchall()]

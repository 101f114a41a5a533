"""Idempotency-Key on POST: a retry within 24 hours returns the original outcome and
creates nothing. A record keeps the SHA-256 of the request and pointers to the
resulting versions (type, id, version, status) — never a copy of the response body.

The key is locked for the transaction (advisory lock), so a retry that races the
original waits for it to commit and then replays it."""

import hashlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

import orjson
from django.db import connection
from django.http import HttpRequest
from django.utils import timezone

from clinik.fhir.http import FhirError

WINDOW = timedelta(hours=24)
_KEY_MAX = 255


@dataclass(frozen=True)
class Pointer:
    resource_type: str
    id: str
    version_id: int
    status: int

    def as_list(self) -> list[Any]:
        return [self.resource_type, self.id, self.version_id, self.status]


def request_key(request: HttpRequest) -> str | None:
    raw = request.headers.get("Idempotency-Key")
    if raw is None:
        return None
    key = raw.strip()
    if not key or len(key) > _KEY_MAX or not key.isprintable():
        raise FhirError(400, "value", "Idempotency-Key must be 1 to 255 printable characters")
    return key


def request_hash(request: HttpRequest) -> str:
    digest = hashlib.sha256()
    digest.update(f"{request.method} {request.path}\n".encode())
    digest.update(request.body)
    return digest.hexdigest()


def claim(tenant: UUID, key: str, hashed: str) -> list[Pointer] | None:
    """Inside the caller's tenant transaction: lock the key, and return the pointers
    of an earlier request with this key (a replay), or None to proceed."""
    lock = int.from_bytes(
        hashlib.sha256(f"{tenant}|{key}".encode()).digest()[:8], "big", signed=True
    )
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [lock])
        cursor.execute(
            "SELECT request_hash, pointers FROM fhir_idempotency"
            " WHERE org_id = %s AND key = %s AND created_at > %s",
            [tenant, key, timezone.now() - WINDOW],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    if row[0] != hashed:
        raise FhirError(
            422, "business-rule", "This Idempotency-Key was used with a different request"
        )
    return [Pointer(*p) for p in orjson.loads(row[1])]


def remember(tenant: UUID, key: str, hashed: str, pointers: list[Pointer]) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO fhir_idempotency (org_id, key, request_hash, pointers, created_at)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (org_id, key) DO UPDATE"
            " SET request_hash = EXCLUDED.request_hash, pointers = EXCLUDED.pointers,"
            " created_at = EXCLUDED.created_at",
            [
                tenant,
                key,
                hashed,
                orjson.dumps([p.as_list() for p in pointers]).decode(),
                timezone.now(),
            ],
        )


def purge_expired(batch: int = 5000) -> int:
    """Delete records older than the window, in batches by the indexed creation time.
    The table has no row-level security: it holds hashes and ids, no content."""
    deleted = 0
    cutoff = timezone.now() - WINDOW
    while True:
        with connection.cursor() as cursor:
            cursor.execute(
                "DELETE FROM fhir_idempotency WHERE ctid = ANY(ARRAY("
                "SELECT ctid FROM fhir_idempotency WHERE created_at < %s LIMIT %s))",
                [cutoff, batch],
            )
            deleted += cursor.rowcount
            if cursor.rowcount < batch:
                return deleted

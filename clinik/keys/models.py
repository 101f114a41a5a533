import functools
import hmac
import re
import weakref
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper
from django.db.models import Q
from django.utils import timezone

from clinik.accounts.models import Organization, User
from clinik.keys import tokens


class ApiKeyQuerySet(models.QuerySet["ApiKey"]):
    def active(self) -> "ApiKeyQuerySet":
        """Keys that authenticate now: not revoked, not expired."""
        return self.filter(revoked_at__isnull=True).filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now())
        )

    def authenticate(self, plaintext: str) -> "ApiKey | None":
        """The usable key with this plaintext, or None. A malformed key (shape or
        checksum) costs no query; any other costs one indexed lookup by hash.

        Nothing here is cached: a revocation is seen by the very next request on
        every process."""
        if not tokens.is_well_formed(plaintext):
            return None
        digest = tokens.digest(plaintext)
        connection = connections[self.db]
        with connection.cursor() as cursor:
            if settings.API_KEY_PREPARED_LOOKUP:
                _prepare_lookup(connection, cursor)
                # EXECUTE takes no bind parameters: the digest (64 hex digits, no
                # PHI) is written into the statement.
                if not _HEX_DIGEST.fullmatch(digest):
                    return None
                cursor.execute(f"EXECUTE {LOOKUP_STATEMENT}('{digest}')")
            else:
                cursor.execute(_lookup_sql(self.db), [digest])
            row = cursor.fetchone()
        if row is None:
            return None
        key_fields = [f.attname for f in ApiKey._meta.concrete_fields]
        org_fields = [f.attname for f in Organization._meta.concrete_fields]
        key = ApiKey.from_db(self.db, key_fields, row[: len(key_fields)])
        key.org = Organization.from_db(self.db, org_fields, row[len(key_fields) :])
        if not hmac.compare_digest(key.key_hash, digest):
            return None
        return key if key.is_usable() else None


@functools.cache
def _lookup_sql(alias: str) -> str:
    """`select_related("org").get(key_hash=...)`, written once: this runs on every API
    request, and compiling the same ORM query each time costs more than the query."""
    quote = connections[alias].ops.quote_name
    columns = [f"k.{quote(str(f.column))}" for f in ApiKey._meta.concrete_fields]
    columns += [f"o.{quote(str(f.column))}" for f in Organization._meta.concrete_fields]
    tables = f"{quote(ApiKey._meta.db_table)} k JOIN {quote(Organization._meta.db_table)} o"
    # Identifiers come from the models; the one value is a query parameter.
    select = f"SELECT {', '.join(columns)} FROM {tables}"  # noqa: S608
    return select + " ON o.id = k.org_id WHERE k.key_hash = %s"


def still_usable(key: "ApiKey") -> tuple[str, list[Any]]:
    """An SQL condition that holds while the key authenticates (not revoked, not
    expired, its organization not closed), for a statement that must not act for a
    key revoked since this process looked it up: checked in the statement's own
    transaction, so a revocation committed before it is seen, as by a lookup."""
    # The application's clock, as the lookup's expiry check (ApiKey.is_expired).
    return _still_usable_sql(), [key.pk, key.key_hash, timezone.now(), Organization.Status.CLOSED]


@functools.cache
def _still_usable_sql() -> str:
    quote = connections[DEFAULT_DB_ALIAS].ops.quote_name
    keys, orgs = quote(ApiKey._meta.db_table), quote(Organization._meta.db_table)
    return (
        f"EXISTS (SELECT 1 FROM {keys} k JOIN {orgs} o ON o.id = k.org_id"  # noqa: S608
        " WHERE k.id = %s AND k.key_hash = %s AND k.revoked_at IS NULL"
        " AND (k.expires_at IS NULL OR k.expires_at > %s) AND o.status <> %s)"
    )


LOOKUP_STATEMENT = "clinik_api_key_lookup"
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
# The server connections that hold the prepared lookup. Django opens a new one when
# the old is closed; a prepared statement lives as long as its server session and
# survives a rollback, so one PREPARE per connection is enough.
_prepared: "weakref.WeakSet[Any]" = weakref.WeakSet()


def _prepare_lookup(connection: BaseDatabaseWrapper, cursor: CursorWrapper) -> None:
    """Prepare the lookup once per database connection (API_KEY_PREPARED_LOOKUP): the
    server then skips parsing and planning it on every request, which costs more than
    running it. Not for transaction-mode poolers (Supabase's on port 6543, PgBouncer
    in transaction mode): consecutive statements may reach different server
    sessions, and one without the statement would fail the request."""
    session = connection.connection
    if session in _prepared:
        return
    cursor.execute("SELECT 1 FROM pg_prepared_statements WHERE name = %s", [LOOKUP_STATEMENT])
    if cursor.fetchone() is None:
        sql = _lookup_sql(connection.alias).replace("%s", "$1")
        cursor.execute(f"PREPARE {LOOKUP_STATEMENT}(varchar) AS {sql}")
    _prepared.add(session)


class ApiKey(models.Model):
    """An API key of an organization. Only the SHA-256 of the key is stored, with a
    short non-secret prefix and the last four characters to tell keys apart."""

    audit_actor_type = "key"

    class Scopes(models.TextChoices):
        READ = "read", "Read only"
        READ_WRITE = "read-write", "Read and write"

    org = models.ForeignKey(Organization, models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    scopes = models.CharField(max_length=10, choices=Scopes.choices, default=Scopes.READ_WRITE)
    key_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=16)
    last4 = models.CharField(max_length=4)
    created_by = models.ForeignKey(User, models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["org", "created_at"])]
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.display})"

    @classmethod
    def issue(
        cls,
        *,
        org: Organization,
        name: str,
        scopes: str,
        expires_at: datetime | None,
        created_by: User | None,
        prefix: str = tokens.LIVE,
    ) -> tuple["ApiKey", str]:
        plaintext = tokens.generate(prefix)
        hint = tokens.hint(plaintext)
        key = cls.objects.create(
            org=org,
            name=name,
            scopes=scopes,
            key_hash=tokens.digest(plaintext),
            prefix=hint.prefix,
            last4=hint.last4,
            created_by=created_by,
            expires_at=expires_at,
        )
        return key, plaintext

    @property
    def display(self) -> str:
        return f"{self.prefix}…{self.last4}"

    @property
    def can_write(self) -> bool:
        return self.scopes == self.Scopes.READ_WRITE

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.is_expired:
            return "expired"
        return "active"

    def is_usable(self) -> bool:
        return self.revoked_at is None and not self.is_expired

    def note_use(self) -> bool:
        """Record that the key was used, at most once per resolution interval.

        A conditional UPDATE: when many processes serve the same key at once, one of
        them writes and the others change no row. Returns whether a row changed."""
        now = timezone.now()
        stale = now - timedelta(seconds=settings.API_KEY_LAST_USED_RESOLUTION_SECONDS)
        if self.last_used_at is not None and self.last_used_at > stale:
            return False
        changed = (
            ApiKey.objects.filter(pk=self.pk)
            .filter(Q(last_used_at__isnull=True) | Q(last_used_at__lte=stale))
            .update(last_used_at=now)
        )
        if changed:
            self.last_used_at = now
        return bool(changed)

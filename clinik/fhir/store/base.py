"""The FHIR store interface. Every call names the tenant explicitly (never a
thread-local), so a second store (AWS HealthLake) can sit behind the same views,
tenancy and audit."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

from clinik.fhir.http import FhirError

if TYPE_CHECKING:
    # The query a store answers is data the search parser builds; the parser itself
    # never imports the store (one way: store interface -> query model).
    from clinik.fhir.search.query import Cursor, SearchQuery


@dataclass(frozen=True, slots=True)
class Version:
    """One stored version. `content` is the resource's JSON text, None for a delete."""

    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    content: str | None
    method: str = "update"  # create, update or delete

    @property
    def deleted(self) -> bool:
        return self.content is None

    @property
    def etag(self) -> str:
        return f'W/"{self.version_id}"'


@dataclass
class SearchResult:
    """What a store's search answers: one page of matches and what they include."""

    matches: list[Version]
    included: list[Version] = field(default_factory=list)
    total: int | None = None
    next: "Cursor | None" = None
    previous: "Cursor | None" = None
    notes: list[str] = field(default_factory=list)
    """Things the client should know (included resources cut short), no values."""


@dataclass(frozen=True, slots=True)
class HistoryPage:
    versions: list[Version]
    total: int
    has_more: bool


@dataclass(frozen=True)
class StoreFeatures:
    """What a store supports, so the CapabilityStatement tells the truth."""

    history: bool = True
    versioned_reads: bool = True
    conditional_update: bool = True
    transactions: bool = True
    search: bool = False
    search_features: frozenset[str] = frozenset()
    """Which parts of FHIR search the store answers (see SEARCH_FEATURES)."""
    expunge: bool = True
    max_count: int = 1000
    """The largest search page the store answers (_count)."""
    unsupported_params: frozenset[tuple[str, str]] = frozenset()
    """(type, code) of R4 search parameters the store cannot answer."""
    system_history: bool = True
    """Type- and system-level history (not only one resource's)."""
    subscriptions: bool = False
    """Whether Subscription resources are served (notifications need the store to
    report its changes: the PostgreSQL store's fhir_history trigger)."""
    update_create: bool = True
    """A PUT of an id the tenant has never had creates it (update-as-create)."""
    max_transaction_entries: int | None = None
    """The most entries one transaction bundle may hold on this store (None: ours)."""
    interactions: tuple[str, ...] = field(
        default=(
            "read",
            "vread",
            "update",
            "patch",
            "delete",
            "history-instance",
            "history-type",
            "create",
        )
    )

    def check_transaction_writes(self, writes: int) -> None:
        """Refuse a transaction that writes more resources than this store takes in one."""
        limit = self.max_transaction_entries
        if limit is not None and writes > limit:
            raise FhirError(
                400,
                "not-supported",
                f"A transaction may write at most {limit} resources with this server's FHIR"
                " store; split it, or send a batch",
            )


SEARCH_FEATURES = frozenset(
    {
        "parameters",  # every R4 SearchParameter of types string ... composite
        "modifiers",  # :exact :contains :missing :not :text :identifier :[type] :below :above
        "chain",
        "has",
        "include",
        "revinclude",
        "iterate",
        "sort",
        "total",
        "summary",
        "elements",
        "system",  # GET [base]?_type=...
        "compartment",  # GET Patient/123/Observation, Patient/123/* (the R4 compartments)
    }
)


Alongside = Callable[[str], tuple[str, list[Any]]]
"""A write a read carries in its own statement (a data-modifying CTE): given the SQL
condition "a live version was found", its INSERT and parameters. The store does not
know what it writes (the interaction's audit row: clinik.audit.interactions)."""


class StoreError(Exception):
    pass


class VersionConflict(StoreError):
    """If-Match named a version that is not the current one."""

    def __init__(self, current: int | None) -> None:
        super().__init__("version conflict")
        self.current = current


class FhirStore(Protocol):
    features: StoreFeatures

    def read(
        self,
        tenant: UUID,
        resource_type: str,
        resource_id: str,
        *,
        alongside: Alongside | None = None,
    ) -> Version | None:
        """The current version (a delete is a version without content). `alongside`
        is written in the read's own statement (or, for a store that cannot, its own
        transaction), told whether a live version was found."""
        ...

    def vread(
        self, tenant: UUID, resource_type: str, resource_id: str, version_id: int
    ) -> Version | None: ...

    def create(
        self, tenant: UUID, resource: dict[str, Any], *, resource_id: str | None = None
    ) -> Version: ...

    def create_many(
        self, tenant: UUID, resources: list[tuple[dict[str, Any], str]]
    ) -> list[Version]:
        """Create resources with new ids (document, id), in the caller's transaction."""
        ...

    def update(
        self,
        tenant: UUID,
        resource: dict[str, Any],
        resource_id: str,
        *,
        if_match: int | None = None,
    ) -> tuple[Version, bool]: ...

    def delete(self, tenant: UUID, resource_type: str, resource_id: str) -> Version | None: ...

    def expunge(self, tenant: UUID, resource_type: str, resource_id: str) -> int: ...

    def history(
        self,
        tenant: UUID,
        *,
        resource_type: str | None = None,
        resource_id: str | None = None,
        since: datetime | None = None,
        at: datetime | None = None,
        count: int = 20,
        offset: int = 0,
    ) -> HistoryPage: ...

    def list_current(
        self, tenant: UUID, resource_type: str, count: int, offset: int
    ) -> tuple[list[Version], bool]: ...

    def search(self, tenant: UUID, query: "SearchQuery") -> SearchResult: ...

    def iter_tenant(
        self, tenant: UUID, *, types: list[str] | None = None, since: datetime | None = None
    ) -> Iterator[Version]: ...

    def purge_tenant(self, tenant: UUID) -> dict[str, int]: ...

    def staged(self, tenant: UUID) -> "Staged | None":
        """For a transaction bundle: a store whose writes are only collected, then
        sent together by `commit` (a store whose writes roll back with the PostgreSQL
        transaction answers None and is written directly)."""
        ...


class Staged(FhirStore, Protocol):
    """A transaction's writes, collected: reads see them; `commit` sends them all at
    once, atomically, and answers each collected version with the version stored."""

    def commit(self) -> dict[Version, Version]: ...

    def pending(self, version: Version) -> bool:
        """Whether the version is one of the collected writes."""
        ...

    def unknown_references(self, references: set[str]) -> set[str]:
        """The `Type/id` references that name no live resource of the tenant (another
        tenant's resource is unknown exactly like a missing one)."""
        ...

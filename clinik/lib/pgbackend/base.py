# django-stubs describe this Django module for psycopg2; its psycopg 3 classes (Cursor,
# ServerSideCursor, register_tzloader) are unknown to them.
# mypy: disable-error-code="attr-defined, misc, call-arg, name-defined, unused-ignore"
"""Django's PostgreSQL backend (psycopg 3), with values sent as bind parameters and
transactions that cost fewer round trips.

On this machine, as on most hosts, a round trip to PostgreSQL costs more than the
statement it carries (bench/README.md). Django's backend spends several on every
transaction: psycopg sends BEGIN alone before the first statement, COMMIT alone at
the end, and each write whose result nobody reads (the tenant's `set_config`, search
index rows, audit rows) waits for its own answer. This backend keeps the psycopg
connection in autocommit mode and runs transactions itself:

- BEGIN is queued when Django opens a transaction, and travels with the first
  statement that needs an answer, in one pipeline (one round trip);
- `defer(sql, params)` queues a write the same way: it travels with the next
  statement, or with the COMMIT (a write-only transaction is one round trip);
- SAVEPOINT and RELEASE are queued too; a transaction in which nothing ran commits
  with no round trip at all.

Queued statements run in order, before the statement they travel with, in the same
transaction, so what every statement sees is unchanged. The difference is where an
error in a queued write surfaces: with the statement it travelled with, or with the
COMMIT; either way the transaction rolls back whole. Only writes that are not
expected to fail are deferred (see `clinik.lib.db.defer`).

`send_ahead()` sends what is queued at once without waiting for the answer, so that
the server works on it while Python prepares the next statements (a transaction
bundle's index rows, chunk after chunk); the answer is read, and an error raised,
before the connection's next use, so it surfaces as a deferred write's would.

Every statement, queued or not, travels in the extended protocol with its values as
bind parameters (psycopg's server-side binding; a batch is sent in libpq's pipeline
mode with one Sync and read once, without psycopg's Pipeline object, which cost
twice the CPU and wall time per batch: bench/pipeline_micro.py): the
text PostgreSQL parses, and logs when a statement fails, carries `$1`, `$2`, never a
value (privacy: no PHI in the database server's log). Nothing is prepared by name:
`prepare_threshold` stays None (Django's default for psycopg 3), so every statement
is an unnamed one that lives until the next, and a transaction-mode pooler
(PgBouncer, Supabase's port 6543) can hand each transaction to another server session.

The per-request health check (CONN_HEALTH_CHECKS) also costs no round trip here:
an idle connection the server has closed or is closing has bytes (or EOF) waiting
on its socket, which a zero-timeout poll sees; only then does it send `SELECT 1`.
"""

import contextlib
import select
from typing import Any

import psycopg
from django.core.exceptions import ImproperlyConfigured
from django.db.backends.postgresql import base
from django.db.backends.utils import debug_transaction
from psycopg import adapt, errors, generators
from psycopg._queries import PostgresQuery
from psycopg.pq import ExecStatus, TransactionStatus

_OPEN = (TransactionStatus.INTRANS, TransactionStatus.INERROR)


class LazyCursor(base.ServerBindingCursor):
    """A server-side-binding cursor that sends the connection's queued statements
    ahead of its own, in one pipeline, and answers for its own."""

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        session = self.connection
        collect(session)
        count_round_trip(session)
        queue: list[Statement] | None = getattr(session, "clinik_queue", None)
        if not queue:
            return super().execute(query, params, **kwargs)
        if params is None and ";" in str(query):
            # Maybe several statements (a migration's script): only the simple
            # protocol takes them, and it takes no parameters, so the queue goes first.
            send_queue(session)
            return super().execute(query, params, **kwargs)
        ahead = queue[:]
        queue.clear()
        # One round trip: the queued statements and this one, then one Sync; the
        # first error aborts the rest and is raised once every answer is read.
        self._start_query_for(query)
        main = self._convert_query(query, params)
        results = session.wait(_batch_gen(session, [*_converted(session, ahead), main]))
        self._query = main
        self._last_query = query
        self._check_results(results)
        self._set_results(results)
        return self

    def _start_query_for(self, query: Any) -> None:
        self.connection.wait(self._start_query(query))

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        collect(self.connection)
        send_queue(self.connection)
        count_round_trip(self.connection)
        return super().executemany(*args, **kwargs)

    def copy(self, *args: Any, **kwargs: Any) -> Any:
        collect(self.connection)
        send_queue(self.connection)
        count_round_trip(self.connection)
        return super().copy(*args, **kwargs)

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        collect(self.connection)
        send_queue(self.connection)
        return super().stream(*args, **kwargs)


Statement = tuple[Any, Any]
"""A queued statement: SQL with `%s` placeholders, and its parameters (or None)."""


def _converted(session: Any, statements: list[Statement]) -> list[PostgresQuery]:
    """Statements with `%s` placeholders as the extended protocol takes them: `$n`
    and the values dumped apart (psycopg's own conversion, cached per query text)."""
    tx = adapt.Transformer(session)
    converted = []
    for sql, params in statements:
        pgq = PostgresQuery(tx)
        pgq.convert(sql, params)
        converted.append(pgq)
    return converted


def _send_batch(pgconn: Any, statements: list[PostgresQuery]) -> None:
    """Queue the statements in libpq's pipeline mode, then one Sync (not flushed)."""
    pgconn.enter_pipeline_mode()
    for pgq in statements:
        pgconn.send_query_params(
            pgq.query, pgq.params, param_formats=pgq.formats, param_types=pgq.types
        )
    pgconn.pipeline_sync()


def _read_batch_gen(pgconn: Any, count: int) -> Any:
    """Read the answers of a batch of `count` statements and its Sync, leave pipeline
    mode, raise the first error; return the last statement's results."""
    try:
        answers = []
        for _ in range(count):
            answers.append((yield from generators.fetch_many(pgconn)))
        yield from generators.fetch_many(pgconn)  # the Sync
    finally:
        with contextlib.suppress(psycopg.Error):  # broken mid-batch: its error is raised
            pgconn.exit_pipeline_mode()
    for results in answers:
        for result in results:
            if result.status == ExecStatus.FATAL_ERROR:
                raise errors.error_from_result(result)
    return answers[-1] if answers else []


def _batch_gen(session: Any, statements: list[PostgresQuery]) -> Any:
    """One round trip: every statement, one Sync; the last one's results."""
    pgconn = session.pgconn
    _send_batch(pgconn, statements)
    yield from generators.send(pgconn)
    return (yield from _read_batch_gen(pgconn, len(statements)))


def count_round_trip(session: Any) -> None:
    """Queries sent on this connection, each one round trip (for tests and benchmarks:
    `round_trips(connection)`)."""
    session.clinik_round_trips = getattr(session, "clinik_round_trips", 0) + 1


def round_trips(session: Any) -> int:
    return int(getattr(session, "clinik_round_trips", 0))


def send_ahead(session: Any) -> None:
    """Send what is queued on a psycopg connection now, and return without waiting
    for the answer (`collect` reads it): one batch and its Sync, flushed, unread."""
    queue: list[Statement] | None = getattr(session, "clinik_queue", None)
    if not queue:
        return
    collect(session)
    ahead = queue[:]
    queue.clear()
    # Not a round trip: nothing waits for it (its answer is read with the next one's).
    converted = _converted(session, ahead)
    _send_batch(session.pgconn, converted)
    session.wait(generators.send(session.pgconn))
    session.clinik_in_flight = len(converted)


def collect(session: Any, *, raise_error: bool = True) -> None:
    """Read the answer to what `send_ahead` sent, if any; raise its error."""
    count = getattr(session, "clinik_in_flight", 0)
    if not count:
        return
    session.clinik_in_flight = 0
    try:
        session.wait(_read_batch_gen(session.pgconn, count))
    except psycopg.Error:
        if raise_error:
            raise


def send_queue(session: Any) -> None:
    """Send what is queued on a psycopg connection now, alone (before statements that
    cannot carry it: COPY, executemany, named cursors)."""
    collect(session)
    queue: list[Statement] | None = getattr(session, "clinik_queue", None)
    if queue:
        ahead = queue[:]
        queue.clear()
        count_round_trip(session)
        session.wait(_batch_gen(session, _converted(session, ahead)))


class DatabaseWrapper(base.DatabaseWrapper):
    def get_connection_params(self) -> dict[str, Any]:
        params: dict[str, Any] = super().get_connection_params()
        if "isolation_level" in self.settings_dict["OPTIONS"]:
            raise ImproperlyConfigured("clinik.lib.pgbackend runs READ COMMITTED only")
        params["cursor_factory"] = LazyCursor
        return params

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        session = super().get_new_connection(conn_params)
        session.autocommit = True  # always: BEGIN and COMMIT are sent by this class
        session.clinik_queue = []
        return session

    # --- transactions ------------------------------------------------------------

    def _queue(self) -> list[Statement]:
        queue: list[Statement] = self.connection.clinik_queue
        return queue

    def _set_autocommit(self, autocommit: bool) -> None:
        # The psycopg connection stays in autocommit; Django's flag says whether a
        # transaction is open, and BEGIN waits in the queue for a statement to carry.
        if self.connection is None:
            return
        collect(self.connection)
        queue = self._queue()
        if autocommit:
            if self.connection.info.transaction_status in _OPEN:
                raise psycopg.ProgrammingError("autocommit cannot be set inside a transaction")
            queue.clear()
        elif not queue and self.connection.info.transaction_status not in _OPEN:
            queue.append(("BEGIN", None))

    def _commit(self) -> None:
        if self.connection is None:
            return
        with debug_transaction(self, "COMMIT"), self.wrap_database_errors:
            collect(self.connection)
            queue = self._queue()
            if queue == [("BEGIN", None)]:  # nothing ran: nothing to commit
                queue.clear()
            elif queue or self.connection.info.transaction_status in _OPEN:
                with self.connection.cursor() as cursor:
                    cursor.execute("COMMIT")

    def _rollback(self) -> None:
        if self.connection is None:
            return
        with debug_transaction(self, "ROLLBACK"), self.wrap_database_errors:
            collect(self.connection, raise_error=False)  # rolled back with the rest
            self._queue().clear()
            if self.connection.info.transaction_status in _OPEN:
                self.connection.execute("ROLLBACK")

    def _savepoint(self, sid: str) -> None:
        self.defer(self.ops.savepoint_create_sql(sid))

    def _savepoint_commit(self, sid: str) -> None:
        if not self._drop_empty_savepoint(sid):
            self.defer(self.ops.savepoint_commit_sql(sid))

    def _savepoint_rollback(self, sid: str) -> None:
        if not self._drop_empty_savepoint(sid):
            super()._savepoint_rollback(sid)

    def _drop_empty_savepoint(self, sid: str) -> bool:
        """A savepoint with nothing after it, still queued: forget it (no round trip)."""
        queue = self._queue()
        if queue and queue[-1] == (self.ops.savepoint_create_sql(sid), None):
            queue.pop()
            return True
        return False

    # --- deferred writes ---------------------------------------------------------

    def defer(self, sql: str, params: Any = None) -> None:
        """Queue a statement whose result nobody reads, to travel with the next one.
        Outside a transaction it runs at once."""
        self.ensure_connection()
        if self.get_autocommit():
            with self.cursor() as cursor:
                cursor.execute(sql, params)
            return
        self.queue_ahead([(sql, params)])

    def queue_ahead(self, statements: list[Statement]) -> None:
        """Queue statements to travel ahead of the next one (also outside a
        transaction: `clinik.fhir.tenancy.tenant_query`), logged as `defer` logs."""
        self.connection.clinik_queue.extend(statements)
        if not self.queries_logged:
            return
        for sql, params in statements:
            # In memory only (DEBUG, CaptureQueriesContext), composed the way Django
            # shows its executed statements (bench/bare_capture.py replays them);
            # PostgreSQL itself gets the values as bind parameters.
            text = sql if params is None else self.ops.compose_sql(sql, params)
            self.queries_log.append({"sql": text, "time": "0.000"})

    def send_ahead(self) -> None:
        """Send the queued statements of the open transaction now, without waiting."""
        if self.connection is not None and not self.get_autocommit():
            send_ahead(self.connection)

    def create_cursor(self, name: str | None = None) -> Any:
        if name:
            send_queue(self.connection)
            # A named cursor inside a transaction needs no WITH HOLD (Django asks
            # psycopg's autocommit flag, which is always on here).
            cursor = psycopg.ServerCursor(  # server-side binding, like every cursor
                self.connection, name, scrollable=False, withhold=self.get_autocommit()
            )
            loader = self.connection.adapters.get_loader(base.TIMESTAMPTZ_OID, base.Format.TEXT)
            if self.timezone != loader.timezone:
                base.register_tzloader(self.timezone, cursor)
            return cursor
        return super().create_cursor(name)

    # --- health check ------------------------------------------------------------

    def is_usable(self) -> bool:
        session = self.connection
        if session is None or session.closed:
            return False
        if session.info.transaction_status == TransactionStatus.UNKNOWN:
            return False
        if getattr(session, "clinik_in_flight", 0):
            return True  # its answer is read before the next statement
        try:
            waiting, _, _ = select.select([session.fileno()], [], [], 0)
        except (OSError, ValueError):
            return False
        # Bytes between statements: a termination notice, EOF, or a notification.
        return bool(super().is_usable()) if waiting else True

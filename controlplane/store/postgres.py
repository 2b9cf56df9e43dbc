"""The PostgreSQL dialect of `SqlStore` (psycopg 3), and the LISTEN/NOTIFY change feed for several control planes.

Owns: connections, transactions, the PostgreSQL spelling of types, and `PgListener`. Everything else is sql.py's.

Choices, and why:

* psycopg 3 (`psycopg[binary]`): the maintained successor of psycopg2 by the same authors; sync and async APIs in
  one package (the store's queries run synchronously in worker threads, shared with SQLite; the listener uses the
  async API on the event loop); server-side parameter binding and automatic prepared statements; first-class
  `LISTEN`/`notifies()`. asyncpg is fast but async-only with its own `$1` SQL dialect, which would split the
  query code between the two backends; psycopg2 is in maintenance mode.
* Connections run in autocommit mode and each transaction is spelled out: writers use READ COMMITTED (the
  default) and serialise on the `sync_meta` row where it matters (sql.py); readers use REPEATABLE READ READ ONLY,
  so a snapshot's three queries see one state and never fail with a serialisation error.
* Names are `COLLATE "C"`: byte order, the same as SQLite's, whatever the database's locale, so prefix ranges and
  keyset paging behave identically on both backends.
* A writer calls `pg_notify(channel, revision)` inside its transaction; PostgreSQL delivers it at commit, to every
  listening session of the database, so every control-plane process wakes its long-polls. A lost listener
  connection is retried on a schedule; meanwhile `SqlStore` polls the revision (`poll_interval_s`).
* The schema migration takes a transaction-scoped advisory lock, so two processes starting together do not both
  migrate.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final, final

import psycopg
from psycopg.types.json import Jsonb

from .sql import ChangeSignal

__all__ = ["CHANNEL", "PgListener", "PostgresDialect"]

logger = logging.getLogger(__name__)

CHANNEL: Final = "lockstep_sync"
_MIGRATION_LOCK: Final = 0x4C6F636B73746570  # "Lockstep": the advisory lock id held while migrating
_UTC: Final = dt.timezone.utc
RECONNECT_SCHEDULE_S: Final = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # then 30 s; the sync protocol's backoff
DEFAULT_CONNECT_TIMEOUT_S: Final = 10


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


@final
class PostgresDialect:
    name = "postgresql"
    types: ClassVar[Mapping[str, str]] = {
        "ts": "TIMESTAMPTZ", "json": "JSONB", "blob": "BYTEA", "bool": "BOOLEAN", "name": 'TEXT COLLATE "C"',
        "id": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "rev": "BIGINT PRIMARY KEY",
    }
    for_update = " FOR UPDATE"
    for_share = " FOR SHARE"
    serialize_writes = False

    def __init__(self, conninfo: str, *, connect_timeout_s: int = DEFAULT_CONNECT_TIMEOUT_S) -> None:
        self.conninfo = conninfo
        self._connect_timeout_s = connect_timeout_s
        self._sql: dict[str, str] = {}

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.conninfo, autocommit=True, connect_timeout=self._connect_timeout_s,
                               application_name="lockstep-controlplane")

    def begin(self, conn: psycopg.Connection[Any], *, write: bool) -> None:
        conn.execute("BEGIN" if write else "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")

    def commit(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute("COMMIT")

    def rollback(self, conn: psycopg.Connection[Any]) -> None:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")

    def close(self, conn: psycopg.Connection[Any]) -> None:
        conn.close()

    def is_unavailable(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.OperationalError)

    def sql(self, text: str) -> str:
        out = self._sql.get(text)
        if out is None:
            # Our SQL has no literal '?' or '%', so this is exact.
            out = self._sql[text] = text.replace("?", "%s")
        return out

    def lock_schema(self, cur: Any) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))

    def notify(self, cur: Any, revision: int) -> None:
        cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(revision)))

    def ts(self, value: dt.datetime) -> object:
        return value

    def from_ts(self, value: Any) -> dt.datetime:
        return value.astimezone(_UTC)  # type: ignore[no-any-return]

    def json(self, value: object) -> object:
        return Jsonb(value)

    def from_json(self, value: Any) -> Any:
        return value


@final
class PgListener:
    """One async connection LISTENing on `CHANNEL`; each notification wakes `SqlStore.wait_for_change` callers."""

    def __init__(self, conninfo: str, *, reconnect_schedule_s: Sequence[float] = RECONNECT_SCHEDULE_S,
                 ready_timeout_s: float = 5.0) -> None:
        self._conninfo = conninfo
        self._schedule = tuple(reconnect_schedule_s)
        self._ready_timeout_s = ready_timeout_s
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.connected = False

    async def start(self, signal: ChangeSignal) -> None:
        """Start listening; waits (up to `ready_timeout_s`) until the first LISTEN is in place."""
        if self._task is not None:
            raise RuntimeError("PgListener.start called twice")
        self._task = asyncio.create_task(self._run(signal), name="lockstep-store-listener")
        try:
            await asyncio.wait_for(self._ready.wait(), self._ready_timeout_s)
        except TimeoutError:
            logger.warning("store: change listener not connected after %.1f s; long-polls poll until it is",
                           self._ready_timeout_s)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, signal: ChangeSignal) -> None:
        failures = 0
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, connect_timeout=DEFAULT_CONNECT_TIMEOUT_S,
                    application_name="lockstep-controlplane-listener")
                try:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.connected = True
                    self._ready.set()
                    if failures:
                        logger.info("store: change listener reconnected")
                    failures = 0
                    signal.notify(None)  # changes during the outage: make waiters re-check
                    async for note in conn.notifies():
                        try:
                            signal.notify(int(note.payload))
                        except ValueError:
                            signal.notify(None)
                    raise psycopg.OperationalError("the notification stream ended")
                finally:
                    self.connected = False
                    await conn.close()
            except (psycopg.Error, OSError) as exc:
                delay = self._schedule[min(failures, len(self._schedule) - 1)]
                failures += 1
                logger.warning("store: change listener: %s; reconnecting in %.1f s", _describe(exc), delay)
                await asyncio.sleep(delay)

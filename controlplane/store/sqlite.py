"""The SQLite dialect of `SqlStore`: stdlib sqlite3, one database file in WAL mode.

Owns: opening connections (pragmas, file mode 0600), transactions, and the SQLite spelling of types. Everything
else is sql.py's.

Choices, and why:

* WAL: readers (snapshots, long-poll checks) never block the writer and see one consistent state per transaction.
* `synchronous=FULL` (the default here): a committed CA order id survives a power cut, which is the point of
  storing it before anything else. NORMAL would lose the last commits on power loss (not on a crash).
* Write transactions start with `BEGIN IMMEDIATE` (the write lock up front, so a read-then-write never fails with
  SQLITE_BUSY half-way) and are also serialised in-process: SQLite has one writer at a time anyway, and a Python
  lock hands it over without the busy handler's sleeps. Other processes are waited for up to `busy_timeout_s`.
* Timestamps are TEXT `YYYY-MM-DDTHH:MM:SS.ffffffZ` in UTC: fixed width, so text order is time order and the
  range queries (`next_retry_at <= ?`, `expires_at <= ?`) are plain index scans. JSON is TEXT.
* Change notification is in-process only (`SqlStore`'s signal, plus its poll interval for other processes): a
  second control-plane process belongs on PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Final, final

__all__ = ["SQLiteDialect"]

_UTC: Final = dt.timezone.utc
_SYNCHRONOUS: Final = ("OFF", "NORMAL", "FULL", "EXTRA")
# https://www.sqlite.org/rescode.html: PERM, BUSY, LOCKED, NOMEM, READONLY, INTERRUPT, IOERR, CORRUPT, FULL,
# CANTOPEN, PROTOCOL, NOTADB
_UNAVAILABLE: Final = frozenset({3, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 26})


@final
class SQLiteDialect:
    name = "sqlite"
    types: ClassVar[Mapping[str, str]] = {
        "ts": "TEXT", "json": "TEXT", "blob": "BLOB", "bool": "INTEGER", "name": "TEXT",
        "id": "INTEGER PRIMARY KEY AUTOINCREMENT",  # AUTOINCREMENT: a deleted row's id is never handed out again
        "rev": "INTEGER PRIMARY KEY",
    }
    for_update = ""  # BEGIN IMMEDIATE holds the database's write lock until commit
    for_share = ""
    serialize_writes = True

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 10.0,
                 synchronous: str = "FULL") -> None:
        if synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(_SYNCHRONOUS)}")
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        self._synchronous = synchronous.upper()

    def connect(self) -> sqlite3.Connection:
        if not self.path.exists():
            # Create it private before SQLite does (its -wal and -shm files copy the database file's mode).
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None,
                               check_same_thread=False)  # the pool hands a connection to one thread at a time
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute("PRAGMA foreign_keys=ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def begin(self, conn: sqlite3.Connection, *, write: bool) -> None:
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")

    def commit(self, conn: sqlite3.Connection) -> None:
        conn.execute("COMMIT")

    def rollback(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    def close(self, conn: sqlite3.Connection) -> None:
        conn.close()

    def is_unavailable(self, exc: BaseException) -> bool:
        # The primary result code (low byte) tells a database that cannot serve (busy, I/O, full, not a database)
        # from an SQL error (SQLITE_ERROR, e.g. "table already exists"), which is ours or a foreign schema's.
        if not isinstance(exc, sqlite3.DatabaseError):
            return False
        code = getattr(exc, "sqlite_errorcode", None)
        if code is None:
            return isinstance(exc, sqlite3.OperationalError)
        return (code & 0xFF) in _UNAVAILABLE

    def sql(self, text: str) -> str:
        return text

    def lock_schema(self, cur: Any) -> None:
        pass  # BEGIN IMMEDIATE already excludes a second migrating process

    def notify(self, cur: Any, revision: int) -> None:
        pass  # in-process: SqlStore signals its waiters after the commit

    def ts(self, value: dt.datetime) -> object:
        return value.astimezone(_UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"

    def from_ts(self, value: Any) -> dt.datetime:
        return dt.datetime.fromisoformat(value)

    def json(self, value: object) -> object:
        return json.dumps(value, separators=(",", ":"), sort_keys=True)

    def from_json(self, value: Any) -> Any:
        return json.loads(value)

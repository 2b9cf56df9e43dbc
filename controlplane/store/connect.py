"""Opening a store by URL, and the key-rotation command.

Owns: the URL forms (`sqlite:///abs/path.db`, `sqlite://relative.db`, `postgresql://...` / `postgres://...`, the
latter two passed to libpq as they are) and `rotate_key`, which the CLI calls. Must not read the environment:
the caller loads the KEK (crypto.load_kek / load_kek_file) and passes it in.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Final

from .base import Store
from .crypto import KeyEncryptionKey
from .errors import InvalidStoreUrl, WrongKeyEncryptionKey
from .sql import (
    DEFAULT_POOL_SIZE,
    DEFAULT_RETAIN_CHANGES,
    Dialect,
    Listener,
    SqlStore,
    _Engine,
)

__all__ = ["open_store", "rotate_key"]

logger = logging.getLogger(__name__)

SQLITE_POLL_INTERVAL_S: Final = 1.0  # other processes' writes reach a SQLite long-poll within this
POSTGRES_POLL_INTERVAL_S: Final = 5.0  # only matters while the LISTEN connection is down


@dataclasses.dataclass(frozen=True, slots=True)
class _Target:
    dialect: Dialect
    listener: Listener | None
    poll_interval_s: float
    sqlite_path: Path | None = None


def _system_clock() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _target(url: str) -> _Target:
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PgListener, PostgresDialect

        return _Target(PostgresDialect(url), PgListener(url), POSTGRES_POLL_INTERVAL_S)
    if url.startswith("sqlite:"):
        from .sqlite import SQLiteDialect

        path = url.removeprefix("sqlite:").removeprefix("//")
        if not path or path == ":memory:":  # a pool of in-memory connections would be several databases
            raise InvalidStoreUrl("a sqlite store URL needs a file path: sqlite:///path/to/store.db")
        return _Target(SQLiteDialect(path), None, SQLITE_POLL_INTERVAL_S, Path(path))
    raise InvalidStoreUrl("a store URL starts with sqlite: or postgresql://")


async def open_store(url: str, *, kek: KeyEncryptionKey, clock: Callable[[], dt.datetime] | None = None,
                     retain_changes: int = DEFAULT_RETAIN_CHANGES, pool_size: int = DEFAULT_POOL_SIZE,
                     poll_interval_s: float | None = None) -> SqlStore:
    """Open (creating or migrating as needed) the store at `url`. Close it with `aclose()` or `async with`.

    Args:
        kek: the key-encryption key; checked against the database's check value before anything else happens.
        clock: aware-UTC "now" for record timestamps (default: the system clock).
        retain_changes: revisions of change log kept for `changes_since`.
        pool_size: database connections and worker threads.
        poll_interval_s: how often a waiting long-poll re-reads the revision (default 1 s for SQLite, 5 s for
            PostgreSQL, where LISTEN/NOTIFY normally wakes it at once).

    Raises:
        InvalidStoreUrl; StoreUnavailable; SchemaError; WrongKeyEncryptionKey.
    """
    target = _target(url)
    return await SqlStore.open(
        target.dialect, kek=kek, clock=clock or _system_clock, retain_changes=retain_changes, pool_size=pool_size,
        poll_interval_s=target.poll_interval_s if poll_interval_s is None else poll_interval_s,
        listener=target.listener)


def rotate_key(store_url: str, old_kek: KeyEncryptionKey, new_kek: KeyEncryptionKey) -> int:
    """Re-wrap every data key in the store from `old_kek` to `new_kek`, in one transaction. Synchronous: for the CLI.

    Idempotent: when the store is already under `new_kek` (a rotation that finished before), returns 0.
    Control planes still running with `old_kek` then fail with `WrongKeyEncryptionKey` (on material reads and
    certificate writes): restart them with the new KEK.

    Returns:
        The number of certificate keys re-wrapped.

    Raises:
        WrongKeyEncryptionKey: the store is under neither KEK.
        InvalidKeyEncryptionKey: both KEKs have the same key id.
        DecryptionFailed: a certificate's key does not authenticate; nothing was changed.
        InvalidStoreUrl; StoreUnavailable; SchemaError.
    """
    target = _target(store_url)
    if target.sqlite_path is not None and not target.sqlite_path.exists():
        raise InvalidStoreUrl("no SQLite store at that path")
    engine = _Engine(target.dialect, kek=old_kek, clock=_system_clock, retain_changes=DEFAULT_RETAIN_CHANGES,
                     pool_size=1)
    try:
        try:
            engine.migrate_and_check(create=False)
        except WrongKeyEncryptionKey as exc:
            engine.kek = new_kek
            try:
                engine.migrate_and_check(create=False)
            except WrongKeyEncryptionKey:
                raise exc from None
            logger.info("store: already under KEK %s; nothing to rotate", new_kek.key_id)
            return 0
        return engine.rotate(old_kek, new_kek)
    finally:
        engine.close()


def _conforms(store: SqlStore) -> Store:  # mypy checks that SqlStore implements the Store protocol
    return store

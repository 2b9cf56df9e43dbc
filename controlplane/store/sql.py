"""`SqlStore`: the `Store` over a DB-API database (SQLite or PostgreSQL), one SQL text for both.

Owns: the schema and its migrations, every query, the change log, sealing keys into rows, and running it all off
the event loop. The dialects (sqlite.py, postgres.py) own only connections, transactions, type conversion and the
change notification. Must not read the environment or log keys, PEMs or URLs.

Structure, and why:

* `_Engine` is synchronous: a small pool of connections and `run(fn, write=...)`, which runs `fn` in one
  transaction. `SqlStore` is the async facade; it runs every `_Engine.run` in its own thread pool (one thread per
  pooled connection), so the event loop never waits on the database or on AES. `rotate_key` (__init__.py) drives
  the same engine with no event loop at all.
* The change log. A desired-state writer first locks the single `sync_meta` row (`FOR UPDATE`; in SQLite the
  `BEGIN IMMEDIATE` write lock does it), then appends one `changes` row per change with the next revision, and
  updates `sync_meta.revision` before it commits. Holding that lock to commit serialises these writers, so
  revisions have no gaps or duplicates and commit in revision order: a reader can never see N+1 before N, which a
  sequence (allocated at call time, committed in any order) would allow — and an agent at N+1 would then never
  receive N. Writers that do not touch the desired state (domain updates, nodes) do not take the lock.
* `changes` keeps the last `retain_changes` revisions; older rows are deleted by the writer that passes them.
  The rules of `changes_since` are those of `controlplane.sync.state.DesiredState.changes_since`.
* A change row carries the object as it was at that revision (JSON), so `changes_since` needs no joins and answers
  the same after the token or certificate has changed again.
* Certificates: one row per certificate ever stored; `is_current` marks the one served (a partial unique index
  allows one per domain). The key is sealed with associated data ("certificate-key", domain, fingerprint), so a key
  moved to another row, even another certificate of the same domain, does not decrypt.
* `domain_secrets` holds other sealed per-domain secrets (a CSR's key while its order is in flight), bound to
  ("domain-secret", domain, purpose), and deleted with the domain (foreign key, ON DELETE CASCADE).
* The KEK check value lives in `kek_check`; `open` verifies it (or writes it on a new database). A writer sealing
  a key re-reads that row in its transaction (`FOR SHARE`): after a rotation by another process, a process still
  holding the old KEK fails with `WrongKeyEncryptionKey` instead of writing a key nobody else can open.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import json
import logging
import queue
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Protocol, Self, TypeVar, cast, final

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from controlplane.sync.state import CertRef, Change, ResyncRequired, Token

from . import crypto
from ._pem import parse_certificate
from .errors import (
    AlreadyExists,
    Conflict,
    IdentityRemoved,
    InvalidKeyEncryptionKey,
    InvalidRecord,
    NotFound,
    SchemaError,
    StoreUnavailable,
    TokenRejected,
    WrongKeyEncryptionKey,
)
from .records import (
    UNSET,
    Backend,
    BootstrapToken,
    CertificateRecord,
    CertIdentity,
    CertRegistration,
    CredentialKind,
    Domain,
    DomainPage,
    Identity,
    IdentityCert,
    IdentityKind,
    Node,
    Unset,
)

__all__ = ["DEFAULT_RETAIN_CHANGES", "SCHEMA_VERSION", "Dialect", "SqlStore", "hash_bearer_token"]

_IDENTITY_KINDS: Final = ("node", "backend")

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_RETAIN_CHANGES: Final = 100_000  # as DesiredState: about a day of churn for 10k domains; then a snapshot
DEFAULT_POOL_SIZE: Final = 4
MAX_PAGE: Final = 1000
_UTC: Final = dt.timezone.utc
_NAME_RE: Final = re.compile(r"(\*\.)?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")
_MAX_NAME: Final = 253
_KEY_AAD: Final = "certificate-key"
_SECRET_AAD: Final = "domain-secret"
_PURPOSE_RE: Final = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


# -- the dialect seam -------------------------------------------------------------------------------------------

class Dialect(Protocol):
    """What differs between SQLite and PostgreSQL. Implemented in sqlite.py and postgres.py."""

    @property
    def name(self) -> str: ...
    @property
    def types(self) -> Mapping[str, str]:
        """DDL placeholders: ts, json, blob, bool, name, id, rev."""
        ...
    @property
    def for_update(self) -> str:
        """Suffix locking a selected row until commit ("" where the transaction's lock suffices)."""
        ...
    @property
    def for_share(self) -> str: ...
    @property
    def serialize_writes(self) -> bool:
        """Take an in-process lock around write transactions (SQLite: one writer at a time anyway)."""
        ...

    def connect(self) -> Any: ...
    def begin(self, conn: Any, *, write: bool) -> None: ...
    def commit(self, conn: Any) -> None: ...
    def rollback(self, conn: Any) -> None: ...
    def close(self, conn: Any) -> None: ...
    def is_unavailable(self, exc: BaseException) -> bool: ...
    def sql(self, text: str) -> str: ...
    def lock_schema(self, cur: Any) -> None: ...
    def notify(self, cur: Any, revision: int) -> None: ...
    def ts(self, value: dt.datetime) -> object: ...
    def from_ts(self, value: Any) -> dt.datetime: ...
    def json(self, value: object) -> object: ...
    def from_json(self, value: Any) -> Any: ...


# -- schema ------------------------------------------------------------------------------------------------------

_MIGRATIONS: Final[tuple[tuple[int, tuple[str, ...]], ...]] = (
    (1, (
        "CREATE TABLE sync_meta (id INTEGER PRIMARY KEY CHECK (id = 1), revision BIGINT NOT NULL)",
        "INSERT INTO sync_meta (id, revision) VALUES (1, 0)",
        ("CREATE TABLE kek_check (id INTEGER PRIMARY KEY CHECK (id = 1), kek_id TEXT NOT NULL,"
         " wrapped_key {blob} NOT NULL, ciphertext {blob} NOT NULL, created_at {ts} NOT NULL, rotated_at {ts})"),
        ("CREATE TABLE domains (name {name} PRIMARY KEY, status TEXT NOT NULL, status_detail TEXT, issuer TEXT,"
         " next_retry_at {ts}, ca_order_id TEXT, pipeline {json} NOT NULL, version BIGINT NOT NULL,"
         " created_at {ts} NOT NULL, updated_at {ts} NOT NULL)"),
        "CREATE INDEX domains_by_status ON domains (status, name)",
        "CREATE INDEX domains_by_retry ON domains (next_retry_at) WHERE next_retry_at IS NOT NULL",
        ("CREATE TABLE certificates (id {id}, domain {name} NOT NULL, fingerprint TEXT NOT NULL,"
         " not_before {ts} NOT NULL, not_after {ts} NOT NULL, names {json} NOT NULL, issuer TEXT NOT NULL,"
         " chain_pem TEXT NOT NULL, key_kek_id TEXT NOT NULL, key_wrapped {blob} NOT NULL,"
         " key_ciphertext {blob} NOT NULL, is_current {bool} NOT NULL, created_at {ts} NOT NULL, replaced_at {ts})"),
        "CREATE UNIQUE INDEX certificates_current ON certificates (domain) WHERE is_current",
        "CREATE INDEX certificates_by_domain ON certificates (domain, id)",
        "CREATE INDEX certificates_by_expiry ON certificates (not_after) WHERE is_current",
        ("CREATE TABLE tokens (host {name} NOT NULL, path {name} NOT NULL, value TEXT NOT NULL,"
         " expires_at {ts} NOT NULL, updated_at {ts} NOT NULL, PRIMARY KEY (host, path))"),
        "CREATE INDEX tokens_by_expiry ON tokens (expires_at)",
        ("CREATE TABLE nodes (node_id TEXT PRIMARY KEY, credential_kind TEXT NOT NULL, credential TEXT NOT NULL,"
         " removed {bool} NOT NULL, created_at {ts} NOT NULL, updated_at {ts} NOT NULL,"
         " UNIQUE (credential_kind, credential))"),
        ("CREATE TABLE changes (revision {rev}, op TEXT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL,"
         " payload {json}, created_at {ts} NOT NULL)"),
    )),
    (2, (
        ("CREATE TABLE domain_secrets (domain {name} NOT NULL REFERENCES domains (name) ON DELETE CASCADE,"
         " purpose TEXT NOT NULL, kek_id TEXT NOT NULL, wrapped_key {blob} NOT NULL, ciphertext {blob} NOT NULL,"
         " updated_at {ts} NOT NULL, PRIMARY KEY (domain, purpose))"),
    )),
    (3, (
        # Sealed secrets of the control plane itself, e.g. an ACME account key.
        ("CREATE TABLE system_secrets (name TEXT PRIMARY KEY, kek_id TEXT NOT NULL, wrapped_key {blob} NOT NULL,"
         " ciphertext {blob} NOT NULL, updated_at {ts} NOT NULL)"),
    )),
    (4, (
        # The internal PKI. A node may now have no credential of its own ("pki": internal certificates only), so
        # `nodes` is rebuilt with nullable credential columns (SQLite cannot drop NOT NULL in place). NULLs are
        # distinct in the UNIQUE constraint on both databases.
        ("CREATE TABLE nodes_v4 (node_id TEXT PRIMARY KEY, credential_kind TEXT NOT NULL, credential TEXT,"
         " removed {bool} NOT NULL, created_at {ts} NOT NULL, updated_at {ts} NOT NULL,"
         " UNIQUE (credential_kind, credential))"),
        ("INSERT INTO nodes_v4 (node_id, credential_kind, credential, removed, created_at, updated_at)"
         " SELECT node_id, credential_kind, credential, removed, created_at, updated_at FROM nodes"),
        "DROP TABLE nodes",
        "ALTER TABLE nodes_v4 RENAME TO nodes",
        ("CREATE TABLE backends (backend_id TEXT PRIMARY KEY, names {json} NOT NULL, removed {bool} NOT NULL,"
         " created_at {ts} NOT NULL, updated_at {ts} NOT NULL)"),
        # CA certificates in the clear; each one's key is a system secret "internal-ca-key:<fingerprint>". The
        # highest generation signs; the primary key makes creating generation 1 a race with one winner.
        ("CREATE TABLE internal_cas (generation INTEGER PRIMARY KEY, fingerprint TEXT NOT NULL UNIQUE,"
         " cert_pem TEXT NOT NULL, not_after {ts} NOT NULL, created_at {ts} NOT NULL)"),
        # One-time tokens, by hash only. `used_key`/`used_cert_pem` let the same requester (same key) get its
        # certificate again when the first answer was lost; anyone else gets "token_used".
        ("CREATE TABLE bootstrap_tokens (token_hash TEXT PRIMARY KEY, kind TEXT NOT NULL, identity_id TEXT NOT NULL,"
         " expires_at {ts} NOT NULL, created_at {ts} NOT NULL, used_at {ts}, used_key TEXT, used_cert_pem TEXT)"),
        "CREATE INDEX bootstrap_tokens_by_identity ON bootstrap_tokens (kind, identity_id)",
        ("CREATE TABLE identity_certs (fingerprint TEXT PRIMARY KEY, kind TEXT NOT NULL, identity_id TEXT NOT NULL,"
         " profile TEXT NOT NULL, serial TEXT NOT NULL, not_after {ts} NOT NULL, created_at {ts} NOT NULL,"
         " revoked_at {ts})"),
        "CREATE INDEX identity_certs_by_identity ON identity_certs (kind, identity_id, not_after)",
    )),
)
SCHEMA_VERSION: Final = _MIGRATIONS[-1][0]

_DOMAIN_COLS: Final = ("name, status, status_detail, issuer, next_retry_at, ca_order_id, pipeline, created_at,"
                       " updated_at, version")
_CERT_COLS: Final = ("id, domain, fingerprint, not_before, not_after, names, issuer, created_at, is_current,"
                     " replaced_at, chain_pem, key_kek_id")
_NODE_COLS: Final = "node_id, credential_kind, credential, removed, created_at, updated_at"
_BACKEND_COLS: Final = "backend_id, names, removed, created_at, updated_at"
_IDCERT_COLS: Final = "fingerprint, kind, identity_id, profile, serial, not_after, created_at, revoked_at"
_CA_KEY_SECRET: Final = "internal-ca-key:"
# Registrations of expired certificates are kept this long (audit: which key was which node's), then deleted.
IDENTITY_CERT_RETENTION: Final = dt.timedelta(days=7)


def hash_bearer_token(token: str) -> str:
    """What `nodes.credential` holds for a bearer token. Node tokens are long random strings, so one SHA-256
    suffices (no password KDF): the database alone does not let anyone sync as a node."""
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


# -- checks and conversions (pure) ---------------------------------------------------------------------------------

def _check_name(name: object, what: str = "domain name") -> str:
    if not isinstance(name, str) or len(name) > _MAX_NAME or not _NAME_RE.fullmatch(name):
        raise InvalidRecord(f"{what} must be normalised (lower-case A-labels, no port, no trailing dot)")
    return name


def _aware(value: object, field: str) -> dt.datetime:
    if not isinstance(value, dt.datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise InvalidRecord(f"{field} must be a timezone-aware datetime")
    return value.astimezone(_UTC)


def _json_object(value: object, field: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidRecord(f"{field} must be a JSON object")
    try:
        out = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        raise InvalidRecord(f"{field} must be JSON-serialisable") from None
    return cast(dict[str, Any], out)


def _iso(value: dt.datetime) -> str:
    return value.astimezone(_UTC).isoformat()


def _token_payload(t: Token) -> dict[str, Any]:
    return {"host": t.host, "path": t.path, "value": t.value, "expires_at": _iso(t.expires_at)}


def _ref_payload(r: CertRef) -> dict[str, Any]:
    return {"name": r.name, "fingerprint": r.fingerprint, "not_after": _iso(r.not_after), "domains": list(r.domains)}


def _prefix_upper(prefix: str) -> str | None:
    """The smallest string above every string starting with `prefix` (None: no upper bound)."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            return prefix[:-1] + chr(last + 1)
        prefix = prefix[:-1]
    return None


# -- the synchronous engine ----------------------------------------------------------------------------------------

@final
class _Tx:
    """One transaction on one connection: placeholders and types converted by the dialect."""

    def __init__(self, engine: _Engine, conn: Any) -> None:
        self.d = engine.dialect
        self.engine = engine
        self.cur = conn.cursor()
        self.published: int | None = None
        self._revision: int | None = None
        self._changes: list[tuple[object, ...]] = []

    def exec(self, sql: str, params: Sequence[object] = ()) -> int:
        self.cur.execute(self.d.sql(sql), tuple(params))
        return int(self.cur.rowcount)

    def many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        if rows:
            self.cur.executemany(self.d.sql(sql), [tuple(r) for r in rows])

    def one(self, sql: str, params: Sequence[object] = ()) -> Any:
        self.cur.execute(self.d.sql(sql), tuple(params))
        return self.cur.fetchone()

    def all(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        self.cur.execute(self.d.sql(sql), tuple(params))
        return list(self.cur.fetchall())

    def ts(self, value: dt.datetime | None) -> object:
        return None if value is None else self.d.ts(value)

    def from_ts(self, value: Any) -> dt.datetime | None:
        return None if value is None else self.d.from_ts(value)

    # -- the change log
    def lock_revision(self) -> int:
        """Lock the revision counter until commit (every desired-state writer calls this first); returns the
        revision as of this point of the transaction (after the changes recorded so far)."""
        if self._revision is None:
            self._revision = int(self.one("SELECT revision FROM sync_meta WHERE id = 1" + self.d.for_update)[0])
        return self._revision

    def record(self, op: str, kind: str, key: str, payload: dict[str, Any] | None, now: dt.datetime) -> None:
        revision = self.lock_revision() + 1
        self._revision = revision
        self._changes.append((revision, op, kind, key, None if payload is None else self.d.json(payload),
                              self.d.ts(now)))

    def finish_changes(self) -> None:
        if not self._changes or self._revision is None:
            return
        self.many("INSERT INTO changes (revision, op, kind, key, payload, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                  self._changes)
        self.exec("UPDATE sync_meta SET revision = ? WHERE id = 1", (self._revision,))
        self.exec("DELETE FROM changes WHERE revision <= ?", (self._revision - self.engine.retain_changes,))
        self.d.notify(self.cur, self._revision)
        self.published = self._revision
        self._changes = []


@final
class _Engine:
    """Connections and transactions, synchronous. Thread-safe: each `run` takes its own pooled connection."""

    def __init__(self, dialect: Dialect, *, kek: crypto.KeyEncryptionKey, clock: Callable[[], dt.datetime],
                 retain_changes: int, pool_size: int) -> None:
        if retain_changes < 1 or pool_size < 1:
            raise ValueError("retain_changes and pool_size must be positive")
        self.dialect = dialect
        self.kek = kek
        self.clock = clock
        self.retain_changes = retain_changes
        self.pool_size = pool_size
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._write_lock = threading.Lock()
        self._conns_lock = threading.Lock()
        self._all: list[Any] = []

    def now(self) -> dt.datetime:
        return _aware(self.clock(), "clock()")

    def _acquire(self) -> Any:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        conn = self.dialect.connect()
        with self._conns_lock:
            self._all.append(conn)
        return conn

    def _discard(self, conn: Any) -> None:
        with self._conns_lock:
            if conn in self._all:
                self._all.remove(conn)
        try:
            self.dialect.close(conn)
        except Exception:  # a broken connection may fail to close; it is gone either way
            pass

    def close(self) -> None:
        with self._conns_lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                self.dialect.close(conn)
            except Exception:
                pass

    def run(self, fn: Callable[[_Tx], T], *, write: bool) -> tuple[T, int | None]:
        """Run `fn` in one transaction; returns its result and the revision it published (None: no change).

        Raises:
            StoreUnavailable: the database failed (connection, lock timeout, disk); the connection is dropped.
            Whatever `fn` raises, after a rollback.
        """
        try:
            conn = self._acquire()
        except Exception as exc:
            if self.dialect.is_unavailable(exc):
                raise StoreUnavailable(f"{self.dialect.name}: cannot connect: {_describe(exc)}") from exc
            raise
        lock = self._write_lock if write and self.dialect.serialize_writes else contextlib.nullcontext()
        reusable = False
        try:
            with lock:
                self.dialect.begin(conn, write=write)
                tx = _Tx(self, conn)
                try:
                    result = fn(tx)
                    tx.finish_changes()
                    self.dialect.commit(conn)
                except BaseException:
                    try:
                        self.dialect.rollback(conn)
                        reusable = True  # rolled back cleanly: the connection is fine, the caller gets the error
                    except Exception:
                        pass
                    raise
            reusable = True
            return result, tx.published
        except Exception as exc:
            if self.dialect.is_unavailable(exc):
                reusable = False
                raise StoreUnavailable(f"{self.dialect.name}: {_describe(exc)}") from exc
            raise
        finally:
            if reusable:
                self._idle.put(conn)
            else:
                self._discard(conn)

    # -- open: migrate, check the KEK
    def migrate_and_check(self, *, create: bool = True) -> int:
        """Bring the schema to SCHEMA_VERSION and verify (or, on a new database, write) the KEK check value.

        Args:
            create: set up an empty database; False raises SchemaError there instead.

        Raises: SchemaError; WrongKeyEncryptionKey.
        """
        def fn(tx: _Tx) -> int:
            self.dialect.lock_schema(tx.cur)
            tx.exec("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = tx.one("SELECT MAX(version) FROM schema_version")
            current = int(row[0]) if row and row[0] is not None else 0
            if current == 0 and not create:
                raise SchemaError("no Lockstep store there (the database is empty)")
            if current > SCHEMA_VERSION:
                raise SchemaError(f"the database has schema version {current}; this code knows up to "
                                  f"{SCHEMA_VERSION}: upgrade Lockstep")
            for version, statements in _MIGRATIONS:
                if version <= current:
                    continue
                for statement in statements:
                    try:
                        tx.exec(statement.format(**self.dialect.types))
                    except Exception as exc:
                        if self.dialect.is_unavailable(exc):
                            raise
                        raise SchemaError(f"migration to schema version {version} failed: {_describe(exc)}"
                                          " (is this database Lockstep's?)") from exc
                tx.exec("INSERT INTO schema_version (version) VALUES (?)", (version,))
                logger.info("store: migrated %s schema to version %d", self.dialect.name, version)
            check = tx.one("SELECT kek_id, wrapped_key, ciphertext FROM kek_check WHERE id = 1")
            if check is None:
                sealed = crypto.make_check_value(self.kek)
                tx.exec("INSERT INTO kek_check (id, kek_id, wrapped_key, ciphertext, created_at)"
                        " VALUES (1, ?, ?, ?, ?)",
                        (sealed.kek_id, sealed.wrapped_key, sealed.ciphertext, tx.ts(self.now())))
            else:
                crypto.verify_check_value(self.kek, crypto.SealedKey(check[0], bytes(check[1]), bytes(check[2])))
            return SCHEMA_VERSION

        return self.run(fn, write=True)[0]

    # -- key rotation
    def rotate(self, old: crypto.KeyEncryptionKey, new: crypto.KeyEncryptionKey) -> int:
        """Re-wrap every data key and the check value from `old` to `new`, in one transaction.

        Raises: WrongKeyEncryptionKey (`old` is not the database's KEK); InvalidKeyEncryptionKey (same key id);
            DecryptionFailed (a damaged row: nothing is changed).
        """
        if old.key_id == new.key_id:
            raise InvalidKeyEncryptionKey(f"the new KEK has the same key id as the old one ({old.key_id!r})")

        def fn(tx: _Tx) -> int:
            row = tx.one("SELECT kek_id, wrapped_key, ciphertext FROM kek_check WHERE id = 1" + self.dialect.for_update)
            crypto.verify_check_value(old, crypto.SealedKey(row[0], bytes(row[1]), bytes(row[2])))
            now = tx.ts(self.now())
            check = crypto.make_check_value(new)
            tx.exec("UPDATE kek_check SET kek_id = ?, wrapped_key = ?, ciphertext = ?, rotated_at = ? WHERE id = 1",
                    (check.kek_id, check.wrapped_key, check.ciphertext, now))
            rows = tx.all("SELECT id, domain, fingerprint, key_kek_id, key_wrapped, key_ciphertext FROM certificates"
                          + self.dialect.for_update)
            updates: list[tuple[object, ...]] = []
            for cert_id, domain, fingerprint, kek_id, wrapped, ciphertext in rows:
                sealed = crypto.SealedKey(kek_id, bytes(wrapped), bytes(ciphertext))
                out = crypto.rewrap(sealed, aad=_key_aad(domain, fingerprint), old=old, new=new,
                                    record=_key_record(domain, fingerprint))
                updates.append((out.kek_id, out.wrapped_key, cert_id))
            tx.many("UPDATE certificates SET key_kek_id = ?, key_wrapped = ? WHERE id = ?", updates)
            secrets: list[tuple[object, ...]] = []
            for domain, purpose, kek_id, wrapped, ciphertext in tx.all(
                    "SELECT domain, purpose, kek_id, wrapped_key, ciphertext FROM domain_secrets"
                    + self.dialect.for_update):
                sealed = crypto.SealedKey(kek_id, bytes(wrapped), bytes(ciphertext))
                out = crypto.rewrap(sealed, aad=_secret_aad(domain, purpose), old=old, new=new,
                                    record=_secret_record(domain, purpose))
                secrets.append((out.kek_id, out.wrapped_key, domain, purpose))
            tx.many("UPDATE domain_secrets SET kek_id = ?, wrapped_key = ? WHERE domain = ? AND purpose = ?", secrets)
            system: list[tuple[object, ...]] = []
            for name, kek_id, wrapped, ciphertext in tx.all(
                    "SELECT name, kek_id, wrapped_key, ciphertext FROM system_secrets" + self.dialect.for_update):
                sealed = crypto.SealedKey(kek_id, bytes(wrapped), bytes(ciphertext))
                out = crypto.rewrap(sealed, aad=crypto.record_aad("system-secret", name), old=old, new=new,
                                    record=f"system secret {name}")
                system.append((out.kek_id, out.wrapped_key, name))
            tx.many("UPDATE system_secrets SET kek_id = ?, wrapped_key = ? WHERE name = ?", system)
            return len(updates) + len(secrets) + len(system)

        count = self.run(fn, write=True)[0]
        self.kek = new
        logger.info("store: re-wrapped %d data keys from KEK %s to KEK %s", count, old.key_id, new.key_id)
        return count


def _describe(exc: BaseException) -> str:
    """An exception's class and first line; database messages carry no secrets (keys are sealed before SQL sees
    them, and URLs are not in messages)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _key_aad(domain: str, fingerprint: str) -> bytes:
    return crypto.record_aad(_KEY_AAD, domain, fingerprint)


def _key_record(domain: str, fingerprint: str) -> str:
    return f"the key of certificate {fingerprint} of {domain}"


def _secret_aad(domain: str, purpose: str) -> bytes:
    return crypto.record_aad(_SECRET_AAD, domain, purpose)


def _secret_record(domain: str, purpose: str) -> str:
    return f"the {purpose} secret of {domain}"


def _sealing_kek(tx: _Tx, kek: crypto.KeyEncryptionKey) -> crypto.KeyEncryptionKey:
    """`kek`, after checking (and share-locking until commit) that the database is still under it."""
    check = tx.one("SELECT kek_id FROM kek_check WHERE id = 1" + tx.d.for_share)
    if check[0] != kek.key_id:
        raise WrongKeyEncryptionKey(check[0], kek.key_id, "the KEK was rotated since this store opened")
    return kek


def _unseal_system_secret(tx: _Tx, kek: crypto.KeyEncryptionKey, name: str) -> bytes:
    row = tx.one("SELECT kek_id, wrapped_key, ciphertext FROM system_secrets WHERE name = ?", (name,))
    if row is None:
        raise NotFound("system secret", name)
    return crypto.unseal(kek, crypto.SealedKey(row[0], bytes(row[1]), bytes(row[2])),
                         aad=crypto.record_aad("system-secret", name), record=f"system secret {name}")


_ID_RE: Final = re.compile(r"[a-z0-9]([a-z0-9._-]{0,57}[a-z0-9])?")


def _check_identity_id(value: object, what: str) -> str:
    # The same rule as controlplane.pki.check_identity_id (the id goes into certificates), kept here so the store
    # refuses what the PKI could never issue for.
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise InvalidRecord(f"{what} must be 1-59 of [a-z0-9._-], starting and ending with a letter or digit")
    return value


def _check_names(names: object) -> tuple[str, ...]:
    if isinstance(names, str) or not isinstance(names, Sequence) or not names or len(names) > 100:
        raise InvalidRecord("names must be a list of 1-100 host names or IP addresses")
    out: list[str] = []
    for name in names:
        if not isinstance(name, str) or not name or len(name) > _MAX_NAME or not name.isprintable() or " " in name:
            raise InvalidRecord("each name must be a host name or an IP address")
        if name not in out:
            out.append(name)
    return tuple(out)


def _pem_fingerprint(pem: str) -> str:
    return "sha256:" + x509.load_pem_x509_certificate(pem.encode("ascii")).fingerprint(hashes.SHA256()).hex()


def _identity(tx: _Tx, kind: str, identity_id: str, *, lock: bool = False) -> Identity | None:
    suffix = tx.d.for_share if lock else ""
    if kind == "node":
        row = tx.one("SELECT removed FROM nodes WHERE node_id = ?" + suffix, (identity_id,))
        return None if row is None else Identity("node", identity_id, (), bool(row[0]))
    if kind == "backend":
        row = tx.one("SELECT names, removed FROM backends WHERE backend_id = ?" + suffix, (identity_id,))
        return None if row is None else Identity("backend", identity_id, tuple(tx.d.from_json(row[0])), bool(row[1]))
    return None


def _insert_identity_cert(tx: _Tx, kind: str, identity_id: str, reg: CertRegistration, now: dt.datetime) -> None:
    tx.exec(f"INSERT INTO identity_certs ({_IDCERT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
            (reg.fingerprint, kind, identity_id, reg.profile, reg.serial, tx.ts(_aware(reg.not_after, "not_after")),
             tx.ts(now)))
    tx.exec("DELETE FROM identity_certs WHERE kind = ? AND identity_id = ? AND not_after < ?",
            (kind, identity_id, tx.ts(now - IDENTITY_CERT_RETENTION)))


def _revoke_identity(tx: _Tx, kind: str, identity_id: str, now: object) -> None:
    """Removal: every registered certificate refused from now on, unused bootstrap tokens gone."""
    tx.exec("UPDATE identity_certs SET revoked_at = ? WHERE kind = ? AND identity_id = ? AND revoked_at IS NULL",
            (now, kind, identity_id))
    tx.exec("DELETE FROM bootstrap_tokens WHERE kind = ? AND identity_id = ? AND used_at IS NULL", (kind, identity_id))


# -- row mapping ----------------------------------------------------------------------------------------------------

def _domain(tx: _Tx, row: Sequence[Any]) -> Domain:
    return Domain(
        name=row[0], status=row[1], status_detail=row[2], issuer=row[3], next_retry_at=tx.from_ts(row[4]),
        ca_order_id=row[5], pipeline=tx.d.from_json(row[6]), created_at=tx.d.from_ts(row[7]),
        updated_at=tx.d.from_ts(row[8]), version=int(row[9]),
    )


def _certificate(tx: _Tx, row: Sequence[Any]) -> CertificateRecord:
    return CertificateRecord(
        id=int(row[0]), domain=row[1], fingerprint=row[2], not_before=tx.d.from_ts(row[3]),
        not_after=tx.d.from_ts(row[4]), names=tuple(tx.d.from_json(row[5])), issuer=row[6],
        created_at=tx.d.from_ts(row[7]), current=bool(row[8]), replaced_at=tx.from_ts(row[9]), chain_pem=row[10],
        kek_id=row[11],
    )


def _node(tx: _Tx, row: Sequence[Any]) -> Node:
    return Node(node_id=row[0], credential_kind=cast(CredentialKind, row[1]), credential=row[2],
                removed=bool(row[3]), created_at=tx.d.from_ts(row[4]), updated_at=tx.d.from_ts(row[5]))


def _backend(tx: _Tx, row: Sequence[Any]) -> Backend:
    return Backend(backend_id=row[0], names=tuple(tx.d.from_json(row[1])), removed=bool(row[2]),
                   created_at=tx.d.from_ts(row[3]), updated_at=tx.d.from_ts(row[4]))


def _identity_cert(tx: _Tx, row: Sequence[Any]) -> IdentityCert:
    return IdentityCert(fingerprint=row[0], kind=cast(IdentityKind, row[1]), identity_id=row[2], profile=row[3],
                        serial=row[4], not_after=tx.d.from_ts(row[5]), created_at=tx.d.from_ts(row[6]),
                        revoked_at=tx.from_ts(row[7]))


def _ref(tx: _Tx, name: str, fingerprint: str, not_after: Any, names: Any) -> CertRef:
    domains = tuple(tx.d.from_json(names)) or (name,)
    return CertRef(name, fingerprint, tx.d.from_ts(not_after), domains)


def _change(tx: _Tx, row: Sequence[Any]) -> Change:
    revision, op, kind, key, payload = row
    obj: Token | CertRef | None = None
    if payload is not None:
        p = tx.d.from_json(payload)
        if kind == "token":
            obj = Token(p["host"], p["path"], p["value"], dt.datetime.fromisoformat(p["expires_at"]))
        else:
            obj = CertRef(p["name"], p["fingerprint"], dt.datetime.fromisoformat(p["not_after"]),
                          tuple(p["domains"]))
    return Change(int(revision), op, kind, key, obj)


# -- the async store -----------------------------------------------------------------------------------------------

class ChangeSignal:
    """Wakes `wait_for_change` callers; lives on the event loop (call `notify` from the loop thread only)."""

    def __init__(self) -> None:
        self.latest = -1
        self._event: asyncio.Event | None = None

    def event(self) -> asyncio.Event:
        if self._event is None:
            self._event = asyncio.Event()
        return self._event

    def notify(self, revision: int | None) -> None:
        if revision is not None:
            self.latest = max(self.latest, revision)
        if self._event is not None:
            self._event.set()
            self._event = None


class Listener(Protocol):
    """A dialect's cross-process change feed (PostgreSQL LISTEN); started by `SqlStore.open`."""

    async def start(self, signal: ChangeSignal) -> None: ...
    async def aclose(self) -> None: ...


@final
class SqlStore:
    """The `Store` over SQLite or PostgreSQL. Create with `await SqlStore.open(...)` (or `open_store(url, ...)`)."""

    def __init__(self, engine: _Engine, *, listener: Listener | None, poll_interval_s: float) -> None:
        self._engine = engine
        self._listener = listener
        self._poll_interval_s = poll_interval_s
        self._signal = ChangeSignal()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=engine.pool_size, thread_name_prefix=f"lockstep-store-{engine.dialect.name}")
        self._closed = False

    @classmethod
    async def open(cls, dialect: Dialect, *, kek: crypto.KeyEncryptionKey,
                   clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(_UTC),
                   retain_changes: int = DEFAULT_RETAIN_CHANGES, pool_size: int = DEFAULT_POOL_SIZE,
                   poll_interval_s: float = 1.0, listener: Listener | None = None) -> SqlStore:
        """Connect, migrate the schema, verify the KEK, and start the change listener.

        Args:
            clock: returns aware UTC datetimes for created/updated timestamps.
            retain_changes: how many revisions `changes_since` can answer before an agent must resync.
            pool_size: connections (and worker threads).
            poll_interval_s: `wait_for_change` re-reads the revision at least this often, so a change made by
                another process is seen even without a notification (SQLite; PostgreSQL with its listener down).

        Raises: StoreUnavailable; SchemaError; WrongKeyEncryptionKey.
        """
        engine = _Engine(dialect, kek=kek, clock=clock, retain_changes=retain_changes, pool_size=pool_size)
        store = cls(engine, listener=listener, poll_interval_s=poll_interval_s)
        try:
            version = await store._call_engine(engine.migrate_and_check)
            if listener is not None:
                await listener.start(store._signal)
        except BaseException:
            await store.aclose()
            raise
        logger.info("store: opened %s (schema %d, KEK %s)", dialect.name, version, kek.key_id)
        return store

    @property
    def backend(self) -> str:
        return self._engine.dialect.name

    @property
    def kek_id(self) -> str:
        return self._engine.kek.key_id

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._listener is not None:
            await self._listener.aclose()
        await asyncio.get_running_loop().run_in_executor(None, self._shutdown)

    def _shutdown(self) -> None:
        self._executor.shutdown(wait=True)
        self._engine.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def _call_engine(self, fn: Callable[[], T]) -> T:
        """Run an engine-level operation (which runs its own transactions) on the store's threads."""
        if self._closed:
            raise StoreUnavailable("the store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def _call(self, fn: Callable[[_Tx], T], *, write: bool) -> T:
        if self._closed:
            raise StoreUnavailable("the store is closed")
        result, published = await asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(self._engine.run, fn, write=write))
        if published is not None:
            self._signal.notify(published)
        return result

    # -- domains
    async def create_domain(self, name: str, *, status: str, status_detail: str | None = None,
                            issuer: str | None = None, next_retry_at: dt.datetime | None = None,
                            ca_order_id: str | None = None, pipeline: Mapping[str, Any] | None = None) -> Domain:
        _check_name(name)
        retry = None if next_retry_at is None else _aware(next_retry_at, "next_retry_at")
        state = _json_object({} if pipeline is None else pipeline, "pipeline")

        def fn(tx: _Tx) -> Domain:
            now = tx.ts(self._engine.now())
            row = tx.one(f"INSERT INTO domains ({_DOMAIN_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1)"
                         f" ON CONFLICT (name) DO NOTHING RETURNING {_DOMAIN_COLS}",
                         (name, status, status_detail, issuer, tx.ts(retry), ca_order_id, tx.d.json(state), now, now))
            if row is None:
                raise AlreadyExists("domain", name)
            return _domain(tx, row)

        return await self._call(fn, write=True)

    async def get_domain(self, name: str) -> Domain | None:
        def fn(tx: _Tx) -> Domain | None:
            row = tx.one(f"SELECT {_DOMAIN_COLS} FROM domains WHERE name = ?", (name,))
            return None if row is None else _domain(tx, row)

        return await self._call(fn, write=False)

    async def update_domain(self, name: str, *, expect_version: int | None = None,
                            status: str | Unset = UNSET, status_detail: str | None | Unset = UNSET,
                            issuer: str | None | Unset = UNSET, next_retry_at: dt.datetime | None | Unset = UNSET,
                            ca_order_id: str | None | Unset = UNSET,
                            pipeline: Mapping[str, Any] | Unset = UNSET) -> Domain:
        fields: dict[str, object] = {}
        if status is not UNSET:
            fields["status"] = status
        if status_detail is not UNSET:
            fields["status_detail"] = status_detail
        if issuer is not UNSET:
            fields["issuer"] = issuer
        if ca_order_id is not UNSET:
            fields["ca_order_id"] = ca_order_id
        if next_retry_at is not UNSET:
            fields["next_retry_at"] = None if next_retry_at is None else _aware(next_retry_at, "next_retry_at")
        if pipeline is not UNSET:
            fields["pipeline"] = _json_object(pipeline, "pipeline")

        def fn(tx: _Tx) -> Domain:
            sets = ["version = version + 1", "updated_at = ?"]
            params: list[object] = [tx.ts(self._engine.now())]
            for column, value in fields.items():
                sets.append(f"{column} = ?")
                if column == "next_retry_at":
                    value = tx.ts(cast(dt.datetime | None, value))
                elif column == "pipeline":
                    value = tx.d.json(value)
                params.append(value)
            where = "name = ?"
            params.append(name)
            if expect_version is not None:
                where += " AND version = ?"
                params.append(expect_version)
            row = tx.one(f"UPDATE domains SET {', '.join(sets)} WHERE {where} RETURNING {_DOMAIN_COLS}", params)
            if row is not None:
                return _domain(tx, row)
            found = tx.one("SELECT version FROM domains WHERE name = ?", (name,))
            if found is None:
                raise NotFound("domain", name)
            raise Conflict("domain", name, f"version is {found[0]}, expected {expect_version}")

        return await self._call(fn, write=True)

    async def delete_domain(self, name: str) -> int:
        def fn(tx: _Tx) -> int:
            tx.lock_revision()
            now = self._engine.now()
            if tx.exec("DELETE FROM domains WHERE name = ?", (name,)) == 0:
                raise NotFound("domain", name)
            self._withdraw(tx, name, now)
            for (path,) in sorted(tx.all("DELETE FROM tokens WHERE host = ? RETURNING path", (name,))):
                tx.record("delete", "token", name + path, None, now)
            return tx.lock_revision()

        return await self._call(fn, write=True)

    async def list_domains(self, *, status: str | Sequence[str] | None = None, prefix: str | None = None,
                           after: str | None = None, limit: int = 100) -> DomainPage:
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRecord(f"limit must be 1..{MAX_PAGE}")
        where: list[str] = []
        params: list[object] = []
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            if not statuses:
                return DomainPage([], None)
            where.append(f"status IN ({', '.join('?' for _ in statuses)})")
            params += statuses
        if prefix:
            # A range, not LIKE: no escaping, and the primary key index serves it (byte order on both backends).
            where.append("name >= ?")
            params.append(prefix)
            upper = _prefix_upper(prefix)
            if upper is not None:
                where.append("name < ?")
                params.append(upper)
        if after is not None:
            where.append("name > ?")
            params.append(after)
        clause = f" WHERE {' AND '.join(where)}" if where else ""

        def fn(tx: _Tx) -> DomainPage:
            rows = tx.all(f"SELECT {_DOMAIN_COLS} FROM domains{clause} ORDER BY name LIMIT ?", [*params, limit + 1])
            domains = [_domain(tx, r) for r in rows[:limit]]
            return DomainPage(domains, domains[-1].name if len(rows) > limit else None)

        return await self._call(fn, write=False)

    async def due_domains(self, now: dt.datetime, *, limit: int = 100) -> list[Domain]:
        at = _aware(now, "now")

        def fn(tx: _Tx) -> list[Domain]:
            rows = tx.all(f"SELECT {_DOMAIN_COLS} FROM domains WHERE next_retry_at IS NOT NULL"
                          " AND next_retry_at <= ? ORDER BY next_retry_at, name LIMIT ?", (tx.ts(at), limit))
            return [_domain(tx, r) for r in rows]

        return await self._call(fn, write=False)

    async def count_domains(self) -> dict[str, int]:
        def fn(tx: _Tx) -> dict[str, int]:
            return {s: int(n) for s, n in tx.all("SELECT status, COUNT(*) FROM domains GROUP BY status")}

        return await self._call(fn, write=False)

    async def count_names_under(self, apex: str) -> int:
        """Domains equal to `apex` or below it (for the per-registered-domain quota)."""
        _check_name(apex)

        def fn(tx: _Tx) -> int:
            # Names are normalised (lower case A-labels, no '%' or '_'), so the LIKE pattern needs no escaping.
            row = tx.one("SELECT COUNT(*) FROM domains WHERE name = ? OR name LIKE ?", (apex, "%." + apex))
            return int(row[0]) if row else 0

        return await self._call(fn, write=False)

    # -- certificates
    async def put_certificate(self, domain: str, *, chain_pem: str, key_pem: str | bytes,
                              issuer: str) -> CertificateRecord:
        _check_name(domain)
        parsed = parse_certificate(chain_pem, key_pem)

        def fn(tx: _Tx) -> CertificateRecord:
            tx.lock_revision()
            kek = _sealing_kek(tx, self._engine.kek)
            if tx.one("SELECT 1 FROM domains WHERE name = ?", (domain,)) is None:
                raise NotFound("domain", domain)
            current = tx.one(f"SELECT {_CERT_COLS} FROM certificates WHERE domain = ? AND is_current", (domain,))
            if current is not None and current[2] == parsed.fingerprint:
                return _certificate(tx, current)
            now = self._engine.now()
            if current is not None:
                tx.exec("UPDATE certificates SET is_current = FALSE, replaced_at = ? WHERE id = ?",
                        (tx.ts(now), current[0]))
            sealed = crypto.seal(kek, parsed.key_pkcs8_pem, aad=_key_aad(domain, parsed.fingerprint))
            row = tx.one(
                "INSERT INTO certificates (domain, fingerprint, not_before, not_after, names, issuer, chain_pem,"
                " key_kek_id, key_wrapped, key_ciphertext, is_current, created_at)"
                f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, TRUE, ?) RETURNING {_CERT_COLS}",
                (domain, parsed.fingerprint, tx.ts(parsed.not_before), tx.ts(parsed.not_after),
                 tx.d.json(list(parsed.names)), issuer, parsed.chain_pem, sealed.kek_id, sealed.wrapped_key,
                 sealed.ciphertext, tx.ts(now)))
            record = _certificate(tx, row)
            ref = CertRef(domain, record.fingerprint, record.not_after, record.names or (domain,))
            tx.record("put", "certificate", domain, _ref_payload(ref), now)
            return record

        return await self._call(fn, write=True)

    def _withdraw(self, tx: _Tx, domain: str, now: dt.datetime) -> None:
        if tx.exec("UPDATE certificates SET is_current = FALSE, replaced_at = ? WHERE domain = ? AND is_current",
                   (tx.ts(now), domain)):
            tx.record("delete", "certificate", domain, None, now)

    async def delete_certificate(self, domain: str) -> int:
        def fn(tx: _Tx) -> int:
            tx.lock_revision()
            self._withdraw(tx, domain, self._engine.now())
            return tx.lock_revision()

        return await self._call(fn, write=True)

    async def current_certificate(self, domain: str) -> CertificateRecord | None:
        def fn(tx: _Tx) -> CertificateRecord | None:
            row = tx.one(f"SELECT {_CERT_COLS} FROM certificates WHERE domain = ? AND is_current", (domain,))
            return None if row is None else _certificate(tx, row)

        return await self._call(fn, write=False)

    async def certificate_history(self, domain: str) -> list[CertificateRecord]:
        def fn(tx: _Tx) -> list[CertificateRecord]:
            rows = tx.all(f"SELECT {_CERT_COLS} FROM certificates WHERE domain = ? ORDER BY id DESC", (domain,))
            return [_certificate(tx, r) for r in rows]

        return await self._call(fn, write=False)

    async def expiring_certificates(self, before: dt.datetime, *, limit: int = 100) -> list[CertificateRecord]:
        at = _aware(before, "before")

        def fn(tx: _Tx) -> list[CertificateRecord]:
            rows = tx.all(f"SELECT {_CERT_COLS} FROM certificates WHERE is_current AND not_after < ?"
                          " ORDER BY not_after, domain LIMIT ?", (tx.ts(at), limit))
            return [_certificate(tx, r) for r in rows]

        return await self._call(fn, write=False)

    # -- sealed per-domain secrets
    async def put_domain_secret(self, domain: str, purpose: str, plaintext: bytes) -> None:
        if not isinstance(purpose, str) or not _PURPOSE_RE.fullmatch(purpose):
            raise InvalidRecord("a secret's purpose is 1-64 of [a-z0-9_.-], starting with a letter or digit")
        if not isinstance(plaintext, bytes):
            raise InvalidRecord("a secret is bytes")

        def fn(tx: _Tx) -> None:
            kek = _sealing_kek(tx, self._engine.kek)
            if tx.one("SELECT 1 FROM domains WHERE name = ?", (domain,)) is None:
                raise NotFound("domain", domain)
            sealed = crypto.seal(kek, plaintext, aad=_secret_aad(domain, purpose))
            tx.exec("INSERT INTO domain_secrets (domain, purpose, kek_id, wrapped_key, ciphertext, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (domain, purpose) DO UPDATE SET kek_id = excluded.kek_id,"
                    " wrapped_key = excluded.wrapped_key, ciphertext = excluded.ciphertext,"
                    " updated_at = excluded.updated_at",
                    (domain, purpose, sealed.kek_id, sealed.wrapped_key, sealed.ciphertext,
                     tx.ts(self._engine.now())))

        await self._call(fn, write=True)

    async def get_domain_secret(self, domain: str, purpose: str) -> bytes | None:
        def fn(tx: _Tx) -> bytes | None:
            row = tx.one("SELECT kek_id, wrapped_key, ciphertext FROM domain_secrets WHERE domain = ? AND purpose = ?",
                         (domain, purpose))
            if row is None:
                return None
            return crypto.unseal(self._engine.kek, crypto.SealedKey(row[0], bytes(row[1]), bytes(row[2])),
                                 aad=_secret_aad(domain, purpose), record=_secret_record(domain, purpose))

        return await self._call(fn, write=False)

    async def put_system_secret(self, name: str, plaintext: bytes) -> None:
        """Seal and store a secret of the control plane itself (e.g. "acme-account:<issuer>"); rotation covers it."""
        if not isinstance(name, str) or not 0 < len(name) <= 128:
            raise InvalidRecord("a system secret's name is 1-128 characters")

        def fn(tx: _Tx) -> None:
            kek = _sealing_kek(tx, self._engine.kek)
            sealed = crypto.seal(kek, plaintext, aad=crypto.record_aad("system-secret", name))
            tx.exec("INSERT INTO system_secrets (name, kek_id, wrapped_key, ciphertext, updated_at)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET kek_id = excluded.kek_id,"
                    " wrapped_key = excluded.wrapped_key, ciphertext = excluded.ciphertext,"
                    " updated_at = excluded.updated_at",
                    (name, sealed.kek_id, sealed.wrapped_key, sealed.ciphertext, tx.ts(self._engine.now())))

        await self._call(fn, write=True)

    async def get_system_secret(self, name: str) -> bytes | None:
        def fn(tx: _Tx) -> bytes | None:
            row = tx.one("SELECT kek_id, wrapped_key, ciphertext FROM system_secrets WHERE name = ?", (name,))
            if row is None:
                return None
            return crypto.unseal(self._engine.kek, crypto.SealedKey(row[0], bytes(row[1]), bytes(row[2])),
                                 aad=crypto.record_aad("system-secret", name), record=f"system secret {name}")

        return await self._call(fn, write=False)

    async def delete_domain_secret(self, domain: str, purpose: str) -> bool:
        def fn(tx: _Tx) -> bool:
            return tx.exec("DELETE FROM domain_secrets WHERE domain = ? AND purpose = ?", (domain, purpose)) > 0

        return await self._call(fn, write=True)

    # -- tokens
    async def put_token(self, token: Token) -> int:
        return await self.put_tokens((token,))

    async def put_tokens(self, tokens: Iterable[Token]) -> int:
        items = list(tokens)
        for t in items:
            _check_name(t.host, "token host")
            if not isinstance(t.path, str) or not t.path.startswith("/") or not t.path.isprintable():
                raise InvalidRecord("token path must start with / and be printable")
            if not isinstance(t.value, str):
                raise InvalidRecord("token value must be a string")
        expiries = [_aware(t.expires_at, "expires_at") for t in items]

        def fn(tx: _Tx) -> int:
            tx.lock_revision()
            now = self._engine.now()
            for t, expires in zip(items, expiries):
                old = tx.one("SELECT value, expires_at FROM tokens WHERE host = ? AND path = ?", (t.host, t.path))
                if old is not None and old[0] == t.value and tx.d.from_ts(old[1]) == expires:
                    continue
                tx.exec("INSERT INTO tokens (host, path, value, expires_at, updated_at) VALUES (?, ?, ?, ?, ?)"
                        " ON CONFLICT (host, path) DO UPDATE SET value = excluded.value,"
                        " expires_at = excluded.expires_at, updated_at = excluded.updated_at",
                        (t.host, t.path, t.value, tx.ts(expires), tx.ts(now)))
                canonical = dataclasses.replace(t, expires_at=expires)
                tx.record("put", "token", t.key, _token_payload(canonical), now)
            return tx.lock_revision()

        return await self._call(fn, write=True)

    async def delete_token(self, host: str, path: str) -> int:
        def fn(tx: _Tx) -> int:
            tx.lock_revision()
            if tx.exec("DELETE FROM tokens WHERE host = ? AND path = ?", (host, path)):
                tx.record("delete", "token", host + path, None, self._engine.now())
            return tx.lock_revision()

        return await self._call(fn, write=True)

    async def purge_expired_tokens(self, now: dt.datetime) -> int:
        at = _aware(now, "now")

        def fn(tx: _Tx) -> int:
            tx.lock_revision()
            stamp = self._engine.now()
            rows = tx.all("DELETE FROM tokens WHERE expires_at <= ? RETURNING host, path", (tx.ts(at),))
            for host, path in sorted(rows):
                tx.record("delete", "token", host + path, None, stamp)
            return tx.lock_revision()

        return await self._call(fn, write=True)

    # -- nodes
    async def add_node(self, node_id: str, *, bearer_token: str | None = None,
                       client_cert_fingerprint: str | None = None, pki: bool = False) -> Node:
        if not isinstance(node_id, str) or not node_id or not node_id.isprintable() or len(node_id) > 200:
            raise InvalidRecord("node id must be 1-200 printable characters")
        if (bearer_token is not None) + (client_cert_fingerprint is not None) + bool(pki) != 1:
            raise InvalidRecord("give exactly one of bearer_token, client_cert_fingerprint and pki")
        kind: CredentialKind
        credential: str | None
        if bearer_token is not None:
            if not bearer_token:  # strength is the configuration's policy; the hash assumes a random token
                raise InvalidRecord("a bearer token must not be empty")
            kind, credential = "bearer", hash_bearer_token(bearer_token)
        elif client_cert_fingerprint is not None:
            kind, credential = "client_cert", str(client_cert_fingerprint)
        else:
            kind, credential = "pki", None

        def fn(tx: _Tx) -> Node:
            now = tx.ts(self._engine.now())
            if credential is not None and tx.one(
                    "SELECT 1 FROM nodes WHERE credential_kind = ? AND credential = ?", (kind, credential)):
                raise AlreadyExists("node credential", kind)
            row = tx.one(f"INSERT INTO nodes ({_NODE_COLS}) VALUES (?, ?, ?, FALSE, ?, ?)"
                         f" ON CONFLICT (node_id) DO NOTHING RETURNING {_NODE_COLS}",
                         (node_id, kind, credential, now, now))
            if row is None:
                raise AlreadyExists("node", node_id)
            return _node(tx, row)

        return await self._call(fn, write=True)

    async def _node_where(self, where: str, params: Sequence[object]) -> Node | None:
        def fn(tx: _Tx) -> Node | None:
            row = tx.one(f"SELECT {_NODE_COLS} FROM nodes WHERE {where}", params)
            return None if row is None else _node(tx, row)

        return await self._call(fn, write=False)

    async def get_node(self, node_id: str) -> Node | None:
        return await self._node_where("node_id = ?", (node_id,))

    async def node_for_bearer_token(self, token: str) -> Node | None:
        return await self._node_where("credential_kind = 'bearer' AND credential = ?", (hash_bearer_token(token),))

    async def node_for_client_cert(self, fingerprint: str) -> Node | None:
        return await self._node_where("credential_kind = 'client_cert' AND credential = ?", (fingerprint,))

    async def remove_node(self, node_id: str) -> Node:
        def fn(tx: _Tx) -> Node:
            now = tx.ts(self._engine.now())
            row = tx.one(f"UPDATE nodes SET removed = TRUE, updated_at = ? WHERE node_id = ? RETURNING {_NODE_COLS}",
                         (now, node_id))
            if row is None:
                raise NotFound("node", node_id)
            _revoke_identity(tx, "node", node_id, now)
            return _node(tx, row)

        return await self._call(fn, write=True)

    async def list_nodes(self) -> list[Node]:
        def fn(tx: _Tx) -> list[Node]:
            return [_node(tx, r) for r in tx.all(f"SELECT {_NODE_COLS} FROM nodes ORDER BY node_id")]

        return await self._call(fn, write=False)

    # -- the internal PKI
    async def ensure_internal_ca(self, create: Callable[[], tuple[str, bytes]]) -> tuple[str, bytes]:
        def fn(tx: _Tx) -> tuple[str, bytes]:
            row = tx.one("SELECT fingerprint, cert_pem FROM internal_cas ORDER BY generation DESC LIMIT 1")
            if row is None:
                kek = _sealing_kek(tx, self._engine.kek)
                cert_pem, key_pem = create()
                parsed = x509.load_pem_x509_certificate(cert_pem.encode("ascii"))
                fp = "sha256:" + parsed.fingerprint(hashes.SHA256()).hex()
                now = tx.ts(self._engine.now())
                won = tx.one("INSERT INTO internal_cas (generation, fingerprint, cert_pem, not_after, created_at)"
                             " VALUES (1, ?, ?, ?, ?) ON CONFLICT (generation) DO NOTHING RETURNING generation",
                             (fp, cert_pem, tx.ts(parsed.not_valid_after_utc), now))
                if won is not None:
                    name = _CA_KEY_SECRET + fp
                    sealed = crypto.seal(kek, key_pem, aad=crypto.record_aad("system-secret", name))
                    tx.exec("INSERT INTO system_secrets (name, kek_id, wrapped_key, ciphertext, updated_at)"
                            " VALUES (?, ?, ?, ?, ?)", (name, sealed.kek_id, sealed.wrapped_key, sealed.ciphertext, now))
                    return cert_pem, key_pem
                # Another process created it first (PostgreSQL waited for its commit): use theirs.
                row = tx.one("SELECT fingerprint, cert_pem FROM internal_cas ORDER BY generation DESC LIMIT 1")
            fp, cert_pem = row
            return cert_pem, _unseal_system_secret(tx, self._engine.kek, _CA_KEY_SECRET + fp)

        return await self._call(fn, write=True)

    async def internal_ca_certificates(self) -> list[str]:
        def fn(tx: _Tx) -> list[str]:
            return [r[0] for r in tx.all("SELECT cert_pem FROM internal_cas ORDER BY generation DESC")]

        return await self._call(fn, write=False)

    async def add_backend(self, backend_id: str, names: Sequence[str]) -> Backend:
        _check_identity_id(backend_id, "backend id")
        checked = _check_names(names)

        def fn(tx: _Tx) -> Backend:
            now = tx.ts(self._engine.now())
            row = tx.one(f"INSERT INTO backends ({_BACKEND_COLS}) VALUES (?, ?, FALSE, ?, ?)"
                         f" ON CONFLICT (backend_id) DO NOTHING RETURNING {_BACKEND_COLS}",
                         (backend_id, tx.d.json(list(checked)), now, now))
            if row is None:
                raise AlreadyExists("backend", backend_id)
            return _backend(tx, row)

        return await self._call(fn, write=True)

    async def get_backend(self, backend_id: str) -> Backend | None:
        def fn(tx: _Tx) -> Backend | None:
            row = tx.one(f"SELECT {_BACKEND_COLS} FROM backends WHERE backend_id = ?", (backend_id,))
            return None if row is None else _backend(tx, row)

        return await self._call(fn, write=False)

    async def list_backends(self) -> list[Backend]:
        def fn(tx: _Tx) -> list[Backend]:
            return [_backend(tx, r) for r in tx.all(f"SELECT {_BACKEND_COLS} FROM backends ORDER BY backend_id")]

        return await self._call(fn, write=False)

    async def remove_backend(self, backend_id: str) -> Backend:
        def fn(tx: _Tx) -> Backend:
            now = tx.ts(self._engine.now())
            row = tx.one(f"UPDATE backends SET removed = TRUE, updated_at = ? WHERE backend_id = ?"
                         f" RETURNING {_BACKEND_COLS}", (now, backend_id))
            if row is None:
                raise NotFound("backend", backend_id)
            _revoke_identity(tx, "backend", backend_id, now)
            return _backend(tx, row)

        return await self._call(fn, write=True)

    async def add_bootstrap_token(self, token: str, *, kind: IdentityKind, identity_id: str,
                                  expires_at: dt.datetime) -> BootstrapToken:
        if not isinstance(token, str) or len(token) < 16:
            raise InvalidRecord("a bootstrap token must be a string of at least 16 characters")
        if kind not in _IDENTITY_KINDS:
            raise InvalidRecord("a bootstrap token is for a node or a backend")
        expires = _aware(expires_at, "expires_at")
        token_hash = hash_bearer_token(token)

        def fn(tx: _Tx) -> BootstrapToken:
            identity = _identity(tx, kind, identity_id)
            if identity is None:
                raise NotFound(kind, identity_id)
            if identity.removed:
                raise IdentityRemoved(kind, identity_id)
            now = tx.ts(self._engine.now())
            row = tx.one("INSERT INTO bootstrap_tokens (token_hash, kind, identity_id, expires_at, created_at)"
                         " VALUES (?, ?, ?, ?, ?) ON CONFLICT (token_hash) DO NOTHING RETURNING token_hash",
                         (token_hash, kind, identity_id, tx.ts(expires), now))
            if row is None:
                raise AlreadyExists("bootstrap token", f"{kind} {identity_id}")
            return BootstrapToken(token_hash, kind, identity_id, expires, tx.d.from_ts(now), None)

        return await self._call(fn, write=True)

    async def bootstrap_tokens(self, kind: IdentityKind, identity_id: str) -> list[BootstrapToken]:
        def fn(tx: _Tx) -> list[BootstrapToken]:
            rows = tx.all("SELECT token_hash, kind, identity_id, expires_at, created_at, used_at FROM bootstrap_tokens"
                          " WHERE kind = ? AND identity_id = ? ORDER BY created_at", (kind, identity_id))
            return [BootstrapToken(r[0], r[1], r[2], tx.d.from_ts(r[3]), tx.d.from_ts(r[4]), tx.from_ts(r[5]))
                    for r in rows]

        return await self._call(fn, write=False)

    async def redeem_bootstrap_token(self, token: str, *, now: dt.datetime, key_id: str,
                                     issue: Callable[[Identity], CertRegistration]
                                     ) -> tuple[Identity, CertRegistration]:
        at = _aware(now, "now")
        token_hash = hash_bearer_token(token) if isinstance(token, str) else ""

        def unknown() -> TokenRejected:
            return TokenRejected("unknown_token", "the bootstrap token is not known (mistyped, or its node or "
                                 "backend was removed)")

        def fn(tx: _Tx) -> tuple[Identity, CertRegistration]:
            found = tx.one("SELECT kind, identity_id FROM bootstrap_tokens WHERE token_hash = ?", (token_hash,))
            if found is None:
                raise unknown()
            # Lock order as in removal (identity first, then tokens), so the two never deadlock; a removal that
            # commits first leaves no token to redeem, one that commits after revokes what this issues.
            identity = _identity(tx, found[0], found[1], lock=True)
            if identity is None or identity.removed:
                raise IdentityRemoved(found[0], found[1])
            row = tx.one("SELECT kind, identity_id, expires_at, used_at, used_key, used_cert_pem"
                         " FROM bootstrap_tokens WHERE token_hash = ?" + tx.d.for_update, (token_hash,))
            if row is None:
                raise unknown()
            kind, identity_id, expires_at, used_at, used_key, used_cert_pem = row
            if used_at is not None:
                if used_key == key_id and used_cert_pem:
                    # The same key asks again: its first answer was lost. Same certificate, while it is valid.
                    cert = tx.one(f"SELECT {_IDCERT_COLS} FROM identity_certs WHERE kind = ? AND identity_id = ?"
                                  " AND revoked_at IS NULL AND not_after > ? AND fingerprint = ?",
                                  (kind, identity_id, tx.ts(at), _pem_fingerprint(used_cert_pem)))
                    if cert is not None:
                        registered = _identity_cert(tx, cert)
                        return identity, CertRegistration(registered.fingerprint, registered.profile,
                                                          registered.serial, registered.not_after, used_cert_pem)
                raise TokenRejected("token_used", "the bootstrap token was used already (tokens are one-time)")
            if tx.d.from_ts(expires_at) <= at:
                raise TokenRejected("token_expired", "the bootstrap token has expired")
            reg = issue(identity)
            if tx.exec("UPDATE bootstrap_tokens SET used_at = ?, used_key = ?, used_cert_pem = ?"
                       " WHERE token_hash = ? AND used_at IS NULL", (tx.ts(at), key_id, reg.pem, token_hash)) != 1:
                raise TokenRejected("token_used", "the bootstrap token was used already (tokens are one-time)")
            _insert_identity_cert(tx, kind, identity_id, reg, at)
            return identity, reg

        return await self._call(fn, write=True)

    async def register_identity_cert(self, kind: IdentityKind, identity_id: str, registration: CertRegistration,
                                     *, now: dt.datetime) -> None:
        at = _aware(now, "now")

        def fn(tx: _Tx) -> None:
            identity = _identity(tx, kind, identity_id, lock=True)
            if identity is None:
                raise NotFound(kind, identity_id)
            if identity.removed:
                raise IdentityRemoved(kind, identity_id)
            _insert_identity_cert(tx, kind, identity_id, registration, at)

        await self._call(fn, write=True)

    async def identity_for_client_cert(self, fingerprint: str, *, now: dt.datetime) -> CertIdentity | None:
        at = _aware(now, "now")

        def fn(tx: _Tx) -> CertIdentity | None:
            row = tx.one(f"SELECT {_IDCERT_COLS} FROM identity_certs WHERE fingerprint = ? AND not_after > ?",
                         (fingerprint, tx.ts(at)))
            if row is None:
                return None
            cert = _identity_cert(tx, row)
            identity = _identity(tx, cert.kind, cert.identity_id)
            if identity is None:  # the registry outlived its identity (not written that way): treat as removed
                identity = Identity(cert.kind, cert.identity_id, (), True)
            return CertIdentity(identity, cert)

        return await self._call(fn, write=False)

    async def identity_certificates(self, kind: IdentityKind, identity_id: str) -> list[IdentityCert]:
        def fn(tx: _Tx) -> list[IdentityCert]:
            return [_identity_cert(tx, r) for r in tx.all(
                f"SELECT {_IDCERT_COLS} FROM identity_certs WHERE kind = ? AND identity_id = ?"
                " ORDER BY not_after DESC, fingerprint", (kind, identity_id))]

        return await self._call(fn, write=False)

    # -- the sync protocol
    async def revision(self) -> int:
        def fn(tx: _Tx) -> int:
            return int(tx.one("SELECT revision FROM sync_meta WHERE id = 1")[0])

        return await self._call(fn, write=False)

    async def snapshot(self) -> tuple[int, list[Token], list[CertRef]]:
        def fn(tx: _Tx) -> tuple[int, list[Token], list[CertRef]]:
            revision = int(tx.one("SELECT revision FROM sync_meta WHERE id = 1")[0])
            tokens = [Token(h, p, v, tx.d.from_ts(e))
                      for h, p, v, e in tx.all("SELECT host, path, value, expires_at FROM tokens")]
            tokens.sort(key=lambda t: t.key)
            refs = [_ref(tx, *r) for r in tx.all(
                "SELECT domain, fingerprint, not_after, names FROM certificates WHERE is_current ORDER BY domain")]
            return revision, tokens, refs

        return await self._call(fn, write=False)

    async def changes_since(self, since: int, *, limit: int | None = None) -> list[Change]:
        def fn(tx: _Tx) -> list[Change]:
            revision = int(tx.one("SELECT revision FROM sync_meta WHERE id = 1")[0])
            if since > revision:
                raise ResyncRequired(revision)
            if since == revision:
                return []
            row = tx.one("SELECT MIN(revision) FROM changes")
            oldest = int(row[0]) if row and row[0] is not None else revision + 1
            if since < oldest - 1:
                raise ResyncRequired(revision)
            sql = "SELECT revision, op, kind, key, payload FROM changes WHERE revision > ? ORDER BY revision"
            params: list[object] = [since]
            if limit is not None:
                sql += " LIMIT ?"
                params.append(max(1, limit))
            return [_change(tx, r) for r in tx.all(sql, params)]

        return await self._call(fn, write=False)

    async def wait_for_change(self, since: int, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout_s)
        check = True
        while True:
            event = self._signal.event()  # taken before the check: a change after the check sets this event
            if check:
                if await self.revision() != since:
                    return
            elif self._signal.latest > since:
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            wait_s = min(remaining, self._poll_interval_s)
            try:
                await asyncio.wait_for(event.wait(), wait_s)
                check = False
            except TimeoutError:
                check = True

    async def material(self, name: str) -> tuple[str, str] | None:
        return (await self.material_many((name,))).get(name)

    async def material_many(self, names: Iterable[str]) -> dict[str, tuple[str, str]]:
        wanted = list(dict.fromkeys(names))
        if not wanted:
            return {}

        def fn(tx: _Tx) -> dict[str, tuple[str, str]]:
            kek = self._engine.kek
            out: dict[str, tuple[str, str]] = {}
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                rows = tx.all("SELECT domain, fingerprint, chain_pem, key_kek_id, key_wrapped, key_ciphertext"
                              f" FROM certificates WHERE is_current AND domain IN ({', '.join('?' for _ in chunk)})",
                              chunk)
                for domain, fingerprint, chain, kek_id, wrapped, ciphertext in rows:
                    key = crypto.unseal(kek, crypto.SealedKey(kek_id, bytes(wrapped), bytes(ciphertext)),
                                        aad=_key_aad(domain, fingerprint), record=_key_record(domain, fingerprint))
                    out[domain] = (fingerprint, chain + key.decode("ascii"))
            return out

        return await self._call(fn, write=False)

    # -- keys
    async def rotate_kek(self, new_kek: crypto.KeyEncryptionKey) -> int:
        old = self._engine.kek
        return await self._call_engine(lambda: self._engine.rotate(old, new_kek))

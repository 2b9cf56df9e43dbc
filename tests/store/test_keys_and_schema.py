"""KEK check at open, key rotation (store method and the CLI's rotate_key), schema versioning, URL errors."""

from __future__ import annotations

import base64
import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from controlplane.store import (
    SCHEMA_VERSION,
    InvalidKeyEncryptionKey,
    InvalidRecord,
    InvalidStoreUrl,
    KeyEncryptionKey,
    NotFound,
    SchemaError,
    SqlStore,
    StoreUnavailable,
    WrongKeyEncryptionKey,
    crypto,
    open_store,
    rotate_key,
    sql,
)
from controlplane.store.sql import _key_aad
from tests.harness.net import free_port
from tests.harness.postgres import PostgresServer

from .conftest import Issued

SECRET = os.urandom(32)


def _sql(backend: str, store_url: str, request: pytest.FixtureRequest, statement: str) -> list[tuple[str, ...]]:
    """Run SQL behind the store's back; rows as tuples of text."""
    if backend == "sqlite":
        conn = sqlite3.connect(store_url.removeprefix("sqlite://"))
        try:
            with conn:
                return [tuple(str(v) for v in row) for row in conn.execute(statement)]
        finally:
            conn.close()
    server: PostgresServer = request.getfixturevalue("pg_server")
    out = server.psql(statement, database=store_url.rsplit("/", 1)[1])
    return [tuple(line.split("|")) for line in out.splitlines() if line]


async def _fill(store: SqlStore, issue: Callable[..., Issued], count: int = 3) -> dict[str, Issued]:
    certs: dict[str, Issued] = {}
    for i in range(count):
        name = f"r{i}.test"
        await store.create_domain(name, status="active")
        for _ in range(2):  # a current and an audit certificate each
            certs[name] = issue(name)
            await store.put_certificate(name, chain_pem=certs[name].chain_pem, key_pem=certs[name].key_pem,
                                        issuer="t")
    return certs


async def test_wrong_kek_fails_at_open(store_url: str, kek: KeyEncryptionKey) -> None:
    async with await open_store(store_url, kek=kek):
        pass
    other = KeyEncryptionKey(os.urandom(32))
    with pytest.raises(WrongKeyEncryptionKey) as info:
        await open_store(store_url, kek=other)
    assert info.value.expected_kek_id == kek.key_id and info.value.given_kek_id == other.key_id
    with pytest.raises(WrongKeyEncryptionKey, match="same key id"):
        await open_store(store_url, kek=KeyEncryptionKey(os.urandom(32), key_id=kek.key_id))
    async with await open_store(store_url, kek=kek) as store:  # the right one still opens
        assert store.kek_id == kek.key_id


def _unseal_all(backend: str, store_url: str, request: pytest.FixtureRequest,
                kek: KeyEncryptionKey) -> list[bytes]:
    rows = _sql(backend, store_url, request,
                "SELECT domain, fingerprint, key_kek_id, hex(key_wrapped), hex(key_ciphertext) FROM certificates"
                if backend == "sqlite" else
                "SELECT domain, fingerprint, key_kek_id, encode(key_wrapped, 'hex'), encode(key_ciphertext, 'hex')"
                " FROM certificates")
    assert rows
    return [crypto.unseal(kek, crypto.SealedKey(kek_id, bytes.fromhex(w), bytes.fromhex(c)),
                          aad=_key_aad(domain, fp)) for domain, fp, kek_id, w, c in rows]


async def test_rotate_kek_in_the_store(backend: str, store_url: str, kek: KeyEncryptionKey,
                                       issue: Callable[..., Issued], request: pytest.FixtureRequest) -> None:
    new = KeyEncryptionKey(os.urandom(32))
    async with await open_store(store_url, kek=kek) as store:
        certs = await _fill(store, issue)
        await store.put_domain_secret("r1.test", "pending-key", b"csr key in flight")
        before = _unseal_all(backend, store_url, request, kek)
        assert await store.rotate_kek(new) == 7  # 3 current + 3 audit certificates, 1 domain secret
        assert store.kek_id == new.key_id
        assert await store.get_domain_secret("r1.test", "pending-key") == b"csr key in flight"
        for name, c in certs.items():
            assert (await store.material(name))[1].endswith(c.key_pem)  # type: ignore[index]
        late = issue("r0.test")  # and new keys are sealed under the new KEK
        assert (await store.put_certificate("r0.test", chain_pem=late.chain_pem, key_pem=late.key_pem,
                                            issuer="t")).kek_id == new.key_id
    assert sorted(_unseal_all(backend, store_url, request, new)[:6]) == sorted(before)
    with pytest.raises(WrongKeyEncryptionKey):
        _unseal_all(backend, store_url, request, kek)
    with pytest.raises(WrongKeyEncryptionKey):
        await open_store(store_url, kek=kek)
    async with await open_store(store_url, kek=new) as store:
        assert (await store.material("r0.test"))[1].endswith(late.key_pem)  # type: ignore[index]
        assert await store.get_domain_secret("r1.test", "pending-key") == b"csr key in flight"


async def test_rotate_key_command(backend: str, store_url: str, kek: KeyEncryptionKey,
                                  issue: Callable[..., Issued], request: pytest.FixtureRequest,
                                  caplog: pytest.LogCaptureFixture) -> None:
    """rotate_key is synchronous (the CLI calls it); a control plane still running with the old KEK then fails
    loudly instead of writing keys nobody can open."""
    new = KeyEncryptionKey(os.urandom(32))
    stale = await open_store(store_url, kek=kek)
    try:
        certs = await _fill(stale, issue, count=2)
        caplog.set_level(logging.DEBUG)
        assert rotate_key(store_url, kek, new) == 4
        assert rotate_key(store_url, kek, new) == 0  # already done: idempotent
        with pytest.raises(WrongKeyEncryptionKey):  # under neither
            rotate_key(store_url, kek, KeyEncryptionKey(os.urandom(32)))
        with pytest.raises(InvalidKeyEncryptionKey):
            rotate_key(store_url, new, new)
        assert kek.key_id in caplog.text and new.key_id in caplog.text  # ids are logged...
        for c in certs.values():  # ...keys never
            assert c.key_pem_body[:40] not in caplog.text

        with pytest.raises(WrongKeyEncryptionKey):
            await stale.material("r0.test")
        late = issue("r1.test")
        with pytest.raises(WrongKeyEncryptionKey, match="rotated"):
            await stale.put_certificate("r1.test", chain_pem=late.chain_pem, key_pem=late.key_pem, issuer="t")
    finally:
        await stale.aclose()
    _unseal_all(backend, store_url, request, new)
    async with await open_store(store_url, kek=new) as store:
        assert (await store.material("r1.test"))[1].endswith(certs["r1.test"].key_pem)  # type: ignore[index]


async def test_rotation_refuses_a_damaged_row(backend: str, store_url: str, kek: KeyEncryptionKey,
                                              issue: Callable[..., Issued], request: pytest.FixtureRequest) -> None:
    async with await open_store(store_url, kek=kek) as store:
        await _fill(store, issue, count=1)
    _sql(backend, store_url, request, "UPDATE certificates SET fingerprint = 'sha256:00' WHERE id = 1")
    with pytest.raises(crypto.DecryptionFailed):
        rotate_key(store_url, kek, KeyEncryptionKey(os.urandom(32)))
    async with await open_store(store_url, kek=kek) as store:  # nothing changed: still the old KEK
        assert (await store.material("r0.test")) is not None


async def test_domain_secrets(backend: str, store_url: str, kek: KeyEncryptionKey,
                              request: pytest.FixtureRequest) -> None:
    plaintext = b"-----BEGIN PRIVATE KEY-----\npending csr key 0123456789\n"
    async with await open_store(store_url, kek=kek) as store:
        with pytest.raises(NotFound):
            await store.put_domain_secret("a.test", "pending-key", plaintext)
        await store.create_domain("a.test", status="ordering")
        await store.create_domain("b.test", status="ordering")
        for bad in ("", "Pending", "-x", "a" * 65, "a b"):
            with pytest.raises(InvalidRecord):
                await store.put_domain_secret("a.test", bad, plaintext)
        await store.put_domain_secret("a.test", "pending-key", b"first")
        await store.put_domain_secret("a.test", "pending-key", plaintext)  # replaces
        await store.put_domain_secret("b.test", "pending-key", b"other")
        assert await store.get_domain_secret("a.test", "pending-key") == plaintext
        assert await store.get_domain_secret("a.test", "other") is None
        assert await store.revision() == 0  # secrets are not desired state
    dump = _sql(backend, store_url, request, "SELECT domain, purpose, kek_id FROM domain_secrets ORDER BY domain")
    assert dump == [("a.test", "pending-key", kek.key_id), ("b.test", "pending-key", kek.key_id)]
    # bound to the row: b's ciphertext under a's name does not open
    _sql(backend, store_url, request, "UPDATE domain_secrets SET ciphertext = (SELECT ciphertext FROM domain_secrets"
                                      " WHERE domain = 'b.test'), wrapped_key = (SELECT wrapped_key FROM"
                                      " domain_secrets WHERE domain = 'b.test') WHERE domain = 'a.test'")
    async with await open_store(store_url, kek=kek) as store:
        with pytest.raises(crypto.DecryptionFailed):
            await store.get_domain_secret("a.test", "pending-key")
        assert await store.delete_domain_secret("a.test", "pending-key")
        assert not await store.delete_domain_secret("a.test", "pending-key")
        await store.delete_domain("b.test")
        with pytest.raises(NotFound):
            await store.put_domain_secret("b.test", "pending-key", b"x")
    assert _sql(backend, store_url, request, "SELECT COUNT(*) FROM domain_secrets") == [("0",)]


async def test_migration_from_schema_1(backend: str, store_url: str, kek: KeyEncryptionKey,
                                       request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database made by schema 1 (before domain_secrets) is migrated on open, its data kept."""
    with monkeypatch.context() as m:
        m.setattr(sql, "_MIGRATIONS", sql._MIGRATIONS[:1])
        m.setattr(sql, "SCHEMA_VERSION", 1)
        async with await open_store(store_url, kek=kek) as store:
            await store.create_domain("a.test", status="x")
    assert _sql(backend, store_url, request, "SELECT version FROM schema_version") == [("1",)]
    async with await open_store(store_url, kek=kek) as store:
        assert await store.get_domain("a.test") is not None
        await store.put_domain_secret("a.test", "pending-key", b"x")
    assert _sql(backend, store_url, request, "SELECT version FROM schema_version ORDER BY version") == [
        (str(v),) for v in range(1, SCHEMA_VERSION + 1)]


def test_rotate_key_needs_an_existing_store(tmp_path: Path) -> None:
    with pytest.raises(InvalidStoreUrl):
        rotate_key(f"sqlite://{tmp_path / 'none.db'}", KeyEncryptionKey(SECRET), KeyEncryptionKey(os.urandom(32)))
    assert not (tmp_path / "none.db").exists()


async def test_schema_version_and_reopen(backend: str, store_url: str, kek: KeyEncryptionKey,
                                         request: pytest.FixtureRequest) -> None:
    async with await open_store(store_url, kek=kek) as store:
        await store.create_domain("a.test", status="x")
    async with await open_store(store_url, kek=kek) as store:  # a second open migrates nothing, loses nothing
        assert await store.get_domain("a.test") is not None
    assert _sql(backend, store_url, request, "SELECT MAX(version) FROM schema_version") == [(str(SCHEMA_VERSION),)]
    _sql(backend, store_url, request, f"INSERT INTO schema_version (version) VALUES ({SCHEMA_VERSION + 1})")
    with pytest.raises(SchemaError, match="upgrade"):
        await open_store(store_url, kek=kek)


async def test_foreign_database_is_a_schema_error(backend: str, store_url: str, kek: KeyEncryptionKey,
                                                  request: pytest.FixtureRequest) -> None:
    _sql(backend, store_url, request, "CREATE TABLE domains (x INTEGER)")
    with pytest.raises(SchemaError, match="Lockstep"):
        await open_store(store_url, kek=kek)


async def test_unreachable_and_bad_urls(tmp_path: Path, kek: KeyEncryptionKey) -> None:
    with pytest.raises(StoreUnavailable) as info:
        await open_store(f"postgresql://lockstep:hunter2@127.0.0.1:{free_port()}/x?connect_timeout=2", kek=kek)
    assert "hunter2" not in str(info.value)
    (tmp_path / "junk.db").write_bytes(b"not a database" * 100)
    with pytest.raises(StoreUnavailable):
        await open_store(f"sqlite://{tmp_path / 'junk.db'}", kek=kek)
    for url in ("mysql://x", "sqlite:", "sqlite://:memory:"):
        with pytest.raises(InvalidStoreUrl):
            await open_store(url, kek=kek)


async def test_closed_store(store_url: str, kek: KeyEncryptionKey) -> None:
    store = await open_store(store_url, kek=kek)
    await store.aclose()
    await store.aclose()
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.revision()


def test_sqlite_file_is_private(tmp_path: Path, kek: KeyEncryptionKey) -> None:
    import asyncio

    async def go() -> None:
        async with await open_store(f"sqlite://{tmp_path / 's.db'}", kek=kek) as store:
            await store.create_domain("a.test", status="x")
            assert (tmp_path / "s.db-wal").stat().st_mode & 0o077 == 0

    asyncio.run(go())
    assert (tmp_path / "s.db").stat().st_mode & 0o777 == 0o600


def test_kek_value_is_never_in_errors() -> None:
    value = base64.b64encode(SECRET).decode()
    kek = crypto.load_kek(value)
    other = KeyEncryptionKey(os.urandom(32))
    err = WrongKeyEncryptionKey(kek.key_id, other.key_id)
    assert value not in str(err) and value not in repr(kek)


async def test_system_secrets_are_sealed_and_rotated(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from controlplane.store import WrongKeyEncryptionKey, generate_kek, load_kek, open_store

    old, new = load_kek(generate_kek()), load_kek(generate_kek())
    url = f"sqlite:///{tmp_path}/s.db"
    secret = b"-----BEGIN PRIVATE KEY-----\nACMEACCOUNTKEYMATERIAL0123456789\n-----END PRIVATE KEY-----\n"
    async with await open_store(url, kek=old) as store:
        await store.put_system_secret("acme-account:pebble", secret)
        assert await store.get_system_secret("acme-account:pebble") == secret
        assert await store.get_system_secret("missing") is None
        assert await store.rotate_kek(new) >= 1
    assert b"ACMEACCOUNTKEYMATERIAL" not in (tmp_path / "s.db").read_bytes()
    async with await open_store(url, kek=new) as store:
        assert await store.get_system_secret("acme-account:pebble") == secret
    try:
        await open_store(url, kek=old)
    except WrongKeyEncryptionKey:
        pass
    else:
        raise AssertionError("the old KEK must not open the store after rotation")

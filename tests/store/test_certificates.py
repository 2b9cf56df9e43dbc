"""Certificates: current + audit history, material, and that no private key is readable in the database."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from controlplane.store import (
    DecryptionFailed,
    InvalidRecord,
    KeyEncryptionKey,
    NotFound,
    SqlStore,
    open_store,
)
from tests.harness.postgres import PostgresServer

from .conftest import T0, FakeClock, Issued


async def test_current_history_and_material(store: SqlStore, clock: FakeClock,
                                            issue: Callable[..., Issued]) -> None:
    await store.create_domain("a.test", status="active")
    first, second = issue("a.test"), issue("a.test", days=30)
    rec1 = await store.put_certificate("a.test", chain_pem=first.chain_pem, key_pem=first.key_pem, issuer="digicert")
    assert rec1.current and rec1.names == ("a.test",) and rec1.not_after == T0 + dt.timedelta(days=90)
    assert rec1.kek_id == store.kek_id and "PRIVATE" not in repr(rec1)
    again = await store.put_certificate("a.test", chain_pem=first.chain_pem, key_pem=first.key_pem,
                                        issuer="digicert")
    assert again == rec1 and await store.revision() == 1  # the same certificate again: no change

    fp, pem = await store.material("a.test")  # type: ignore[misc]
    assert fp == rec1.fingerprint and pem == first.chain_pem + first.key_pem

    clock.advance(60)
    rec2 = await store.put_certificate("a.test", chain_pem=second.chain_pem, key_pem=second.key_pem, issuer="acme")
    assert await store.current_certificate("a.test") == rec2
    history = await store.certificate_history("a.test")
    assert [h.fingerprint for h in history] == [rec2.fingerprint, rec1.fingerprint]
    assert not history[1].current and history[1].replaced_at == T0 + dt.timedelta(seconds=60)
    assert (await store.material("a.test")) == (rec2.fingerprint, second.chain_pem + second.key_pem)
    assert [c.not_after for c in await store.expiring_certificates(T0 + dt.timedelta(days=31))] == [rec2.not_after]
    assert await store.expiring_certificates(T0 + dt.timedelta(days=29)) == []

    assert await store.delete_certificate("a.test") == 3
    assert await store.delete_certificate("a.test") == 3  # nothing current: no change
    assert await store.material("a.test") is None and await store.current_certificate("a.test") is None
    assert len(await store.certificate_history("a.test")) == 2  # kept for audit


async def test_material_many_and_key_formats(store: SqlStore, issue: Callable[..., Issued]) -> None:
    certs = {name: issue(name) for name in ("a.test", "b.test", "c.test")}
    for name, c in certs.items():
        await store.create_domain(name, status="active")
        # a traditional "EC PRIVATE KEY" is accepted and stored as PKCS#8
        trad = c.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                   serialization.NoEncryption())
        await store.put_certificate(name, chain_pem=c.chain_pem, key_pem=trad, issuer="t")
    got = await store.material_many(["c.test", "a.test", "missing.test", "a.test"])
    assert sorted(got) == ["a.test", "c.test"]
    assert got["a.test"][1] == certs["a.test"].chain_pem + certs["a.test"].key_pem
    assert await store.material_many([]) == {}


async def test_put_certificate_refusals(store: SqlStore, issue: Callable[..., Issued]) -> None:
    a, b = issue("a.test"), issue("b.test")
    with pytest.raises(NotFound):
        await store.put_certificate("a.test", chain_pem=a.chain_pem, key_pem=a.key_pem, issuer="t")
    await store.create_domain("a.test", status="active")
    with pytest.raises(InvalidRecord, match="not the leaf") as info:
        await store.put_certificate("a.test", chain_pem=a.chain_pem, key_pem=b.key_pem, issuer="t")
    assert b.key_pem_body[:40] not in str(info.value)
    with pytest.raises(InvalidRecord, match="not an unencrypted PEM") as info:
        await store.put_certificate("a.test", chain_pem=a.chain_pem, key_pem=a.key_pem[:-80], issuer="t")
    assert a.key_pem_body[:40] not in str(info.value)
    with pytest.raises(InvalidRecord):
        await store.put_certificate("a.test", chain_pem="garbage", key_pem=a.key_pem, issuer="t")
    assert await store.revision() == 0  # failed writes publish nothing


def _secrets(certs: list[Issued]) -> list[bytes]:
    out: list[bytes] = []
    for c in certs:
        body = c.key_pem_body.encode()
        out += [c.key_der, c.key_scalar, body[:64], body[-64:], c.key_der.hex().encode()]
    return out


async def test_no_private_key_readable_in_the_database(backend: str, store_url: str, kek: KeyEncryptionKey,
                                                       issue: Callable[..., Issued],
                                                       request: pytest.FixtureRequest) -> None:
    certs = [issue(f"k{i}.test") for i in range(3)]
    blobs: dict[str, bytes] = {}
    path = Path(store_url.removeprefix("sqlite://"))

    def read_sqlite_files(when: str) -> None:
        for p in path.parent.iterdir():
            if p.name.startswith(path.name):  # store.db, store.db-wal, store.db-shm
                blobs[f"{p.name} ({when})"] = p.read_bytes()

    async with await open_store(store_url, kek=kek) as store:
        for c in certs:
            await store.create_domain(c.name, status="active")
            await store.put_certificate(c.name, chain_pem=c.chain_pem, key_pem=c.key_pem, issuer="t")
        await store.put_domain_secret(certs[0].name, "pending-key", certs[0].key_pem.encode())
        for c in certs:  # the keys are there...
            assert (await store.material(c.name)) is not None
        if backend == "sqlite":
            read_sqlite_files("open, with the WAL")
    if backend == "sqlite":
        read_sqlite_files("closed")
        assert any(b"BEGIN CERTIFICATE" in b for b in blobs.values())  # we are looking at the right bytes
    else:
        server: PostgresServer = request.getfixturevalue("pg_server")
        database = store_url.rsplit("/", 1)[1]
        dump = "".join(server.psql(f"SELECT t::text FROM {table} t", database=database)
                       for table in ("certificates", "changes", "kek_check", "domains", "tokens", "domain_secrets"))
        assert "kek-" in dump and "BEGIN CERTIFICATE" in dump  # we are looking at the right rows
        server.psql("CHECKPOINT")
        blobs = {"tables": dump.encode()}
        for p in server.data.rglob("*"):
            if p.is_file() and not p.name.startswith("postmaster"):
                blobs[str(p.relative_to(server.data))] = p.read_bytes()
    assert sum(len(b) for b in blobs.values()) > 0
    for secret in _secrets(certs):  # ...but nowhere in the bytes
        for name, blob in blobs.items():
            assert secret not in blob, f"private key material found in {name}"


def _raw_swap(backend: str, store_url: str, request: pytest.FixtureRequest, columns: str) -> None:
    """Swap the sealed-key columns of certificates 1 and 2 behind the store's back."""
    cols = columns.split(", ")
    sets = ", ".join(f"{c} = (SELECT {c} FROM certificates WHERE id = 3 - c.id)" for c in cols)
    if backend == "sqlite":
        conn = sqlite3.connect(store_url.removeprefix("sqlite://"))
        with conn:
            conn.execute(f"UPDATE certificates AS c SET {sets} WHERE id IN (1, 2)")
        conn.close()
    else:
        server: PostgresServer = request.getfixturevalue("pg_server")
        server.psql(f"UPDATE certificates AS c SET {sets} WHERE id IN (1, 2)",
                    database=store_url.rsplit("/", 1)[1])


@pytest.mark.parametrize("columns", ["key_wrapped, key_ciphertext", "key_ciphertext", "key_wrapped"])
async def test_swapped_ciphertexts_do_not_decrypt(backend: str, store_url: str, kek: KeyEncryptionKey,
                                                  issue: Callable[..., Issued], request: pytest.FixtureRequest,
                                                  columns: str) -> None:
    async with await open_store(store_url, kek=kek) as store:
        for name in ("a.test", "b.test"):
            c = issue(name)
            await store.create_domain(name, status="active")
            await store.put_certificate(name, chain_pem=c.chain_pem, key_pem=c.key_pem, issuer="t")
    _raw_swap(backend, store_url, request, columns)
    async with await open_store(store_url, kek=kek) as store:
        with pytest.raises(DecryptionFailed) as info:
            await store.material("a.test")
        assert "a.test" in str(info.value) and "PRIVATE" not in str(info.value)

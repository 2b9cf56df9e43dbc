"""The change log behind the sync protocol: revisions, changes_since edges, retention, snapshots, concurrency,
long-poll wake-ups, and the sync API (controlplane/sync/api.py) served from the store."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from controlplane.store import (
    KeyEncryptionKey,
    NotFound,
    SqlStore,
    StoreSyncBackend,
    open_store,
)
from controlplane.sync.api import BearerAuthenticator, add_sync_routes
from controlplane.sync.state import CertRef, ResyncRequired, Token

from .conftest import FILEAUTH, T0, FakeClock, Issued

EXP = T0 + dt.timedelta(hours=4)
NODE_TOKEN = "node-token-0123456789abcdef"


def tok(host: str, value: str = "v", path: str = FILEAUTH, expires_at: dt.datetime = EXP) -> Token:
    return Token(host, path, value, expires_at)


async def test_token_changes(store: SqlStore) -> None:
    assert await store.revision() == 0 and await store.snapshot() == (0, [], [])
    assert await store.put_token(tok("a.test", "1")) == 1
    assert await store.put_token(tok("a.test", "1")) == 1  # identical: no change
    assert await store.put_token(tok("a.test", "2")) == 2
    assert await store.delete_token("b.test", FILEAUTH) == 2  # missing: no change
    assert await store.put_tokens([tok("b.test"), tok("c.test"), tok("a.test", "2")]) == 4
    assert await store.delete_token("a.test", FILEAUTH) == 5
    changes = await store.changes_since(0)
    assert [(c.revision, c.op, c.key) for c in changes] == [
        (1, "put", "a.test" + FILEAUTH), (2, "put", "a.test" + FILEAUTH), (3, "put", "b.test" + FILEAUTH),
        (4, "put", "c.test" + FILEAUTH), (5, "delete", "a.test" + FILEAUTH)]
    assert changes[0].obj == tok("a.test", "1") and changes[1].obj == tok("a.test", "2")  # as of that revision
    assert changes[4].obj is None and changes[4].to_json() == {
        "revision": 5, "op": "delete", "kind": "token", "key": "a.test" + FILEAUTH}
    rev, tokens, certs = await store.snapshot()
    assert (rev, tokens, certs) == (5, [tok("b.test"), tok("c.test")], [])
    assert [c.revision for c in await store.changes_since(2, limit=2)] == [3, 4]


async def test_changes_since_edges(store: SqlStore) -> None:
    assert await store.changes_since(0) == []
    with pytest.raises(ResyncRequired) as info:
        await store.changes_since(1)  # newer than the store: a restored database
    assert info.value.revision == 0
    await store.put_token(tok("a.test"))
    assert await store.changes_since(1) == []
    with pytest.raises(ResyncRequired):
        await store.changes_since(2)


async def test_retention(store_url: str, kek: KeyEncryptionKey) -> None:
    async with await open_store(store_url, kek=kek, retain_changes=3) as store:
        for i in range(6):
            await store.put_token(tok("a.test", str(i)))
        # revisions 4..6 are kept: since=3 is answerable, since=2 is not
        assert [c.revision for c in await store.changes_since(3)] == [4, 5, 6]
        assert [c.revision for c in await store.changes_since(5)] == [6]
        with pytest.raises(ResyncRequired) as info:
            await store.changes_since(2)
        assert info.value.revision == 6
        rev, tokens, _ = await store.snapshot()
        assert rev == 6 and [t.value for t in tokens] == ["5"]


async def test_certificate_changes_and_domain_delete(store: SqlStore, issue: Callable[..., Issued]) -> None:
    c = issue("a.test", names=("a.test", "www.a.test"))
    await store.create_domain("a.test", status="active")
    rec = await store.put_certificate("a.test", chain_pem=c.chain_pem, key_pem=c.key_pem, issuer="t")
    await store.put_tokens([tok("a.test"), tok("a.test", path="/.well-known/acme-challenge/x"), tok("b.test")])
    ref = CertRef("a.test", rec.fingerprint, rec.not_after, ("a.test", "www.a.test"))
    assert (await store.snapshot())[2] == [ref]
    assert (await store.changes_since(0))[0].obj == ref
    assert await store.delete_domain("a.test") == 7
    changes = await store.changes_since(4)
    assert [(c.op, c.kind, c.key) for c in changes] == [
        ("delete", "certificate", "a.test"), ("delete", "token", "a.test/.well-known/acme-challenge/x"),
        ("delete", "token", "a.test" + FILEAUTH)]
    rev, tokens, certs = await store.snapshot()
    assert rev == 7 and tokens == [tok("b.test")] and certs == []
    with pytest.raises(NotFound):
        await store.delete_domain("a.test")
    assert await store.revision() == 7  # the failed delete published nothing


async def test_purge_expired_tokens(store: SqlStore) -> None:
    await store.put_tokens([tok("a.test", expires_at=T0), tok("b.test", expires_at=T0 + dt.timedelta(seconds=1)),
                            tok("c.test", expires_at=T0 - dt.timedelta(days=1))])
    assert await store.purge_expired_tokens(T0) == 5
    assert [c.key for c in await store.changes_since(3)] == ["a.test" + FILEAUTH, "c.test" + FILEAUTH]
    assert (await store.snapshot())[1] == [tok("b.test", expires_at=T0 + dt.timedelta(seconds=1))]


async def test_concurrent_writers_never_gap_or_duplicate(store_url: str, kek: KeyEncryptionKey) -> None:
    """Two store instances (two connection pools, as two processes would have) write 200 changes each, four at
    a time, while a reader follows the log: revisions are 1..400 exactly, and the reader, which only ever asks
    for what comes after what it has, sees every one in order (commit order == revision order)."""
    a = await open_store(store_url, kek=kek)
    b = await open_store(store_url, kek=kek)
    follow: asyncio.Task[None] | None = None
    try:
        async def writer(store: SqlStore, prefix: str, lane: int) -> None:
            for i in range(50):
                await store.put_token(tok(f"{prefix}{lane}-{i}.test"))

        seen: list[int] = []
        done = asyncio.Event()

        async def follower() -> None:
            since = 0
            while True:
                finished = done.is_set()
                for change in await a.changes_since(since):
                    seen.append(change.revision)
                    since = change.revision
                if finished:
                    return
                await asyncio.sleep(0)

        follow = asyncio.create_task(follower())
        await asyncio.gather(*(writer(a, "a", n) for n in range(4)), *(writer(b, "b", n) for n in range(4)))
        done.set()
        await follow
        assert seen == list(range(1, 401))
        rev, tokens, _ = await b.snapshot()
        assert rev == 400 and len(tokens) == 400
        assert sorted({c.key for c in await b.changes_since(0)}) == sorted(t.key for t in tokens)
    finally:
        if follow is not None and not follow.done():
            follow.cancel()
        await a.aclose()
        await b.aclose()


async def test_snapshot_is_consistent_under_writes(store_url: str, kek: KeyEncryptionKey) -> None:
    """The writer always changes a.test and b.test together (two changes, one transaction): every snapshot must
    show both at the same value, at the revision that value implies."""
    async with await open_store(store_url, kek=kek) as writer, await open_store(store_url, kek=kek) as reader:
        stop = asyncio.Event()

        async def write() -> None:
            i = 0
            while not stop.is_set():
                i += 1
                await writer.put_tokens([tok("a.test", str(i)), tok("b.test", str(i))])

        task = asyncio.create_task(write())
        snapshots = 0
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            rev, tokens, _ = await reader.snapshot()
            if tokens:
                a_value, b_value = (t.value for t in tokens)
                assert a_value == b_value and rev == 2 * int(a_value)
                snapshots += 1
            await asyncio.sleep(0)
        stop.set()
        await task
        assert snapshots > 10


async def test_wait_for_change_wakes_on_own_write(store: SqlStore) -> None:
    await store.put_token(tok("a.test"))
    start = time.monotonic()
    await store.wait_for_change(0, 5)  # already past: at once
    waiter = asyncio.create_task(store.wait_for_change(1, 10))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    await store.put_token(tok("b.test"))
    await asyncio.wait_for(waiter, 2)
    assert time.monotonic() - start < 2
    start = time.monotonic()
    await store.wait_for_change(2, 0.2)  # no change: the timeout
    assert 0.15 < time.monotonic() - start < 1.5


async def test_wait_for_change_wakes_on_another_process_write(backend: str, store_url: str,
                                                              kek: KeyEncryptionKey) -> None:
    """Another control-plane process writes: PostgreSQL wakes the long-poll by NOTIFY (the poll interval here is
    far longer than the wait we allow); SQLite by its poll interval."""
    poll_s = 30.0 if backend == "postgresql" else 0.05
    async with await open_store(store_url, kek=kek, poll_interval_s=poll_s) as waiting, \
            await open_store(store_url, kek=kek) as other:
        waiters = [asyncio.create_task(waiting.wait_for_change(0, 20)) for _ in range(50)]
        await asyncio.sleep(0.2)
        assert not any(w.done() for w in waiters)
        start = time.monotonic()
        await other.put_token(tok("a.test"))
        await asyncio.wait_for(asyncio.gather(*waiters), 3)
        assert time.monotonic() - start < 1.0


async def test_sync_api_served_from_the_store(store: SqlStore, issue: Callable[..., Issued]) -> None:
    """controlplane/sync/api.py's routes over StoreSyncBackend: snapshot, changes + long-poll, 410, material."""
    c = issue("a.test")
    await store.create_domain("a.test", status="active")
    rec = await store.put_certificate("a.test", chain_pem=c.chain_pem, key_pem=c.key_pem, issuer="t")
    await store.put_token(tok("a.test"))
    app = web.Application()
    add_sync_routes(app, StoreSyncBackend(store, max_changes=1), BearerAuthenticator({NODE_TOKEN: "node-1"}))
    auth = {"Authorization": f"Bearer {NODE_TOKEN}"}
    async with TestClient(TestServer(app)) as client:
        snap = await (await client.get("/v1/sync/snapshot", headers=auth)).json()
        assert snap["revision"] == 2 and snap["certificates"][0]["fingerprint"] == rec.fingerprint
        body = await (await client.get("/v1/sync/changes?since=0&wait_s=0", headers=auth)).json()
        assert body["revision"] == 1 and len(body["changes"]) == 1  # max_changes: the agent asks again
        body = await (await client.get("/v1/sync/changes?since=1", headers=auth)).json()
        assert body["revision"] == 2 and body["changes"][0]["token"]["host"] == "a.test"
        assert (await client.get("/v1/sync/changes?since=9", headers=auth)).status == 410
        poll = asyncio.create_task(client.get("/v1/sync/changes?since=2&wait_s=10", headers=auth))
        await asyncio.sleep(0.1)
        await store.delete_token("a.test", FILEAUTH)
        body = await (await asyncio.wait_for(poll, 3)).json()
        assert body["revision"] == 3 and body["changes"] == [
            {"revision": 3, "op": "delete", "kind": "token", "key": "a.test" + FILEAUTH}]
        got = await (await client.get(f"/v1/sync/certificates/a.test?fingerprint={rec.fingerprint}",
                                      headers=auth)).json()
        assert got["pem"] == c.chain_pem + c.key_pem
        batch = await (await client.post("/v1/sync/certificates", headers=auth, json={"certificates": [
            {"name": "a.test", "fingerprint": rec.fingerprint}, {"name": "b.test", "fingerprint": "x"}]})).json()
        assert batch["certificates"][0]["pem"] == got["pem"] and batch["certificates"][1]["error"] == "not_found"


async def test_clock_is_injected(store: SqlStore, clock: FakeClock) -> None:
    clock.advance(3600)
    d = await store.create_domain("a.test", status="x")
    assert d.created_at == T0 + dt.timedelta(hours=1)

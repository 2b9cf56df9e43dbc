"""Contract tests: the control plane's sync API (controlplane/sync) and the agent's client (agent/sync) over real
HTTP on 127.0.0.1, pinned to docs/sync-protocol.md."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from agent.sync.client import ControlPlaneClient
from agent.sync.errors import FingerprintNotCurrent, NotFound, ProtocolViolation, ResyncRequired, Unauthorized
from controlplane.sync import BearerAuthenticator, CertRef, MemorySyncBackend, Token, add_sync_routes

EXP = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
FILEAUTH = "/.well-known/pki-validation/fileauth.txt"
FP1 = "sha256:" + "11" * 32
FP2 = "sha256:" + "22" * 32


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, MemorySyncBackend]]:
    backend = MemorySyncBackend(retain=3)
    app = web.Application()
    add_sync_routes(app, backend, BearerAuthenticator({"secret": "node-1"}))
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", backend
    await runner.cleanup()


@pytest.fixture
async def client(server: tuple[str, MemorySyncBackend]) -> AsyncIterator[ControlPlaneClient]:
    async with httpx.AsyncClient(base_url=server[0], headers={"Authorization": "Bearer secret"}) as http:
        yield ControlPlaneClient(http, request_timeout_s=5)


async def test_snapshot_round_trip(server: tuple[str, MemorySyncBackend], client: ControlPlaneClient) -> None:
    _, backend = server
    backend.publish_token(Token("a.test", FILEAUTH, "tok", EXP))
    backend.publish_certificate(CertRef("a.test", FP1, EXP, ("a.test",)), "PEM")
    snap = await client.snapshot()
    assert snap.revision == 2
    assert [(t.host, t.path, t.value, t.expires_at) for t in snap.tokens] == [("a.test", FILEAUTH, "tok", EXP)]
    assert [(c.name, c.fingerprint, c.not_after, c.domains) for c in snap.certificates] == [
        ("a.test", FP1, EXP, ("a.test",))]


async def test_long_poll_answers_as_soon_as_something_changes(
    server: tuple[str, MemorySyncBackend], client: ControlPlaneClient
) -> None:
    _, backend = server
    start = time.monotonic()
    poll = asyncio.create_task(client.changes(0, wait_s=10))
    await asyncio.sleep(0.2)
    assert not poll.done()  # held open
    backend.publish_token(Token("a.test", FILEAUTH, "tok", EXP))
    batch = await asyncio.wait_for(poll, 2)
    assert time.monotonic() - start < 1.0
    assert batch.revision == 1 and batch.changes[0].token is not None


async def test_long_poll_times_out_empty(client: ControlPlaneClient) -> None:
    batch = await client.changes(0, wait_s=0.2)
    assert (batch.revision, batch.changes) == (0, ())


async def test_deletes_and_resync(server: tuple[str, MemorySyncBackend], client: ControlPlaneClient) -> None:
    _, backend = server
    backend.publish_token(Token("a.test", FILEAUTH, "1", EXP))
    backend.withdraw_token("a.test" + FILEAUTH)
    batch = await client.changes(1, wait_s=0)
    assert [(c.op, c.kind, c.key) for c in batch.changes] == [("delete", "token", "a.test" + FILEAUTH)]
    with pytest.raises(ResyncRequired):
        await client.changes(5, wait_s=0)  # from the future (a restored database)
    for i in range(4):
        backend.publish_token(Token("b.test", FILEAUTH, str(i), EXP))
    with pytest.raises(ResyncRequired):
        await client.changes(0, wait_s=0)  # older than the retained history (retain=3)


async def test_material(server: tuple[str, MemorySyncBackend], client: ControlPlaneClient) -> None:
    _, backend = server
    backend.publish_certificate(CertRef("a.test", FP1, EXP, ("a.test",)), "PEM-1")
    assert await client.material("a.test", FP1) == "PEM-1"
    backend.publish_certificate(CertRef("a.test", FP2, EXP, ("a.test",)), "PEM-2")
    with pytest.raises(FingerprintNotCurrent):
        await client.material("a.test", FP1)
    with pytest.raises(NotFound):
        await client.material("b.test", FP1)


async def test_authentication(server: tuple[str, MemorySyncBackend]) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic secret"}):
        async with httpx.AsyncClient(base_url=server[0], headers=headers) as http:
            with pytest.raises(Unauthorized):
                await ControlPlaneClient(http).snapshot()


@pytest.mark.parametrize("query", ["", "?since=x", "?since=-1", "?since=1&wait_s=nan", "?since=1&wait_s=-2"])
async def test_bad_requests_are_400(server: tuple[str, MemorySyncBackend], query: str) -> None:
    async with httpx.AsyncClient(base_url=server[0], headers={"Authorization": "Bearer secret"}) as http:
        resp = await http.get("/v1/sync/changes" + query)
    assert resp.status_code == 400


async def test_client_maps_a_bad_answer_to_protocol_violation() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>proxy error</html>")

    async with httpx.AsyncClient(base_url="http://cp", transport=httpx.MockTransport(handler)) as http:
        with pytest.raises(ProtocolViolation):
            await ControlPlaneClient(http).snapshot()


async def test_material_batch(server: tuple[str, MemorySyncBackend], client: ControlPlaneClient) -> None:
    _, backend = server
    backend.publish_certificate(CertRef("a.test", FP1, EXP, ("a.test",)), "PEM-A")
    backend.publish_certificate(CertRef("c.test", FP2, EXP, ("c.test",)), "PEM-C")
    got = await client.materials([("a.test", FP1), ("b.test", FP1), ("c.test", FP1)])
    assert got["a.test"] == "PEM-A"
    assert isinstance(got["b.test"], NotFound)
    assert isinstance(got["c.test"], FingerprintNotCurrent)


async def test_material_batch_limits(server: tuple[str, MemorySyncBackend]) -> None:
    async with httpx.AsyncClient(base_url=server[0], headers={"Authorization": "Bearer secret"}) as http:
        too_many = {"certificates": [{"name": f"n{i}", "fingerprint": FP1} for i in range(501)]}
        assert (await http.post("/v1/sync/certificates", json=too_many)).status_code == 400
        assert (await http.post("/v1/sync/certificates", json={"certs": []})).status_code == 400
        assert (await http.post("/v1/sync/certificates", content=b"not json")).status_code == 400

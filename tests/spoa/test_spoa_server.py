"""spoa.server: the asyncio shell, over real sockets on 127.0.0.1 with a raw client."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest

import spoa
from spoa import (
    Ack,
    Action,
    AgentDisconnect,
    AgentHello,
    HaproxyDisconnect,
    HaproxyHello,
    Message,
    Notify,
    SetVar,
    SpoaServer,
    Status,
    VarScope,
    encode_frame,
    typed,
)
from spoa.server import _SpopProtocol

from spoa_helpers import CHECK_HELLO, AnyFrameReader, RawClient

ServerFactory = Callable[..., Awaitable[SpoaServer]]


@pytest.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    servers: list[SpoaServer] = []

    async def factory(handler: spoa.Handler, **kwargs: Any) -> SpoaServer:
        server = await spoa.serve(handler, "127.0.0.1", 0, **kwargs)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.aclose()


def notify(sid: int, fid: int = 1, **args: object) -> Notify:
    return Notify(sid, fid, (Message("m", tuple((k, typed(v)) for k, v in args.items())),))  # type: ignore[arg-type]


async def echo(n: Notify) -> Sequence[Action]:
    """Sets txn.v to the value of arg "v" (or to the stream id)."""
    value = n.messages[0].get("v") if n.messages else None
    return [SetVar(VarScope.TXN, "v", value if value is not None else typed(n.stream_id))]


async def test_hello_notify_ack(make_server: ServerFactory) -> None:
    server = await make_server(echo)
    client = await RawClient.connect(server.port)
    reply = await client.hello()
    assert reply == AgentHello(max_frame_size=16380, capabilities=("pipelining",))
    await client.send(notify(0, 1, v="tok1.thumb"))
    assert await client.recv() == Ack(0, 1, (SetVar(VarScope.TXN, "v", typed("tok1.thumb")),))
    await client.close()
    stats = server.stats()
    assert stats.notifies == 1 and stats.acks == 1 and stats.frames_received == 2
    assert stats.frames_sent == 2 and stats.connections_total == 1


async def test_negotiates_min_frame_size(make_server: ServerFactory) -> None:
    server = await make_server(echo, max_frame_size=4096)
    client = await RawClient.connect(server.port)
    assert (await client.hello()).max_frame_size == 4096
    client2 = await RawClient.connect(server.port)
    assert (await client2.hello(HaproxyHello(("2.0",), 1000, ("pipelining",)))).max_frame_size == 1000
    await client.close()
    await client2.close()


async def test_health_check_hello_without_engine_id(make_server: ServerFactory) -> None:
    server = await make_server(echo)
    client = await RawClient.connect(server.port)
    assert await client.hello(CHECK_HELLO) == AgentHello(max_frame_size=16380, capabilities=())
    await client.close()  # HAProxy closes after the check's AGENT-HELLO
    assert server.stats().healthchecks == 1


async def test_pipelining_many_notifies_in_one_write(make_server: ServerFactory) -> None:
    async def jittery(n: Notify) -> Sequence[Action]:
        await asyncio.sleep((n.stream_id * 7 % 5) / 1000)  # finish out of order
        return await echo(n)

    server = await make_server(jittery, max_in_flight=100)
    client = await RawClient.connect(server.port)
    await client.hello()
    sent = [notify(sid, fid, v=f"{sid}-{fid}") for sid in range(20) for fid in (1, 2)]
    await client.send(*sent)
    acks = [await client.recv() for _ in sent]
    assert all(isinstance(a, Ack) for a in acks)
    by_id = {(a.stream_id, a.frame_id): a for a in acks if isinstance(a, Ack)}
    assert set(by_id) == {(n.stream_id, n.frame_id) for n in sent}
    for (sid, fid), ack in by_id.items():
        assert ack.actions == (SetVar(VarScope.TXN, "v", typed(f"{sid}-{fid}")),)
    assert [(a.stream_id, a.frame_id) for a in acks if isinstance(a, Ack)] != [
        (n.stream_id, n.frame_id) for n in sent
    ], "ACKs should come back in completion order, not NOTIFY order"
    await client.close()


async def test_slow_handler_does_not_block_other_streams(make_server: ServerFactory) -> None:
    release = asyncio.Event()

    async def handler(n: Notify) -> Sequence[Action]:
        if n.stream_id == 1:
            await release.wait()
        return await echo(n)

    server = await make_server(handler)
    client = await RawClient.connect(server.port)
    await client.hello()
    await client.send(notify(1), notify(2))
    first = await client.recv()
    assert isinstance(first, Ack) and first.stream_id == 2
    release.set()
    second = await client.recv()
    assert isinstance(second, Ack) and second.stream_id == 1
    await client.close()


async def test_in_flight_bound_per_connection(make_server: ServerFactory) -> None:
    running = 0
    peak = 0
    release = asyncio.Event()
    started = asyncio.Event()

    async def handler(n: Notify) -> Sequence[Action]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 3:
            started.set()
        try:
            await release.wait()
        finally:
            running -= 1
        return ()

    server = await make_server(handler, max_in_flight=3)
    client = await RawClient.connect(server.port)
    other = await RawClient.connect(server.port)
    await client.hello()
    await other.hello()
    await client.send(*[notify(sid) for sid in range(10)])
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.sleep(0.05)  # give the server every chance to over-dispatch
    assert peak == 3
    assert server.stats().in_flight == 10  # 3 running + 7 queued, reading paused
    # The bound is per connection: another connection still gets its own slots.
    await other.send(notify(100))
    await asyncio.sleep(0.05)
    assert peak == 4
    release.set()
    acks = [await client.recv() for _ in range(10)]
    assert sorted(a.stream_id for a in acks if isinstance(a, Ack)) == list(range(10))
    assert await other.recv() == Ack(100, 1)
    assert peak == 4
    await client.close()
    await other.close()


async def test_handler_exception_gives_empty_ack(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(n: Notify) -> Sequence[Action]:
        if n.stream_id == 1:
            raise RuntimeError("lookup failed")
        return await echo(n)

    server = await make_server(broken)
    client = await RawClient.connect(server.port)
    await client.hello()
    with caplog.at_level(logging.ERROR, logger="spoa.server"):
        await client.send(notify(1))
        assert await client.recv() == Ack(1, 1)
    assert "handler failed" in caplog.text and "lookup failed" in caplog.text
    # The connection is still fine.
    await client.send(notify(2, v="ok"))
    assert await client.recv() == Ack(2, 1, (SetVar(VarScope.TXN, "v", typed("ok")),))
    assert server.stats().handler_errors == 1
    await client.close()


async def test_synchronous_handler_is_acked_without_a_task(make_server: ServerFactory) -> None:
    def lookup(n: Notify) -> Sequence[Action]:
        if n.stream_id == 3:
            raise KeyError("boom")
        return [SetVar(VarScope.TXN, "v", typed(n.stream_id))]

    server = await make_server(lookup)
    client = await RawClient.connect(server.port)
    await client.hello()
    await client.send(*(notify(sid) for sid in range(1, 6)))  # pipelined in one write
    acks = [await client.recv() for _ in range(5)]
    assert [a.stream_id for a in acks] == [1, 2, 3, 4, 5]  # type: ignore[union-attr]
    assert acks[2] == Ack(3, 1)  # the raising one: empty ACK, connection kept
    assert acks[4] == Ack(5, 1, (SetVar(VarScope.TXN, "v", typed(5)),))
    stats = server.stats()
    assert stats.acks == 5 and stats.handler_errors == 1 and stats.in_flight == 0
    await client.close()


async def test_handler_timeout_gives_empty_ack(make_server: ServerFactory) -> None:
    cancelled = asyncio.Event()

    async def slow(n: Notify) -> Sequence[Action]:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return await echo(n)

    server = await make_server(slow, handler_timeout_s=0.05)
    client = await RawClient.connect(server.port)
    await client.hello()
    await client.send(notify(1))
    assert await client.recv() == Ack(1, 1)
    assert cancelled.is_set()
    assert server.stats().handler_timeouts == 1
    await client.close()


@pytest.mark.parametrize(
    "bad_result",
    [
        [SetVar(VarScope.TXN, "v", typed("x" * 400))],  # does not fit max-frame-size 256
        [SetVar(VarScope.TXN, "v", typed("\ud800"))],  # not encodable
        ["not an action"],
        None,
    ],
)
async def test_unusable_handler_result_gives_empty_ack(
    make_server: ServerFactory, bad_result: Any
) -> None:
    async def handler(n: Notify) -> Any:
        return bad_result

    server = await make_server(handler, max_frame_size=256)
    client = await RawClient.connect(server.port)
    await client.hello()
    await client.send(notify(1))
    assert await client.recv() == Ack(1, 1)
    assert server.stats().handler_errors == 1
    await client.close()


@pytest.mark.parametrize(
    ("garbage", "status"),
    [
        (struct.pack(">I", 16381), Status.TOO_BIG),  # LEN above max-frame-size
        (b"\x00\x00\x00\x07\x09\x00\x00\x00\x01\x00\x00", Status.INVALID),  # unknown type
        (b"\x00\x00\x00\x02\x00\x00", Status.INVALID),  # LEN shorter than a header
        (encode_frame(CHECK_HELLO), Status.INVALID),  # a second HELLO
    ],
)
async def test_protocol_error_disconnects_only_that_connection(
    make_server: ServerFactory, garbage: bytes, status: Status
) -> None:
    server = await make_server(echo)
    good = await RawClient.connect(server.port)
    bad = await RawClient.connect(server.port)
    await good.hello()
    await bad.hello()
    await bad.send_raw(garbage)
    reply = await bad.recv()
    assert isinstance(reply, AgentDisconnect) and reply.status == status
    await bad.expect_eof()
    await good.send(notify(1, v="still here"))
    assert await good.recv() == Ack(1, 1, (SetVar(VarScope.TXN, "v", typed("still here")),))
    assert server.stats().protocol_errors == 1
    await good.close()
    await bad.close()


async def test_fragmented_notify_disconnects_with_status_10(make_server: ServerFactory) -> None:
    server = await make_server(echo)
    client = await RawClient.connect(server.port)
    await client.hello()
    frame = bytearray(encode_frame(notify(1)))
    frame[8] = 0  # no FIN
    await client.send_raw(bytes(frame))
    reply = await client.recv()
    assert isinstance(reply, AgentDisconnect) and reply.status == Status.FRAG_NOT_SUPPORTED
    await client.expect_eof()


@pytest.mark.parametrize(
    "version", ["1.0", "\u00b2", "9" * 5000], ids=["1.0", "superscript-2", "5000-digits"]
)  # the last two: found by the fuzz campaign
async def test_bad_version_disconnects_with_status_8(make_server: ServerFactory, version: str) -> None:
    server = await make_server(echo)
    client = await RawClient.connect(server.port)
    await client.send(HaproxyHello((version,), 16380, ()))
    reply = await client.recv()
    assert isinstance(reply, AgentDisconnect) and reply.status == Status.BAD_VSN
    await client.expect_eof()


async def test_haproxy_disconnect_gets_agent_disconnect(make_server: ServerFactory) -> None:
    server = await make_server(echo)
    client = await RawClient.connect(server.port)
    await client.hello()
    await client.send(HaproxyDisconnect(Status.TIMEOUT, "a timeout occurred"))
    assert await client.recv() == AgentDisconnect(Status.NORMAL, "")
    await client.expect_eof()
    assert server.stats().protocol_errors == 0


async def test_idle_timeout(make_server: ServerFactory) -> None:
    server = await make_server(echo, idle_timeout_s=0.1)
    client = await RawClient.connect(server.port)
    await client.hello()
    await asyncio.sleep(0.06)
    await client.send(notify(1))  # activity pushes the deadline
    assert isinstance(await client.recv(), Ack)
    reply = await client.recv(timeout=2)
    assert isinstance(reply, AgentDisconnect) and reply.status == Status.TIMEOUT
    await client.expect_eof()


async def test_aclose_disconnects_clients_and_cancels_handlers(
    make_server: ServerFactory,
) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def stuck(n: Notify) -> Sequence[Action]:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return ()

    server = await make_server(stuck, handler_timeout_s=60)
    port = server.port
    client = await RawClient.connect(port)
    await client.hello()
    await client.send(notify(1))
    await asyncio.wait_for(started.wait(), 5)
    await server.aclose()
    assert cancelled.is_set()
    reply = await client.recv()
    assert reply == AgentDisconnect(Status.NORMAL, "agent is shutting down")
    await client.expect_eof()
    assert server.sockets == () and server.stats().connections_active == 0
    with pytest.raises(OSError):
        await RawClient.connect(port)
    await server.aclose()  # idempotent


async def test_serve_forever_returns_after_aclose(make_server: ServerFactory) -> None:
    server = await make_server(echo)
    waiter = asyncio.create_task(server.serve_forever())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    async with server:  # __aexit__ runs aclose()
        pass
    await asyncio.wait_for(waiter, 5)


async def test_serve_validates_arguments() -> None:
    with pytest.raises(ValueError):
        await spoa.serve(echo, max_frame_size=100)
    with pytest.raises(ValueError):
        await spoa.serve(echo, max_in_flight=0)


# -- the protocol object with a fake transport: one write per frame, pause/resume ----


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.paused = False
        self.pause_calls = 0
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def pause_reading(self) -> None:
        self.paused = True
        self.pause_calls += 1

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


async def test_each_frame_is_one_write_and_reading_pauses_at_the_bound() -> None:
    release = asyncio.Event()

    async def handler(n: Notify) -> Sequence[Action]:
        await release.wait()
        return await echo(n)

    server = SpoaServer(
        handler,
        max_frame_size=16380,
        max_in_flight=2,
        handler_timeout_s=5,
        idle_timeout_s=None,
        logger=logging.getLogger("test"),
    )
    proto = _SpopProtocol(server)
    transport = FakeTransport()
    proto.connection_made(transport)
    stream = encode_frame(HaproxyHello(("2.0",), 16380, ("pipelining",)))
    stream += b"".join(encode_frame(notify(sid)) for sid in range(3))
    for i in range(len(stream)):  # the worst case: one byte per read
        proto.data_received(stream[i : i + 1])
    await asyncio.sleep(0)
    assert transport.paused and transport.pause_calls == 1
    release.set()
    for _ in range(20):
        await asyncio.sleep(0)
    assert not transport.paused
    # Every write is exactly one complete frame (haproxy.md A.6, haproxy#3478).
    for data in transport.writes:
        assert struct.unpack(">I", data[:4])[0] == len(data) - 4
    events = AnyFrameReader().feed(b"".join(transport.writes))
    assert len(events) == len(transport.writes) == 4
    assert isinstance(events[0], AgentHello)
    assert sorted(e.stream_id for e in events[1:] if isinstance(e, Ack)) == [0, 1, 2]
    proto.connection_lost(None)
    assert proto.closed.done()


def test_runs_on_uvloop() -> None:
    factory = spoa.event_loop_factory()

    async def scenario() -> tuple[str, object]:
        server = await spoa.serve(echo)
        try:
            client = await RawClient.connect(server.port)
            await client.hello()
            await client.send(notify(4, v="uv"))
            ack = await client.recv()
            await client.close()
        finally:
            await server.aclose()
        return type(asyncio.get_running_loop()).__module__, ack

    with asyncio.Runner(loop_factory=factory) as runner:
        module, ack = runner.run(scenario())
    pytest.importorskip("uvloop")
    assert module.startswith("uvloop")
    assert ack == Ack(4, 1, (SetVar(VarScope.TXN, "v", typed("uv")),))

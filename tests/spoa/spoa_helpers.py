"""Test helpers for tests/spoa: vector loading, h11-style feeding, a raw SPOP client."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from spoa import (
    AgentHello,
    Connection,
    Event,
    HaproxyHello,
    decode_frame,
    encode_frame,
)
from spoa._frames import FrameReader

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "spoa"

T = TypeVar("T")


def load_vector(name: str) -> bytes:
    """Bytes of tests/vectors/spoa/<name>: hex digits, '#' comments to end of line."""
    text = (VECTORS / name).read_text()
    return bytes.fromhex(" ".join(line.split("#", 1)[0] for line in text.splitlines()))


def chunkings(data: bytes, *, seed: int = 0, random_rounds: int = 5) -> Iterator[list[bytes]]:
    """The h11 ``tr()`` patterns: whole, one byte at a time, and random split points."""
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    rng = random.Random(seed)
    for _ in range(random_rounds):
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 6))))
        bounds = [0, *cuts, len(data)]
        yield [data[a:b] for a, b in zip(bounds, bounds[1:])]


def feed_all(feed: Callable[[bytes], list[T]], chunks: Sequence[bytes]) -> list[T]:
    out: list[T] = []
    for chunk in chunks:
        out += feed(chunk)
    return out


class AnyFrameReader:
    """Reads frames of ANY type (both directions): FrameReader + decode_frame."""

    def __init__(self, max_frame_size: int = 1 << 24) -> None:
        self._reader = FrameReader(max_frame_size)

    def feed(self, data: bytes) -> list[Event]:
        self._reader.feed(data)
        out: list[Event] = []
        while (body := self._reader.next_frame()) is not None:
            out.append(decode_frame(body))
        return out


TRAFFIC_HELLO = HaproxyHello(
    supported_versions=("2.0",),
    max_frame_size=16380,
    capabilities=("pipelining", "async"),
    engine_id="0ac2a9ab-5ce4-4c4e-bd5a-2b4c3f1d2e3f",
)
CHECK_HELLO = HaproxyHello(
    supported_versions=("2.0",), max_frame_size=16380, capabilities=(), healthcheck=True
)


def ready_connection(hello: HaproxyHello = TRAFFIC_HELLO, **kwargs: int) -> Connection:
    """A Connection after the HELLO exchange."""
    conn = Connection(**kwargs)  # type: ignore[arg-type]
    [event] = conn.receive_data(encode_frame(hello))
    assert event == hello
    conn.send(conn.agent_hello())
    return conn


class RawClient:
    """A fake HAProxy: raw asyncio streams, frames built with encode_frame."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.frames = AnyFrameReader()
        self.pending: list[Event] = []

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, *events: Event) -> None:
        await self.send_raw(b"".join(encode_frame(e) for e in events))

    async def recv(self, timeout: float = 5.0) -> Event:
        async with asyncio.timeout(timeout):
            while not self.pending:
                data = await self.reader.read(65536)
                if not data:
                    raise EOFError("connection closed by the agent")
                self.pending += self.frames.feed(data)
        return self.pending.pop(0)

    async def hello(self, hello: HaproxyHello = TRAFFIC_HELLO) -> AgentHello:
        await self.send(hello)
        reply = await self.recv()
        assert isinstance(reply, AgentHello), reply
        return reply

    async def expect_eof(self, timeout: float = 5.0) -> None:
        """Wait until the agent closes; any frame before that is an error."""
        async with asyncio.timeout(timeout):
            data = await self.reader.read(65536)
        assert data == b"", f"expected EOF, got {data!r}"

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass

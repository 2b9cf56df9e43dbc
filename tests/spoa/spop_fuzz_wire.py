"""The fuzz campaign over real sockets: fuzz connections against a running agent, plus a canary.

``run_wire_campaign`` sends ``FrameFuzzer`` streams (split at random points, some
chunks paced apart so they arrive as separate reads) on many concurrent connections
from a separate process, while the calling process keeps a canary connection doing
valid HELLO + NOTIFY for a real token and checking every ACK.  Each fuzz connection
must end exactly as ``spop_fuzzer.predict`` says: with an AGENT-DISCONNECT carrying
the predicted status, or -- for a stream that is valid so far -- with an AGENT-HELLO
and one ACK per NOTIFY and no DISCONNECT.  Anything else is recorded in
``WireStats.unexpected``.

The agent is whatever listens on the port: the tests and the benchmark start the
real ``lockstep agent`` process (tests/harness/agentproc.py), behind a real HAProxy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import random
import socket
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from spoa import (
    Ack,
    AgentDisconnect,
    AgentHello,
    Event,
    HaproxyHello,
    Message,
    Notify,
    SpopError,
    TypedValue,
    decode_frame,
    encode_frame,
)
from spoa._frames import FrameReader
from tests.spoa.spop_fuzzer import FrameFuzzer, FuzzStream, load_seeds, predict

__all__ = ["WireStats", "CanaryStats", "run_wire_campaign", "run_canary", "rss_bytes"]

CANARY_TIMEOUT_S = 2.0  # an ACK slower than this is a canary failure (HAProxy itself gives up after 0.5 s)
CONNECTION_TIMEOUT_S = 15.0  # a fuzz connection that has not ended as predicted by then is "hung"
QUIET_S = 0.1  # how long a connection that expects no answer watches for one


@dataclasses.dataclass
class WireStats:
    """What the fuzz connections saw.  ``unexpected`` must stay empty."""

    connections: int = 0
    frames: int = 0  # frames sent
    bytes: int = 0
    statuses: Counter[int] = dataclasses.field(default_factory=Counter)  # AGENT-DISCONNECT status -> count
    waiting: int = 0  # streams valid so far: answered in full, no DISCONNECT, closed by us
    acks: int = 0
    resets: int = 0  # ended with a reset before any answer was read (status unverifiable)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0


@dataclasses.dataclass
class CanaryStats:
    requests: int = 0
    reconnects: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)
    latencies_s: list[float] = dataclasses.field(default_factory=list)

    def quantile(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        if len(self.latencies_s) < 2:
            return self.latencies_s[0]
        return statistics.quantiles(self.latencies_s, n=1000, method="inclusive")[int(q * 1000) - 1]


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class _Frames:
    def __init__(self) -> None:
        self._reader = FrameReader(2**32 - 1)

    def feed(self, data: bytes) -> list[Event]:
        self._reader.feed(data)
        out = []
        while (body := self._reader.next_frame()) is not None:
            out.append(decode_frame(body))
        return out


async def _fuzz_one(port: int, stream: FuzzStream, pace: bool, stats: WireStats) -> None:
    expected = predict(stream)
    try:
        async with asyncio.timeout(CONNECTION_TIMEOUT_S):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except (OSError, TimeoutError) as exc:
        stats.unexpected.append(f"cannot connect: {exc!r}")
        return
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    frames = _Frames()
    got: list[Event] = []
    eof = reset = False

    async def receive() -> None:
        nonlocal eof, reset
        while True:
            try:
                data = await reader.read(65536)
            except (ConnectionError, OSError):
                # The agent closed with our unread bytes in its buffer (after its DISCONNECT): the kernel
                # resets, and may drop what it had not delivered yet.
                eof = reset = True
                return
            if not data:
                eof = True
                return
            got.extend(frames.feed(data))
            if _satisfied(got, expected.statuses, expected.hello, expected.notifies, eof=False):
                return

    # A stream that is valid so far and asks for no answer (say, only part of a HELLO): nothing may arrive, and
    # absence can only be checked for a while.
    nothing_due = _satisfied([], expected.statuses, expected.hello, expected.notifies, eof=False)
    receiver = asyncio.ensure_future(receive())
    try:
        for chunk in stream.chunks():
            writer.write(chunk)
            await writer.drain()
            if pace:
                await asyncio.sleep(0.002)  # let this chunk arrive as a read of its own
        async with asyncio.timeout(QUIET_S if nothing_due else CONNECTION_TIMEOUT_S):
            await asyncio.shield(receiver)
    except TimeoutError:  # (before OSError, of which it is a subclass)
        pass
    except (ConnectionError, OSError):
        # The agent closed while we were still writing (after its DISCONNECT): read what it sent.
        try:
            async with asyncio.timeout(CONNECTION_TIMEOUT_S):
                await asyncio.shield(receiver)
        except (ConnectionError, OSError):  # TimeoutError included
            pass
    except SpopError as exc:
        stats.unexpected.append(f"agent sent an undecodable frame: {exc!r}; stream {stream.data.hex()}")
    finally:
        receiver.cancel()
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass
    failure = receiver.exception() if receiver.done() and not receiver.cancelled() else None
    if failure is not None:
        stats.unexpected.append(f"receive failed: {failure!r}; stream {stream.data.hex()}")
        return
    stats.connections += 1
    stats.frames += len(stream.frames)
    stats.bytes += len(stream.data)
    stats.acks += sum(1 for e in got if isinstance(e, Ack))
    verdict = _verdict(got, eof, expected.statuses, expected.hello, expected.notifies)
    if verdict is not None and reset and None not in expected.statuses and not got:
        # A reset that came before any answer reached us: the status cannot be checked, but the agent did end
        # a connection that had to end.  Counted apart so a campaign shows how often.
        stats.resets += 1
        return
    if verdict is None:
        disconnect = got[-1] if got and isinstance(got[-1], AgentDisconnect) else None
        if disconnect is not None:
            stats.statuses[int(disconnect.status)] += 1
        else:
            stats.waiting += 1
    else:
        kinds = ",".join(f.kind for f in stream.frames)
        stats.unexpected.append(f"{verdict}; frames {kinds}; stream {stream.data.hex()}")


def _satisfied(got: list[Event], statuses: frozenset[int | None], hello: bool, notifies: int, *, eof: bool) -> bool:
    if got and isinstance(got[-1], AgentDisconnect):
        return True  # nothing may follow a DISCONNECT; the verdict checks which one
    if None in statuses:
        acks = sum(1 for e in got if isinstance(e, Ack))
        has_hello = any(isinstance(e, AgentHello) for e in got)
        return acks >= notifies and has_hello == hello
    return eof


def _verdict(got: list[Event], eof: bool, statuses: frozenset[int | None], hello: bool, notifies: int) -> str | None:
    """None if the agent answered as predicted, else what went wrong."""
    kinds = [type(e).__name__ for e in got]
    if any(isinstance(e, AgentDisconnect) for e in got[:-1]):
        return f"frames after AGENT-DISCONNECT: {kinds}"
    if got and isinstance(got[-1], AgentDisconnect):
        status = int(got[-1].status)
        if status not in statuses:
            return f"AGENT-DISCONNECT status {status}, expected one of {sorted(statuses, key=str)}"
        return None
    if None not in statuses:
        return f"no AGENT-DISCONNECT (eof={eof}), expected status {sorted(statuses, key=str)}; got {kinds}"
    acks = sum(1 for e in got if isinstance(e, Ack))
    if acks != notifies or any(isinstance(e, AgentHello) for e in got) != hello:
        return f"expected {'AGENT-HELLO and ' if hello else ''}{notifies} ACKs, got {kinds} (eof={eof})"
    if eof:
        return "the agent closed a valid connection"
    return None


async def _fuzz_many(port: int, *, connections: int, concurrency: int, seed: int,
                     token_values: Sequence[tuple[str, str]]) -> WireStats:
    rng = random.Random(seed)
    fuzzer = FrameFuzzer(rng, seeds=load_seeds(), token_values=token_values)
    stats = WireStats()
    start = time.monotonic()
    queue: asyncio.Queue[tuple[FuzzStream, bool] | None] = asyncio.Queue(maxsize=concurrency * 2)

    async def worker() -> None:
        while (item := await queue.get()) is not None:
            await _fuzz_one(port, item[0], item[1], stats)

    workers = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
    for _ in range(connections):
        await queue.put((fuzzer.stream(frames=12), rng.random() < 0.1))
    for _ in workers:
        await queue.put(None)
    await asyncio.gather(*workers)
    stats.seconds = time.monotonic() - start
    return stats


def _fuzz_process(port: int, connections: int, concurrency: int, seed: int,
                  token_values: Sequence[tuple[str, str]], out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    stats = asyncio.run(_fuzz_many(port, connections=connections, concurrency=concurrency, seed=seed,
                                   token_values=token_values))
    out.put(stats)


async def _canary(port: int, host: str, path: str, expect: str, done: asyncio.Event, stats: CanaryStats,
                  *, per_connection: int = 50) -> None:
    message = Message("lockstep-validation", (("host", TypedValue.string(host)), ("path", TypedValue.string(path))))
    hello = HaproxyHello(("2.0",), 16380, ("pipelining", "async"), "canary")
    sid = 0
    while not done.is_set():
        frames = _Frames()
        pending: list[Event] = []
        try:
            async with asyncio.timeout(CANARY_TIMEOUT_S):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except (OSError, TimeoutError) as exc:
            stats.failures.append(f"connect: {exc!r}")
            await asyncio.sleep(0.05)
            continue
        stats.reconnects += 1

        async def next_frame(reader: asyncio.StreamReader = reader, frames: _Frames = frames,
                             pending: list[Event] = pending) -> Event:
            while not pending:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("agent closed the canary connection")
                pending.extend(frames.feed(data))
            return pending.pop(0)

        try:
            async with asyncio.timeout(CANARY_TIMEOUT_S):
                writer.write(encode_frame(hello))
                reply = await next_frame()
            if not isinstance(reply, AgentHello):
                stats.failures.append(f"HELLO answered with {reply!r}")
                continue
            for _ in range(per_connection):
                if done.is_set():
                    break
                sid += 1
                t0 = time.monotonic()
                async with asyncio.timeout(CANARY_TIMEOUT_S):
                    writer.write(encode_frame(Notify(sid, 1, (message,))))
                    ack = await next_frame()
                stats.latencies_s.append(time.monotonic() - t0)
                stats.requests += 1
                ok = (isinstance(ack, Ack) and ack.stream_id == sid and len(ack.actions) == 1
                      and getattr(ack.actions[0], "value", None) == TypedValue.string(expect))
                if not ok:
                    stats.failures.append(f"NOTIFY {sid} answered with {ack!r}")
                await asyncio.sleep(0.001)  # pacing: the canary watches, the fuzzers load
        except (OSError, ConnectionError, TimeoutError, SpopError) as exc:
            stats.failures.append(f"request {sid}: {exc!r}")
        finally:
            writer.close()


def run_wire_campaign(port: int, *, connections: int, seed: int, host: str, path: str, expect: str,
                      concurrency: int = 16, timeout_s: float = 600.0) -> tuple[WireStats, CanaryStats]:
    """Fuzz the agent on ``port`` from a child process while a canary checks the (host, path) token."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_fuzz_process, args=(port, connections, concurrency, seed, [(host, path)], out),
                       daemon=True)
    canary = CanaryStats()

    async def main() -> WireStats:
        done = asyncio.Event()
        task = asyncio.ensure_future(_canary(port, host, path, expect, done, canary))
        proc.start()
        loop = asyncio.get_running_loop()
        try:
            result: WireStats = await asyncio.wait_for(loop.run_in_executor(None, out.get), timeout_s)
        finally:
            done.set()
            await task
        return result

    try:
        stats = asyncio.run(main())
    finally:
        if proc.pid is not None:  # started
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join(10)
    return stats, canary


def run_canary(port: int, *, duration_s: float, host: str, path: str, expect: str) -> CanaryStats:
    """The canary alone for ``duration_s``: its latency without fuzz load, the anchor of the campaign's."""
    canary = CanaryStats()

    async def main() -> None:
        done = asyncio.Event()
        task = asyncio.ensure_future(_canary(port, host, path, expect, done, canary))
        await asyncio.sleep(duration_s)
        done.set()
        await task

    asyncio.run(main())
    return canary

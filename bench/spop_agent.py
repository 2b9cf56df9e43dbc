"""The sidecar's SPOE agent alone: NOTIFY frames per second with and without pipelining.

A client process speaks SPOP to the real agent process (`lockstep agent`): HAPROXY-HELLO, then NOTIFYs shaped like
HAProxy's `lockstep-validation` message for a host that has a token, checking every ACK carries it. Unpipelined =
16 connections × 1 frame in flight (HAProxy 2.x without pipelining); pipelined = 4 connections × 20 frames in flight
(HAProxy's max-waiting-frames). The agent's CPU seconds come from /proc, so figures are also given per agent
CPU-second, the unit of reference/performance-limits.md §2.6 (Python SPOP micro-benchmark: 60–90k unpipelined,
~300k pipelined, decode + lookup + encode only, no handshake and no store).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import multiprocessing
import os
import secrets
import tempfile
import time
from pathlib import Path

import spoa
from spoa._varint import encode_varint as spoa_varint
from controlplane.sync import Token
from lockstep.devserver import SyncServerThread
from tests.harness.agentproc import AgentProcess
from tests.harness.net import free_port

from .report import Row

FILEAUTH = "/.well-known/pki-validation/fileauth.txt"
HOST = "bench.example.test"


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _connection(port: int, depth: int, deadline: float, expect: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    hello = spoa.HaproxyHello(supported_versions=("2.0",), max_frame_size=16380, capabilities=("pipelining",),
                              engine_id="bench")
    writer.write(spoa.encode_frame(hello))
    buf = b""

    async def read_frames() -> list[bytes]:
        # Every complete frame (LEN included) in what has arrived; reads again until there is one.
        nonlocal buf
        while True:
            frames = []
            pos = 0
            while len(buf) - pos >= 4:
                end = pos + 4 + int.from_bytes(buf[pos:pos + 4], "big")
                if end > len(buf):
                    break
                frames.append(buf[pos:end])
                pos = end
            buf = buf[pos:]
            if frames:
                return frames
            chunk = await reader.read(65536)
            if not chunk:
                raise ConnectionError("agent closed")
            buf += chunk

    [reply] = await read_frames()
    assert isinstance(spoa.decode_frame(reply[4:]), spoa.AgentHello)
    message = spoa.Message("lockstep-validation", (("host", spoa.TypedValue.string(HOST)),
                                                   ("path", spoa.TypedValue.string(FILEAUTH))))
    # The client must not be the bottleneck: NOTIFYs are the encoded template with fresh ids, and an ACK is
    # checked by its bytes (ACK type and the expected set-var value), the first one also fully decoded.
    template = spoa.encode_frame(spoa.Notify(stream_id=0, frame_id=1, messages=(message,)))
    payload = template[4 + 7:]  # after LEN, TYPE, FLAGS, STREAM-ID=0, FRAME-ID=1
    value = expect.encode()
    sid = 0

    def notifies(n: int) -> bytes:
        nonlocal sid
        out = []
        for _ in range(n):
            sid += 1
            body = b"\x03\x00\x00\x00\x01" + spoa_varint(sid) + b"\x01" + payload
            out.append(len(body).to_bytes(4, "big") + body)
        return b"".join(out)

    writer.write(notifies(depth))
    first = True
    done = 0
    while time.monotonic() < deadline:
        acks = await read_frames()
        for ack in acks:
            assert ack[4] == spoa.FrameType.ACK and value in ack, ack
            if first:
                decoded = spoa.decode_frame(ack[4:])
                assert isinstance(decoded, spoa.Ack) and decoded.actions[0].value.value == expect  # type: ignore[union-attr]
                first = False
        done += len(acks)
        writer.write(notifies(len(acks)))  # keep `depth` in flight, one write per read (as HAProxy does)
    writer.close()
    return done


def _client(port: int, connections: int, depth: int, duration_s: float, expect: str,
            out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    async def main() -> int:
        deadline = time.monotonic() + duration_s
        counts = await asyncio.gather(*(_connection(port, depth, deadline, expect) for _ in range(connections)))
        return sum(counts)

    out.put(asyncio.run(main()))


def _measure(port: int, agent_pid: int, connections: int, depth: int, duration_s: float, expect: str
             ) -> tuple[float, float]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    cpu0 = _cpu_s(agent_pid)
    start = time.monotonic()
    proc = ctx.Process(target=_client, args=(port, connections, depth, duration_s, expect, queue))
    proc.start()
    frames = queue.get(timeout=duration_s + 60)
    proc.join(30)
    wall = time.monotonic() - start
    cpu = _cpu_s(agent_pid) - cpu0
    return frames / duration_s, frames / cpu if cpu > 0 else float("nan")


def run(*, duration_s: float = 5.0) -> list[Row]:
    root = Path(tempfile.mkdtemp(prefix="bspop-", dir="/tmp"))
    node_token = secrets.token_hex(16)
    value = secrets.token_hex(32)
    sync = SyncServerThread(node_tokens={node_token: "bench"}).start()
    port = free_port()
    agent = AgentProcess(workdir=root / "agent", node="bench", spoe_port=port, control_plane_url=sync.url,
                         bearer_token=node_token)
    try:
        sync.publish_token(Token(HOST, FILEAUTH, value, dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)))
        agent.start()
        time.sleep(1.0)  # first snapshot
        unpiped = _measure(port, agent.pid, 16, 1, duration_s, value)
        piped = _measure(port, agent.pid, 4, 20, duration_s, value)
    finally:
        agent.stop()
        sync.stop()
    return [
        Row("agent NOTIFY/s, pipelined (4 conns × 20)", piped[0], "frames/s", "unpipelined (16 conns × 1)",
            unpiped[0], note=f"{piped[1]:,.0f} vs {unpiped[1]:,.0f} frames per agent CPU-s"),
    ]

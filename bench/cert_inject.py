"""Bulk hot-injection of certificates by the agent, against the raw runtime-API rate, and an agent restart.

Anchor (same run, same machine, a fresh HAProxy each): a minimal loop of `new/set/commit/add ssl crt-list` on one
interactive runtime-API connection, no files, no checks. Ours: the agent process applying the same number of
certificates published through the sync protocol, end to end (material fetch, checks, atomic file write, inject,
state file, verification handshakes), timed from publish until its /healthz reports all applied.

Restart: with everything applied, the agent is stopped and started; we time until it is ready and count the
certificates it pushed to HAProxy (the goal is 0).
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import socket
import tempfile
import time
from pathlib import Path

from agent.haproxy import HAProxyProcess, find_haproxy
from controlplane.sync import CertRef
from lockstep.devserver import SyncServerThread
from lockstep.pki import Issued, issue
from tests.harness.edge import Edge, make_layout
from tests.harness.net import free_port
from tests.harness.pki import TestPki

from .report import Row


def _certs(pki: TestPki, n: int, tag: str) -> dict[str, Issued]:
    now = dt.datetime.now(dt.timezone.utc)
    return {f"{tag}{i:06d}.bench.test": issue(pki.edge_ca, [f"{tag}{i:06d}.bench.test"], now=now) for i in range(n)}


def _raw_loop(root: Path, pki: TestPki, certs: dict[str, Issued], binary: str) -> float:
    """certificates/s of the bare runtime-API loop on one prompt-mode connection."""
    layout = make_layout(root, pki, backend_port=free_port(), spoe_port=free_port())
    haproxy = HAProxyProcess(layout, binary=binary, log_path=root / "haproxy.log")
    haproxy.start()
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(layout.admin_socket))
        sock.settimeout(30)
        buf = b""

        def call(request: bytes) -> bytes:
            nonlocal buf
            sock.sendall(request)
            while b"\n> " not in buf:
                buf += sock.recv(65536)
            reply, _, buf = buf.partition(b"\n> ")
            return reply

        call(b"prompt\n")
        start = time.monotonic()
        for name, cert in certs.items():
            path = f"{layout.cert_dir}/{name}.pem".encode()
            pem = cert.bundle_pem.strip().encode()
            assert b"New empty" in call(b"new ssl cert " + path + b"\n")
            assert b"Transaction" in call(b"set ssl cert " + path + b" <<\n" + pem + b"\n\n")
            assert b"Success" in call(b"commit ssl cert " + path + b"\n")
            assert b"Success" in call(b"add ssl crt-list " + str(layout.cert_dir).encode() + b" " + path + b"\n")
        elapsed = time.monotonic() - start
        sock.close()
        return len(certs) / elapsed
    finally:
        haproxy.stop()


def _pushes(edge: Edge) -> int:
    text = edge.metrics()
    return int(sum(float(v) for v in re.findall(
        r'^lockstep_agent_certificate_operations_total\{action="(?:add|replace)"\} (\S+)$', text, re.M)))


def _wait_applied(edge: Edge, n: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while edge.health().get("certificates", {}).get("applied") != n or edge.health().get("ready") is not True:
        if time.monotonic() > deadline:
            raise RuntimeError(f"agent did not apply {n} certificates in {timeout_s} s: {edge.health()}")
        time.sleep(0.05)


def _agent_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(*, n: int = 10_000, haproxy_version: str = "2.6") -> list[Row]:
    root = Path(tempfile.mkdtemp(prefix="binj-", dir="/tmp"))
    pki = TestPki.create(root / "pki")
    binary = find_haproxy(haproxy_version)
    raw_rate = _raw_loop(root / "raw", pki, _certs(pki, n, "r"), binary)

    certs = _certs(pki, n, "a")
    token = secrets.token_hex(16)
    sync = SyncServerThread(node_tokens={token: "bench"}).start()
    edge = Edge(haproxy_version, root / "agent", pki, backend_port=free_port(), control_plane_url=sync.url,
                bearer_token=token)
    try:
        edge.start()
        _wait_applied(edge, 0, 30)
        start = time.monotonic()
        sync.publish_many(certificates=[(CertRef(name, c.fingerprint, c.cert.not_valid_after_utc, (name,)),
                                         c.bundle_pem) for name, c in certs.items()])
        _wait_applied(edge, n, 600)
        agent_rate = n / (time.monotonic() - start)
        rss = _agent_rss_mb(edge.agent.pid)

        edge.agent.stop()
        start = time.monotonic()
        edge.agent.start()
        _wait_applied(edge, n, 600)
        restart_s = time.monotonic() - start
        pushes = _pushes(edge)
    finally:
        edge.close()
        sync.stop()
    note = f"HAProxy {haproxy_version}, {n:,} ECDSA certificates, verification handshakes on"
    return [
        Row(f"bulk hot-injection of {n:,} certs (agent, end to end)", agent_rate, "certs/s",
            "raw runtime-API loop (new/set/commit/add)", raw_rate, goal=0.8, note=note),
        Row(f"agent restart with {n:,} applied: time to ready", restart_s, "s", note=f"agent RSS {rss:.0f} MB after apply"),
        Row(f"agent restart with {n:,} applied: certificates pushed", pushes, "pushes", goal=None,
            note="goal 0: nothing re-pushed when disk, memory and state agree"),
    ]


"""Bulk hot-injection of certificates by the agent, against the raw runtime-API rate, and an agent restart.

Anchor (same run, same machine, a fresh HAProxy each): the fastest bare loop of `new/set/commit/add ssl crt-list`
we could write, no files, no checks: one interactive runtime-API connection, each certificate's four commands in
one write, two certificates in flight (HAProxy never waits for the client; 3, 4 or 8 in flight measured no faster).
It runs before and after the agent, and the faster run counts. The textbook loop (one round trip per command,
~35% slower) is measured too, as the second anchor. Ours: the agent process applying the same number of
certificates published through the sync protocol, end to end (material fetch, checks, atomic file write, inject,
state file, verification handshakes), timed from publish until its /healthz reports all applied. CPU seconds of
the agent and of HAProxy over that window are reported per certificate: on a shared machine they say more than
the rates.

Restart: with everything applied, the agent is stopped and started; we time until it is ready and count the
certificates it pushed to HAProxy (the goal is 0).
"""

from __future__ import annotations

import datetime as dt
import os
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


def _raw_loop(root: Path, pki: TestPki, certs: dict[str, Issued], binary: str, *, in_flight: int) -> float:
    """certificates/s of a bare runtime-API loop on one prompt-mode connection.

    in_flight=0: one round trip per command. in_flight=n: each certificate's commands in one write, n certificates
    written ahead of the replies read."""
    layout = make_layout(root, pki, backend_port=free_port(), spoe_port=free_port())
    haproxy = HAProxyProcess(layout, binary=binary, log_path=root / "haproxy.log")
    haproxy.start()
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(layout.admin_socket))
        sock.settimeout(30)
        buf = b""

        def replies(count: int) -> list[bytes]:
            nonlocal buf
            out: list[bytes] = []
            while len(out) < count:
                while b"\n> " not in buf:
                    buf += sock.recv(65536)
                reply, _, buf = buf.partition(b"\n> ")
                out.append(reply)
            return out

        def check(got: list[bytes]) -> None:
            assert b"New empty" in got[0] and b"Transaction" in got[1], got
            assert b"Success" in got[2] and b"Success" in got[3], got

        sock.sendall(b"prompt\n")
        replies(1)
        crt_list = str(layout.cert_dir).encode()
        start = time.monotonic()
        waiting = 0
        for name, cert in certs.items():
            path = f"{layout.cert_dir}/{name}.pem".encode()
            pem = cert.bundle_pem.strip().encode()
            commands = [b"new ssl cert " + path + b"\n", b"set ssl cert " + path + b" <<\n" + pem + b"\n\n",
                        b"commit ssl cert " + path + b"\n", b"add ssl crt-list " + crt_list + b" " + path + b"\n"]
            if in_flight == 0:
                got = []
                for command in commands:
                    sock.sendall(command)
                    got += replies(1)
                check(got)
                continue
            sock.sendall(b"".join(commands))
            waiting += 1
            if waiting == in_flight:
                check(replies(4))
                waiting -= 1
        for _ in range(waiting):
            check(replies(4))
        elapsed = time.monotonic() - start
        sock.close()
        return len(certs) / elapsed
    finally:
        haproxy.stop()


def _cpu_s(pid: int) -> float:
    """user + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    load = os.getloadavg()[0]
    raw_certs = _certs(pki, n, "r")
    raw_rate = _raw_loop(root / "raw", pki, raw_certs, binary, in_flight=2)
    per_command_rate = _raw_loop(root / "raw-per-command", pki, raw_certs, binary, in_flight=0)

    certs = _certs(pki, n, "a")
    token = secrets.token_hex(16)
    sync = SyncServerThread(node_tokens={token: "bench"}).start()
    edge = Edge(haproxy_version, root / "agent", pki, backend_port=free_port(), control_plane_url=sync.url,
                bearer_token=token)
    try:
        edge.start()
        _wait_applied(edge, 0, 30)
        cpu_before = _cpu_s(edge.agent.pid), _cpu_s(edge.haproxy.pid)
        start = time.monotonic()
        sync.publish_many(certificates=[(CertRef(name, c.fingerprint, c.cert.not_valid_after_utc, (name,)),
                                         c.bundle_pem) for name, c in certs.items()])
        _wait_applied(edge, n, 600)
        agent_rate = n / (time.monotonic() - start)
        agent_cpu_ms, haproxy_cpu_ms = ((_cpu_s(pid) - before) / n * 1000
                                        for pid, before in zip((edge.agent.pid, edge.haproxy.pid), cpu_before))
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
    # Once more after the agent, the better run kept: on a shared machine the anchor must not be the unlucky one.
    raw_rate = max(raw_rate, _raw_loop(root / "raw-again", pki, raw_certs, binary, in_flight=2))
    note = (f"HAProxy {haproxy_version}, {n:,} ECDSA certificates, verification handshakes on (they follow the "
            f"apply, outside the timing); CPU per cert: agent {agent_cpu_ms:.2f} ms, HAProxy {haproxy_cpu_ms:.2f} ms; "
            f"load average {load:.1f} at start")
    return [
        Row(f"bulk hot-injection of {n:,} certs (agent, end to end)", agent_rate, "certs/s",
            "fastest raw runtime-API loop (new/set/commit/add in one write, 2 certs in flight)", raw_rate, goal=0.8,
            note=note),
        Row(f"bulk hot-injection of {n:,} certs (agent), against the textbook loop", agent_rate, "certs/s",
            "raw loop, one round trip per command", per_command_rate, note="the anchor before 2026-11"),
        Row(f"agent restart with {n:,} applied: time to ready", restart_s, "s", note=f"agent RSS {rss:.0f} MB after apply"),
        Row(f"agent restart with {n:,} applied: certificates pushed", pushes, "pushes", goal=None,
            note="goal 0: nothing re-pushed when disk, memory and state agree"),
    ]


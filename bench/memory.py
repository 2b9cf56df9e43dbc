"""Agent and control-plane memory with N domains, and the CPU of an idle sync cycle as N grows.

Per size N, a fresh setup: the control plane process (SQLite) whose store already holds N deployed domains with
their certificates (written through the store's own API before it starts, as years of issuance would leave it), one
node (HAProxy + agent) syncing from it. The agent takes the snapshot, fetches the material and hot-injects all N
certificates into HAProxy; once it has verified them and gone quiet we read both processes' RSS (and peak RSS), then
leave everything idle for a window of several long-poll cycles (no change anywhere) and read the CPU each process
spent (schedstat, nanosecond resolution).

Anchor: the same figures at the smallest size of the same run. Memory should grow with N (certificate names,
fingerprints and expiry dates are held); idle CPU should not (an idle cycle is one long-poll answered "no change",
plus the reconciler's periodic look at HAProxy).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import re
import secrets
import time
from collections.abc import Sequence
from pathlib import Path

from certcentral_sim import SimulatorThread
from controlplane.store import load_kek_file, open_store
from lockstep.pki import issue
from tests.harness.cpproc import ControlPlaneProcess
from tests.harness.edge import Edge
from tests.harness.net import free_port
from tests.harness.pki import TestPki

from .procstat import cpu_s, peak_rss_mb, rss_mb, run_time_s
from .report import Row
from .workdir import scratch

AGENT_GOAL_MB_AT_100K = 150.0


@dataclasses.dataclass(frozen=True)
class Sample:
    n: int
    agent_rss: float
    agent_peak: float
    cp_rss: float
    cp_peak: float
    haproxy_rss: float
    apply_s: float
    idle_window_s: float
    idle_cycles: float
    agent_idle_cpu_s: float
    cp_idle_cpu_s: float
    haproxy_idle_cpu_s: float


async def populate(store_url: str, kek_file: Path, pki: TestPki, names: Sequence[str]) -> None:
    """N deployed domains with their current certificates, written through the store's API."""
    store = await open_store(store_url, kek=load_kek_file(kek_file))
    now = dt.datetime.now(dt.timezone.utc)
    renew_at = now + dt.timedelta(days=60)
    try:
        for name in names:
            cert = issue(pki.edge_ca, [name], now=now)
            await store.create_domain(name, status="deployed", status_detail="served by every node",
                                      issuer="digicert", next_retry_at=renew_at,
                                      pipeline={"certificate": cert.fingerprint, "renew_at": renew_at.isoformat()})
            await store.put_certificate(name, chain_pem=cert.cert_pem + cert.chain_pem, key_pem=cert.key_pem,
                                        issuer="digicert")
    finally:
        await store.aclose()


def _counter(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE))


def _wait(predicate, timeout_s: float, what: str, step_s: float = 0.2) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(step_s)


def _quiet(pid: int, *, below: float = 0.05, window_s: float = 2.0, timeout_s: float = 120.0) -> None:
    """Wait until the process uses less than `below` of a core over `window_s` (or give up after timeout_s)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before = run_time_s(pid)
        time.sleep(window_s)
        if (run_time_s(pid) - before) / window_s < below:
            return


def measure(root: Path, n: int, *, pki: TestPki, sim: SimulatorThread, sync_wait_s: float, idle_window_s: float,
            haproxy_version: str) -> Sample:
    token = secrets.token_hex(16)
    cp_port = free_port()
    edge = Edge(haproxy_version, root / "node", pki, backend_port=free_port(), node="mem-1",
                control_plane_url=f"http://127.0.0.1:{cp_port}", bearer_token=token, sync_wait_s=sync_wait_s)
    cp = ControlPlaneProcess(root / "cp", issuer_url=sim.url, issuer_api_key=sim.api_key, port=cp_port,
                             nodes=[{"id": "mem-1", "http": edge.http, "https": edge.https, "bearer_token": token}],
                             pipeline={"poll_s": 2.0, "node_wait_s": 1.0})
    names = [f"m{i:06d}.mem.example.test" for i in range(n)]
    asyncio.run(populate(cp.store_url, cp.workdir / "kek", pki, names))
    try:
        cp.start(timeout_s=120)
        start = time.monotonic()
        edge.start()
        _wait(lambda: edge.health().get("certificates", {}).get("applied") == n and edge.health().get("ready"),
              120 + n * 0.02, f"the agent to apply {n} certificates")
        apply_s = time.monotonic() - start
        # The agent verifies each commit with a handshake once the apply is idle: let that finish too.
        _wait(lambda: _counter(edge.metrics(), "lockstep_agent_verify_ok_total")
              + _counter(edge.metrics(), "lockstep_agent_verify_mismatches_total") >= n,
              60 + n * 0.01, "the verification handshakes", step_s=1.0)
        mismatches = _counter(edge.metrics(), "lockstep_agent_verify_mismatches_total")
        if mismatches:
            raise RuntimeError(f"{mismatches:.0f} verification handshakes served another certificate")
        _quiet(edge.agent.pid)
        _quiet(cp.pid)
        agent_rss, agent_peak = rss_mb(edge.agent.pid), peak_rss_mb(edge.agent.pid)
        cp_rss, cp_peak = rss_mb(cp.pid), peak_rss_mb(cp.pid)
        haproxy_rss = rss_mb(edge.haproxy.pid)
        pids = (edge.agent.pid, cp.pid, edge.haproxy.pid)
        revision_before = edge.health()["sync"]["revision"]
        before = [run_time_s(p) for p in pids]
        cpu_before = [cpu_s(p) for p in pids]
        time.sleep(idle_window_s)
        spent = [run_time_s(p) - b for p, b in zip(pids, before)]
        ticks = [cpu_s(p) - b for p, b in zip(pids, cpu_before)]
        # schedstat loses the time of a thread that ended inside the window: never report less than the ticks say
        spent = [max(s, t) for s, t in zip(spent, ticks)]
        if edge.health()["sync"]["revision"] != revision_before or edge.health()["certificates"]["applied"] != n:
            raise RuntimeError("the idle window was not idle")
    finally:
        edge.close()
        cp.stop()
    return Sample(n, agent_rss, agent_peak, cp_rss, cp_peak, haproxy_rss, apply_s, idle_window_s,
                  idle_window_s / sync_wait_s, *spent)


def run(*, sizes: Sequence[int] = (1_000, 10_000), sync_wait_s: float = 5.0, idle_window_s: float = 30.0,
        haproxy_version: str = "2.6") -> list[Row]:
    with scratch("bmem-") as root:
        pki = TestPki.create(root / "pki")
        sim = SimulatorThread().start()  # the control plane's configured CA; nothing is ordered here
        try:
            samples = []
            for n in sizes:
                samples.append(measure(root / f"n{n}", n, pki=pki, sim=sim, sync_wait_s=sync_wait_s,
                                       idle_window_s=idle_window_s, haproxy_version=haproxy_version))
        finally:
            sim.stop()
    base = samples[0]
    rows: list[Row] = []
    for s in samples[1:]:
        per_cert = (s.agent_rss - base.agent_rss) * 1024 / (s.n - base.n)
        rows.append(Row(
            f"agent RSS with {s.n:,} certificates applied", s.agent_rss, "MB", f"same, {base.n:,} certificates",
            base.agent_rss, higher_is_better=False,
            goal_value=AGENT_GOAL_MB_AT_100K if s.n >= 100_000 else None,
            note=f"peak {s.agent_peak:.0f} MB during the apply ({s.apply_s:.0f} s); {per_cert:.2f} KB per extra "
                 f"certificate; HAProxy RSS {s.haproxy_rss:.0f} MB"))
        per_cert = (s.cp_rss - base.cp_rss) * 1024 / (s.n - base.n)
        rows.append(Row(
            f"control-plane RSS with {s.n:,} domains, serving one agent", s.cp_rss, "MB",
            f"same, {base.n:,} domains", base.cp_rss, higher_is_better=False,
            note=f"peak {s.cp_peak:.0f} MB while the agent fetched everything; {per_cert:.2f} KB per extra domain"))
    for s in samples[1:]:
        for who, value, anchor in (("agent", s.agent_idle_cpu_s, base.agent_idle_cpu_s),
                                   ("control plane", s.cp_idle_cpu_s, base.cp_idle_cpu_s)):
            rows.append(Row(
                f"{who} CPU per idle sync cycle, {s.n:,} domains", value / s.idle_cycles * 1000, "ms",
                f"same, {base.n:,} domains", anchor / base.idle_cycles * 1000, higher_is_better=False, goal=1.25,
                note=f"{s.idle_cycles:.0f} long-polls of {s.idle_window_s / s.idle_cycles:g} s, nothing changing; "
                     f"{value / s.idle_window_s * 100:.2f}% of a core"))
    return rows

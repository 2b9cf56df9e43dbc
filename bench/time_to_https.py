"""Time from "domain added" to HTTPS served by every node: 1, 100 and 1000 domains added at once, p50 and p99.

Real pieces: the control plane process (SQLite store, its pipeline at its shipped defaults: poll_s 2 s, node_wait_s
1 s, concurrency 16), the CertCentral simulator issuing instantly (no issuance delay, no rate limit, and the control
plane's client-side pacing for that CA raised to match), three nodes (HAProxy 2.6 + agent on 127.0.0.2-4) long-polling
the control plane. The simulator validates every order by fetching fileauth.txt through a node picked at random.

Ground truth is a TLS handshake with the domain's SNI against each node, verified against the simulator's root: a
domain counts as served by a node from the first handshake that verifies. One asyncio loop polls in rounds; it only
handshakes with a (domain, node) pair once that node's agent has written the certificate file (the agent writes the
file before it commits the certificate to HAProxy, so this never hides a served certificate, it only saves
handshakes that would fail anyway).

Anchor, measured in the same run: the simulator's own record of each order, from order placed to certificate
issued. That window includes our token propagation (the control plane asks the CA to check only once every node
serves the token), so the rows also split each domain's time into: added → order placed, order placed → issued,
issued → served by every node.

Fixed reference (not measured): the seed's ~600 s ("10 minutes", a 5-minute poll).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import ssl
import statistics
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from agent.certs.material import cert_file_name
from certcentral_sim import OrderStatus, SimConfig
from tests.harness.cluster import Cluster, running_cluster
from tests.harness.cpproc import API_TOKEN, ControlPlaneProcess
from tests.harness.net import split
from tests.harness.pki import TestPki

from .procstat import cpu_s
from .report import Row
from .workdir import scratch

SEED_REFERENCE_S = 600.0
HANDSHAKES_IN_FLIGHT = 16
ROUND_PAUSE_S = 0.02


@contextlib.contextmanager
def cluster(root: Path, *, haproxy_version: str = "2.6", pipeline: dict[str, float] | None = None,
            concurrency: int | None = None) -> Iterator[Cluster]:
    # Instant CA: issuance as soon as DCV passes, no rolling rate limit on the API key.
    with running_cluster(
            root, TestPki.create(root / "pki"), haproxy_version=haproxy_version,
            sim_config=SimConfig(issuance_delay_s=0.0, rate_limits=()),
            # The shipped pipeline defaults (the test harness shortens them); the CA's pacing opened up to match a
            # CA without limits.
            pipeline=pipeline or {"poll_s": 2.0, "node_wait_s": 1.0},
            issuer_extra={"requests_per_s": 10_000.0, "burst": 10_000, "request_timeout_s": 15.0},
            extra={"concurrency": concurrency} if concurrency else None) as c:
        yield c


def _add(cp: ControlPlaneProcess, names: Sequence[str]) -> None:
    req = urllib.request.Request(f"{cp.url}/v1/domains", data=json.dumps({"names": list(names)}).encode(),
                                 method="POST", headers={"Authorization": f"Bearer {API_TOKEN}",
                                                         "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        body = json.loads(resp.read())
    if body["added"] != len(names):
        raise RuntimeError(f"the control plane refused some names: {body['results'][:3]}")


async def _served(addr: str, name: str, ctx: ssl.SSLContext) -> bool:
    """One full handshake with SNI `name`; True when the served chain verifies for that name."""
    host, port = split(addr)
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx, server_hostname=name, ssl_handshake_timeout=5), 10)
    except (ssl.SSLError, OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    return True


async def _watch(c: Cluster, names: Sequence[str], *, timeout_s: float) -> dict[str, float]:
    """name -> monotonic time when the last node started serving it (names never served are left out)."""
    ctx = ssl.create_default_context(cafile=str(c.root_file))
    ctx.options |= ssl.OP_NO_TICKET
    pending = {(name, i) for name in names for i in range(len(c.edges))}
    files = {(name, i): c.edges[i].layout.cert_dir / cert_file_name(name) for name, i in pending}
    served_at: dict[tuple[str, int], float] = {}
    gate = asyncio.Semaphore(HANDSHAKES_IN_FLIGHT)

    async def probe(key: tuple[str, int]) -> None:
        async with gate:
            if await _served(c.edges[key[1]].https, key[0], ctx):
                served_at[key] = time.monotonic()

    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        ready = [key for key in pending if files[key].exists()]
        if ready:
            await asyncio.gather(*(probe(key) for key in ready))
            pending.difference_update(served_at)
        await asyncio.sleep(ROUND_PAUSE_S)
    everywhere: dict[str, float] = {}
    for name in names:
        keys = [(name, i) for i in range(len(c.edges))]
        if all(k in served_at for k in keys):
            everywhere[name] = max(served_at[k] for k in keys)
    return everywhere


def _pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (p99 of 100 values is the 99th smallest)."""
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(q * len(ordered) - 1e-9)))
    return ordered[rank - 1]


@dataclasses.dataclass(frozen=True)
class Wave:
    n: int
    to_https: list[float]  # per domain: added -> served by every node
    to_order: list[float]  # added -> order placed at the CA
    ca: list[float]  # order placed -> issued (the simulator's record)
    delivery: list[float]  # issued -> served by every node
    add_call_s: float
    missing: int
    cpu_s: dict[str, float]  # CPU seconds spent during the wave, by process kind
    wall_s: float  # from the bulk add until the last domain was served (or the time limit)
    load: float  # the 1-minute load average at the end of the wave (2 cores: above 2 means waiting for a CPU)


def measure(c: Cluster, n: int, *, tag: str, timeout_s: float) -> Wave:
    names = [f"{tag}{i:04d}.tth.example.test" for i in range(n)]
    c.route(*names)
    cpu0 = _cpu(c)
    t0_wall = dt.datetime.now(dt.timezone.utc)
    t0 = time.monotonic()
    _add(c.cp, names)
    add_call_s = time.monotonic() - t0
    served = asyncio.run(_watch(c, names, timeout_s=timeout_s))
    wall_s = time.monotonic() - t0
    cpu = {k: v - cpu0[k] for k, v in _cpu(c).items()}
    placed: dict[str, dt.datetime] = {}
    issued: dict[str, dt.datetime] = {}
    by_id = {}
    for order in c.sim.orders():
        if order.names[0] in names:
            placed[order.names[0]] = order.date_created
            by_id[order.id] = order.names[0]
    for change in c.sim.status_log():
        if change.status is OrderStatus.ISSUED and change.order_id in by_id:
            issued.setdefault(by_id[change.order_id], change.at)
    to_https, to_order, ca, delivery = [], [], [], []
    for name, t in served.items():
        total = t - t0
        to_https.append(total)
        if name in placed and name in issued:
            ordered_s = (placed[name] - t0_wall).total_seconds()
            ca_s = (issued[name] - placed[name]).total_seconds()
            to_order.append(ordered_s)
            ca.append(ca_s)
            delivery.append(total - ordered_s - ca_s)
    return Wave(n, to_https, to_order, ca, delivery, add_call_s, n - len(served), cpu, wall_s, os.getloadavg()[0])


def _cpu(c: Cluster) -> dict[str, float]:
    return {"control plane": cpu_s(c.cp.pid), "3 agents": sum(cpu_s(e.agent.pid) for e in c.edges),
            "3 HAProxy": sum(cpu_s(e.haproxy.pid) for e in c.edges),
            "CA simulator + prober": time.process_time()}


def run(*, sizes: Sequence[int] = (1, 100, 1000), haproxy_version: str = "2.6") -> list[Row]:
    waves: list[Wave] = []
    with scratch("btth-") as root, cluster(root, haproxy_version=haproxy_version) as c:
        for i, n in enumerate(sizes):
            waves.append(measure(c, n, tag=f"w{i}n", timeout_s=120 + 0.5 * n))
    rows = []
    for w in waves:
        if not w.to_https:
            rows.append(Row(f"time to HTTPS on 3 nodes, {w.n:,} added at once: p50", float("nan"), "s",
                            note=f"no domain served within the time limit ({w.missing} missing)"))
            continue
        phases = (f"p50 phases: added→ordered {statistics.median(w.to_order):.2f} s, ordered→issued "
                  f"{statistics.median(w.ca):.2f} s, issued→served everywhere {statistics.median(w.delivery):.2f} s"
                  if w.ca else "")
        missing = f"; {w.missing} of {w.n} NOT served in time" if w.missing else ""
        for label, q in (("p50", 0.5), ("p99", 0.99)):
            anchor = _pct(w.ca, q) if w.ca else None
            rows.append(Row(
                f"time to HTTPS on 3 nodes, {w.n:,} domain{'s' if w.n > 1 else ''} added at once: {label}",
                _pct(w.to_https, q), "s", f"CA order placed → issued, {label}", anchor, higher_is_better=False,
                goal_value=2.0 if (w.n == 100 and label == "p50") else None,
                note=(f"{phases}; " if label == "p50" and phases else "")
                + f"seed reference ~{SEED_REFERENCE_S:.0f} s (fixed, not measured); "
                  f"bulk POST took {w.add_call_s:.2f} s{missing}"
                + (f"; wave {w.wall_s:.1f} s, load average {w.load:.1f}; CPU s per domain: "
                   + ", ".join(f"{k} {v / w.n * 1000:.0f} ms" for k, v in w.cpu_s.items())
                   if label == "p50" else "")))
    return rows

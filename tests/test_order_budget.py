"""A bulk import against a CA limited to N orders per window never exceeds it, drains at the predicted pace, and a
renewal that falls due during the import is served before the queued new names."""

from __future__ import annotations

import datetime as dt
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from certcentral_sim import SimulatorThread
from controlplane.store import load_kek_file, open_store
from tests.harness.cpproc import ControlPlaneProcess
from tests.harness.edge import Edge
from tests.harness.net import free_port
from tests.harness.pki import TestPki

pytestmark = pytest.mark.haproxy

ORDERS, WINDOW_S = 4, 3.0


@pytest.fixture(scope="module")
def budget_cluster(short_tmp: Path, pki: TestPki) -> Iterator[tuple[SimulatorThread, ControlPlaneProcess, Edge]]:
    root = Path(tempfile.mkdtemp(prefix="budget-", dir=short_tmp))
    sim = SimulatorThread().start()
    cp_port = free_port()
    edge = Edge("2.6", root / "n0", pki, backend_port=free_port(), node="edge-0",
                control_plane_url=f"http://127.0.0.1:{cp_port}", bearer_token="budget-node-token")
    cp = ControlPlaneProcess(root / "cp", issuer_url=sim.url, issuer_api_key=sim.api_key, port=cp_port,
                             nodes=[{"id": "edge-0", "http": edge.layout.http_bind, "https": edge.layout.https_bind,
                                     "bearer_token": "budget-node-token"}],
                             issuer_extra={"orders_per_window": ORDERS, "window_s": WINDOW_S})
    try:
        cp.start()
        edge.start()
        yield sim, cp, edge
    finally:
        edge.close()
        cp.stop()
        sim.stop()


def test_bulk_import_respects_the_order_budget_and_renewals_go_first(
        budget_cluster: tuple[SimulatorThread, ControlPlaneProcess, Edge]) -> None:
    sim, cp, edge = budget_cluster
    first = "renewme.example.test"
    sim.set_resolve({first: edge.layout.http_bind})
    cp.cli("domains", "add", first)
    cp.wait_status(first, "deployed", 30)

    names = [f"n{i:02d}.customer{i % 3}.test" for i in range(20)]
    sim.set_resolve({first: edge.layout.http_bind, **{n: edge.layout.http_bind for n in names}})
    cp.cli("domains", "add", *names)
    time.sleep(1.0)  # the import is queued and draining
    # A renewal falls due in the middle of the import (the store is shared with the running control plane).
    import asyncio

    async def force_renewal() -> None:
        async with await open_store(cp.store_url, kek=load_kek_file(cp.workdir / "kek")) as store:
            domain = await store.get_domain(first)
            assert domain is not None
            await store.update_domain(first, pipeline={**domain.pipeline, "renew_at": dt.datetime.now(
                dt.timezone.utc).isoformat()}, next_retry_at=dt.datetime.now(dt.timezone.utc))

    asyncio.run(force_renewal())
    renewal_requested = time.monotonic()
    for name in names:
        cp.wait_status(name, "deployed", 120)
    deadline = time.monotonic() + 30
    while len([o for o in sim.orders() if o.names[0] == first]) < 2:
        assert time.monotonic() < deadline, cp.domain(first)
        time.sleep(0.1)

    orders = sorted(sim.orders(), key=lambda o: o.date_created)
    times = [o.date_created for o in orders if o.names[0] in names or o.names[0] == first]
    for i, start in enumerate(times):
        in_window = [t for t in times[i:] if (t - start).total_seconds() < WINDOW_S]
        assert len(in_window) <= ORDERS, f"{len(in_window)} orders within {WINDOW_S} s from {start}"
    renewal_order = [o for o in orders if o.names[0] == first][-1]
    later_new = [o for o in orders if o.names[0] in names and o.date_created > renewal_order.date_created]
    assert later_new, "the renewal was served before the import had drained"
    assert time.monotonic() - renewal_requested < 60

"""ACME through the same SPOE path, CA failover and preflight, against Debian's Pebble (and pebble-challtestsrv as
the DNS server) beside the CertCentral simulator, with a real HAProxy + sidecar node and the control plane as a
real process."""

from __future__ import annotations

import socket
import ssl
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from certcentral_sim import SimulatorThread
from tests.harness.cpproc import ControlPlaneProcess
from tests.harness.edge import Edge
from tests.harness.net import free_port, split
from tests.harness.pebble import PebbleServer
from tests.harness.pki import TestPki

pytestmark = pytest.mark.haproxy

NODE_IP = "127.0.0.2"


@dataclass
class Setup:
    sim: SimulatorThread
    pebble: PebbleServer
    cp: ControlPlaneProcess
    edge: Edge
    pebble_root: Path

    def statuses(self, name: str, until: str, timeout_s: float = 90.0) -> list[tuple[str, str, str]]:
        seen: list[tuple[str, str, str]] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            d = self.cp.domain(name)
            item = (d["status"], d["issuer"] or "", d["detail"] or "")
            if not seen or seen[-1] != item:
                seen.append(item)
            if d["status"] == until:
                return seen
            time.sleep(0.05)
        raise AssertionError(f"{name} never reached {until}: {seen}\n{self.cp.log()}")

    def verify(self, name: str, root: Path) -> None:
        ctx = ssl.create_default_context(cafile=str(root))
        with socket.create_connection(split(self.edge.https), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=name) as tls:
                assert tls.getpeercert() is not None


@pytest.fixture(scope="module")
def setup(short_tmp: Path, pki: TestPki) -> Iterator[Setup]:
    root = Path(tempfile.mkdtemp(prefix="acme-", dir=short_tmp))
    sim = SimulatorThread().start()
    cp_port = free_port()
    edge = Edge("2.6", root / "n0", pki, backend_port=free_port(), node="edge-0", ip=NODE_IP,
                control_plane_url=f"http://127.0.0.1:{cp_port}", bearer_token="acme-node-token")
    # Pebble validates HTTP-01 on this port of whatever challtestsrv resolves the name to: our node's port 80.
    pebble = PebbleServer(root / "pebble", http_port=split(edge.layout.http_bind)[1])
    cp: ControlPlaneProcess | None = None
    try:
        pebble.start()
        cp = ControlPlaneProcess(
            root / "cp", issuer_url=sim.url, issuer_api_key=sim.api_key, port=cp_port,
            nodes=[{"id": "edge-0", "http": edge.layout.http_bind, "https": edge.layout.https_bind,
                    "bearer_token": "acme-node-token"}],
            pipeline={"retry_s": [0.5, 1.0, 2.0]},
            extra={
                "issuers": [
                    {"name": "digicert", "kind": "digicert", "base_url": sim.url, "api_key": sim.api_key,
                     "request_timeout_s": 3.0},
                    {"name": "pebble", "kind": "acme", "directory_url": pebble.directory_url,
                     "ca_bundle": str(pebble.ca_bundle), "caa_identities": ["pebble.test"], "request_timeout_s": 10},
                ],
                "preflight": {"edge_addresses": [NODE_IP], "resolver": f"127.0.0.1:{pebble.dns_port}",
                              "token_wait_s": 10},
            })
        cp.start()
        edge.start()
        pebble_root = root / "pebble-root.pem"
        pebble_root.write_text(pebble.root_pem())
        yield Setup(sim, pebble, cp, edge, pebble_root)
    finally:
        edge.close()
        if cp is not None:
            cp.stop()
        pebble.stop()
        sim.stop()


def _route(s: Setup, name: str) -> None:
    s.pebble.set_dns_a(name, NODE_IP)
    s.sim.set_resolve({name: s.edge.layout.http_bind})


def test_caa_forbidding_digicert_gets_pebble_through_http01(setup: Setup) -> None:
    name = "caa-pebble.example.test"
    _route(setup, name)
    setup.pebble.set_caa(name, ["pebble.test"])
    setup.cp.cli("domains", "add", name)
    seen = setup.statuses(name, "deployed")
    domain = setup.cp.domain(name)
    assert domain["issuer"] == "pebble"
    assert domain["issuer_reason"] == "CAA records do not allow digicert; using pebble", (domain, seen)
    assert not [o for o in setup.sim.orders() if o.names[0] == name]  # no DigiCert order spent
    setup.verify(name, setup.pebble_root)  # chain from Pebble, served with SNI through HAProxy
    # The ACME account key lives sealed in the store: readable with the KEK, absent from the database file.
    import asyncio

    from controlplane.store import load_kek_file, open_store

    async def account_key() -> bytes | None:
        async with await open_store(setup.cp.store_url, kek=load_kek_file(setup.cp.workdir / "kek")) as store:
            return await store.get_system_secret("acme-account:pebble")

    key = asyncio.run(account_key())
    assert key is not None and b"PRIVATE KEY" in key
    body = b"".join(line for line in key.splitlines() if not line.startswith(b"-----"))
    assert body[:40] not in (setup.cp.workdir / "store.db").read_bytes()


def test_digicert_rate_limiting_fails_over_to_pebble(setup: Setup) -> None:
    name = "failover.example.test"
    _route(setup, name)
    setup.sim.rate_limit_next(1000)
    try:
        setup.cp.cli("domains", "add", name)
        setup.statuses(name, "deployed", 120)
    finally:
        setup.sim.clear_faults()
    domain = setup.cp.domain(name)
    assert domain["issuer"] == "pebble"
    assert domain["issuer_reason"].startswith("switched from digicert to pebble: digicert rate limited"), domain
    setup.verify(name, setup.pebble_root)


def test_preflight_holds_the_order_until_dns_points_at_us(setup: Setup) -> None:
    name = "not-yet.example.test"
    setup.sim.set_resolve({name: setup.edge.layout.http_bind})  # DNS (challtestsrv) still says 127.0.0.1
    setup.cp.cli("domains", "add", name)
    deadline = time.monotonic() + 30
    while "dns_not_pointing_at_edge" not in (setup.cp.domain(name)["detail"] or ""):
        assert time.monotonic() < deadline, setup.cp.domain(name)
        time.sleep(0.1)
    detail = setup.cp.domain(name)["detail"]
    assert "no order placed" in detail and setup.cp.domain(name)["next_retry_at"]
    time.sleep(2.0)  # retried on its schedule, still without an order
    assert not [o for o in setup.sim.orders() if o.names[0] == name]
    setup.pebble.set_dns_a(name, NODE_IP)  # the customer fixes DNS
    setup.statuses(name, "deployed", 90)
    assert len([o for o in setup.sim.orders() if o.names[0] == name]) == 1

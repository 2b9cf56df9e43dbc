"""End to end through the control plane: `lockstep domains add` → order on the CertCentral simulator → the simulator
fetches the token through real HAProxy + sidecar (from a randomly chosen node of three) → certificate issued, stored
encrypted, hot-injected by every agent → a TLS client with that SNI verifies the chain against the simulator's root.
Then the CA's faults, and a control plane killed in the middle of an order."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.cluster import Cluster, running_cluster
from tests.harness.pki import TestPki

pytestmark = pytest.mark.haproxy

@pytest.fixture(scope="module")
def cluster(short_tmp: Path, pki: TestPki) -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="prov-", dir=short_tmp))
    with running_cluster(root, pki, pipeline={"retry_s": [0.5, 1.0, 2.0]}) as c:
        yield c


def test_domain_added_through_the_cli_is_served_by_every_node(cluster: Cluster) -> None:
    # Ten names: the simulator picks a node at random per fetch, so all ten landing on one node has odds of 3^-9.
    names = [f"shop{i}.example.test" for i in range(10)]
    cluster.route(*names)
    start = time.monotonic()
    out = cluster.cp.cli("domains", "add", *names)
    assert "added 10 domain(s)" in out.stdout
    for name in names:
        cluster.cp.wait_status(name, "deployed", 60)
    elapsed = time.monotonic() - start
    print(f"\n10 domains added → deployed on 3 nodes in {elapsed:.2f} s")
    for name in names:
        cluster.verify_everywhere(name)
        assert len([o for o in cluster.sim.orders() if o.names[0] == name]) == 1
    # The simulator really fetched fileauth.txt through our nodes, and picked more than one of them.
    fetches = [f for f in cluster.sim.fetches() if f.fqdn in names and f.ok]
    assert {f.fqdn for f in fetches} == set(names)
    peers = {p for f in fetches for p in f.peers}
    assert peers <= {e.layout.http_bind for e in cluster.edges} and len(peers) >= 2, peers
    listing = cluster.cp.cli("domains", "list")
    assert all(name in listing.stdout for name in names) and "deployed" in listing.stdout
    assert "shop0.example.test" in cluster.cp.cli("certs").stdout
    # Private keys are stored encrypted: no key of any node's certificate appears in the database file.
    db = (cluster.cp.workdir / "store.db").read_bytes()
    for name in names:
        pem = (cluster.edges[0].layout.cert_dir / f"{name}.pem").read_text()
        key_body = pem.split("-----BEGIN PRIVATE KEY-----")[1].split("-----END")[0].replace("\n", "")
        assert key_body[:40].encode() not in db


def _orders_for(cluster: Cluster, name: str) -> list[object]:
    return [o for o in cluster.sim.orders() if o.names[0] == name]


def _seen_statuses(cluster: Cluster, name: str, until: str, timeout_s: float = 60.0) -> list[tuple[str, str]]:
    """(status, detail) transitions observed while waiting for `until`."""
    seen: list[tuple[str, str]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        d = cluster.cp.domain(name)
        item = (d["status"], d["detail"] or "")
        if not seen or seen[-1] != item:
            seen.append(item)
        if d["status"] == until:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"{name} never reached {until}: {seen}\n{cluster.cp.log()}")


def test_ca_throttling_errors_and_timeouts_are_retried(cluster: Cluster) -> None:
    name = "faulty.example.test"
    cluster.route(name)
    cluster.sim.rate_limit_next(2)
    cluster.sim.fail_next(2, status=500)
    cluster.sim.hang_next(1, seconds=4.0, method="GET")  # longer than the client's 3 s timeout
    cluster.cp.cli("domains", "add", name)
    seen = _seen_statuses(cluster, name, "deployed", 90)
    assert len(_orders_for(cluster, name)) == 1  # retries never placed a second order
    assert any("429" in d or "rate" in d.lower() or "500" in d or "unavailable" in d.lower() for _, d in seen), seen
    cluster.verify_everywhere(name)


def test_token_not_yet_visible_and_expired_random_value(cluster: Cluster) -> None:
    name = "slow-node.example.test"
    cluster.route(name)
    laggard = cluster.edges[2]
    laggard.agent.stop()  # this node cannot answer the token
    cluster.cp.cli("domains", "add", name)
    deadline = time.monotonic() + 30
    while True:
        d = cluster.cp.domain(name)
        if d["status"] == "validating" and laggard.node_id in (d["detail"] or ""):
            break
        assert time.monotonic() < deadline, d
        time.sleep(0.05)
    # The CA is not asked to look while a node would answer 404/503.
    assert not [f for f in cluster.sim.fetches() if f.fqdn == name]
    order = _orders_for(cluster, name)[0]
    cluster.sim.expire_random_value(order.id)  # type: ignore[attr-defined]
    laggard.agent.start()
    cluster.cp.wait_status(name, "deployed", 60)
    assert len(_orders_for(cluster, name)) == 1
    assert cluster.sim.order(order.id).dcv.value != order.dcv.value  # type: ignore[attr-defined]  # refreshed
    cluster.verify_everywhere(name)


def test_rejected_order_fails_with_its_cause_then_a_new_order_succeeds(cluster: Cluster) -> None:
    name = "rejected.example.test"
    cluster.route(name)
    cluster.sim.reject_next_orders(1)
    cluster.cp.cli("domains", "add", name)
    seen = _seen_statuses(cluster, name, "deployed", 90)
    failed = [d for s, d in seen if s == "failed"]
    assert failed and "rejected" in failed[0], seen
    assert len(_orders_for(cluster, name)) == 2
    shown = cluster.cp.cli("domains", "show", name).stdout
    assert "deployed" in shown


def test_control_plane_killed_mid_order_places_no_second_order(cluster: Cluster) -> None:
    name = "crash.example.test"
    cluster.route(name)
    # The CA creates the order but its answer never arrives; the control plane dies while waiting.
    cluster.sim.hang_next(1, seconds=8.0, method="POST", path="*/order/certificate/*", after=True)
    cluster.cp.cli("domains", "add", name)
    deadline = time.monotonic() + 20
    while not _orders_for(cluster, name):
        assert time.monotonic() < deadline, cluster.cp.log()
        time.sleep(0.05)
    cluster.cp.kill()
    cluster.cp.start()
    cluster.cp.wait_status(name, "deployed", 90)
    assert len(_orders_for(cluster, name)) == 1
    cluster.verify_everywhere(name)


def test_bulk_import_with_progress_and_removal_revokes(cluster: Cluster, tmp_path: Path) -> None:
    names = [f"bulk{i:03d}.example.test" for i in range(250)]
    listing = tmp_path / "domains.txt"
    listing.write_text("# customers\n" + "\n".join(names[:-1]) + "\n*.wild.example.test\n" + names[-1] + "\n")
    res = cluster.cp.cli("domains", "add", "--file", str(listing), check=False)
    assert res.returncode == 1  # one refused
    assert "added 250 domain(s), refused 1" in res.stdout and "wildcard" in res.stdout
    assert "250/251" in res.stderr or "251/251" in res.stderr  # the progress bar
    as_json = cluster.cp.cli("domains", "list", "--prefix", "bulk", "--json")
    import json

    assert len(json.loads(as_json.stdout)) == 250

    name = "shop0.example.test"  # deployed by the first test
    default = cluster.edges[0].layout.default_cert.read_text()
    assert cluster.cp.domain(name)["status"] == "deployed"
    order_ids = [o.id for o in _orders_for(cluster, name)]
    cluster.cp.cli("domains", "remove", name)
    deadline = time.monotonic() + 30
    while True:
        try:
            cluster.cp.domain(name)
        except Exception:  # 404: gone
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    revoked = {getattr(r, "order_id", None) for r in cluster.sim.revoke_requests()}
    assert set(order_ids) & revoked or any(cluster.sim.order(i).status.value == "revoked" for i in order_ids)
    # Every node falls back to the default certificate for that name.
    from cryptography import x509

    from tests.harness.net import tls_peer_cert

    default_leaf = x509.load_pem_x509_certificate(default.encode())
    for edge in cluster.edges:
        deadline = time.monotonic() + 15
        while tls_peer_cert(edge.https, name)[0] != default_leaf:
            assert time.monotonic() < deadline, edge.node_id
            time.sleep(0.1)

"""Certificate sync against real HAProxy 2.6 and 2.8: hot injection without reload, renewal, removal, restarts,
agent crashes mid-apply, and bad material from the control plane.

Certificates are published through the sync protocol (lockstep.devserver) exactly as the control plane does; the
agent is a real process; every check is a real TLS handshake with SNI or a runtime API read.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import random
import re
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes

from controlplane.sync import CertRef
from lockstep.devserver import SyncServerThread
from lockstep.pki import Issued, issue
from tests.harness.edge import Edge, running_edge
from tests.harness.net import free_port, haproxy_command, tls_peer_cert
from tests.harness.pki import DEFAULT_NAME, TestPki

pytestmark = pytest.mark.haproxy

N_BULK = 1000
N_CHURN = 100
NODE_TOKEN = "cert-sync-node-token"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _ref(name: str, cert: Issued) -> CertRef:
    return CertRef(name=name, fingerprint=cert.fingerprint, not_after=cert.cert.not_valid_after_utc,
                   domains=(name,))


def _served(edge: Edge, sni: str) -> str:
    cert, _ = tls_peer_cert(edge.https, sni)
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def _show_info(edge: Edge) -> dict[str, str]:
    out = haproxy_command(edge.layout.admin_socket, "show info")
    return dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)


def _wait_for(predicate, timeout_s: float, what: str, edge: Edge | None = None) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            detail = f"\n{edge.health()}\n{edge.logs()}" if edge is not None else ""
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}{detail}")
        time.sleep(0.1)


def _all_served(edge: Edge, expected: dict[str, str], *, workers: int = 4) -> list[str]:
    """Names whose handshake does not serve the expected fingerprint."""
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        served = dict(zip(expected, pool.map(lambda n: _served(edge, n), expected)))
    return [n for n, fp in expected.items() if served[n] != fp]


class Handshaker:
    """A client doing full handshakes with random SNIs throughout a test; counts failures and wrong certificates."""

    def __init__(self, edge: Edge, names: Sequence[str], expected: dict[str, set[str]]) -> None:
        self.edge, self.names, self.expected = edge, list(names), expected
        self.ok = self.failed = self.wrong = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = random.Random(7)
        while not self._stop.is_set():
            name = rng.choice(self.names)
            try:
                fp = _served(self.edge, name)
            except (OSError, ssl.SSLError) as exc:
                self.failed += 1
                self.errors.append(f"{name}: {exc}")
                continue
            if fp in self.expected.get(name, set()):
                self.ok += 1
            else:
                self.wrong += 1

    def __enter__(self) -> Handshaker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture(scope="module", params=["2.6", "2.8"], ids=["haproxy-2.6", "haproxy-2.8"])
def node_and_sync(request: pytest.FixtureRequest, short_tmp: Path,
                  pki: TestPki) -> Iterator[tuple[Edge, SyncServerThread]]:
    """One node per HAProxy version, each with a control plane of its own (their desired states differ)."""
    server = SyncServerThread(node_tokens={NODE_TOKEN: "node-1"}).start()
    root = Path(tempfile.mkdtemp(prefix=f"c{request.param}-", dir=short_tmp))
    try:
        with running_edge(request.param, root, pki, backend_port=free_port(), control_plane_url=server.url,
                          bearer_token=NODE_TOKEN) as edge:
            yield edge, server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def node(node_and_sync: tuple[Edge, SyncServerThread]) -> Edge:
    return node_and_sync[0]


@pytest.fixture(scope="module")
def cert_sync_server(node_and_sync: tuple[Edge, SyncServerThread]) -> SyncServerThread:
    return node_and_sync[1]


@pytest.fixture(scope="module")
def bulk(pki: TestPki, node: Edge) -> dict[str, Issued]:
    tag = node.kind.replace(".", "")
    now = _now()
    return {f"h{i:04d}-{tag}.example.test": issue(pki.edge_ca, [f"h{i:04d}-{tag}.example.test"], now=now)
            for i in range(N_BULK)}


def test_1000_certificates_hot_added_without_reload(node: Edge, bulk: dict[str, Issued],
                                                    cert_sync_server: SyncServerThread) -> None:
    info_before = _show_info(node)
    expected = {name: {c.fingerprint, node_default_fp(node)} for name, c in bulk.items()}
    with Handshaker(node, list(bulk)[:50] + [DEFAULT_NAME], expected | {DEFAULT_NAME: {node_default_fp(node)}}) as hs:
        start = time.monotonic()
        cert_sync_server.publish_many(certificates=[(_ref(n, c), c.bundle_pem) for n, c in bulk.items()])
        _wait_for(lambda: node.health().get("certificates", {}).get("applied") == N_BULK, 120,
                  "1000 applied", node)
        elapsed = time.monotonic() - start
        time.sleep(0.5)
    print(f"\n{node.kind}: 1000 certificates applied in {elapsed:.1f} s; handshakes during: ok={hs.ok} "
          f"failed={hs.failed} wrong={hs.wrong}")
    assert hs.failed == 0, hs.errors[:5]
    assert hs.wrong == 0 and hs.ok > 0
    assert _all_served(node, {n: c.fingerprint for n, c in bulk.items()}) == []
    info_after = _show_info(node)
    assert info_after["Pid"] == info_before["Pid"] and node.haproxy.is_running()
    assert int(info_after["Uptime_sec"]) >= int(info_before["Uptime_sec"])  # same process, no reload
    files = sorted(p.name for p in node.layout.cert_dir.iterdir())
    assert len(files) == N_BULK and all((node.layout.cert_dir / f).stat().st_mode & 0o777 == 0o600 for f in files)
    metrics = node.metrics()
    assert "lockstep_agent_verify_mismatches_total 0.0" in metrics
    assert f"lockstep_agent_certificates_applied {float(N_BULK)}" in metrics
    assert "lockstep_agent_certificates_pending 0.0" in metrics
    for family in ("lockstep_agent_sync_lag_seconds", "lockstep_agent_sync_last_success_timestamp_seconds",
                   "lockstep_agent_soonest_expiry_timestamp_seconds", "lockstep_agent_verify_ok_total",
                   "lockstep_agent_certificate_operations_total"):
        assert f"\n{family}" in metrics, family


def node_default_fp(node: Edge) -> str:
    return _served(node, DEFAULT_NAME)


def test_renew_and_remove_100(node: Edge, bulk: dict[str, Issued], pki: TestPki,
                              cert_sync_server: SyncServerThread) -> None:
    names = list(bulk)
    renew, remove = names[:N_CHURN], names[N_CHURN:2 * N_CHURN]
    now = _now()
    renewed = {n: issue(pki.edge_ca, [n], now=now) for n in renew}
    default_fp = node_default_fp(node)
    cert_sync_server.publish_many(certificates=[(_ref(n, c), c.bundle_pem) for n, c in renewed.items()],
                                  withdraw_certificates=remove)
    _wait_for(lambda: node.health()["certificates"]["applied"] == N_BULK - N_CHURN, 60, "renewal and removal")
    _wait_for(lambda: not _all_served(node, {n: c.fingerprint for n, c in renewed.items()}), 10, "renewed served")
    assert _all_served(node, {n: default_fp for n in remove}) == []  # back to the default certificate
    for n in remove:
        assert not (node.layout.cert_dir / f"{n}.pem").exists()
    listed = haproxy_command(node.layout.admin_socket, "show ssl cert")
    assert not any(n in listed for n in remove)
    for n, c in renewed.items():
        bulk[n] = c
    for n in remove:
        del bulk[n]


def test_haproxy_restart_serves_everything_from_disk_before_the_agent_acts(node: Edge, bulk: dict[str, Issued]) -> None:
    node.agent.stop()  # the agent does nothing from here on
    node.haproxy.kill()
    node.haproxy.start()
    assert _all_served(node, {n: c.fingerprint for n, c in bulk.items()}) == []
    node.agent.start()
    _wait_for(lambda: node.health().get("ready") is True, 30, "agent ready after restart")
    assert _pushes(node) == 0  # nothing re-pushed: disk, memory and state agree


def _pushes(edge: Edge) -> float:
    text = edge.metrics()
    return sum(float(v) for v in re.findall(
        r'^lockstep_agent_certificate_operations_total\{action="(?:add|replace)"\} (\S+)$', text, re.M))


def test_bad_material_is_rejected_and_the_old_certificate_keeps_serving(
        node: Edge, bulk: dict[str, Issued], pki: TestPki, cert_sync_server: SyncServerThread) -> None:
    tag = node.kind.replace(".", "")
    now = _now()
    victim = next(iter(bulk))  # a served name whose renewal arrives broken
    good_fp = bulk[victim].fingerprint
    other = issue(pki.edge_ca, [f"other-{tag}.example.test"], now=now)
    expired = issue(pki.edge_ca, [victim], now=now, not_before=now - dt.timedelta(days=10), days=1)
    wrong_san = issue(pki.edge_ca, [f"elsewhere-{tag}.example.test"], now=now)
    fresh = issue(pki.edge_ca, [victim], now=now)
    cases: list[tuple[str, CertRef, str, str]] = [
        (victim, CertRef(victim, "sha256:" + "ab" * 32, now, (victim,)), "-----BEGIN CERTIFICATE-----\ngarbage\n",
         "unparsable"),
        (victim, _ref(victim, fresh), fresh.cert_pem + other.key_pem, "key_mismatch"),
        (victim, _ref(victim, expired), expired.bundle_pem, "expired"),
        (victim, _ref(victim, wrong_san), wrong_san.bundle_pem, "name_mismatch"),
    ]
    for name, ref, pem, reason in cases:
        cert_sync_server.publish_certificate(ref, pem)
        _wait_for(lambda: node.health()["certificates"]["failed"].get(name) == reason, 15, f"rejection {reason}")
        assert _served(node, victim) == good_fp, reason
        assert (node.layout.cert_dir / f"{victim}.pem").read_text().startswith(
            bulk[victim].cert_pem.splitlines()[0])
        assert good_fp == "sha256:" + _file_fp(node.layout.cert_dir / f"{victim}.pem")
    for bad_name in (f"a/b-{tag}.example.test", f"..-{tag}.example.test", f"white space-{tag}.example.test",
                     f"../../etc/x-{tag}"):
        cert_sync_server.publish_certificate(_ref(bad_name, other), other.bundle_pem)
        _wait_for(lambda: node.health()["certificates"]["failed"].get(bad_name) == "bad_name", 15, "bad name")
        cert_sync_server.withdraw_certificate(bad_name)
    # Nothing was written for any of them: the directory holds exactly the served certificates.
    assert sorted(p.name for p in node.layout.cert_dir.iterdir()) == sorted(f"{n}.pem" for n in bulk)
    # A good renewal afterwards goes through.
    cert_sync_server.publish_certificate(_ref(victim, fresh), fresh.bundle_pem)
    _wait_for(lambda: _served(node, victim) == fresh.fingerprint, 15, "good renewal")
    bulk[victim] = fresh


def _file_fp(path: Path) -> str:
    from cryptography import x509

    return x509.load_pem_x509_certificate(path.read_bytes()).fingerprint(hashes.SHA256()).hex()

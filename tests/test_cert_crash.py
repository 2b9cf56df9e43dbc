"""The agent is SIGKILLed at random points during a 1000-certificate apply, 10 times, and once more during the
renewal of all of them. After a restart HAProxy matches the desired state, no transaction is left open, no crt-list
entry is duplicated, and nothing that was already correct is pushed again."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import random
import re
import time
import urllib.error
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from controlplane.sync import CertRef
from lockstep.devserver import SyncServerThread
from lockstep.pki import issue
from tests.harness.edge import Edge
from tests.harness.net import haproxy_command, tls_peer_cert
from tests.harness.pki import TestPki

pytestmark = pytest.mark.haproxy

N = 1000
KILLS = 10


def _served_fp(edge: Edge, name: str) -> str:
    cert, _ = tls_peer_cert(edge.https, name)
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def _file_fp(path: Path) -> str | None:
    try:
        return "sha256:" + x509.load_pem_x509_certificate(path.read_bytes()).fingerprint(hashes.SHA256()).hex()
    except (OSError, ValueError):
        return None


def _pushes(edge: Edge) -> int:
    return int(sum(float(v) for v in re.findall(
        r'^lockstep_agent_certificate_operations_total\{action="(?:add|replace)"\} (\S+)$', edge.metrics(), re.M)))


def _gauge(edge: Edge, what: str) -> float | None:
    try:
        text = edge.metrics()
    except urllib.error.URLError:
        return None  # not listening yet
    match = re.search(rf"^lockstep_agent_certificates_{what} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def test_sigkill_during_bulk_apply(fresh_node: tuple[Edge, SyncServerThread], pki: TestPki) -> None:
    edge, sync = fresh_node
    tag = edge.kind.replace(".", "")
    now = dt.datetime.now(dt.timezone.utc)
    certs = {f"k{i:04d}-{tag}.example.test": issue(pki.edge_ca, [f"k{i:04d}-{tag}.example.test"], now=now)
             for i in range(N)}
    want = {n: c.fingerprint for n, c in certs.items()}
    edge.agent.kill()
    sync.publish_many(certificates=[(CertRef(n, c.fingerprint, c.cert.not_valid_after_utc, (n,)), c.bundle_pem)
                                    for n, c in certs.items()])
    rng = random.Random(20261124)
    for _ in range(KILLS):
        edge.agent.start()
        time.sleep(rng.uniform(0.0, 1.2))
        edge.agent.kill()
    # The adds usually converge within those kills; a renewal of every certificate, killed early, leaves the final
    # start with replacements (set + commit on served stores) half done.
    renewed = {n: issue(pki.edge_ca, [n], now=now) for n in certs}
    want = {n: c.fingerprint for n, c in renewed.items()}
    sync.publish_many(certificates=[(CertRef(n, c.fingerprint, c.cert.not_valid_after_utc, (n,)), c.bundle_pem)
                                    for n, c in renewed.items()])
    edge.agent.start()
    time.sleep(rng.uniform(0.3, 0.9))
    edge.agent.kill()

    # What is already right before the final start: on disk and served, both with the desired fingerprint.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        served = dict(zip(want, pool.map(lambda n: _served_fp(edge, n), want)))
    already_right = {n for n in want if served[n] == want[n] and _file_fp(edge.layout.cert_dir / f"{n}.pem") == want[n]}
    print(f"\n{edge.kind}: after {KILLS} kills and a killed renewal, {len(already_right)}/{N} already right")

    edge.agent.start()
    deadline = time.monotonic() + 120
    while _gauge(edge, "applied") != N or _gauge(edge, "pending") != 0:  # /healthz counts renewed-or-not
        assert time.monotonic() < deadline, edge.health()
        time.sleep(0.2)
    pushes = _pushes(edge)
    assert pushes <= N - len(already_right), f"{pushes} pushes but only {N - len(already_right)} needed"

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        served = dict(zip(want, pool.map(lambda n: _served_fp(edge, n), want)))
    assert [n for n in want if served[n] != want[n]] == []
    listing = haproxy_command(edge.layout.admin_socket, "show ssl cert")
    assert "# transaction" not in listing and not re.search(r"^\*", listing, re.M), listing[:300]
    entries = [ln.split()[0] for ln in haproxy_command(
        edge.layout.admin_socket, f"show ssl crt-list {edge.layout.cert_dir}").splitlines()
        if ln and not ln.startswith("#")]
    assert len(entries) == len(set(entries)) == N
    files = sorted(p.name for p in edge.layout.cert_dir.iterdir())
    assert files == sorted(f"{n}.pem" for n in want)  # no temp files, no strays

    # One more restart once converged: nothing at all is pushed.
    edge.agent.stop()
    edge.agent.start()
    while edge.health().get("ready") is not True:
        time.sleep(0.1)
    assert _pushes(edge) == 0

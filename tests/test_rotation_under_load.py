"""Reliability: a client doing full handshakes with random SNIs while certificates are renewed and removed.
Counts failed handshakes and wrong certificates (goal 0 and 0). CI runs a small size; `bench` the large one."""

from __future__ import annotations

import datetime as dt
import random
import ssl
import threading
import time

import pytest
from cryptography.hazmat.primitives import hashes

from controlplane.sync import CertRef
from lockstep.devserver import SyncServerThread
from lockstep.pki import issue
from tests.harness.edge import Edge
from tests.harness.net import tls_peer_cert
from tests.harness.pki import DEFAULT_NAME, TestPki

pytestmark = pytest.mark.haproxy

N, RENEW, REMOVE = 200, 150, 20


def _fp(edge: Edge, sni: str) -> str:
    cert, _ = tls_peer_cert(edge.https, sni)
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def _ref(name: str, cert: object) -> CertRef:
    return CertRef(name, cert.fingerprint, cert.cert.not_valid_after_utc, (name,))  # type: ignore[attr-defined]


def test_rotation_under_load(fresh_node: tuple[Edge, SyncServerThread], pki: TestPki) -> None:
    edge, sync = fresh_node
    now = dt.datetime.now(dt.timezone.utc)
    tag = edge.kind.replace(".", "")
    names = [f"rot{i:04d}-{tag}.example.test" for i in range(N)]
    old = {n: issue(pki.edge_ca, [n], now=now) for n in names}
    sync.publish_many(certificates=[(_ref(n, c), c.bundle_pem) for n, c in old.items()])
    deadline = time.monotonic() + 60
    while edge.health().get("certificates", {}).get("applied") != N:
        assert time.monotonic() < deadline, edge.health()
        time.sleep(0.1)

    default_fp = _fp(edge, DEFAULT_NAME)
    renewed = {n: issue(pki.edge_ca, [n], now=now) for n in names[:RENEW]}
    removed = names[RENEW:RENEW + REMOVE]
    # Acceptable answers while changes are in flight: the old or the new certificate of that very name, or (for a
    # removed name, once removed) the default certificate. Anything else is a wrong certificate.
    acceptable = {n: {old[n].fingerprint} for n in names}
    for n, c in renewed.items():
        acceptable[n].add(c.fingerprint)
    for n in removed:
        acceptable[n].add(default_fp)

    stop = threading.Event()
    counts = {"ok": 0, "failed": 0, "wrong": 0}
    errors: list[str] = []

    def load() -> None:
        rng = random.Random(11)
        while not stop.is_set():
            name = rng.choice(names)
            try:
                fp = _fp(edge, name)
            except (OSError, ssl.SSLError) as exc:
                counts["failed"] += 1
                errors.append(f"{name}: {exc}")
                continue
            counts["ok" if fp in acceptable[name] else "wrong"] += 1

    workers = [threading.Thread(target=load, daemon=True) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        time.sleep(0.5)
        sync.publish_many(certificates=[(_ref(n, c), c.bundle_pem) for n, c in renewed.items()],
                          withdraw_certificates=removed)
        deadline = time.monotonic() + 90
        while not (edge.health().get("certificates", {}).get("applied") == N - REMOVE
                   and all(_fp(edge, n) == c.fingerprint for n, c in list(renewed.items())[:5])):
            assert time.monotonic() < deadline, edge.health()
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        stop.set()
        for w in workers:
            w.join(10)
    print(f"\n{edge.kind}: {counts['ok']} handshakes ok, {counts['failed']} failed, {counts['wrong']} wrong "
          f"during {RENEW} renewals and {REMOVE} removals")
    assert counts["failed"] == 0, errors[:5]
    assert counts["wrong"] == 0
    assert counts["ok"] > 100
    for n, c in renewed.items():
        assert _fp(edge, n) == c.fingerprint
    for n in removed:
        assert _fp(edge, n) == default_fp

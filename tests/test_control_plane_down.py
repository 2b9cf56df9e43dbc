"""The control plane goes away for a while: the node keeps serving every certificate and answering every token it
already knows; changes made meanwhile arrive once it is back, without a restart of anything."""

from __future__ import annotations

import datetime as dt
import secrets
import time

import pytest
from cryptography.hazmat.primitives import hashes

from controlplane.sync import CertRef, Token
from lockstep.devserver import SyncServerThread
from lockstep.pki import issue
from tests.harness.edge import Edge
from tests.harness.net import http_get, tls_peer_cert
from tests.harness.pki import TestPki

pytestmark = pytest.mark.haproxy

FILEAUTH = "/.well-known/pki-validation/fileauth.txt"


def _fp(edge: Edge, sni: str) -> str:
    cert, _ = tls_peer_cert(edge.https, sni)
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def _until(predicate, timeout_s: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_outage_then_catch_up(fresh_node: tuple[Edge, SyncServerThread], pki: TestPki) -> None:
    edge, sync = fresh_node
    now = dt.datetime.now(dt.timezone.utc)
    tag = edge.kind.replace(".", "")
    known = {f"known{i}-{tag}.example.test": issue(pki.edge_ca, [f"known{i}-{tag}.example.test"], now=now)
             for i in range(20)}
    token_host, token_value = f"tok-{tag}.example.test", secrets.token_hex(16)
    sync.publish_many(
        tokens=[Token(token_host, FILEAUTH, token_value, now + dt.timedelta(hours=1))],
        certificates=[(CertRef(n, c.fingerprint, c.cert.not_valid_after_utc, (n,)), c.bundle_pem)
                      for n, c in known.items()])
    assert _until(lambda: edge.health().get("certificates", {}).get("applied") == 20, 30)

    sync.pause()
    assert _until(lambda: edge.health().get("sync", {}).get("failures", 0) >= 2, 15)  # it noticed
    # Everything already known keeps working during the outage.
    for name, cert in known.items():
        assert _fp(edge, name) == cert.fingerprint
    assert http_get(edge.http, FILEAUTH, host=token_host).body == token_value.encode()
    # Meanwhile the control plane's desired state moves on (the pipeline still runs).
    late = {f"late{i}-{tag}.example.test": issue(pki.edge_ca, [f"late{i}-{tag}.example.test"], now=now)
            for i in range(5)}
    gone = sorted(known)[:3]
    new_value = secrets.token_hex(16)
    sync.publish_many(
        tokens=[Token(token_host, FILEAUTH, new_value, now + dt.timedelta(hours=1))],
        certificates=[(CertRef(n, c.fingerprint, c.cert.not_valid_after_utc, (n,)), c.bundle_pem)
                      for n, c in late.items()],
        withdraw_certificates=gone)
    time.sleep(1.0)
    assert http_get(edge.http, FILEAUTH, host=token_host).body == token_value.encode()  # still the old one

    sync.resume()  # the backlog drains through the normal change stream
    assert _until(lambda: http_get(edge.http, FILEAUTH, host=token_host).body == new_value.encode(), 45), \
        edge.health()
    assert _until(lambda: edge.health().get("certificates", {}).get("applied") == 22, 30), edge.health()
    for name, cert in late.items():
        assert _fp(edge, name) == cert.fingerprint
    default = _fp(edge, "default.edge.lockstep.test")
    for name in gone:
        assert _fp(edge, name) == default
    assert edge.health()["sync"]["failures"] == 0

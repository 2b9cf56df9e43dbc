"""The two reliability scenarios of issue 7, shared by the CI tests (small sizes) and `bench` (large sizes).

Both drive one real node (HAProxy + agent) syncing from a `SyncServerThread` and judge it only by what a TLS client
sees: the certificate served for each SNI, and the token answered on port 80. They return counts; the callers
decide what passes (the tests assert zeros, the benchmark reports the counts).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Mapping

from cryptography.hazmat.primitives import hashes

from controlplane.sync import CertRef, Token
from lockstep.devserver import SyncServerThread
from lockstep.pki import Issued, issue

from .edge import Edge
from .net import http_get, tls_peer_cert
from .pki import DEFAULT_NAME, TestPki

FILEAUTH = "/.well-known/pki-validation/fileauth.txt"


def served_fingerprint(edge: Edge, sni: str) -> str:
    cert, _ = tls_peer_cert(edge.https, sni)
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def cert_ref(name: str, cert: Issued) -> CertRef:
    return CertRef(name, cert.fingerprint, cert.cert.not_valid_after_utc, (name,))


def wait_until(predicate: Callable[[], object], timeout_s: float, what: Callable[[], object] | str = "",
               step_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not reached within {timeout_s:g} s: {what() if callable(what) else what}")
        time.sleep(step_s)


def _applied(edge: Edge) -> int | None:
    return edge.health().get("certificates", {}).get("applied")  # type: ignore[no-any-return]


def publish_and_apply(edge: Edge, sync: SyncServerThread, certs: Mapping[str, Issued], *, expect_applied: int,
                      timeout_s: float) -> None:
    sync.publish_many(certificates=[(cert_ref(n, c), c.bundle_pem) for n, c in certs.items()])
    wait_until(lambda: _applied(edge) == expect_applied, timeout_s, edge.health)


@dataclasses.dataclass(frozen=True)
class RotationResult:
    ok: int  # handshakes that got an acceptable certificate
    failed: int  # handshakes that did not complete
    wrong: int  # handshakes that got a certificate that is neither the old nor the new one of that name
    errors: tuple[str, ...]  # the first few failures
    apply_s: float  # from publishing the changes until the agent reported them applied and served
    stale_after: int  # renewed names still served with the old certificate (or removed ones not with the default)


def rotation_under_load(edge: Edge, sync: SyncServerThread, pki: TestPki, *, n: int, renew: int, remove: int,
                        tag: str, workers: int = 2, apply_timeout_s: float = 90.0, seed: int = 11) -> RotationResult:
    """`n` certificates applied; then, while `workers` threads do full handshakes with random SNIs among them,
    the first `renew` are renewed and the next `remove` removed in one burst. Acceptable answers while changes are
    in flight: the old or the new certificate of that very name, or (for a removed name, once removed) the default
    certificate. Anything else is a wrong certificate; a handshake that does not complete is a failure."""
    assert renew + remove <= n
    now = dt.datetime.now(dt.timezone.utc)
    names = [f"rot{i:05d}-{tag}.example.test" for i in range(n)]
    old = {name: issue(pki.edge_ca, [name], now=now) for name in names}
    publish_and_apply(edge, sync, old, expect_applied=n, timeout_s=60 + n * 0.05)

    default_fp = served_fingerprint(edge, DEFAULT_NAME)
    renewed = {name: issue(pki.edge_ca, [name], now=now) for name in names[:renew]}
    removed = names[renew:renew + remove]
    acceptable = {name: {old[name].fingerprint} for name in names}
    for name, c in renewed.items():
        acceptable[name].add(c.fingerprint)
    for name in removed:
        acceptable[name].add(default_fp)

    stop = threading.Event()
    counts = {"ok": 0, "failed": 0, "wrong": 0}
    errors: list[str] = []
    lock = threading.Lock()

    def load(worker: int) -> None:
        rng = random.Random(seed + worker)
        while not stop.is_set():
            name = rng.choice(names)
            try:
                fp = served_fingerprint(edge, name)
            except (OSError, ssl.SSLError) as exc:
                with lock:
                    counts["failed"] += 1
                    if len(errors) < 10:
                        errors.append(f"{name}: {exc}")
                continue
            with lock:
                counts["ok" if fp in acceptable[name] else "wrong"] += 1

    threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        start = time.monotonic()
        sync.publish_many(certificates=[(cert_ref(name, c), c.bundle_pem) for name, c in renewed.items()],
                          withdraw_certificates=removed)
        sample = list(renewed.items())[-5:]  # the agent applies in order: the last ones are done last
        wait_until(lambda: _applied(edge) == n - remove
                   and all(served_fingerprint(edge, name) == c.fingerprint for name, c in sample),
                   apply_timeout_s, edge.health, step_s=0.2)
        apply_s = time.monotonic() - start
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    stale = sum(served_fingerprint(edge, name) != c.fingerprint for name, c in renewed.items())
    stale += sum(served_fingerprint(edge, name) != default_fp for name in removed)
    return RotationResult(counts["ok"], counts["failed"], counts["wrong"], tuple(errors), apply_s, stale)


@dataclasses.dataclass(frozen=True)
class OutageResult:
    noticed_s: float  # from the outage until the agent reported failing syncs
    served_during: int  # known names that served their own certificate during the outage
    wrong_during: int  # known names that served anything else (or failed) during the outage
    token_during: bool  # the known token answered during the outage (also after the desired state moved on)
    catch_up_s: float  # from the control plane's return until every change made meanwhile was served
    stale_after: int  # late names not served, removed names still served, after the catch-up
    failures_after: int  # the agent's consecutive sync failures after the catch-up (0 = healthy again)


def control_plane_outage(edge: Edge, sync: SyncServerThread, pki: TestPki, *, known: int, late: int, gone: int,
                         tag: str, catch_up_timeout_s: float = 60.0) -> OutageResult:
    """`known` certificates and one token applied; the control plane goes away; everything known must keep
    working; meanwhile `late` certificates are added, `gone` known ones withdrawn and the token changes; the
    control plane comes back and the node must catch up without a restart."""
    assert gone <= known
    now = dt.datetime.now(dt.timezone.utc)
    known_certs = {f"known{i:05d}-{tag}.example.test": issue(pki.edge_ca, [f"known{i:05d}-{tag}.example.test"],
                                                             now=now) for i in range(known)}
    token_host, token_value = f"tok-{tag}.example.test", secrets.token_hex(16)
    base = _applied(edge) or 0
    sync.publish_many(tokens=[Token(token_host, FILEAUTH, token_value, now + dt.timedelta(hours=1))],
                      certificates=[(cert_ref(n, c), c.bundle_pem) for n, c in known_certs.items()])
    wait_until(lambda: _applied(edge) == base + known, 60 + known * 0.05, edge.health)

    start = time.monotonic()
    sync.pause()
    wait_until(lambda: edge.health().get("sync", {}).get("failures", 0) >= 2, 30, edge.health)
    noticed_s = time.monotonic() - start
    served = wrong = 0
    for name, cert in known_certs.items():
        try:
            ok = served_fingerprint(edge, name) == cert.fingerprint
        except (OSError, ssl.SSLError):
            ok = False
        served += ok
        wrong += not ok
    token_during = http_get(edge.http, FILEAUTH, host=token_host).body == token_value.encode()
    # Meanwhile the control plane's desired state moves on (its pipeline keeps running).
    late_certs = {f"late{i:05d}-{tag}.example.test": issue(pki.edge_ca, [f"late{i:05d}-{tag}.example.test"],
                                                           now=now) for i in range(late)}
    withdrawn = sorted(known_certs)[:gone]
    new_value = secrets.token_hex(16)
    sync.publish_many(tokens=[Token(token_host, FILEAUTH, new_value, now + dt.timedelta(hours=1))],
                      certificates=[(cert_ref(n, c), c.bundle_pem) for n, c in late_certs.items()],
                      withdraw_certificates=withdrawn)
    time.sleep(1.0)
    token_during = token_during and http_get(edge.http, FILEAUTH, host=token_host).body == token_value.encode()

    start = time.monotonic()
    sync.resume()  # the backlog drains through the normal change stream
    expected = base + known - gone + late
    last_late = list(late_certs.items())[-1] if late_certs else None
    wait_until(lambda: http_get(edge.http, FILEAUTH, host=token_host).body == new_value.encode()
               and _applied(edge) == expected
               and (last_late is None or served_fingerprint(edge, last_late[0]) == last_late[1].fingerprint),
               catch_up_timeout_s, edge.health, step_s=0.05)
    catch_up_s = time.monotonic() - start
    default = served_fingerprint(edge, DEFAULT_NAME)
    stale = sum(served_fingerprint(edge, n) != c.fingerprint for n, c in late_certs.items())
    stale += sum(served_fingerprint(edge, n) != default for n in withdrawn)
    return OutageResult(noticed_s, served, wrong, token_during, catch_up_s, stale,
                        edge.health()["sync"]["failures"])

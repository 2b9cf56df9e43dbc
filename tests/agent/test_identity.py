"""The enrollment client's pure parts (lockstep/enroll.py: pin parsing, pinned CA selection, renewal time, loading an
identity from disk) and the sync client's replaceable HTTP client (agent/sync/client.py: HttpClientSlot). The
network side runs against a real control plane in tests/test_pki_enrollment.py and tests/test_pki_agent.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.sync.client import ControlPlaneClient, HttpClientSlot
from agent.sync.errors import ControlPlaneUnavailable
from controlplane import pki
from lockstep.enroll import (
    IdentityCertificate,
    IdentityManager,
    TrustError,
    atomic_write,
    load_identity,
    parse_pin,
    pinned_ca,
    renew_at,
)

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.timezone.utc)


def test_parse_pin_forms() -> None:
    hexd = "ab" * 32
    for text in (hexd, "sha256:" + hexd, "SHA256:" + hexd.upper(), ":".join(["AB"] * 32), f"  {hexd}\n"):
        assert parse_pin(text) == hexd
    for bad in ("", "ab" * 31, "sha1:" + hexd, "zz" * 32):
        with pytest.raises(TrustError, match="64 hex digits"):
            parse_pin(bad)


def test_pinned_ca_trusts_only_the_pinned_certificate() -> None:
    one, two = pki.create_ca(now=NOW), pki.create_ca(now=NOW)
    bundle = one.cert_pem + two.cert_pem
    pin = two.cert.fingerprint(hashes.SHA256()).hex()
    assert pinned_ca(bundle, pin) == two.cert_pem
    with pytest.raises(TrustError, match="does not match") as info:
        pinned_ca(one.cert_pem, pin)
    assert one.cert.fingerprint(hashes.SHA256()).hex()[:16] in str(info.value)
    with pytest.raises(TrustError, match="no certificate"):
        pinned_ca("<html>not a CA</html>", pin)


def _identity(lifetime_s: float) -> IdentityCertificate:
    return IdentityCertificate(cert_pem="", fingerprint="sha256:x", not_before=NOW - pki.BACKDATE,
                               not_after=NOW + dt.timedelta(seconds=lifetime_s),
                               renew_after=NOW + dt.timedelta(seconds=lifetime_s * 2 / 3), kind="node", id="n")


@given(st.floats(min_value=3, max_value=10 * 365 * 86400), st.integers(min_value=0, max_value=2**32))
@settings(max_examples=200, deadline=None)
def test_renewal_time_is_jittered_around_renew_after_and_before_expiry(lifetime_s: float, seed: int) -> None:
    ident = _identity(lifetime_s)
    at = renew_at(ident, random.Random(seed))
    spread = ident.not_after - ident.renew_after
    assert ident.renew_after - spread * 0.25 <= at <= ident.renew_after + spread * 0.25
    assert at < ident.not_after and at > NOW


def test_renewal_times_spread_a_fleet() -> None:
    ident = _identity(86400)
    times = {renew_at(ident, random.Random(seed)) for seed in range(50)}
    assert len(times) == 50  # fifty nodes enrolled together do not renew together


def _write_identity(directory: Path, ca: pki.InternalCa, *, now: dt.datetime = NOW, lifetime_s: float = 3600,
                    key: ec.EllipticCurvePrivateKey | None = None) -> pki.IssuedCertificate:
    directory.mkdir(parents=True, exist_ok=True)
    own = ec.generate_private_key(ec.SECP256R1())
    issued = pki.issue(ca, own.public_key(), profile=pki.Profile.NODE, identity_id="edge-1", now=now,
                       validity=pki.Validity(node_s=lifetime_s))
    stored_key = key or own
    atomic_write(directory / "identity.pem", issued.pem.encode() + stored_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return issued


def test_load_identity(tmp_path: Path) -> None:
    ca = pki.create_ca(now=NOW)
    issued = _write_identity(tmp_path / "ok", ca)
    loaded = load_identity(tmp_path / "ok", "identity", trust_pem=ca.cert_pem, now=NOW)
    assert loaded is not None and loaded.fingerprint == issued.fingerprint and loaded.id == "edge-1"
    # No metadata file: renew_after from the certificate (2/3 of the lifetime from issuance).
    assert abs((loaded.renew_after - issued.renew_after).total_seconds()) <= 1
    (tmp_path / "ok" / "identity.json").write_text(json.dumps({
        "fingerprint": issued.fingerprint, "kind": "node", "id": "edge-1", "renew_after": "2026-11-24T12:10:00Z"}))
    assert load_identity(tmp_path / "ok", "identity", trust_pem=ca.cert_pem, now=NOW).renew_after == \
        dt.datetime(2026, 11, 24, 12, 10, tzinfo=dt.timezone.utc)  # type: ignore[union-attr]
    assert load_identity(tmp_path / "ok", "identity", trust_pem=ca.cert_pem, now=issued.not_after) is None
    assert load_identity(tmp_path / "ok", "identity", trust_pem=pki.create_ca(now=NOW).cert_pem, now=NOW) is None
    _write_identity(tmp_path / "mismatch", ca, key=ec.generate_private_key(ec.SECP256R1()))
    assert load_identity(tmp_path / "mismatch", "identity", trust_pem=ca.cert_pem, now=NOW) is None
    assert load_identity(tmp_path / "none", "identity", trust_pem=ca.cert_pem, now=NOW) is None
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "identity.pem").write_text("garbage")
    assert load_identity(tmp_path / "junk", "identity", trust_pem=ca.cert_pem, now=NOW) is None


def test_manager_arguments_are_checked(tmp_path: Path) -> None:
    common = {"directory": tmp_path, "now": lambda: NOW, "rand": random.Random(1)}
    with pytest.raises(ValueError, match="https"):
        IdentityManager(url="http://cp", ca_file=tmp_path / "ca.pem", **common)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exactly one"):
        IdentityManager(url="https://cp", **common)  # type: ignore[arg-type]
    with pytest.raises(TrustError):
        IdentityManager(url="https://cp", ca_sha256="nope", **common)  # type: ignore[arg-type]


async def test_slot_lets_requests_in_flight_finish_on_their_client() -> None:
    """A long-poll in flight on the old client completes; new requests use the new one; the old one is closed
    after its last request, not before."""
    release = asyncio.Event()
    seen: list[str] = []

    def transport(tag: str) -> httpx.MockTransport:
        async def handler(request: httpx.Request) -> httpx.Response:
            seen.append(f"{tag}{request.url.path}")
            if request.url.path == "/v1/sync/changes":
                await release.wait()
                return httpx.Response(200, json={"protocol": 1, "revision": 5, "changes": []})
            return httpx.Response(200, json={"protocol": 1, "revision": 5, "tokens": [], "certificates": []})

        return httpx.MockTransport(handler)

    old = httpx.AsyncClient(base_url="https://cp", transport=transport("old"))
    new = httpx.AsyncClient(base_url="https://cp", transport=transport("new"))
    slot = HttpClientSlot(old)
    client = ControlPlaneClient(slot)
    poll = asyncio.create_task(client.changes(5, wait_s=10))
    while "old/v1/sync/changes" not in seen:
        await asyncio.sleep(0.01)
    slot.replace(new)
    await client.snapshot()
    assert seen[-1] == "new/v1/sync/snapshot" and not old.is_closed
    release.set()
    assert (await poll).revision == 5
    assert old.is_closed and not new.is_closed
    third = httpx.AsyncClient(base_url="https://cp", transport=transport("third"))
    slot.replace(third)  # an idle client is closed at once (in a task)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert new.is_closed
    await slot.aclose()
    assert third.is_closed
    with pytest.raises(ControlPlaneUnavailable, match="waiting for the node identity"):
        await ControlPlaneClient(HttpClientSlot()).snapshot()

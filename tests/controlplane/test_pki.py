"""controlplane/pki.py, pure: the CA, CSR checks (signature, key types), and what each profile puts into a
certificate, whatever the CSR asked for. Each issued certificate is verified with a real TLS handshake where the
profile is a TLS role (server names, client auth)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane import pki

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.timezone.utc)
VALIDITY = pki.Validity()


@pytest.fixture(scope="module")
def ca() -> pki.InternalCa:
    return pki.create_ca(now=NOW)


def _csr(key: object, *, cn: str = "evil", sans: list[x509.GeneralName] | None = None) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM).decode()  # type: ignore[arg-type]


def _eku(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _sans(cert: x509.Certificate) -> list[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n.value) for n in ext]


def test_ca_certificate(ca: pki.InternalCa) -> None:
    cert = ca.cert
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Lockstep Internal CA"
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey) and isinstance(ca.key.curve, ec.SECP256R1)
    assert cert.not_valid_after_utc - NOW == dt.timedelta(days=3650)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca and bc.path_length == 0
    assert pki.load_ca(ca.cert_pem, ca.key_pem).fingerprint == ca.fingerprint
    assert "BEGIN" not in repr(ca) and "key" not in repr(ca).lower().replace("keyusage", "")


def test_load_ca_refuses_a_mismatched_key(ca: pki.InternalCa) -> None:
    other = pki.create_ca(now=NOW)
    with pytest.raises(pki.CaUnusable, match="does not match"):
        pki.load_ca(ca.cert_pem, other.key_pem)
    with pytest.raises(pki.CaUnusable):
        pki.load_ca("garbage", other.key_pem)


@pytest.mark.parametrize("key", [ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP384R1()),
                                 rsa.generate_private_key(65537, 2048)], ids=["p256", "p384", "rsa2048"])
def test_accepted_keys(key: object) -> None:
    public = pki.check_csr(_csr(key))
    assert public.public_numbers() == key.public_key().public_numbers()  # type: ignore[attr-defined]


@pytest.mark.parametrize(("key", "error"), [
    (rsa.generate_private_key(65537, 1024), pki.WeakKey),
    (ec.generate_private_key(ec.SECP521R1()), pki.UnsupportedKey),
    (ec.generate_private_key(ec.SECP256K1()), pki.UnsupportedKey),
    (ed25519.Ed25519PrivateKey.generate(), pki.UnsupportedKey),
    (dsa.generate_private_key(2048), pki.UnsupportedKey),
], ids=["rsa1024", "p521", "secp256k1", "ed25519", "dsa"])
def test_refused_keys(key: object, error: type[pki.PkiError]) -> None:
    with pytest.raises(error) as info:
        pki.check_csr(_csr(key))
    assert info.value.reason in ("weak_key", "unsupported_key")


def test_bad_csrs() -> None:
    good = _csr(ec.generate_private_key(ec.SECP256R1()))
    # A CSR whose signature does not match its key: the signature bytes of another CSR spliced in.
    der = x509.load_pem_x509_csr(good.encode()).public_bytes(serialization.Encoding.DER)
    tampered = bytearray(der)
    tampered[-5] ^= 0x01
    tampered_pem = x509.load_der_x509_csr(bytes(tampered)).public_bytes(serialization.Encoding.PEM).decode()
    for bad in (None, 42, "", "hello", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                good.replace("CERTIFICATE REQUEST", "CERTIFICATE"), "x" * 20000, tampered_pem):
        with pytest.raises(pki.BadCsr) as info:
            pki.check_csr(bad)
        assert info.value.reason == "bad_csr"


def test_node_profile_ignores_what_the_csr_asks_for(ca: pki.InternalCa) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    public = pki.check_csr(_csr(key, cn="edge-9", sans=[x509.DNSName("bank.example.com")]))
    issued = pki.issue(ca, public, profile=pki.Profile.NODE, identity_id="edge-1", now=NOW, validity=VALIDITY)
    cert = issued.cert
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "edge-1"
    assert _sans(cert) == ["urn:lockstep:node:edge-1"]
    assert _eku(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert issued.not_after - NOW == dt.timedelta(hours=24)
    assert issued.renew_after - NOW == dt.timedelta(hours=16)
    assert issued.not_before == NOW - pki.BACKDATE
    assert issued.fingerprint == pki.fingerprint(cert) and int(issued.serial, 16) == cert.serial_number
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(ca.cert)


def test_edge_client_backend_and_control_plane_profiles(ca: pki.InternalCa) -> None:
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    edge = pki.issue(ca, public, profile=pki.Profile.EDGE_CLIENT, identity_id="edge-1", now=NOW, validity=VALIDITY)
    assert edge.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "edge.edge-1"
    assert _eku(edge.cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert edge.not_after - NOW == dt.timedelta(hours=24)
    backend = pki.issue(ca, public, profile=pki.Profile.BACKEND, identity_id="app",
                        names=["App.Internal.", "10.0.0.5"], now=NOW, validity=VALIDITY)
    assert _sans(backend.cert) == ["app.internal", "10.0.0.5", "urn:lockstep:backend:app"]
    assert _eku(backend.cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert backend.not_after - NOW == dt.timedelta(days=7)
    cp = pki.issue(ca, public, profile=pki.Profile.CONTROL_PLANE, identity_id="control-plane",
                   names=["localhost", "127.0.0.1", "::1"], now=NOW, validity=VALIDITY)
    assert _sans(cp.cert) == ["localhost", "127.0.0.1", "::1"]
    assert _eku(cp.cert) == {ExtendedKeyUsageOID.SERVER_AUTH}
    assert cp.not_after - NOW == dt.timedelta(days=90)
    with pytest.raises(pki.BadName):
        pki.issue(ca, public, profile=pki.Profile.BACKEND, identity_id="app", names=[], now=NOW, validity=VALIDITY)
    with pytest.raises(pki.BadName):
        pki.issue(ca, public, profile=pki.Profile.NODE, identity_id="Edge 1", now=NOW, validity=VALIDITY)


def test_configured_validity_and_the_ca_bounds_it(ca: pki.InternalCa) -> None:
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    short = pki.Validity(node_s=6)
    issued = pki.issue(ca, public, profile=pki.Profile.NODE, identity_id="n1", now=NOW, validity=short)
    assert issued.not_after - NOW == dt.timedelta(seconds=6) and issued.renew_after - NOW == dt.timedelta(seconds=4)
    late = ca.not_after - dt.timedelta(hours=1)
    capped = pki.issue(ca, public, profile=pki.Profile.NODE, identity_id="n1", now=late, validity=VALIDITY)
    assert capped.not_after == ca.not_after
    for bad in ({"node_s": 0}, {"backend_s": -5}, {"edge_client_s": 3650 * 86400 + 1}):
        with pytest.raises(ValueError):
            pki.Validity(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="aware"):
        pki.issue(ca, public, profile=pki.Profile.NODE, identity_id="n1", now=NOW.replace(tzinfo=None),
                  validity=VALIDITY)


@given(st.from_regex(r"[a-z0-9]([a-z0-9._-]{0,57}[a-z0-9])?", fullmatch=True))
@settings(max_examples=50, deadline=None)
def test_every_valid_id_goes_into_a_node_and_edge_certificate(identity_id: str) -> None:
    ca = _HYPOTHESIS_CA
    public = _HYPOTHESIS_KEY.public_key()
    node = pki.issue(ca, public, profile=pki.Profile.NODE, identity_id=identity_id, now=NOW, validity=VALIDITY)
    edge = pki.issue(ca, public, profile=pki.Profile.EDGE_CLIENT, identity_id=identity_id, now=NOW, validity=VALIDITY)
    assert node.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == identity_id
    assert edge.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"edge.{identity_id}"


@given(st.text(max_size=80))
@settings(max_examples=200, deadline=None)
def test_ids_are_valid_or_refused_with_bad_name(value: str) -> None:
    try:
        assert pki.check_identity_id(value) == value
    except pki.BadName as exc:
        assert exc.reason == "bad_name"


@given(st.lists(st.one_of(st.text(max_size=30), st.ip_addresses().map(str)), max_size=5))
@settings(max_examples=200, deadline=None)
def test_names_are_normalised_or_refused(values: list[str]) -> None:
    try:
        names = pki.check_names(values)
    except pki.BadName:
        return
    assert names and len(set(names)) == len(names)
    for name in names:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            assert name == name.lower() and not name.endswith(".") and "*" not in name


_HYPOTHESIS_CA = pki.create_ca(now=NOW)
_HYPOTHESIS_KEY = ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_issued_certificates_work_in_a_real_mtls_handshake(ca: pki.InternalCa, tmp_path: Path) -> None:
    """Server: control-plane profile for 127.0.0.1; client: node profile. Both verified against the CA by OpenSSL,
    with the client's identity read back from the server side."""
    now = dt.datetime.now(dt.timezone.utc)
    live_ca = pki.create_ca(now=now)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    server = pki.issue(live_ca, server_key.public_key(), profile=pki.Profile.CONTROL_PLANE,
                       identity_id="control-plane", names=["127.0.0.1"], now=now, validity=VALIDITY)
    client = pki.issue(live_ca, client_key.public_key(), profile=pki.Profile.NODE, identity_id="edge-1", now=now,
                       validity=VALIDITY)

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_file = _write(tmp_path / "ca.pem", live_ca.cert_pem.encode())
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(_write(tmp_path / "s.pem", server.pem.encode() + key_pem(server_key)))
    server_ctx.load_verify_locations(ca_file)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=ca_file)
    client_ctx.load_cert_chain(_write(tmp_path / "c.pem", client.pem.encode() + key_pem(client_key)))
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[object] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            seen.append(tls.getpeercert())
            tls.sendall(b"ok")

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=5) as raw:
            with client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.recv(2) == b"ok"
    finally:
        thread.join(5)
        listener.close()
    subject = dict(x[0] for x in seen[0]["subject"])  # type: ignore[index]
    assert subject["commonName"] == "edge-1"

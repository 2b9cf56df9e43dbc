"""Certificates for the agent.certs tests, made with lockstep.pki at a fixed time.

The PKIs are session-scoped: RSA key generation is slow.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lockstep.pki import Issued, PrivateKey, issue, make_ca

NOW = dt.datetime(2026, 11, 24, 9, 0, tzinfo=dt.UTC)
NAME = "shop.example.test"


@dataclasses.dataclass(frozen=True, slots=True)
class Pki:
    """A root, an intermediate under it, and a second intermediate under the first."""

    root: Issued
    inter1: Issued
    inter2: Issued

    def issuer(self, depth: int) -> Issued:
        """The CA whose leaves carry `depth` intermediates."""
        return (self.root, self.inter1, self.inter2)[depth]


def make_pki(key_type: str, prefix: str = "Test") -> Pki:
    root = make_ca(f"{prefix} Root {key_type}", now=NOW - dt.timedelta(days=30), key_type=key_type)
    inter1 = make_ca(f"{prefix} Intermediate 1 {key_type}", now=NOW - dt.timedelta(days=30), parent=root,
                     key_type=key_type)
    inter2 = make_ca(f"{prefix} Intermediate 2 {key_type}", now=NOW - dt.timedelta(days=30), parent=inter1,
                     key_type=key_type)
    return Pki(root, inter1, inter2)


@pytest.fixture(scope="session")
def ec_pki() -> Pki:
    return make_pki("ec")


@pytest.fixture(scope="session")
def rsa_pki() -> Pki:
    return make_pki("rsa")


@pytest.fixture(scope="session")
def other_pki() -> Pki:
    """An unrelated PKI whose CAs have the *same names* as ec_pki's: only signatures tell them apart."""
    return make_pki("ec")


@pytest.fixture(scope="session")
def leaf(ec_pki: Pki) -> Issued:
    """shop.example.test (+ www.) under inter1 of ec_pki."""
    return issue(ec_pki.inter1, [NAME, "www." + NAME], now=NOW)


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key: PrivateKey, fmt: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8) -> str:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()


def bundle(leaf: x509.Certificate, chain: tuple[x509.Certificate, ...] | list[x509.Certificate],
           key: PrivateKey) -> str:
    return pem(leaf) + "".join(pem(c) for c in chain) + key_pem(key)


def fingerprint(cert: x509.Certificate) -> str:
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def leaf_with_names(ca: Issued, common_name: str, sans: list[str] | None = None) -> Issued:
    """A leaf with exactly this subject CN and these SAN DNS names (`None`: no subjectAltName extension at all)."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in sans]), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    chain = () if ca.cert.issuer == ca.cert.subject else (ca.cert,) + ca.chain
    return Issued(cert, key, chain)


_PEM_BODY = re.compile(r"-----BEGIN [A-Z ]+-----\n(.*?)-----END", re.DOTALL)


def key_fragments(key: PrivateKey) -> list[str]:
    """16-character windows of the key's base64, in every encoding we accept: none may appear in an error."""
    out: list[str] = []
    for fmt in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        body = "".join(_PEM_BODY.findall(key_pem(key, fmt))).replace("\n", "")
        out += [body[i:i + 16] for i in range(0, len(body) - 16, 4)]
    return out


def assert_no_key_material(exc: BaseException, *keys: PrivateKey) -> None:
    for text in (str(exc), repr(exc)):
        assert "PRIVATE KEY" not in text
        for key in keys:
            for fragment in key_fragments(key):
                assert fragment not in text, "a fragment of the private key leaked into the error"

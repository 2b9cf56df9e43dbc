"""Small certificate factory for the demo, tests and benchmarks: CAs, server and client certificates.

Pure functions over `cryptography`; nothing here touches disk. Production certificates come from CAs through the
control plane; the internal CA of the zero-trust data path builds on the same primitives.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Issued", "make_ca", "issue", "PrivateKey"]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclasses.dataclass(frozen=True, slots=True)
class Issued:
    """A certificate with its key and the chain above it (not including the root)."""

    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def chain_pem(self) -> str:
        return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in self.chain)

    @property
    def key_pem(self) -> str:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()

    @property
    def bundle_pem(self) -> str:
        """Leaf, chain, then key: the single-file layout HAProxy loads with `crt`."""
        return self.cert_pem + self.chain_pem + self.key_pem

    @property
    def fingerprint(self) -> str:
        return "sha256:" + self.cert.fingerprint(hashes.SHA256()).hex()


def _new_key(kind: str) -> PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def make_ca(
    common_name: str, *, now: dt.datetime, days: int = 3650, parent: Issued | None = None, key_type: str = "ec"
) -> Issued:
    """A CA certificate: self-signed root, or an intermediate under `parent`."""
    key = _new_key(key_type)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    issuer_cert, issuer_key = (parent.cert, parent.key) if parent else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    cert = builder.sign(issuer_key, hashes.SHA256())
    chain = ((parent.cert,) + parent.chain) if parent and parent.cert.issuer != parent.cert.subject else ()
    return Issued(cert, key, chain)


def issue(
    ca: Issued,
    names: Sequence[str],
    *,
    now: dt.datetime,
    days: int = 90,
    not_before: dt.datetime | None = None,
    client: bool = False,
    server: bool = True,
    key_type: str = "ec",
    key: PrivateKey | None = None,
) -> Issued:
    """A leaf for `names` (DNS names or IP literals) signed by `ca`; the chain carries `ca` unless it is a root."""
    key = key or _new_key(key_type)
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    start = not_before or (now - dt.timedelta(minutes=5))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    cert = builder.sign(ca.key, hashes.SHA256())
    is_root = ca.cert.issuer == ca.cert.subject
    chain = () if is_root else (ca.cert,) + ca.chain
    return Issued(cert, key, chain)

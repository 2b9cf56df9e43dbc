"""The little PEM handling the store needs before it writes a certificate: parse, check the key is the leaf's, and
normalise. Pure. Errors never contain key bytes (the key's parse error is replaced, not chained).

This is not the full material check (chain order, names, validity): the pipeline does that before storing, and the
agent again before serving (agent/certs/material.py).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from .errors import InvalidRecord

__all__ = ["ParsedCertificate", "fingerprint_of", "parse_certificate"]


@dataclasses.dataclass(frozen=True, slots=True)
class ParsedCertificate:
    fingerprint: str
    not_before: dt.datetime
    not_after: dt.datetime
    names: tuple[str, ...]
    chain_pem: str  # leaf first, every block re-encoded, ending in a newline
    key_pkcs8_pem: bytes = dataclasses.field(repr=False)


def fingerprint_of(cert: x509.Certificate) -> str:
    """`sha256:` + hex SHA-256 of the DER, as docs/sync-protocol.md defines a certificate's fingerprint."""
    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def parse_certificate(chain_pem: str, key_pem: str | bytes) -> ParsedCertificate:
    """Raises:
        InvalidRecord: no certificate, an unreadable key, an unsupported key type, or a key that is not the leaf's.
    """
    try:
        chain = x509.load_pem_x509_certificates(chain_pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise InvalidRecord("the certificate chain is not PEM certificates") from None
    if not chain:
        raise InvalidRecord("the certificate chain is empty")
    raw_key = key_pem.encode("ascii", "replace") if isinstance(key_pem, str) else key_pem
    try:
        key = serialization.load_pem_private_key(raw_key, password=None)
    except (ValueError, TypeError):
        raise InvalidRecord("the private key is not an unencrypted PEM private key") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey,
                            ed448.Ed448PrivateKey)):
        raise InvalidRecord("unsupported private key type")
    leaf = chain[0]
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise InvalidRecord("the private key is not the leaf certificate's key")
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    return ParsedCertificate(
        fingerprint=fingerprint_of(leaf),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        names=names,
        chain_pem="".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in chain),
        key_pkcs8_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()),
    )

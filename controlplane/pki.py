"""The internal PKI's certificate authority, sans-IO: create the CA, check CSRs, issue certificates per profile.

Owns what an internal certificate looks like (names, key usages, lifetimes) and which requester keys are accepted.
Must not do IO or read a clock: every function takes `now`. Key generation and serial numbers use the operating
system's randomness through `cryptography`, which is the one thing a caller cannot inject.

The control plane decides every name: the subject and extensions of a CSR are ignored, only its public key (and
the proof of possession, its signature) is used. Profiles (docs/controlplane.md, "Internal PKI and node identity"):

* `node`: an agent's identity towards the control plane. CN = node id, SAN URI `urn:lockstep:node:<id>`,
  EKU clientAuth.
* `edge-client`: HAProxy's client certificate towards backends. CN `edge.<node id>`, SAN URI
  `urn:lockstep:edge:<id>`, EKU clientAuth.
* `backend`: a backend's server certificate for its registered DNS names (or IPs), EKU serverAuth + clientAuth (the
  same certificate authenticates the backend to the control plane when it renews).
* `control-plane`: the control plane's own serving certificate for its configured names, EKU serverAuth.

Lifetimes per profile (`Validity`); `renew_after` is two thirds into the lifetime, counted from issuance.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
import ipaddress
import re
from collections.abc import Sequence
from typing import ClassVar, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "BACKDATE", "CA_NAME", "RENEW_FRACTION", "BadCsr", "PrivateKey", "PublicKey", "BadName", "CaUnusable", "InternalCa", "IssuedCertificate", "PkiError", "Profile",
    "UnsupportedKey", "Validity", "WeakKey", "check_csr", "check_identity_id", "check_public_key", "check_names", "create_ca",
    "fingerprint", "issue", "load_ca", "spki_sha256",
]

CA_NAME: Final = "Lockstep Internal CA"
CA_VALIDITY: Final = dt.timedelta(days=3650)
# Certificates start a minute before issuance, so a peer whose clock is a little behind accepts them at once.
BACKDATE: Final = dt.timedelta(seconds=60)
RENEW_FRACTION: Final = 2 / 3
MAX_CSR_BYTES: Final = 16 * 1024
MIN_RSA_BITS: Final = 2048
MAX_RSA_BITS: Final = 8192  # above this a CSR is refused: verifying a huge key is work an attacker could ask for
MAX_NAMES: Final = 100
_ID_RE: Final = re.compile(r"[a-z0-9]([a-z0-9._-]{0,57}[a-z0-9])?")  # "edge." + 59 characters fits a 64-char CN
_LABEL_RE: Final = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_UTC: Final = dt.timezone.utc


class PkiError(Exception):
    """Root of the internal PKI's errors; `reason` is the wire code the API answers with."""

    reason: ClassVar[str] = "pki_error"


class BadCsr(PkiError):
    """The CSR is not PEM, does not parse, is too large, or its signature does not verify."""

    reason = "bad_csr"


class WeakKey(PkiError):
    """An RSA key below 2048 bits."""

    reason = "weak_key"


class UnsupportedKey(PkiError):
    """A key type or curve the PKI does not issue for (EC P-256/P-384 and RSA 2048-8192 are accepted)."""

    reason = "unsupported_key"


class BadName(PkiError):
    """An identity id or a DNS name / IP literal the PKI does not put into a certificate."""

    reason = "bad_name"


class CaUnusable(PkiError):
    """The CA certificate and key do not belong together, or the CA certificate is not a CA."""

    reason = "ca_unusable"


class Profile(enum.StrEnum):
    NODE = "node"
    EDGE_CLIENT = "edge-client"
    BACKEND = "backend"
    CONTROL_PLANE = "control-plane"


@dataclasses.dataclass(frozen=True, slots=True)
class Validity:
    """Lifetime per profile, in seconds. Short by default: rotation is automatic, and removal is then also a matter
    of hours for anyone who trusts the CA without asking the control plane (backends verifying HAProxy)."""

    node_s: float = 24 * 3600.0
    edge_client_s: float = 24 * 3600.0
    backend_s: float = 7 * 24 * 3600.0
    control_plane_s: float = 90 * 24 * 3600.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 1 <= value <= 3650 * 86400:
                raise ValueError(f"{field.name} must be between 1 s and 10 years")

    def of(self, profile: Profile) -> dt.timedelta:
        seconds = {Profile.NODE: self.node_s, Profile.EDGE_CLIENT: self.edge_client_s,
                   Profile.BACKEND: self.backend_s, Profile.CONTROL_PLANE: self.control_plane_s}[profile]
        return dt.timedelta(seconds=seconds)


PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


@dataclasses.dataclass(frozen=True, slots=True)
class InternalCa:
    """The CA certificate and its key. `key_pem` is for sealing into the store only; never log it."""

    cert: x509.Certificate
    key: PrivateKey = dataclasses.field(repr=False)

    @property
    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode("ascii")

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert)

    @property
    def not_after(self) -> dt.datetime:
        return self.cert.not_valid_after_utc


@dataclasses.dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A certificate the CA signed, with the facts the registry and the API need."""

    profile: Profile
    identity_id: str
    cert: x509.Certificate = dataclasses.field(repr=False)
    fingerprint: str
    serial: str  # hex
    not_before: dt.datetime
    not_after: dt.datetime
    renew_after: dt.datetime

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def fingerprint(cert: x509.Certificate) -> str:
    """"sha256:<hex>" of the DER certificate: what the control plane registers and matches for mTLS."""
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def spki_sha256(key: PublicKey) -> str:
    """SHA-256 of the DER SubjectPublicKeyInfo: identifies a requester's key across CSRs."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _aware(now: dt.datetime) -> dt.datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(_UTC)


def create_ca(*, now: dt.datetime, validity: dt.timedelta = CA_VALIDITY) -> InternalCa:
    """A new self-signed EC P-256 root, "Lockstep Internal CA", valid for `validity` (10 years) from `now`."""
    now = _aware(now)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Lockstep")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE).not_valid_after(now + validity)
        # path length 0: the internal CA signs leaves only, never an intermediate
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return InternalCa(cert, key)


def load_ca(cert_pem: str | bytes, key_pem: str | bytes) -> InternalCa:
    """The CA from its stored PEMs. Raises: CaUnusable."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode() if isinstance(cert_pem, str) else cert_pem)
        key = serialization.load_pem_private_key(key_pem.encode() if isinstance(key_pem, str) else key_pem, None)
    except ValueError as exc:
        raise CaUnusable(f"the stored internal CA does not parse: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CaUnusable("the internal CA key is neither EC nor RSA")
    if key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
            cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise CaUnusable("the internal CA key does not match its certificate")
    try:
        if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise CaUnusable("the internal CA certificate is not a CA")
    except x509.ExtensionNotFound:
        raise CaUnusable("the internal CA certificate has no basic constraints") from None
    return InternalCa(cert, key)


def check_public_key(key: object) -> PublicKey:
    """The key, if the PKI issues for it. Raises: WeakKey; UnsupportedKey."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1):
            raise UnsupportedKey(f"EC curve {key.curve.name} is not accepted (P-256 or P-384)")
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise WeakKey(f"RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} are required")
        if key.key_size > MAX_RSA_BITS:
            raise UnsupportedKey(f"RSA key of {key.key_size} bits; at most {MAX_RSA_BITS} are accepted")
        return key
    raise UnsupportedKey(f"{type(key).__name__.lstrip('_')} keys are not accepted (EC P-256/P-384 or RSA >= 2048)")


def check_csr(pem: object) -> PublicKey:
    """The CSR's public key, after checking the CSR parses and its signature proves possession of the key.

    Raises: BadCsr; WeakKey; UnsupportedKey.
    """
    if not isinstance(pem, str | bytes):
        raise BadCsr("the CSR must be a PEM string")
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
    if len(data) > MAX_CSR_BYTES:
        raise BadCsr(f"the CSR is larger than {MAX_CSR_BYTES} bytes")
    if b"-----BEGIN CERTIFICATE REQUEST-----" not in data:
        raise BadCsr("not a PEM certificate request (-----BEGIN CERTIFICATE REQUEST-----)")
    try:
        csr = x509.load_pem_x509_csr(data)
        key = csr.public_key()
    except (ValueError, TypeError) as exc:
        raise BadCsr(f"the CSR does not parse: {exc}") from None
    checked = check_public_key(key)
    try:
        valid = csr.is_signature_valid
    except (ValueError, InvalidSignature):
        valid = False
    if not valid:
        raise BadCsr("the CSR's signature does not verify (proof of possession of the key failed)")
    return checked


def check_identity_id(value: object) -> str:
    """A node or backend id usable in certificates: 1-59 of [a-z0-9._-], starting and ending alphanumeric.

    Raises: BadName.
    """
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise BadName("an id is 1-59 characters of a-z, 0-9, '.', '_', '-', starting and ending with a letter or "
                      "digit")
    return value


def check_names(values: object) -> tuple[str, ...]:
    """DNS names (lower-cased, no wildcard, no trailing dot) or IP literals, at least one, deduplicated in order.

    Raises: BadName.
    """
    if isinstance(values, str) or not isinstance(values, Sequence) or not values:
        raise BadName("names must be a non-empty list")
    if len(values) > MAX_NAMES:
        raise BadName(f"at most {MAX_NAMES} names")
    out: list[str] = []
    for raw in values:
        if not isinstance(raw, str) or not raw:
            raise BadName("each name must be a non-empty string")
        try:
            name = str(ipaddress.ip_address(raw))
        except ValueError:
            name = raw.lower()
            if name.endswith("."):
                name = name[:-1]
            labels = name.split(".")
            if len(name) > 253 or not all(_LABEL_RE.fullmatch(label) for label in labels):
                raise BadName(f"{raw!r} is neither a host name (LDH labels, no wildcard) nor an IP address") from None
        if name not in out:
            out.append(name)
    return tuple(out)


def _general_names(names: Sequence[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def issue(ca: InternalCa, public_key: PublicKey, *, profile: Profile, identity_id: str,
          names: Sequence[str] = (), now: dt.datetime, validity: Validity) -> IssuedCertificate:
    """Sign a certificate of `profile` for `public_key` (from `check_csr`); the names come from the caller's records.

    Args:
        identity_id: the node id (node, edge-client), the backend id (backend), or a label for the control plane.
        names: DNS names / IPs for `backend` and `control-plane` (required there, ignored otherwise).

    Raises: BadName; UnsupportedKey / WeakKey (a key that did not come through `check_csr`).
    """
    now = _aware(now)
    public_key = check_public_key(public_key)
    lifetime = validity.of(profile)
    not_after = min(now + lifetime, ca.not_after)  # a leaf never outlives its CA
    if profile in (Profile.NODE, Profile.EDGE_CLIENT, Profile.BACKEND):
        check_identity_id(identity_id)
    sans: list[x509.GeneralName]
    if profile is Profile.NODE:
        cn, sans, usages = identity_id, [x509.UniformResourceIdentifier(f"urn:lockstep:node:{identity_id}")], \
            [ExtendedKeyUsageOID.CLIENT_AUTH]
    elif profile is Profile.EDGE_CLIENT:
        cn, sans, usages = f"edge.{identity_id}", [x509.UniformResourceIdentifier(f"urn:lockstep:edge:{identity_id}")], \
            [ExtendedKeyUsageOID.CLIENT_AUTH]
    else:
        checked = check_names(names)
        cn = checked[0]
        sans = _general_names(checked)
        if profile is Profile.BACKEND:
            sans.append(x509.UniformResourceIdentifier(f"urn:lockstep:backend:{identity_id}"))
            usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        else:
            usages = [ExtendedKeyUsageOID.SERVER_AUTH]
    is_rsa = isinstance(public_key, rsa.RSAPublicKey)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn[:64])]))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=is_rsa,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    actual_not_after = cert.not_valid_after_utc  # whole seconds, as encoded
    return IssuedCertificate(
        profile=profile, identity_id=identity_id, cert=cert, fingerprint=fingerprint(cert),
        serial=format(cert.serial_number, "x"), not_before=cert.not_valid_before_utc, not_after=actual_not_after,
        renew_after=now + (actual_not_after - now) * RENEW_FRACTION,
    )

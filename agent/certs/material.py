"""Certificate names and material: the checks a bundle passes before anything touches HAProxy or the disk.

Owns: the mapping between a certificate name (a domain, or `*.` + domain) and its file name in the certificate
directory, and `check_material`, which turns a PEM bundle from the control plane into a `Material` or raises
`MaterialRejected`. Pure: no IO, no clock (callers pass `now`), no state. Must not log, and must never put key
material into an error, a repr or a return value other than `Material.pem`.

Rules, and why:

* File names. `shop.example.test` -> `shop.example.test.pem`, `*.example.test` -> `_wildcard.example.test.pem`.
  A name must already be in the normalised form of `agent.tokens.normalize_host` (lower case, A-labels, no port,
  no trailing dot), so exactly one name maps to each file and `name_from_file_name` is its inverse. Host names
  never contain `_`, so `_wildcard.` cannot collide with a host, and they never start with `.`, so the result is
  never a file HAProxy skips (dotfiles) and always passes `agent.runtime.commands.check_cert_name`. The file name
  must fit NAME_MAX (255 bytes), which cuts the longest legal domains (250-253 characters) off: no CA issues for
  those in practice, and refusing is better than a file HAProxy cannot find.
* A wildcard is one whole leading label (`*.` + a domain of at least two labels, as the CA/B Baseline Requirements
  and browsers demand). A wildcard SAN covers exactly one label (RFC 6125 §6.4.3): `*.example.test` covers
  `a.example.test`, not `example.test` nor `a.b.example.test`. The common name is only consulted when the
  certificate has no subjectAltName extension at all.
* The bundle is PEM only: CERTIFICATE blocks (the first one is the leaf) and exactly one private key block
  (PKCS#8 `PRIVATE KEY`, or the traditional `EC PRIVATE KEY` / `RSA PRIVATE KEY`; `EC PARAMETERS` from
  `openssl ecparam -genkey` is accepted and dropped). Anything else, including text between blocks, is refused:
  a truncated bundle must never pass as a shorter one.
* The chain must be in order: certificate i is issued by certificate i+1 (issuer name equals its subject, and
  its key verifies the signature; RSA PKCS#1 v1.5/PSS and ECDSA). No trust store is consulted: the topmost
  certificate's own signature is not checked (the control plane validated the chain when it got it), so damage
  confined to that certificate's signature fields would pass. Only the leaf's validity period is checked: clients
  build their own path, and shipping an expired cross-signed root is a known, deliberate practice.
* The result is normalised (leaf, chain, PKCS#8 key, every block re-encoded, ending in a newline, no blank lines):
  one canonical form for the file, the runtime API and comparisons.
"""

from __future__ import annotations

import binascii
import dataclasses
import datetime as dt
import hashlib
import re
from typing import Final, Literal, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from agent.tokens import InvalidHost, normalize_host

from .errors import MaterialRejected, Reason

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_CHAIN_LENGTH",
    "CLOCK_SKEW",
    "FILE_SUFFIX",
    "WILDCARD_PREFIX",
    "Material",
    "cert_file_name",
    "name_from_file_name",
    "MaterialRejected",
    "Reason",
    "check_material",
    "leaf_der",
    "leaf_fingerprint",
]

# A real bundle (leaf + 2 intermediates + RSA-4096 key) is about 8 KiB; 64 KiB bounds parsing work and memory.
DEFAULT_MAX_BYTES: Final = 64 * 1024
MAX_CHAIN_LENGTH: Final = 10  # certificates in a bundle, leaf included; public chains have 2-4
CLOCK_SKEW: Final = dt.timedelta(minutes=5)  # CAs backdate notBefore by minutes at most; clocks drift a little
FILE_SUFFIX: Final = ".pem"
WILDCARD_PREFIX: Final = "_wildcard."
NAME_MAX: Final = 255  # Linux NAME_MAX: longest file name in a directory, in bytes

KeyType = Literal["ec", "rsa"]
_Ext = TypeVar("_Ext", bound=x509.ExtensionType)

# Fast path for the common name shape (plain LDH labels, no A-label, non-numeric TLD), which is exactly what
# `normalize_host` returns unchanged for such input; everything else goes through `normalize_host` itself.
_LABEL = r"(?!xn--)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_PLAIN_HOST = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}")
_FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")
# One PEM block; the body is base64 and whitespace only, so a block cannot swallow another BEGIN/END line.
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]{1,64})-----\n([A-Za-z0-9+/=\s]*?)-----END \1-----")
# Key labels we accept, and how errors name them: a detail never contains the literal label (nor anything else
# that looks like key material), so a log search for "PRIVATE KEY" only ever finds keys.
_KEY_LABELS: Final = {"PRIVATE KEY": "PKCS#8", "EC PRIVATE KEY": "SEC1 (EC)", "RSA PRIVATE KEY": "PKCS#1 (RSA)"}
_IGNORED_LABELS: Final = frozenset({"EC PARAMETERS"})
_BEGIN_CERT: Final = b"-----BEGIN CERTIFICATE-----"
_END_CERT: Final = b"-----END CERTIFICATE-----"


@dataclasses.dataclass(frozen=True, slots=True)
class Material:
    """A bundle that passed every check, in normalised form.

    Attributes:
        name: the certificate name (domain or `*.` + domain).
        pem: leaf, chain, then the PKCS#8 key; each block ends with a newline, no blank lines. Holds the private
            key: never log it (it is left out of repr).
        fingerprint: `sha256:` + hex SHA-256 of the leaf's DER, as in the sync protocol.
        sha1_hex: upper-case hex SHA-1 of the leaf's DER, as HAProxy's `show ssl cert <name>` prints it.
        serial_hex: upper-case hex of the serial's bytes, as `show ssl cert <name>` prints it.
        not_before, not_after: the leaf's validity period (aware, UTC).
        domains: the leaf's subjectAltName DNS names in certificate order (its common names if it has no SAN).
        key_type: "ec" or "rsa".
    """

    name: str
    pem: str = dataclasses.field(repr=False)
    fingerprint: str
    sha1_hex: str
    serial_hex: str
    not_before: dt.datetime
    not_after: dt.datetime
    domains: tuple[str, ...]
    key_type: KeyType

    @property
    def file_name(self) -> str:
        """The file this bundle is written to inside the certificate directory."""
        return cert_file_name(self.name)


# --- names -----------------------------------------------------------------------------------------------------


def _check_host(name: str, original: object) -> None:
    """`name` is a host in normalised form, not an IP literal, with a non-numeric last label."""
    if _PLAIN_HOST.fullmatch(name) is None:
        try:
            normalized = normalize_host(name)
        except InvalidHost as exc:
            raise MaterialRejected(_as_name(original), Reason.BAD_NAME, f"not a domain name ({exc})") from None
        if normalized != name:
            raise MaterialRejected(_as_name(original), Reason.BAD_NAME,
                                   "not in normalised form (lower case, A-labels, no port, no trailing dot)")
    if name.rpartition(".")[2].isdigit():  # an IPv4 literal, or a TLD no registry can have (RFC 3696 §2)
        raise MaterialRejected(_as_name(original), Reason.BAD_NAME, "IP literal or numeric top-level label")


def _as_name(value: object) -> str:
    return value if isinstance(value, str) else ""


def cert_file_name(name: str) -> str:
    """The file name of certificate `name` inside the certificate directory.

    Args:
        name: a normalised domain, or `*.` + a normalised domain of at least two labels.

    Returns:
        `<name>.pem`, or `_wildcard.<rest>.pem` for `*.<rest>`.

    Raises:
        MaterialRejected: reason `bad_name` for anything else (not a str, empty, upper case, whitespace, `/`,
            `..`, control characters, an IP literal, `*` anywhere but a whole first label, or too long).
    """
    if not isinstance(name, str) or not name:
        raise MaterialRejected(_as_name(name), Reason.BAD_NAME, "empty or not a string")
    if len(name) > NAME_MAX:
        raise MaterialRejected(name, Reason.BAD_NAME, f"longer than {NAME_MAX} characters")
    if name.startswith("*."):
        rest = name[2:]
        if "*" in rest:
            raise MaterialRejected(name, Reason.BAD_NAME, "a wildcard must be the whole first label only")
        _check_host(rest, name)
        if "." not in rest:
            raise MaterialRejected(name, Reason.BAD_NAME, "a wildcard needs at least two labels after '*.'")
        file_name = WILDCARD_PREFIX + rest + FILE_SUFFIX
    else:
        if "*" in name:
            raise MaterialRejected(name, Reason.BAD_NAME, "a wildcard must be the whole first label only")
        _check_host(name, name)
        file_name = name + FILE_SUFFIX
    if len(file_name) > NAME_MAX:  # ASCII only by now, so characters are bytes
        raise MaterialRejected(name, Reason.BAD_NAME, f"file name would exceed {NAME_MAX} bytes")
    return file_name


def name_from_file_name(file_name: str) -> str | None:
    """The certificate name stored in `file_name`, or None if the file is not one of ours.

    Exact inverse of `cert_file_name`: temp files (leading `.`), companions, upper-case or otherwise foreign
    names give None, so callers never touch files they did not write.
    """
    if not isinstance(file_name, str) or not file_name.endswith(FILE_SUFFIX):
        return None
    stem = file_name[: -len(FILE_SUFFIX)]
    name = "*." + stem[len(WILDCARD_PREFIX):] if stem.startswith(WILDCARD_PREFIX) else stem
    try:
        if cert_file_name(name) != file_name:
            return None
    except MaterialRejected:
        return None
    return name


def _covers(pattern: str, name: str) -> bool:
    """Whether a certificate name `pattern` (from the SAN or CN) covers certificate name `name` (RFC 6125 §6.4)."""
    pattern = pattern.lower()
    if pattern == name:
        return True
    if not pattern.startswith("*.") or name.startswith("*."):
        return False
    suffix = pattern[2:]
    if "*" in suffix or "." not in suffix:  # partial or second-level wildcards match nothing
        return False
    label, dot, rest = name.partition(".")
    return bool(label and dot and rest == suffix)


# --- material --------------------------------------------------------------------------------------------------


def _reject(name: str, reason: Reason, detail: str) -> MaterialRejected:
    return MaterialRejected(name, reason, detail)


def _blocks(name: str, text: str) -> list[tuple[str, str]]:
    """(label, block text) for each PEM block; anything but whitespace outside blocks is an error."""
    blocks: list[tuple[str, str]] = []
    pos = 0
    for match in _PEM_BLOCK.finditer(text):
        if text[pos:match.start()].strip():
            raise _reject(name, Reason.UNPARSABLE,
                          f"text that is not a complete PEM block before block {len(blocks) + 1}")
        blocks.append((match.group(1), match.group(0) + "\n"))
        pos = match.end()
    if text[pos:].strip():
        raise _reject(name, Reason.UNPARSABLE,
                      f"truncated PEM or text after block {len(blocks)}" if blocks else "no PEM block")
    if not blocks:
        raise _reject(name, Reason.NO_CERTIFICATE, "empty bundle")
    return blocks


def _extension(name: str, cert: x509.Certificate, kind: type[_Ext], what: str) -> _Ext | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise _reject(name, Reason.UNPARSABLE, f"{what}: malformed extensions ({type(exc).__name__})") from None


def _is_ca(name: str, cert: x509.Certificate, what: str) -> bool | None:
    constraints = _extension(name, cert, x509.BasicConstraints, what)
    return None if constraints is None else constraints.ca


def _spki(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _rsa_signs_for(key: rsa.RSAPrivateKey, public: rsa.RSAPublicKey) -> bool:
    """Proof that an RSA private key works: it signs a fixed message that the leaf's public key verifies. The
    signature is thrown away."""
    message = b"lockstep: private key matches certificate"
    try:
        public.verify(key.sign(message, padding.PKCS1v15(), hashes.SHA256()), message, padding.PKCS1v15(),
                      hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True


def _serial_hex(serial: int) -> str:
    # HAProxy prints the ASN.1 INTEGER's content octets without the sign byte (ssl_sock_get_serial).
    magnitude = abs(serial)
    return magnitude.to_bytes(max(1, (magnitude.bit_length() + 7) // 8), "big").hex().upper()


def _domains(name: str, leaf: x509.Certificate) -> tuple[tuple[str, ...], bool]:
    """(names the leaf is for, whether they come from a SAN extension)."""
    san = _extension(name, leaf, x509.SubjectAlternativeName, "leaf")
    if san is not None:
        return tuple(san.get_values_for_type(x509.DNSName)), True
    common = [attr.value for attr in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return tuple(v for v in common if isinstance(v, str)), False


def _load_cert(name: str, block: str, index: int) -> x509.Certificate:
    """Parse one certificate completely: `cryptography` decodes fields lazily, and a damaged subject or extension
    would otherwise surface as a ValueError deep inside a later check."""
    what = "leaf" if index == 0 else f"chain certificate #{index}"
    try:
        cert = x509.load_pem_x509_certificate(block.encode("ascii"))
        cert.subject.rfc4514_string()
        cert.issuer.rfc4514_string()
        _ = cert.serial_number, cert.not_valid_before_utc, cert.not_valid_after_utc, cert.signature
        cert.public_key()
        list(cert.extensions)
    except (ValueError, UnsupportedAlgorithm, x509.DuplicateExtension, x509.UnsupportedGeneralNameType,
            CryptographyDeprecationWarning) as exc:  # the last one only where warnings are errors (tests)
        raise _reject(name, Reason.UNPARSABLE, f"{what} does not parse ({type(exc).__name__})") from None
    if cert.serial_number <= 0:  # cryptography only warns (for now); HAProxy's serial field has no sign
        raise _reject(name, Reason.UNPARSABLE, f"{what} has a serial number that is not positive (RFC 5280 4.1.2.2)")
    return cert


def check_material(
    name: str,
    pem: str | bytes,
    *,
    expected_fingerprint: str,
    now: dt.datetime,
    max_bytes: int = DEFAULT_MAX_BYTES,
    skew: dt.timedelta = CLOCK_SKEW,
) -> Material:
    """Check a bundle from the control plane and return it in normalised form.

    Args:
        name: the certificate name (CertRef.name).
        pem: leaf, intermediates in order, and one private key (any position), as PEM.
        expected_fingerprint: CertRef.fingerprint, `sha256:<hex>` of the leaf's DER.
        now: the current time (aware).
        max_bytes: the largest bundle accepted.
        skew: how far in the future notBefore may be (clock skew between the CA and us).

    Returns:
        the normalised `Material`.

    Raises:
        MaterialRejected: the first check that failed, in this order: bad_name; too_large (bytes); unparsable
            (PEM structure); unsupported_block; no_certificate; too_large (certificates); no_key; multiple_keys;
            unsupported_key; unparsable (a block's content); fingerprint_mismatch; key_mismatch; leaf_is_ca;
            chain_order; name_mismatch; expired; not_yet_valid.
        ValueError: `now` is naive (a programming error, not a property of the bundle).
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")
    cert_file_name(name)

    # Size first: every later step costs time proportional to it.
    size = len(pem) if isinstance(pem, bytes | str) else -1
    if size < 0:
        raise _reject(name, Reason.UNPARSABLE, f"bundle must be str or bytes, got {type(pem).__name__}")
    if size > max_bytes:
        raise _reject(name, Reason.TOO_LARGE, f"bundle of {size} bytes exceeds {max_bytes}")
    try:
        text = pem.decode("ascii") if isinstance(pem, bytes) else pem
        if not text.isascii():
            raise UnicodeError
    except UnicodeError:
        raise _reject(name, Reason.UNPARSABLE, "bundle is not ASCII") from None
    text = text.replace("\r\n", "\n")

    cert_blocks: list[str] = []
    key_blocks: list[tuple[str, str]] = []
    for label, block in _blocks(name, text):
        if label == "CERTIFICATE":
            cert_blocks.append(block)
        elif "PRIVATE KEY" in label:
            key_blocks.append((label, block))
        elif label not in _IGNORED_LABELS:
            shown = "a key block" if "KEY" in label else repr(label)
            raise _reject(name, Reason.UNSUPPORTED_BLOCK, f"unexpected PEM block {shown}")
    if not cert_blocks:
        raise _reject(name, Reason.NO_CERTIFICATE, "no CERTIFICATE block")
    if len(cert_blocks) > MAX_CHAIN_LENGTH:
        raise _reject(name, Reason.TOO_LARGE, f"{len(cert_blocks)} certificates, at most {MAX_CHAIN_LENGTH}")
    if not key_blocks:
        raise _reject(name, Reason.NO_KEY, "no private key block")
    if len(key_blocks) > 1:
        raise _reject(name, Reason.MULTIPLE_KEYS, f"{len(key_blocks)} private key blocks, expected exactly one")
    key_label, key_block = key_blocks[0]
    key_format = _KEY_LABELS.get(key_label)
    if key_format is None:
        kind = "an encrypted" if key_label.startswith("ENCRYPTED") else "an unsupported"
        raise _reject(name, Reason.UNSUPPORTED_KEY,
                      f"{kind} private key block: only unencrypted PKCS#8, SEC1 or PKCS#1 keys are accepted")

    certs = [_load_cert(name, block, index) for index, block in enumerate(cert_blocks)]
    try:
        # OpenSSL's RSA consistency check costs ~30 ms per 2048-bit key (an hour of CPU for 100k certificates);
        # the sign-and-verify proof below is what matters (the key works with this leaf) and costs ~0.3 ms. An EC
        # key is checked as it loads (its public point must be its scalar times the generator; cryptography
        # refuses it otherwise, pinned by tests/certs/test_material.py), for the price of one multiplication.
        key = serialization.load_pem_private_key(key_block.encode("ascii"), password=None,
                                                 unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # The loader's message is not shown: the only input here is the key.
        raise _reject(name, Reason.UNPARSABLE, f"the {key_format} private key block does not parse") from None
    key_type: KeyType
    if isinstance(key, ec.EllipticCurvePrivateKey):
        key_type = "ec"
    elif isinstance(key, rsa.RSAPrivateKey):
        key_type = "rsa"
    else:
        raise _reject(name, Reason.UNSUPPORTED_KEY, f"{type(key).__name__}: only EC and RSA keys are accepted")

    leaf = certs[0]
    fingerprint = "sha256:" + leaf.fingerprint(hashes.SHA256()).hex()
    expected = expected_fingerprint.lower() if isinstance(expected_fingerprint, str) else ""
    if not _FINGERPRINT.fullmatch(expected):
        raise _reject(name, Reason.FINGERPRINT_MISMATCH, "expected fingerprint is not sha256:<64 hex digits>")
    if fingerprint != expected:
        raise _reject(name, Reason.FINGERPRINT_MISMATCH, f"leaf is {fingerprint}, expected {expected}")

    try:
        leaf_public = leaf.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise _reject(name, Reason.UNPARSABLE, "leaf public key does not parse") from None
    if not isinstance(leaf_public, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)) or \
            _spki(leaf_public) != _spki(key.public_key()):
        raise _reject(name, Reason.KEY_MISMATCH, "the private key does not belong to the leaf certificate")
    # Equal public keys settle it for EC (the loaded key's public half is its scalar's, see above); an RSA key
    # loaded without its consistency check must prove itself by signing.
    if isinstance(key, rsa.RSAPrivateKey) and isinstance(leaf_public, rsa.RSAPublicKey) and \
            not _rsa_signs_for(key, leaf_public):
        raise _reject(name, Reason.KEY_MISMATCH, "the private key's signatures do not verify with the leaf's key")

    if _is_ca(name, leaf, "leaf"):
        raise _reject(name, Reason.LEAF_IS_CA, "the first certificate is a CA (basicConstraints CA:TRUE)")

    _check_chain(name, certs)

    domains, from_san = _domains(name, leaf)
    if not any(_covers(pattern, name) for pattern in domains):
        source = "subjectAltName DNS names" if from_san else "common names (no subjectAltName)"
        shown = ", ".join(repr(d) for d in domains[:5]) + (", ..." if len(domains) > 5 else "")
        raise _reject(name, Reason.NAME_MISMATCH, f"the leaf's {source} [{shown}] do not cover the name")

    not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    if not_after <= now:
        raise _reject(name, Reason.EXPIRED, f"expired at {not_after.isoformat()}")
    if not_before > now + skew:
        raise _reject(name, Reason.NOT_YET_VALID, f"valid only from {not_before.isoformat()}")

    normalized = "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certs)
    normalized += key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    return Material(
        name=name,
        pem=normalized,
        fingerprint=fingerprint,
        sha1_hex=leaf.fingerprint(hashes.SHA1()).hex().upper(),  # HAProxy's identifier, not security
        serial_hex=_serial_hex(leaf.serial_number),
        not_before=not_before,
        not_after=not_after,
        domains=domains,
        key_type=key_type,
    )


def _check_chain(name: str, certs: list[x509.Certificate]) -> None:
    """Each certificate is issued by the next: issuer name = next subject, and the next key verifies the signature."""
    seen = {certs[0].fingerprint(hashes.SHA256())}
    for index in range(len(certs) - 1):
        child, parent = certs[index], certs[index + 1]
        what = f"certificate #{index}" + (" (leaf)" if index == 0 else "")
        digest = parent.fingerprint(hashes.SHA256())
        if digest in seen:
            raise _reject(name, Reason.CHAIN_ORDER, f"certificate #{index + 1} repeats an earlier one")
        seen.add(digest)
        if child.issuer != parent.subject:
            raise _reject(name, Reason.CHAIN_ORDER,
                          f"{what} is issued by {child.issuer.rfc4514_string()!r}, "
                          f"but the next certificate is {parent.subject.rfc4514_string()!r}")
        try:
            child.verify_directly_issued_by(parent)
        except InvalidSignature:
            raise _reject(name, Reason.CHAIN_ORDER,
                          f"{what}: signature does not verify with the next certificate's key") from None
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise _reject(name, Reason.CHAIN_ORDER,
                          f"{what}: signature cannot be verified ({type(exc).__name__})") from None
        self_signed_root = index + 1 == len(certs) - 1 and parent.issuer == parent.subject
        if _is_ca(name, parent, f"certificate #{index + 1}") is not True and not self_signed_root:
            raise _reject(name, Reason.CHAIN_ORDER, f"certificate #{index + 1} issues #{index} but is not a CA")


def leaf_der(pem_or_der: str | bytes) -> bytes:
    """The DER of the first certificate in PEM text (file contents), or DER bytes checked to be a certificate.

    Only the first CERTIFICATE block is decoded; it must parse as a certificate.

    Raises:
        MaterialRejected: reason `no_certificate` or `unparsable` (with an empty name).
    """
    if not pem_or_der:
        raise MaterialRejected("", Reason.NO_CERTIFICATE, "empty")
    if isinstance(pem_or_der, bytes) and b"-----BEGIN" not in pem_or_der:
        der = pem_or_der
    else:
        raw = pem_or_der if isinstance(pem_or_der, bytes) else pem_or_der.encode("ascii", "replace")
        start = raw.find(_BEGIN_CERT)
        end = raw.find(_END_CERT, start + 1)
        if start < 0 or end < 0:
            raise MaterialRejected("", Reason.NO_CERTIFICATE, "no complete CERTIFICATE block")
        try:
            der = binascii.a2b_base64(raw[start + len(_BEGIN_CERT):end], strict_mode=False)
        except binascii.Error:
            raise MaterialRejected("", Reason.UNPARSABLE, "CERTIFICATE block is not base64") from None
    try:
        x509.load_der_x509_certificate(der)
    except (ValueError, CryptographyDeprecationWarning) as exc:
        raise MaterialRejected("", Reason.UNPARSABLE, f"not a certificate ({type(exc).__name__})") from None
    return der


def leaf_fingerprint(pem_or_der: str | bytes) -> str:
    """`sha256:<hex>` of the first certificate in PEM text (file contents) or of DER bytes (see `leaf_der`).

    Raises:
        MaterialRejected: reason `no_certificate` or `unparsable` (with an empty name).
    """
    return "sha256:" + hashlib.sha256(leaf_der(pem_or_der)).hexdigest()

"""The simulator's test CA: a root and an intermediate (from `lockstep.pki.make_ca`), leaves signed from CSRs,
and the download formats of reference §5.

Pure functions over `cryptography`; nothing touches disk. The leaf builder is local because `lockstep.pki.issue`
generates or takes a private key, whereas a CA only ever sees the CSR's public key.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lockstep.pki import Issued, make_ca

from .errors import ApiError

__all__ = ["FORMATS", "SignedLeaf", "TestCa", "parse_csr"]

_HASHES: dict[str, hashes.SHA256 | hashes.SHA384 | hashes.SHA512] = {
    "sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}

# §5: format -> (content type, which blocks). p7b/cer are a PEM-armoured PKCS#7 bundle of the whole chain.
FORMATS: dict[str, tuple[str, tuple[str, ...]]] = {
    "pem_all": ("application/x-pem-file", ("leaf", "intermediate", "root")),
    "pem_noroot": ("application/x-pem-file", ("leaf", "intermediate")),
    "pem_nointermediate": ("application/x-pem-file", ("leaf", "root")),
    "p7b": ("application/x-pkcs7-certificates", ("leaf", "intermediate", "root")),
    "cer": ("application/x-pkcs7-certificates", ("leaf", "intermediate", "root")),
}


@dataclasses.dataclass(frozen=True, slots=True)
class SignedLeaf:
    pem: str
    serial_number: str
    thumbprint: str
    not_before: dt.datetime
    not_after: dt.datetime
    key_size: int


def parse_csr(pem: str) -> x509.CertificateSigningRequest:
    """Parse and check a PEM CSR; any failure is 400 `csr_invalid_cannot_parse` (reference §3)."""
    try:
        csr = x509.load_pem_x509_csr(pem.strip().encode("ascii"))
        if not csr.is_signature_valid:
            raise ValueError("bad self-signature")
        key = csr.public_key()
        if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
            raise ValueError("unsupported key type")
    except (ValueError, TypeError, UnicodeEncodeError, InvalidSignature) as exc:
        raise ApiError(400, "csr_invalid_cannot_parse", f"The CSR could not be parsed: {exc}") from None
    return csr


def _key_size(key: object) -> int:
    if isinstance(key, rsa.RSAPublicKey):
        return key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.curve.key_size
    return 0


@dataclasses.dataclass(frozen=True, slots=True)
class TestCa:
    """Root and intermediate; leaves are signed by the intermediate."""

    __test__ = False  # not a pytest class

    root: Issued
    intermediate: Issued

    @classmethod
    def create(cls, *, now: dt.datetime, name: str = "Lockstep CertCentral Simulator") -> TestCa:
        root = make_ca(f"{name} Root CA", now=now - dt.timedelta(days=1), days=7300)
        intermediate = make_ca(f"{name} Intermediate CA", now=now - dt.timedelta(days=1), days=3650, parent=root)
        return cls(root=root, intermediate=intermediate)

    @property
    def root_pem(self) -> str:
        return self.root.cert_pem

    @property
    def intermediate_pem(self) -> str:
        return self.intermediate.cert_pem

    @property
    def intermediate_name(self) -> str:
        attrs = self.intermediate.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(attrs[0].value) if attrs else ""

    def sign(self, csr_pem: str, names: tuple[str, ...], *, now: dt.datetime, days: int, serial: int,
             signature_hash: str = "sha256") -> SignedLeaf:
        """A server certificate for `names` (CN = names[0]) over the CSR's public key, valid `days` from `now`."""
        csr = parse_csr(csr_pem)
        key = csr.public_key()
        not_before = now.replace(microsecond=0)
        not_after = not_before + dt.timedelta(days=days)
        key_usage = x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=isinstance(key, rsa.RSAPublicKey),
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False,
            decipher_only=False,
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]))
            .issuer_name(self.intermediate.cert.subject)
            .public_key(key)
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.intermediate.key.public_key()),
                critical=False,
            )
        )
        cert = builder.sign(self.intermediate.key, _HASHES.get(signature_hash, hashes.SHA256()))
        return SignedLeaf(
            pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
            serial_number=f"{cert.serial_number:X}",
            thumbprint=cert.fingerprint(hashes.SHA1()).hex().upper(),
            not_before=not_before,
            not_after=not_after,
            key_size=_key_size(key),
        )

    def render(self, leaf_pem: str, fmt: str, *, crlf: bool = False) -> tuple[str, str]:
        """(content type, body) of a download in `fmt`; unknown formats raise ApiError."""
        if fmt not in FORMATS:
            raise ApiError.invalid_value("format", f"Unsupported download format {fmt!r}.")
        content_type, blocks = FORMATS[fmt]
        pems = {"leaf": leaf_pem, "intermediate": self.intermediate_pem, "root": self.root_pem}
        if content_type == "application/x-pkcs7-certificates":
            certs = [x509.load_pem_x509_certificate(pems[b].encode()) for b in blocks]
            body = pkcs7.serialize_certificates(certs, serialization.Encoding.PEM).decode()
        else:
            body = "".join(pems[b] if pems[b].endswith("\n") else pems[b] + "\n" for b in blocks)
        if crlf:
            body = body.replace("\r\n", "\n").replace("\n", "\r\n")
        return content_type, body

"""Client of the control plane's internal PKI: enroll with a one-time bootstrap token, renew before expiry.

Used by the agent (its node identity, and HAProxy's edge-client certificate) and by backend processes (their server
certificate), so it lives outside `agent/` and imports nothing of the control plane: it speaks /v1/pki/* only.

The private key is generated here and never leaves the machine (only a CSR is sent). Files in `directory` (0700):

    <name>.pem               leaf certificate + PKCS#8 key, 0600, replaced atomically (never a certificate with the
                             other certificate's key)
    <name>.json              what the control plane said: identity, renew_after (recomputed if the file is missing)
    <name>.pending-key.pem   0600: the key of a request in flight. A retry after a lost answer sends the same key,
                             and the control plane answers with the certificate it already issued for it instead of
                             "token_used"
    ca.pem                   the trust anchor fetched under the `ca_sha256` pin (when no `ca_file` is given)

A working identity is never deleted: failures are reported (`last_error`, `failures`, `removed`) and retried on a
schedule, while the current certificate keeps being used until it expires.

Trust: `ca_file` (the internal CA certificate), or `ca_sha256`, the SHA-256 of that certificate (DER) as shown by
`GET /v1/pki/ca.pem` piped through `openssl x509 -outform der | sha256sum`: the bundle is then fetched without
verification and accepted only if a certificate in it has that hash. Only the pinned certificate is trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import random
import re
import ssl
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from agent.certs.files import write_atomic

__all__ = [
    "BadAnswer", "ControlPlaneUnavailable", "EnrollError", "IdentityCertificate", "IdentityManager", "Refused",
    "Removed", "TrustError", "atomic_write", "load_identity", "parse_pin", "pinned_ca", "renew_at",
]

logger = logging.getLogger(__name__)

RETRY_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)  # then the last value forever
RENEW_JITTER = 0.25  # ± this fraction of (not_after - renew_after), so a fleet enrolled together spreads out
CA_FILE = "ca.pem"


# -- errors ----------------------------------------------------------------------------------------------------------

class EnrollError(Exception):
    """Root of the enrollment client's errors. `reason` is the control plane's wire code when it gave one."""

    reason: ClassVar[str] = "enroll_error"


class TrustError(EnrollError):
    """No usable trust anchor: `ca_file` unreadable, or no certificate at /v1/pki/ca.pem matches `ca_sha256`."""

    reason = "trust"


class ControlPlaneUnavailable(EnrollError):
    """Transport error, timeout, TLS failure, 5xx or 429: retried."""

    reason = "unavailable"


class BadAnswer(EnrollError):
    """The control plane answered something this client does not accept (not our key, not signed by the CA)."""

    reason = "bad_answer"


class Refused(EnrollError):
    """The control plane refused (4xx): e.g. token_used, token_expired, unknown_token, bad_csr."""

    def __init__(self, status: int, wire_reason: str, message: str) -> None:
        super().__init__(f"HTTP {status} {wire_reason}: {message}")
        self.status = status
        self.wire_reason = wire_reason


class Removed(Refused):
    """403 *_removed: an operator removed this node or backend. Nothing is deleted locally."""


# -- pure helpers ----------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class IdentityCertificate:
    """The current certificate (the key stays in the file)."""

    cert_pem: str = dataclasses.field(repr=False)
    fingerprint: str
    not_before: dt.datetime
    not_after: dt.datetime
    renew_after: dt.datetime
    kind: str
    id: str


def parse_pin(text: str) -> str:
    """"sha256:<hex>", "<hex>" or "AA:BB:..." → 64 lower-case hex digits. Raises: TrustError."""
    value = text.strip().lower().removeprefix("sha256:").replace(":", "")
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise TrustError("ca_sha256 must be the SHA-256 of the CA certificate: 64 hex digits (sha256:... accepted)")
    return value


def _load_certs(pem: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem.encode("ascii", "replace"))
    except ValueError:
        return []


def pinned_ca(bundle_pem: str, pin: str) -> str:
    """The PEM of the one certificate in `bundle_pem` whose DER SHA-256 is `pin`. Raises: TrustError."""
    want = parse_pin(pin)
    certs = _load_certs(bundle_pem)
    for cert in certs:
        if hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest() == want:
            return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    seen = ", ".join(hashlib.sha256(c.public_bytes(serialization.Encoding.DER)).hexdigest()[:16] + "…"
                     for c in certs) or "no certificate"
    raise TrustError(f"the control plane's CA does not match ca_sha256 {want[:16]}… (it offered {seen}): "
                     "refusing to trust it")


def renew_at(identity: IdentityCertificate, rand: random.Random, *, jitter: float = RENEW_JITTER) -> dt.datetime:
    """When to renew: renew_after ± jitter × the time left after it (never later than not_after)."""
    spread = identity.not_after - identity.renew_after
    return identity.renew_after + spread * rand.uniform(-jitter, jitter)


def _public_der(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)  # type: ignore[no-any-return]


def _signed_by(cert: x509.Certificate, issuers: Sequence[x509.Certificate]) -> bool:
    for issuer in issuers:
        if issuer.subject != cert.issuer:
            continue
        key = issuer.public_key()
        try:
            if isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))  # type: ignore[arg-type]
            elif isinstance(key, rsa.RSAPublicKey):
                key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(),
                           cert.signature_hash_algorithm)  # type: ignore[arg-type]
            else:
                continue
            return True
        except InvalidSignature:
            continue
    return False


def _fingerprint(cert: x509.Certificate) -> str:
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def _default_renew_after(cert: x509.Certificate) -> dt.datetime:
    # The control plane backdates not_before by a minute and renews at 2/3 of the lifetime from issuance.
    issued = cert.not_valid_before_utc + dt.timedelta(seconds=60)
    return issued + (cert.not_valid_after_utc - issued) * 2 / 3


def load_identity(directory: Path, name: str, *, trust_pem: str | None, now: dt.datetime) -> IdentityCertificate | None:
    """The identity stored in `directory`, if its certificate and key are there, belong together, are not expired
    at `now`, and (with `trust_pem`) the certificate is signed by that CA. Anything else is None (never an error:
    the caller enrolls again, and the files stay for inspection until replaced)."""
    try:
        data = (directory / f"{name}.pem").read_bytes()
        cert = x509.load_pem_x509_certificate(data)
        key = serialization.load_pem_private_key(data, None)
    except (OSError, ValueError, TypeError):
        return None
    if _public_der(key.public_key()) != _public_der(cert.public_key()) or cert.not_valid_after_utc <= now:
        return None
    if trust_pem is not None and not _signed_by(cert, _load_certs(trust_pem)):
        return None
    meta: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        loaded = json.loads((directory / f"{name}.json").read_text())
        if isinstance(loaded, dict) and loaded.get("fingerprint") == _fingerprint(cert):
            meta = loaded
    try:
        renew_after = dt.datetime.fromisoformat(str(meta["renew_after"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        renew_after = _default_renew_after(cert)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return IdentityCertificate(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), fingerprint=_fingerprint(cert),
        not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc, renew_after=renew_after,
        kind=str(meta.get("kind", "")), id=str(meta.get("id", cn[0].value if cn else "")))


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write `data` to `path` atomically and durably (the agent's writer: temporary file, fsync, rename, directory
    fsync). Raises an OSError (CertFileError) and leaves `path` unchanged on failure."""
    write_atomic(path, data, mode=mode)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _csr_pem(key: ec.EllipticCurvePrivateKey, label: str) -> str:
    # The control plane ignores the subject (it decides the names); the CN only helps a human reading a log.
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, label[:64] or "lockstep")]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _iso_parse(value: object, field: str) -> dt.datetime:
    try:
        out = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise BadAnswer(f"{field} is not an ISO time") from None
    if out.tzinfo is None:
        raise BadAnswer(f"{field} has no time zone")
    return out


# -- the manager (IO) ----------------------------------------------------------------------------------------------

class IdentityManager:
    """One certificate from the internal PKI, kept valid: loaded from disk, or obtained, then renewed for ever.

    Three uses, by arguments:

    * node or backend identity: `token` (for the first certificate), `issue_path="/v1/pki/enroll"`,
      `renew_path="/v1/pki/renew"` (authenticated with this manager's own current certificate);
    * HAProxy's client certificate: `authenticate_with=<the node's manager>`, `issue_path` and `renew_path`
      both "/v1/pki/edge-client", no token;
    * a backend's server certificate: as the node identity, with the backend's token; `server_ssl_context()`.

    Args:
        token: the bootstrap token, or a callable returning it (read again at every attempt, so a token file an
            operator rewrites is picked up without a restart); only used when there is no valid certificate.
        now, rand, sleep: the clock (aware UTC datetimes), the jitter source and the sleep, injected.
        on_change: called with the new certificate after each load, enrollment and renewal (e.g. to swap an HTTP
            client); exceptions from it are logged, not raised.
    """

    def __init__(self, *, url: str, directory: Path, ca_file: Path | None = None, ca_sha256: str | None = None,
                 token: str | Callable[[], str | None] | None = None, name: str = "identity",
                 issue_path: str = "/v1/pki/enroll", renew_path: str = "/v1/pki/renew",
                 authenticate_with: IdentityManager | None = None,
                 now: Callable[[], dt.datetime], rand: random.Random,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 request_timeout_s: float = 10.0, retry_s: Sequence[float] = RETRY_S,
                 on_change: Sequence[Callable[[IdentityCertificate], None]] = ()) -> None:
        if (ca_file is None) == (ca_sha256 is None):
            raise ValueError("give exactly one of ca_file and ca_sha256")
        if not url.startswith("https://"):
            raise ValueError("the internal PKI is reached over https:// only (a token or certificate request in the "
                             "clear is one given away)")
        if ca_sha256 is not None:
            parse_pin(ca_sha256)
        self.url = url.rstrip("/")
        self.directory = directory
        self.name = name
        self._ca_file = ca_file
        self._ca_sha256 = ca_sha256
        self._token = token
        self._issue_path = issue_path
        self._renew_path = renew_path
        self._auth_with = authenticate_with
        self._now = now
        self._rand = rand
        self._sleep = sleep
        self._timeout_s = request_timeout_s
        self._retry_s = tuple(retry_s)
        self._listeners = list(on_change)
        self.current: IdentityCertificate | None = None
        self.ready = asyncio.Event()
        self.failures = 0
        self.last_error: str | None = None
        self.last_error_reason: str | None = None
        self.removed = False
        self.renewals = 0
        self.last_renewal: dt.datetime | None = None
        self._trust_pem: str | None = None

    # -- files
    @property
    def cert_file(self) -> Path:
        """Leaf certificate + key (PEM): `load_cert_chain(cert_file)`, or HAProxy's `crt`."""
        return self.directory / f"{self.name}.pem"

    @property
    def ca_file(self) -> Path:
        """The trust anchor: the configured `ca_file`, or the pinned copy in `directory`."""
        return self._ca_file if self._ca_file is not None else self.directory / CA_FILE

    def add_listener(self, fn: Callable[[IdentityCertificate], None]) -> None:
        self._listeners.append(fn)

    def client_ssl_context(self) -> ssl.SSLContext:
        """Verifies the control plane (or a backend) with the internal CA; presents the current certificate."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if self.current is not None:
            ctx.load_cert_chain(str(self.cert_file))
        return ctx

    def server_ssl_context(self, *, require_client_cert: bool = True) -> ssl.SSLContext:
        """For a backend: serve the current certificate; with `require_client_cert`, only clients with a
        certificate of the internal CA (HAProxy's edge-client certificate) complete the handshake."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.cert_file))
        if require_client_cert:
            ctx.load_verify_locations(str(self.ca_file))
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def _ensure_directory(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)

    async def trust(self) -> str:
        """The CA PEM to verify the control plane with (fetched and pinned once, then read from disk)."""
        if self._trust_pem is not None:
            return self._trust_pem
        if self._ca_file is not None:
            try:
                pem = self._ca_file.read_text()
            except OSError as exc:
                raise TrustError(f"ca_file {self._ca_file}: {exc.strerror}") from None
            if not _load_certs(pem):
                raise TrustError(f"ca_file {self._ca_file}: no PEM certificate in it")
            self._trust_pem = pem
            return pem
        assert self._ca_sha256 is not None
        stored = self.directory / CA_FILE
        with contextlib.suppress(OSError, TrustError):
            self._trust_pem = pinned_ca(stored.read_text(), self._ca_sha256)
            return self._trust_pem
        try:
            # Unverified on purpose: the pin below is what makes the answer trustworthy, not the connection.
            async with httpx.AsyncClient(base_url=self.url, verify=False, timeout=self._timeout_s) as http:
                resp = await http.get("/v1/pki/ca.pem")
        except httpx.HTTPError as exc:
            raise ControlPlaneUnavailable(f"fetching /v1/pki/ca.pem: {type(exc).__name__}: {exc}") from exc
        if resp.status_code != 200:
            raise ControlPlaneUnavailable(f"fetching /v1/pki/ca.pem: HTTP {resp.status_code}")
        pem = pinned_ca(resp.text, self._ca_sha256)
        self._ensure_directory()
        atomic_write(stored, pem.encode("ascii"), mode=0o644)
        logger.info("internal PKI: trusting the control plane's CA %s… (matches ca_sha256)",
                    parse_pin(self._ca_sha256)[:16])
        self._trust_pem = pem
        return pem

    # -- one attempt each
    async def start(self) -> IdentityCertificate:
        """The identity from disk if it is still valid, else a new one (token enrollment, or the edge-client
        endpoint with the authenticating identity). One attempt. Raises: EnrollError."""
        trust = await self.trust()
        loaded = load_identity(self.directory, self.name, trust_pem=trust, now=self._now())
        if loaded is not None:
            self._set(loaded, renewed=False)
            logger.info("internal PKI: %s %s loaded (%s, until %s)", self.name, loaded.id, loaded.fingerprint,
                        loaded.not_after.isoformat())
            return loaded
        return await self._obtain(renewal=False)

    async def renew(self) -> IdentityCertificate:
        """A new certificate (new key) now. One attempt. Raises: EnrollError."""
        return await self._obtain(renewal=True)

    async def _obtain(self, *, renewal: bool) -> IdentityCertificate:
        client_cert: Path | None
        body: dict[str, str]
        if self._auth_with is not None:
            if self._auth_with.current is None:
                raise ControlPlaneUnavailable(f"waiting for the {self._auth_with.name} certificate to authenticate")
            path, body, client_cert = (self._renew_path if renewal else self._issue_path), {}, self._auth_with.cert_file
        elif self.current is not None and self.current.not_after > self._now():
            path, body, client_cert = self._renew_path, {}, self.cert_file
        else:
            token = self._token() if callable(self._token) else self._token
            if not token:
                raise Refused(0, "no_token", "no valid certificate and no bootstrap token configured: ask an operator "
                                             "for one (lockstep nodes add / lockstep nodes token)")
            path, body, client_cert = self._issue_path, {"token": token.strip()}, None
        self._ensure_directory()
        key = self._pending_key()
        body["csr"] = _csr_pem(key, self.name)
        identity = await self._post(path, body, key=key, client_cert=client_cert)
        atomic_write(self.cert_file, identity.cert_pem.encode("ascii") + _key_pem(key))
        atomic_write(self.directory / f"{self.name}.json", json.dumps({
            "fingerprint": identity.fingerprint, "kind": identity.kind, "id": identity.id,
            "not_after": identity.not_after.isoformat(), "renew_after": identity.renew_after.isoformat(),
        }, indent=2).encode(), mode=0o644)
        with contextlib.suppress(FileNotFoundError):
            (self.directory / f"{self.name}.pending-key.pem").unlink()
        self._set(identity, renewed=True)
        logger.info("internal PKI: %s %s %s: %s until %s", self.name, identity.id,
                    "renewed" if renewal else "issued", identity.fingerprint, identity.not_after.isoformat())
        return identity

    def _pending_key(self) -> ec.EllipticCurvePrivateKey:
        path = self.directory / f"{self.name}.pending-key.pem"
        with contextlib.suppress(OSError, ValueError, TypeError):
            key = serialization.load_pem_private_key(path.read_bytes(), None)
            if isinstance(key, ec.EllipticCurvePrivateKey):
                return key
        key = ec.generate_private_key(ec.SECP256R1())
        atomic_write(path, _key_pem(key))  # before the request: a lost answer is retried with this same key
        return key

    async def _post(self, path: str, body: dict[str, Any], *, key: ec.EllipticCurvePrivateKey,
                    client_cert: Path | None) -> IdentityCertificate:
        trust = await self.trust()
        ctx = ssl.create_default_context(cadata=trust)
        if client_cert is not None:
            ctx.load_cert_chain(str(client_cert))
        try:
            async with httpx.AsyncClient(base_url=self.url, verify=ctx, timeout=self._timeout_s) as http:
                resp = await http.post(path, json=body)
        except httpx.HTTPError as exc:
            raise ControlPlaneUnavailable(f"{path}: {type(exc).__name__}: {exc}") from exc
        if resp.status_code == 429 or resp.status_code >= 500:
            raise ControlPlaneUnavailable(f"{path}: HTTP {resp.status_code}")
        try:
            answer = resp.json()
        except ValueError:
            answer = None
        if resp.status_code != 201:
            wire = str(answer.get("error", "")) if isinstance(answer, dict) else ""
            message = str(answer.get("message", "")) if isinstance(answer, dict) else resp.text[:200]
            cls = Removed if resp.status_code == 403 and wire.endswith("_removed") else Refused
            raise cls(resp.status_code, wire or "refused", message)
        if not isinstance(answer, dict) or not isinstance(answer.get("certificate"), str):
            raise BadAnswer(f"{path}: 201 without a certificate")
        try:
            cert = x509.load_pem_x509_certificate(answer["certificate"].encode("ascii"))
        except ValueError:
            raise BadAnswer(f"{path}: the certificate does not parse") from None
        if _public_der(cert.public_key()) != _public_der(key.public_key()):
            raise BadAnswer(f"{path}: the certificate is not for the key this client sent")
        if not _signed_by(cert, _load_certs(trust)):
            raise BadAnswer(f"{path}: the certificate is not signed by the trusted CA")
        raw_who = answer.get("identity")
        who: dict[str, Any] = raw_who if isinstance(raw_who, dict) else {}
        return IdentityCertificate(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), fingerprint=_fingerprint(cert),
            not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
            renew_after=_iso_parse(answer.get("renew_after"), "renew_after"),
            kind=str(who.get("kind", "")), id=str(who.get("id", "")))

    def _set(self, identity: IdentityCertificate, *, renewed: bool) -> None:
        self.current = identity
        self.failures = 0
        self.last_error = None
        self.last_error_reason = None
        self.removed = False
        if renewed:
            self.renewals += 1
            self.last_renewal = self._now()
        self.ready.set()
        for fn in self._listeners:
            try:
                fn(identity)
            except Exception:
                logger.exception("internal PKI: a listener of %s failed", self.name)

    def _failed(self, exc: EnrollError, what: str) -> float:
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.last_error_reason = getattr(exc, "wire_reason", None) or exc.reason
        if isinstance(exc, Removed):
            self.removed = True
        delay = self._retry_s[min(self.failures - 1, len(self._retry_s) - 1)]
        delay *= self._rand.uniform(0.8, 1.2)
        keeps = f"; keeping {self.current.fingerprint} until {self.current.not_after.isoformat()}" \
            if self.current else ""
        logger.warning("internal PKI: %s of %s failed (%d in a row), retry in %.1f s%s: %s", what, self.name,
                       self.failures, delay, keeps, self.last_error)
        return delay

    async def run(self) -> None:
        """Obtain (or load) the certificate, then renew it at its jittered renew time, for ever. Failures are
        retried on the schedule; nothing but cancellation ends this."""
        while self.current is None:
            try:
                await self.start()
            except EnrollError as exc:
                await self._sleep(self._failed(exc, "enrollment"))
            except OSError as exc:  # the directory is not writable: say so, keep trying (an operator can fix it)
                await self._sleep(self._failed(EnrollError(f"{self.directory}: {exc}"), "enrollment"))
        while True:
            assert self.current is not None
            delay = (renew_at(self.current, self._rand) - self._now()).total_seconds()
            if delay > 0:
                await self._sleep(delay)
            while True:
                try:
                    await self.renew()
                    break
                except EnrollError as exc:
                    await self._sleep(self._failed(exc, "renewal"))
                except OSError as exc:
                    await self._sleep(self._failed(EnrollError(f"{self.directory}: {exc}"), "renewal"))

"""HAProxy's backend-facing TLS material, kept current by the agent: the client certificate HAProxy presents to the
application servers (mTLS) and the internal CA bundle it verifies them with.

Both live in files named on the backend's server line (`crt` and `ca-file`, LOCKSTEP_BACKEND_CLIENT_CERT and
LOCKSTEP_BACKEND_CA). The keeper writes the file first (atomic, 0600), then hands the same bytes to HAProxy through
the runtime API (`set/commit ssl cert` and `set/commit ssl ca-file`), which HAProxy 2.6 and 2.8 apply to server
lines live: the next connection to a backend uses them, no reload. A HAProxy that (re)starts reads the files, so
the two never disagree for longer than one push.

The key of the client certificate is generated here, on the node, for every renewal; only a CSR leaves the node.
Where the certificates come from is `EdgeMaterialSource` (the control plane's `/v1/pki/edge-client` and
`/v1/pki/ca.pem`); when that source fails, the current files keep serving and the keeper retries with backoff.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .certs.files import CertFileError, write_atomic
from .runtime import RuntimeApiError, RuntimeClient, RuntimeUnavailable

__all__ = ["EdgeFiles", "EdgeMaterialSource", "EdgePkiError", "EdgePkiKeeper", "IssuedClientCert",
           "make_key_and_csr", "renew_at"]

logger = logging.getLogger(__name__)


class EdgePkiError(Exception):
    """The control plane could not give us edge material (the reason is in the message); files are unchanged."""


@dataclasses.dataclass(frozen=True, slots=True)
class IssuedClientCert:
    chain_pem: str  # leaf first, then intermediates
    renew_after: dt.datetime | None = None  # the issuer's hint; else 2/3 of the lifetime


class EdgeMaterialSource(Protocol):
    async def ca_bundle(self) -> str: ...

    async def issue_client_cert(self, csr_pem: str) -> IssuedClientCert: ...


@dataclasses.dataclass(frozen=True, slots=True)
class EdgeFiles:
    client_cert: Path  # leaf + chain + key, as HAProxy's `crt` wants it
    ca_file: Path


# --- pure -------------------------------------------------------------------------------------------------------


def make_key_and_csr(common_name: str) -> tuple[str, str]:
    """A fresh EC P-256 key (PEM, PKCS#8) and a CSR for it. The control plane decides the names it certifies."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
           .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return key_pem, csr.public_bytes(serialization.Encoding.PEM).decode()


def renew_at(cert: x509.Certificate, hint: dt.datetime | None, *, jitter: float) -> dt.datetime:
    """When to replace `cert`: the issuer's hint, else 2/3 of its lifetime; pulled earlier by up to `jitter`
    (0..1) of a tenth of the lifetime so a fleet does not renew in the same second."""
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    base = hint or cert.not_valid_before_utc + lifetime * 2 / 3
    return min(base, cert.not_valid_after_utc) - lifetime * (0.1 * jitter)


def _leaf(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificates(pem.encode())[0]


def _current(path: Path) -> x509.Certificate | None:
    try:
        return _leaf(path.read_text())
    except (OSError, ValueError):
        return None


# --- shell ------------------------------------------------------------------------------------------------------


class EdgePkiKeeper:
    """Renews HAProxy's client certificate before it expires and follows the internal CA bundle."""

    def __init__(self, files: EdgeFiles, source: EdgeMaterialSource, *, common_name: str,
                 runtime: Callable[[], RuntimeClient | None] = lambda: None,
                 now: Callable[[], dt.datetime], sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 rand: random.Random | None = None, ca_refresh_s: float = 300.0,
                 retry_s: tuple[float, ...] = (1.0, 2.0, 5.0, 15.0, 60.0)) -> None:
        self._files = files
        self._source = source
        self._cn = common_name
        self._runtime = runtime
        self._now = now
        self._sleep = sleep
        self._rand = rand or random.Random()
        self._ca_refresh_s = ca_refresh_s
        self._retry_s = retry_s
        self._renew_hint: dt.datetime | None = None
        self._jitter = self._rand.random()
        self.renewals = 0
        self.errors = 0
        self.last_error: str | None = None

    @property
    def not_after(self) -> dt.datetime | None:
        cert = _current(self._files.client_cert)
        return cert.not_valid_after_utc if cert else None

    def due(self) -> dt.datetime:
        """When the client certificate must be replaced (now if there is none or it cannot be read)."""
        cert = _current(self._files.client_cert)
        if cert is None:
            return self._now()
        return renew_at(cert, self._renew_hint, jitter=self._jitter)

    async def ensure(self) -> None:
        """Both files present and the certificate not due: what HAProxy needs before it can start.

        Raises:
            EdgePkiError: the control plane could not provide them (nothing written).
        """
        await self.refresh_ca()
        if self.due() <= self._now():
            await self.renew()

    async def refresh_ca(self) -> bool:
        """Fetch the CA bundle; write and push it if it changed. Returns whether it changed."""
        bundle = await self._source.ca_bundle()
        try:
            x509.load_pem_x509_certificates(bundle.encode())
        except ValueError as exc:
            raise EdgePkiError(f"the control plane's CA bundle is not PEM certificates: {exc}") from None
        try:
            if self._files.ca_file.read_text() == bundle:
                return False
        except OSError:
            pass
        self._write(self._files.ca_file, bundle)
        await self._push(lambda rt: rt.update_ca_file(str(self._files.ca_file), bundle))
        logger.info("internal CA bundle updated (%s)", self._files.ca_file)
        return True

    async def renew(self) -> None:
        key_pem, csr_pem = make_key_and_csr(self._cn)
        issued = await self._source.issue_client_cert(csr_pem)
        try:
            leaf = _leaf(issued.chain_pem)
        except (ValueError, IndexError) as exc:
            raise EdgePkiError(f"the control plane's client certificate is not a PEM certificate: {exc}") from None
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        mine = serialization.load_pem_private_key(key_pem.encode(), None).public_key()
        if leaf.public_key().public_bytes(serialization.Encoding.DER, public) != mine.public_bytes(
                serialization.Encoding.DER, public):
            raise EdgePkiError("the control plane returned a certificate for another key")
        bundle = issued.chain_pem.rstrip("\n") + "\n" + key_pem
        self._write(self._files.client_cert, bundle)
        self._renew_hint = issued.renew_after
        self._jitter = self._rand.random()
        self.renewals += 1
        await self._push(lambda rt: rt.update_file_certificate(str(self._files.client_cert), bundle))
        logger.info("HAProxy client certificate renewed (serial %x, valid until %s)", leaf.serial_number,
                    leaf.not_valid_after_utc.isoformat())

    async def push_current(self) -> None:
        """Hand the files to HAProxy as they are (after an agent restart, HAProxy may hold older ones)."""
        try:
            cert, ca = self._files.client_cert.read_text(), self._files.ca_file.read_text()
        except OSError:
            return
        await self._push(lambda rt: rt.update_ca_file(str(self._files.ca_file), ca))
        await self._push(lambda rt: rt.update_file_certificate(str(self._files.client_cert), cert))

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`: renew when due, follow the CA bundle; failures keep the current files and back off."""
        failures = 0
        next_ca = self._now()
        while not stop.is_set():
            try:
                if self._now() >= next_ca:
                    await self.refresh_ca()
                    next_ca = self._now() + dt.timedelta(seconds=self._ca_refresh_s)
                if self.due() <= self._now():
                    await self.renew()
                failures = 0
                self.last_error = None
                wait = min((self.due() - self._now()).total_seconds(), (next_ca - self._now()).total_seconds())
            except (EdgePkiError, OSError, CertFileError) as exc:
                self.errors += 1
                self.last_error = str(exc)
                wait = self._retry_s[min(failures, len(self._retry_s) - 1)]
                failures += 1
                logger.warning("edge PKI: %s; keeping the current files, retrying in %.0f s", exc, wait)
            await _wait(stop, max(wait, 0.05), self._sleep)

    def _write(self, path: Path, text: str) -> None:
        write_atomic(path, text.encode())

    async def _push(self, action: Callable[[RuntimeClient], Awaitable[None]]) -> None:
        runtime = self._runtime()
        if runtime is None:
            return  # HAProxy reads the file when it starts
        try:
            await action(runtime)
        except RuntimeUnavailable as exc:  # not running (yet): it reads the file when it starts
            logger.info("edge PKI: HAProxy's runtime API is not reachable (%s); the file is in place", exc)
        except RuntimeApiError as exc:
            # The file is in place; a HAProxy that could not take it live will at its next start.
            self.errors += 1
            self.last_error = f"runtime API: {exc}"
            logger.warning("edge PKI: HAProxy did not take the update live (%s); it will at its next start", exc)


async def _wait(stop: asyncio.Event, seconds: float, sleep: Callable[[float], Awaitable[None]]) -> None:
    sleeper = asyncio.ensure_future(sleep(seconds))
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        stopper.cancel()

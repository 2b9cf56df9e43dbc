"""HAProxy's backend-facing TLS material, published by the agent: the client certificate HAProxy presents to the
application servers (mTLS) and the internal CA bundle it verifies them with.

Both live in files named on the backend's server line (`crt` and `ca-file`, LOCKSTEP_BACKEND_CLIENT_CERT and
LOCKSTEP_BACKEND_CA). The keeper writes the file first (atomic, 0600), then hands the same bytes to HAProxy through
the runtime API (`set/commit ssl cert`, `set/commit ssl ca-file`): the next connection to a backend uses them, no
reload. A HAProxy that (re)starts reads the files, so the two never disagree for longer than one push.

One exception, found by tests/test_edge_pki.py: on HAProxy 2.6.12 `commit ssl ca-file` on the server's CA file
detaches the server's client certificate from the runtime API (`show ssl cert` says "Unused", later commits reach no
instance, HAProxy keeps presenting the old certificate until it restarts). So before 2.8 a new CA bundle is only
written, never pushed, and `reload_required` says HAProxy must be reloaded to use it (the graceful path; a CA
rollover publishes old + new first, so nothing breaks meanwhile). Client certificates are pushed live on 2.6 and 2.8.

Where the material comes from is not this module's business: the client certificate is whatever bundle
`client_bundle()` returns (the agent's edge-client `IdentityManager`, which generates the key on the node, obtains
the certificate from the control plane's `/v1/pki/edge-client` and renews it), the CA bundle whatever
`ca_bundle()` returns (`/v1/pki/ca.pem`). When either fails, the current files keep serving and the keeper retries.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .certs.files import write_atomic
from .runtime import RuntimeApiError, RuntimeClient, RuntimeUnavailable

__all__ = ["EdgeFiles", "EdgePkiError", "EdgePkiKeeper", "ca_file_live", "check_client_bundle"]

logger = logging.getLogger(__name__)


class EdgePkiError(Exception):
    """Edge material that cannot be used (the reason is in the message); the files are unchanged."""


@dataclasses.dataclass(frozen=True, slots=True)
class EdgeFiles:
    client_cert: Path  # leaf + chain + key, as HAProxy's `crt` wants it
    ca_file: Path


# --- pure -------------------------------------------------------------------------------------------------------


def check_client_bundle(pem: str) -> x509.Certificate:
    """The leaf of a `crt` bundle, after checking it holds a certificate and the matching private key.

    Raises:
        EdgePkiError: no certificate, no key, or a key of another certificate.
    """
    try:
        leaf = x509.load_pem_x509_certificates(pem.encode())[0]
        key = serialization.load_pem_private_key(pem.encode(), None)
    except (ValueError, IndexError, TypeError) as exc:
        raise EdgePkiError(f"HAProxy's client certificate bundle is not a certificate and its key: {exc}") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(serialization.Encoding.DER, spki) != key.public_key().public_bytes(
            serialization.Encoding.DER, spki):
        raise EdgePkiError("HAProxy's client certificate bundle holds the key of another certificate")
    return leaf


def ca_file_live(version: str) -> bool:
    """Whether this HAProxy takes `commit ssl ca-file` on a server line without side effects (2.8 and later)."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        return False  # unknown: the graceful path is always correct
    return (int(match.group(1)), int(match.group(2))) >= (2, 8)


def _check_ca_bundle(pem: str) -> None:
    try:
        if not x509.load_pem_x509_certificates(pem.encode()):
            raise ValueError("no certificate")
    except ValueError as exc:
        raise EdgePkiError(f"the internal CA bundle is not PEM certificates: {exc}") from None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


# --- shell ------------------------------------------------------------------------------------------------------


class EdgePkiKeeper:
    """Publishes HAProxy's client certificate and the internal CA bundle to the files and to HAProxy, live.

    Args:
        client_bundle: the current client certificate bundle (leaf, chain, key), or None while there is none yet.
        ca_bundle: fetches the internal CA bundle (raises on failure).
        runtime: HAProxy's runtime API client, or None before it is known.
    """

    def __init__(self, files: EdgeFiles, *, client_bundle: Callable[[], str | None],
                 ca_bundle: Callable[[], Awaitable[str]],
                 runtime: Callable[[], RuntimeClient | None] = lambda: None,
                 now: Callable[[], dt.datetime], sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 ca_refresh_s: float = 300.0, retry_s: tuple[float, ...] = (1.0, 2.0, 5.0, 15.0, 60.0)) -> None:
        self._files = files
        self._client_bundle = client_bundle
        self._ca_bundle = ca_bundle
        self._runtime = runtime
        self._now = now
        self._sleep = sleep
        self._ca_refresh_s = ca_refresh_s
        self._retry_s = retry_s
        self._wake = asyncio.Event()
        self.published = 0  # client certificates handed to HAProxy (file + runtime API)
        self.reload_required = False  # a CA bundle is on disk that this HAProxy cannot take live (< 2.8)
        self._reload_pid: int | None = None
        self.errors = 0
        self.last_error: str | None = None

    @property
    def not_after(self) -> dt.datetime | None:
        """When the client certificate HAProxy has (per its file) expires."""
        pem = _read(self._files.client_cert)
        try:
            return x509.load_pem_x509_certificates(pem.encode())[0].not_valid_after_utc if pem else None
        except ValueError:
            return None

    def wake(self) -> None:
        """A new client certificate is available (the identity manager's listener)."""
        self._wake.set()

    async def publish_client_cert(self) -> bool:
        """Hand the current bundle to the file and HAProxy if it differs from the file. Returns whether it did."""
        bundle = self._client_bundle()
        if bundle is None or bundle == _read(self._files.client_cert):
            return False
        leaf = check_client_bundle(bundle)
        write_atomic(self._files.client_cert, bundle.encode())
        await self._push(lambda rt: rt.update_file_certificate(str(self._files.client_cert), bundle))
        self.published += 1
        logger.info("HAProxy client certificate published (serial %x, valid until %s)", leaf.serial_number,
                    leaf.not_valid_after_utc.isoformat())
        return True

    async def refresh_ca(self) -> bool:
        """Fetch the CA bundle; write and push it if it changed. Returns whether it changed."""
        bundle = await self._ca_bundle()
        _check_ca_bundle(bundle)
        if bundle == _read(self._files.ca_file):
            return False
        write_atomic(self._files.ca_file, bundle.encode())
        await self._push(lambda rt: self._push_ca_file(rt, bundle))
        logger.info("internal CA bundle updated (%s)", self._files.ca_file)
        return True

    async def _push_ca_file(self, runtime: RuntimeClient, bundle: str) -> None:
        info = await runtime.info()
        version = info.version
        if not ca_file_live(version):
            self.reload_required = True
            self._reload_pid = info.pid
            logger.warning("edge PKI: HAProxy %s cannot take a new CA file live without losing its client "
                           "certificate's runtime link; %s is written, reload HAProxy to use it", version,
                           self._files.ca_file)
            return
        await runtime.update_ca_file(str(self._files.ca_file), bundle)

    async def ensure(self) -> None:
        """Both files written: what HAProxy needs before it can start. One attempt.

        Raises:
            EdgePkiError: no client certificate yet, or unusable material. CertFileError: writing.
            Whatever `ca_bundle()` raises when the control plane cannot answer.
        """
        await self.refresh_ca()
        await self.publish_client_cert()
        if _read(self._files.client_cert) is None:
            raise EdgePkiError("no client certificate for HAProxy yet")

    async def push_current(self) -> None:
        """Hand the client certificate file to HAProxy as it is (an agent that died between a write and its push
        left HAProxy behind the file). The CA file is not pushed here: HAProxy read it at its start, it changes
        only at a CA rollover, and on 2.6 pushing it would cost the client certificate its live path."""
        cert = _read(self._files.client_cert)
        if cert is not None:
            await self._push(lambda rt: rt.update_file_certificate(str(self._files.client_cert), cert))

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`: publish each new client certificate, follow the CA bundle; failures keep the current files
        and back off."""
        failures = 0
        next_ca = self._now()
        await self.push_current()  # an agent that died between a write and its push left HAProxy behind the file
        while not stop.is_set():
            self._wake.clear()
            try:
                if self._now() >= next_ca:
                    await self.refresh_ca()
                    next_ca = self._now() + dt.timedelta(seconds=self._ca_refresh_s)
                await self.publish_client_cert()
                await self._check_reloaded()
                failures = 0
                self.last_error = None
                wait = max((next_ca - self._now()).total_seconds(), 0.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                wait = self._retry_s[min(failures, len(self._retry_s) - 1)]
                failures += 1
                logger.warning("edge PKI: %s; keeping the current files, retrying in %.0f s", self.last_error, wait)
            await _wait_any(stop, self._wake, wait, self._sleep)

    async def _check_reloaded(self) -> None:
        """A HAProxy that restarted since a CA bundle was written without a push has read it: clear the flag."""
        runtime = self._runtime()
        if not self.reload_required or runtime is None:
            return
        try:
            pid = (await runtime.info()).pid
        except RuntimeApiError:
            return
        if pid != self._reload_pid:
            self.reload_required = False
            logger.info("edge PKI: HAProxy restarted (pid %d) and uses the current CA bundle", pid)

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


async def _wait_any(stop: asyncio.Event, wake: asyncio.Event, seconds: float,
                    sleep: Callable[[float], Awaitable[None]]) -> None:
    waiters = [asyncio.ensure_future(sleep(seconds)), asyncio.ensure_future(stop.wait()),
               asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()

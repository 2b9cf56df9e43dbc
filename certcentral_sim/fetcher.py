"""The DCV engine's IO shell: real HTTP fetches of fileauth.txt and the automatic polling loop.

Owns the aiohttp client session and the poll task; makes no decisions. Which redirect to follow and whether a body
validates are `rules.py`'s; what an answer does to an order is `core.py`'s. Every fetch is bounded by connect/read
timeouts plus an overall deadline.

Names are "resolved" through the simulator's resolve map (a custom aiohttp resolver), so the TCP connection goes to
e.g. 127.0.0.1:PORT while the URL, the Host header and the TLS SNI keep the FQDN, as a real fetch of
http://<fqdn>/.well-known/pki-validation/fileauth.txt would. Each connection re-resolves (no DNS cache, no keep-alive),
so a name mapped to several addresses hits a randomly picked one per fetch.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import socket
from collections.abc import Callable
from typing import final

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from .core import CertCentral, CheckOutcome, DcvCheck
from .model import FetchRecord
from .rules import FetchFailure, Redirect, body_matches, fileauth_url, redirect_decision

__all__ = ["DcvEngine", "MapResolver"]

logger = logging.getLogger(__name__)

USER_AGENT = "DigiCert DCV Bot/1.1 (Lockstep CertCentral simulator)"

# The addresses picked for the current fetch (each fetch runs in its own task, hence its own context).
_PICKED: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("picked", default=None)


@final
class MapResolver(AbstractResolver):
    """Resolves names only through `pick(host, port) -> (ip, port) | None`; unmapped names fail like NXDOMAIN."""

    def __init__(self, pick: Callable[[str, int], tuple[str, int] | None]) -> None:
        self._pick = pick

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        picked = self._pick(host, port)
        if picked is None:
            raise OSError(f"{host} is not in the simulator's resolve map")
        ip, real_port = picked
        log = _PICKED.get()
        if log is not None:
            log.append(f"{ip}:{real_port}")
        fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
        return [ResolveResult(hostname=host, host=ip, port=real_port, family=fam, proto=0,
                              flags=socket.AI_NUMERICHOST)]

    async def close(self) -> None:
        return None


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    buf = bytearray()
    while len(buf) < limit:
        chunk = await resp.content.read(limit - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


@final
class DcvEngine:
    """Runs DCV checks for a `CertCentral`: manual ones on request, automatic ones from a poll loop."""

    def __init__(self, core: CertCentral, *, max_parallel_fetches: int = 64) -> None:
        self._core = core
        self._cfg = core.config
        self._session: aiohttp.ClientSession | None = None
        self._poller: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[object]] = set()
        self._sem = asyncio.Semaphore(max_parallel_fetches)

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(resolver=MapResolver(self._core.pick_address), use_dns_cache=False,
                                         force_close=True, ssl=False)  # any TLS certificate is accepted [C1]
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._cfg.fetch_connect_timeout_s,
                                        sock_read=self._cfg.fetch_read_timeout_s)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False,
                                              headers={"User-Agent": USER_AGENT}, auto_decompress=False)
        if self._cfg.auto_poll:
            self._poller = asyncio.get_running_loop().create_task(self._poll_loop(), name="dcv-poller")

    async def aclose(self) -> None:
        tasks = [t for t in (self._poller, *self._inflight) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._poller = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def check(self, check: DcvCheck) -> CheckOutcome:
        """Fetch every name of `check` concurrently and hand the results to the core."""
        names = check.fetch
        results = await asyncio.gather(*(self.fetch(n, check.value, order_id=check.order_id, trigger=check.trigger)
                                         for n in names)) if check.value is not None else []
        return self._core.finish_check(check, dict(zip(names, results)))

    async def fetch(self, fqdn: str, expected: str | None, *, order_id: int = 0,
                    trigger: str = "check-dcv") -> FetchFailure | None:
        """Fetch http://<fqdn>/.well-known/pki-validation/fileauth.txt following the redirect rules; None when the
        body carries `expected`, else why not. Never raises for network trouble: that is a failed validation."""
        assert self._session is not None, "DcvEngine not started"
        return await asyncio.get_running_loop().create_task(self._fetch(fqdn, expected, order_id, trigger))

    async def _fetch(self, fqdn: str, expected: str | None, order_id: int, trigger: str) -> FetchFailure | None:
        assert self._session is not None
        cfg = self._cfg
        url = fileauth_url(fqdn)
        urls: list[str] = []
        peers: list[str] = []
        _PICKED.set(peers)
        status: int | None = None
        failure: FetchFailure | None
        # One hop is at most connect + read; the deadline bounds the whole chain.
        deadline_s = (cfg.fetch_connect_timeout_s + cfg.fetch_read_timeout_s) * (cfg.max_redirects + 1) + 1.0
        try:
            async with self._sem, asyncio.timeout(deadline_s):
                while True:
                    urls.append(url)
                    async with self._session.get(url, allow_redirects=False) as resp:
                        status = resp.status
                        if 300 <= status < 400:
                            decision = redirect_decision(
                                fqdn=fqdn, current_url=url, status=status, location=resp.headers.get("Location"),
                                visited=urls, max_redirects=cfg.max_redirects,
                                extra_public_suffixes=cfg.extra_public_suffixes)
                            if isinstance(decision, Redirect):
                                url = decision.url
                                continue
                            failure = decision
                            break
                        body = await _read_capped(resp, cfg.max_body_bytes)
                        failure = (FetchFailure.EXPIRED if expected is None else
                                   body_matches(status, body, expected, max_bytes=cfg.max_body_bytes))
                        break
        except aiohttp.ClientConnectorDNSError:
            failure = FetchFailure.UNRESOLVED
        except (TimeoutError, aiohttp.ServerTimeoutError):
            failure = FetchFailure.TIMEOUT
        except (aiohttp.ClientConnectorError, aiohttp.ClientOSError, OSError):
            failure = FetchFailure.UNREACHABLE
        except aiohttp.ClientError:
            failure = FetchFailure.PROTOCOL
        self._core.record_fetch(FetchRecord(
            order_id=order_id, fqdn=fqdn, urls=tuple(urls), peers=tuple(peers), status=status, ok=failure is None,
            reason=str(failure) if failure else "ok", at=self._core.now(), trigger=trigger))
        logger.debug("fileauth fetch %s: %s", fqdn, failure or "ok", extra={"order_id": order_id})
        return failure

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self._cfg.poll_tick_s)
            for check in self._core.due_polls():
                task: asyncio.Task[object] = asyncio.get_running_loop().create_task(self._poll_one(check))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)

    async def _poll_one(self, check: DcvCheck) -> None:
        try:
            await self.check(check)
        except asyncio.CancelledError:
            raise
        except Exception:  # a poll must never take the loop down; the failure is logged, the next poll retries
            logger.exception("automatic DCV check failed", extra={"order_id": check.order_id})

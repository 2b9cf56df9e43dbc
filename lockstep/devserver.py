"""A control-plane sync endpoint in a background thread, over the in-memory backend.

For tests, benchmarks and tools that are not themselves asyncio programs: they publish tokens and certificates from
their own thread, and agents (real processes) sync from it over HTTP exactly as from the control plane.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from aiohttp import web

from controlplane.sync import BearerAuthenticator, CertRef, MemorySyncBackend, Token, add_sync_routes

__all__ = ["SyncServerThread"]

T = TypeVar("T")


class SyncServerThread:
    """Serves /v1/sync/* on 127.0.0.1:<port> for the given bearer tokens (token -> node id)."""

    def __init__(self, *, node_tokens: dict[str, str], host: str = "127.0.0.1", port: int = 0) -> None:
        self._node_tokens = node_tokens
        self._host = host
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sync-server", daemon=True)
        self._runner: web.AppRunner | None = None
        self.backend: MemorySyncBackend | None = None
        self.port = 0
        self.requests = 0

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def _call(self, fn: Callable[[], T], timeout_s: float = 10.0) -> T:
        async def run() -> T:
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout_s)

    async def _start(self) -> None:
        if self.backend is None:
            self.backend = MemorySyncBackend()
        app = web.Application()

        @web.middleware
        async def count(request: web.Request, handler: Callable[..., object]) -> web.StreamResponse:
            self.requests += 1
            return await handler(request)  # type: ignore[misc,no-any-return]

        app.middlewares.append(count)
        add_sync_routes(app, self.backend, BearerAuthenticator(self._node_tokens))
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def start(self) -> SyncServerThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            except (concurrent.futures.TimeoutError, RuntimeError):
                pass
            self._runner = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def pause(self) -> None:
        """Takes the HTTP listener down (connections refused), keeping the desired state: a control-plane outage."""
        assert self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._runner = None

    def resume(self) -> None:
        """Brings the listener back on the same port with the same (possibly changed) desired state."""
        self._port = self.port
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def publish_token(self, token: Token) -> int:
        return self._call(lambda: self._backend.publish_token(token))

    def withdraw_token(self, key: str) -> int:
        return self._call(lambda: self._backend.withdraw_token(key))

    def publish_certificate(self, ref: CertRef, pem: str) -> int:
        return self._call(lambda: self._backend.publish_certificate(ref, pem))

    def withdraw_certificate(self, name: str) -> int:
        return self._call(lambda: self._backend.withdraw_certificate(name))

    def publish_many(self, *, tokens: Sequence[Token] = (), certificates: Sequence[tuple[CertRef, str]] = (),
                     withdraw_certificates: Sequence[str] = ()) -> int:
        """One burst of changes, woken together (as a bulk import would produce)."""
        return self._call(lambda: self._backend.publish_many(tokens, certificates, withdraw_certificates))

    @property
    def _backend(self) -> MemorySyncBackend:
        assert self.backend is not None, "not started"
        return self.backend

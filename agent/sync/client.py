"""HTTP client of the sync protocol: three calls, each with a timeout, each failure mapped to a SyncError."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import quote

import httpx

from .errors import (
    ControlPlaneUnavailable,
    SyncError,
    FingerprintNotCurrent,
    NotFound,
    ProtocolViolation,
    ResyncRequired,
    Unauthorized,
)
from .model import ChangeBatch, Snapshot, parse_changes, parse_material, parse_material_batch, parse_snapshot

__all__ = ["ControlPlaneClient", "HttpClientSlot"]

# Allowance on top of the long-poll wait for the server's answer to travel back.
LONG_POLL_GRACE_S = 10.0


class HttpClientSlot:
    """The httpx client requests go through, replaceable while requests are in flight (client certificate
    rotation). A request keeps the client it started with, so a long-poll in flight finishes on its connection;
    new requests take the new client (new connections, new certificate). A replaced client is closed when its last
    request ends. The slot owns the clients given to it."""

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._current = client
        self._in_flight: dict[httpx.AsyncClient, int] = {}
        self._retired: list[httpx.AsyncClient] = []
        self._closing: set[asyncio.Task[None]] = set()
        self.replacements = 0

    @property
    def current(self) -> httpx.AsyncClient | None:
        return self._current

    def replace(self, client: httpx.AsyncClient) -> None:
        old, self._current = self._current, client
        self.replacements += 1
        if old is not None:
            self._retire(old)

    def _retire(self, client: httpx.AsyncClient) -> None:
        if self._in_flight.get(client, 0) == 0:
            self._in_flight.pop(client, None)
            task = asyncio.get_running_loop().create_task(client.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        else:
            self._retired.append(client)

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[httpx.AsyncClient]:
        client = self._current
        if client is None:
            raise ControlPlaneUnavailable("no credential for the control plane yet (waiting for the node identity)")
        self._in_flight[client] = self._in_flight.get(client, 0) + 1
        try:
            yield client
        finally:
            self._in_flight[client] -= 1
            if client in self._retired and self._in_flight[client] == 0:
                self._retired.remove(client)
                del self._in_flight[client]
                await client.aclose()

    async def aclose(self) -> None:
        clients = [c for c in (self._current, *self._retired) if c is not None]
        self._current, self._retired = None, []
        for client in clients:
            await client.aclose()
        for task in list(self._closing):
            with contextlib.suppress(Exception):
                await task


class ControlPlaneClient:
    """Talks to one control plane through an httpx.AsyncClient the caller configured (base URL, mTLS or bearer), or
    through an `HttpClientSlot` whose client is replaced when the node's certificate is renewed."""

    def __init__(self, http: httpx.AsyncClient | HttpClientSlot, *, request_timeout_s: float = 10.0) -> None:
        # A plain client stays the caller's to close; only a slot given to us is ours.
        self._slot = http if isinstance(http, HttpClientSlot) else HttpClientSlot(http)
        self._timeout_s = request_timeout_s

    async def _get(self, url: str, *, params: dict[str, Any] | None = None, timeout_s: float,
                   json_body: Any = None) -> Any:
        try:
            async with self._slot.use() as http:
                if json_body is None:
                    resp = await http.get(url, params=params, timeout=timeout_s)
                else:
                    resp = await http.post(url, json=json_body, timeout=timeout_s)
        except httpx.HTTPError as exc:  # transport errors and timeouts
            raise ControlPlaneUnavailable(f"{url}: {type(exc).__name__}: {exc}") from exc
        if resp.status_code in (401, 403):
            raise Unauthorized(resp.status_code, resp.text[:200])
        if resp.status_code == 410:
            raise ResyncRequired(resp.text[:200])
        if resp.status_code == 404:
            raise NotFound(resp.text[:200])
        if resp.status_code == 409:
            raise FingerprintNotCurrent(resp.text[:200])
        if resp.status_code >= 500 or resp.status_code == 429:
            raise ControlPlaneUnavailable(f"{url}: HTTP {resp.status_code}")
        if resp.status_code != 200:
            raise ProtocolViolation(f"{url}: unexpected HTTP {resp.status_code}")
        try:
            return resp.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ProtocolViolation(f"{url}: body is not JSON") from exc

    async def snapshot(self) -> Snapshot:
        return parse_snapshot(await self._get("/v1/sync/snapshot", timeout_s=self._timeout_s))

    async def changes(self, since: int, *, wait_s: float) -> ChangeBatch:
        body = await self._get(
            "/v1/sync/changes", params={"since": since, "wait_s": wait_s}, timeout_s=wait_s + LONG_POLL_GRACE_S
        )
        return parse_changes(body, since=since)

    async def material(self, name: str, fingerprint: str) -> str:
        body = await self._get(
            f"/v1/sync/certificates/{quote(name, safe='')}",
            params={"fingerprint": fingerprint},
            timeout_s=self._timeout_s,
        )
        return parse_material(body, name=name, fingerprint=fingerprint)

    async def materials(self, wanted: Sequence[tuple[str, str]]) -> dict[str, str | SyncError]:
        """Material for many (name, fingerprint) pairs in one request; per-item failures come back as errors.

        Raises:
            SyncError: the request as a whole failed (nothing fetched).
        """
        body = await self._get(
            "/v1/sync/certificates",
            json_body={"certificates": [{"name": n, "fingerprint": f} for n, f in wanted]},
            timeout_s=self._timeout_s * 3,
        )
        return parse_material_batch(body, wanted)

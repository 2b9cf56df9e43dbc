"""HTTP client of the sync protocol: three calls, each with a timeout, each failure mapped to a SyncError."""

from __future__ import annotations

import json
from collections.abc import Sequence
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

__all__ = ["ControlPlaneClient"]

# Allowance on top of the long-poll wait for the server's answer to travel back.
LONG_POLL_GRACE_S = 10.0


class ControlPlaneClient:
    """Talks to one control plane through an httpx.AsyncClient the caller configured (base URL, mTLS or bearer)."""

    def __init__(self, http: httpx.AsyncClient, *, request_timeout_s: float = 10.0) -> None:
        self._http = http
        self._timeout_s = request_timeout_s

    async def _get(self, url: str, *, params: dict[str, Any] | None = None, timeout_s: float,
                   json_body: Any = None) -> Any:
        try:
            if json_body is None:
                resp = await self._http.get(url, params=params, timeout=timeout_s)
            else:
                resp = await self._http.post(url, json=json_body, timeout=timeout_s)
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

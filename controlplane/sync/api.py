"""aiohttp routes of the sync protocol (docs/sync-protocol.md): snapshot, long-poll changes, certificate material.

Parses and serialises only; the backend owns the data. The authenticator maps a request to a node id (bearer
token here; the mTLS authenticator reads the peer certificate).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable, Mapping
from typing import Protocol

from aiohttp import web

from .state import CertRef, Change, ResyncRequired, Token

__all__ = ["SYNC_BACKEND", "AUTHENTICATOR", "BearerAuthenticator", "SyncBackend", "add_sync_routes"]

logger = logging.getLogger(__name__)

PROTOCOL = 1
DEFAULT_WAIT_S = 25.0
MAX_WAIT_S = 60.0


class SyncBackend(Protocol):
    """What the sync API serves from: the in-memory backend (demo, tests) or the control plane's store."""

    async def snapshot(self, node: str) -> tuple[int, list[Token], list[CertRef]]: ...
    async def changes_since(self, node: str, since: int) -> list[Change]: ...
    async def wait_for_change(self, node: str, since: int, timeout_s: float) -> None: ...
    async def material_many(self, node: str, names: Iterable[str]) -> dict[str, tuple[str, str]]:
        """name -> (fingerprint, PEM with the private key) for the names that have a current certificate."""
        ...


class Authenticator(Protocol):
    async def __call__(self, request: web.Request) -> str:
        """The node id, or raise web.HTTPUnauthorized / web.HTTPForbidden."""
        ...


class BearerAuthenticator:
    """`Authorization: Bearer <token>` → node id, for the embedded single-machine setup."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._tokens = dict(tokens)  # token -> node id

    async def __call__(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() == "bearer" and presented:
            for token, node in self._tokens.items():
                if hmac.compare_digest(token.encode(), presented.encode()):
                    return node
        raise web.HTTPUnauthorized(
            text='{"error": "unauthenticated"}', content_type="application/json",
            headers={"WWW-Authenticate": "Bearer"},
        )


SYNC_BACKEND = web.AppKey("sync_backend", SyncBackend)
AUTHENTICATOR = web.AppKey("sync_authenticator", Authenticator)


def _bad_request(reason: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=f'{{"error": "{reason}"}}', content_type="application/json")


async def _snapshot(request: web.Request) -> web.Response:
    node = await request.app[AUTHENTICATOR](request)
    revision, tokens, certs = await request.app[SYNC_BACKEND].snapshot(node)
    return web.json_response({
        "protocol": PROTOCOL,
        "revision": revision,
        "tokens": [t.to_json() for t in tokens],
        "certificates": [c.to_json() for c in certs],
    })


async def _changes(request: web.Request) -> web.Response:
    node = await request.app[AUTHENTICATOR](request)
    backend = request.app[SYNC_BACKEND]
    try:
        since = int(request.query["since"])
        wait_s = min(float(request.query.get("wait_s", DEFAULT_WAIT_S)), MAX_WAIT_S)
    except (KeyError, ValueError):
        raise _bad_request("since must be an integer and wait_s a number") from None
    if since < 0 or not wait_s >= 0:
        raise _bad_request("since and wait_s must not be negative")
    try:
        changes = await backend.changes_since(node, since)
        if not changes and wait_s > 0:
            await backend.wait_for_change(node, since, wait_s)
            # Again after the wait: a node removed while its long-poll was open gets 403, not one more change.
            node = await request.app[AUTHENTICATOR](request)
            changes = await backend.changes_since(node, since)
    except ResyncRequired as exc:
        return web.json_response({"error": "resync_required", "revision": exc.revision}, status=410)
    revision = changes[-1].revision if changes else since
    return web.json_response(
        {"protocol": PROTOCOL, "revision": revision, "changes": [c.to_json() for c in changes]}
    )


async def _material(request: web.Request) -> web.Response:
    node = await request.app[AUTHENTICATOR](request)
    name = request.match_info["name"]
    found = (await request.app[SYNC_BACKEND].material_many(node, [name])).get(name)
    if found is None:
        return web.json_response({"error": "not_found", "name": name}, status=404)
    fingerprint, pem = found
    wanted = request.query.get("fingerprint")
    if wanted is not None and wanted != fingerprint:
        return web.json_response({"error": "fingerprint_not_current", "current": fingerprint}, status=409)
    return web.json_response({"protocol": PROTOCOL, "name": name, "fingerprint": fingerprint, "pem": pem})


MAX_MATERIAL_BATCH = 500


async def _material_batch(request: web.Request) -> web.Response:
    node = await request.app[AUTHENTICATOR](request)
    try:
        body = await request.json()
        items = body["certificates"]
        wanted = [(str(i["name"]), str(i["fingerprint"])) for i in items]
    except (ValueError, KeyError, TypeError):
        raise _bad_request("body must be {\"certificates\": [{\"name\", \"fingerprint\"}, ...]}") from None
    if len(wanted) > MAX_MATERIAL_BATCH:
        raise _bad_request(f"at most {MAX_MATERIAL_BATCH} certificates per request")
    materials = await request.app[SYNC_BACKEND].material_many(node, [name for name, _ in wanted])
    out: list[dict[str, str]] = []
    for name, fingerprint in wanted:
        found = materials.get(name)
        if found is None:
            out.append({"name": name, "error": "not_found"})
        elif found[0] != fingerprint:
            out.append({"name": name, "error": "fingerprint_not_current", "current": found[0]})
        else:
            out.append({"name": name, "fingerprint": fingerprint, "pem": found[1]})
    return web.json_response({"protocol": PROTOCOL, "certificates": out})


def add_sync_routes(app: web.Application, backend: SyncBackend, authenticator: Authenticator) -> None:
    app[SYNC_BACKEND] = backend
    app[AUTHENTICATOR] = authenticator
    app.router.add_get("/v1/sync/snapshot", _snapshot)
    app.router.add_get("/v1/sync/changes", _changes)
    app.router.add_get("/v1/sync/certificates/{name}", _material)
    app.router.add_post("/v1/sync/certificates", _material_batch)

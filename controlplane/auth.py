"""Who is calling: a node or a backend, from its client certificate (mTLS) or, for legacy nodes, a bearer token.

Owns the mapping from a request's credentials to an identity, and the 401/403 answers. Certificates are matched by
fingerprint in the store's registry, never by their names: a certificate the CA signed but the registry does not
know (or no longer accepts) authenticates nobody.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Callable

from aiohttp import web

from controlplane.store import Store
from controlplane.store.records import IdentityKind

__all__ = ["Caller", "StoreAuthenticator", "peer_certificate_fingerprint"]


@dataclasses.dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated client.

    Attributes:
        kind: "node" or "backend".
        profile: the internal certificate's profile ("node", "edge-client", "backend"); None for a bearer token or a
            certificate pinned in the configuration (legacy nodes).
        fingerprint: of the client certificate presented, if any.
    """

    kind: IdentityKind
    id: str
    profile: str | None
    fingerprint: str | None


def _json_error(cls: type[web.HTTPException], reason: str, message: str) -> web.HTTPException:
    return cls(text=json.dumps({"error": reason, "message": message}), content_type="application/json")


def peer_certificate_fingerprint(request: web.Request) -> str | None:
    """"sha256:<hex>" of the client certificate the TLS handshake verified, or None."""
    ssl_obj = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = ssl_obj.getpeercert(binary_form=True) if ssl_obj is not None else None
    return "sha256:" + hashlib.sha256(der).hexdigest() if der else None


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class StoreAuthenticator:
    """Agents: a client certificate registered for the node (issued by the internal PKI, or pinned in the
    configuration), or a bearer token whose hash is registered.

    Unknown or expired credential → 401; a removed node or backend (or a revoked certificate) → 403.
    """

    def __init__(self, store: Store, *, now: Callable[[], dt.datetime] = _utcnow) -> None:
        self._store = store
        self._now = now

    async def identify(self, request: web.Request, *, bearer: bool = True) -> Caller:
        """The caller, from the client certificate first, then (if `bearer`) the Authorization header.

        Raises: web.HTTPUnauthorized; web.HTTPForbidden.
        """
        fingerprint = peer_certificate_fingerprint(request)
        if fingerprint is not None:
            found = await self._store.identity_for_client_cert(fingerprint, now=self._now())
            if found is not None:
                if found.identity.removed or found.cert.revoked_at is not None:
                    raise _json_error(web.HTTPForbidden, f"{found.identity.kind}_removed",
                                      f"{found.identity.kind} {found.identity.id} was removed")
                return Caller(found.identity.kind, found.identity.id, found.cert.profile, fingerprint)
            node = await self._store.node_for_client_cert(fingerprint)
            if node is not None:
                if node.removed:
                    raise _json_error(web.HTTPForbidden, "node_removed", f"node {node.node_id} was removed")
                return Caller("node", node.node_id, None, fingerprint)
        if bearer:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() == "bearer" and token:
                node = await self._store.node_for_bearer_token(token)
                if node is not None:
                    if node.removed:
                        raise _json_error(web.HTTPForbidden, "node_removed", f"node {node.node_id} was removed")
                    return Caller("node", node.node_id, None, None)
        raise _json_error(web.HTTPUnauthorized, "unauthenticated",
                          "a registered client certificate (or node bearer token) is required")

    async def __call__(self, request: web.Request) -> str:
        """The sync API's authenticator: the node id. A backend's or HAProxy's (edge-client) certificate is not a
        node's and gets 403."""
        caller = await self.identify(request)
        if caller.kind != "node" or caller.profile not in (None, "node"):
            raise _json_error(web.HTTPForbidden, "not_a_node",
                              f"this {caller.profile or caller.kind} certificate does not authenticate a node")
        return caller.id

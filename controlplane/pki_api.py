"""The internal PKI over HTTP: the CA certificate, enrollment with a bootstrap token, renewal and HAProxy's client
certificate over mTLS, and the operators' node and backend registry (each new identity gets a one-time token).

Handlers parse, call `InternalPki` or the store, serialise. `InternalPki` is the shell around the sans-IO
controlplane/pki.py: it loads (or creates, once) the CA from the store and registers what it issues there.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
from collections.abc import Callable
from typing import Any

from aiohttp import web
from cryptography import x509

from controlplane import pki
from controlplane.auth import Caller, StoreAuthenticator
from controlplane.store import (
    AlreadyExists,
    Backend,
    CertRegistration,
    Identity,
    IdentityCert,
    IdentityRemoved,
    InvalidRecord,
    Node,
    NotFound,
    Store,
    TokenRejected,
)
from controlplane.store.records import IdentityKind

__all__ = ["DEFAULT_TOKEN_TTL_S", "InternalPki", "PKI", "add_pki_routes", "new_bootstrap_token"]

logger = logging.getLogger(__name__)

DEFAULT_TOKEN_TTL_S = 3600.0
MAX_TOKEN_TTL_S = 30 * 86400.0
MAX_BODY = 64 * 1024
TOKEN_PREFIX = "lsbt_"


def new_bootstrap_token() -> str:
    """256 random bits, URL-safe; the prefix makes a leaked one recognisable (secret scanners, logs)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def _iso(t: dt.datetime | None) -> str | None:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if t else None


class InternalPki:
    """The control plane's CA and its issuance. One per process; every process on one store shares the CA."""

    def __init__(self, store: Store, *, validity: pki.Validity = pki.Validity(),
                 now: Callable[[], dt.datetime]) -> None:
        self._store = store
        self.validity = validity
        self._now = now
        self._ca: pki.InternalCa | None = None
        self._lock = asyncio.Lock()

    async def ca(self) -> pki.InternalCa:
        """The signing CA, created in the store on first use (by whichever process gets there first)."""
        if self._ca is None:
            async with self._lock:
                if self._ca is None:
                    now = self._now()

                    def create() -> tuple[str, bytes]:
                        made = pki.create_ca(now=now)
                        logger.info("internal PKI: created the internal CA %s", made.fingerprint)
                        return made.cert_pem, made.key_pem

                    cert_pem, key_pem = await self._store.ensure_internal_ca(create)
                    self._ca = pki.load_ca(cert_pem, key_pem)
        return self._ca

    async def ca_bundle_pem(self) -> str:
        await self.ca()
        return "".join(await self._store.internal_ca_certificates())

    def _registration(self, issued: pki.IssuedCertificate) -> CertRegistration:
        return CertRegistration(issued.fingerprint, issued.profile.value, issued.serial, issued.not_after, issued.pem)

    async def enroll(self, token: str, public_key: pki.PublicKey) -> tuple[Identity, CertRegistration]:
        """Redeem `token` for a certificate of its identity. Raises: TokenRejected; IdentityRemoved; PkiError."""
        ca = await self.ca()
        now = self._now()

        def issue(identity: Identity) -> CertRegistration:
            profile = pki.Profile.NODE if identity.kind == "node" else pki.Profile.BACKEND
            return self._registration(pki.issue(ca, public_key, profile=profile, identity_id=identity.id,
                                                names=identity.names, now=now, validity=self.validity))

        return await self._store.redeem_bootstrap_token(token, now=now, key_id=pki.spki_sha256(public_key),
                                                        issue=issue)

    async def renew(self, caller: Caller, public_key: pki.PublicKey, *, profile: pki.Profile) -> CertRegistration:
        """A new certificate of `profile` for the caller's identity, registered; earlier ones stay valid.

        Raises: IdentityRemoved; NotFound; PkiError.
        """
        ca = await self.ca()
        names: tuple[str, ...] = ()
        if caller.kind == "backend":
            backend = await self._store.get_backend(caller.id)
            if backend is None:
                raise NotFound("backend", caller.id)
            names = backend.names
        issued = pki.issue(ca, public_key, profile=profile, identity_id=caller.id, names=names, now=self._now(),
                           validity=self.validity)
        registration = self._registration(issued)
        await self._store.register_identity_cert(caller.kind, caller.id, registration, now=self._now())
        return registration

    async def serving_certificate(self, names: tuple[str, ...], public_key: pki.PublicKey) -> pki.IssuedCertificate:
        """The control plane's own server certificate (not registered: it authenticates the server, not a client)."""
        return pki.issue(await self.ca(), public_key, profile=pki.Profile.CONTROL_PLANE, identity_id="control-plane",
                         names=names, now=self._now(), validity=self.validity)


PKI = web.AppKey("pki", InternalPki)
PKI_AUTH = web.AppKey("pki_auth", StoreAuthenticator)
PKI_STORE = web.AppKey("pki_store", Store)
PKI_NOW: web.AppKey[Callable[[], dt.datetime]] = web.AppKey("pki_now")


def _error(status: int, reason: str, message: str) -> web.Response:
    return web.json_response({"error": reason, "message": message}, status=status)


async def _json_body(request: web.Request) -> dict[str, Any] | web.Response:
    if request.content_length is not None and request.content_length > MAX_BODY:
        return _error(413, "too_large", f"the body is larger than {MAX_BODY} bytes")
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "bad_json", "the body must be a JSON object")
    if not isinstance(body, dict):
        return _error(400, "bad_json", "the body must be a JSON object")
    return body


def _renew_after(registration: CertRegistration) -> dt.datetime:
    cert = x509.load_pem_x509_certificate(registration.pem.encode("ascii"))
    issued_at = cert.not_valid_before_utc + pki.BACKDATE
    return issued_at + (registration.not_after - issued_at) * pki.RENEW_FRACTION


async def _issued_response(request: web.Request, identity_kind: str, identity_id: str,
                           registration: CertRegistration) -> web.Response:
    return web.json_response({
        "certificate": registration.pem,
        "ca": await request.app[PKI].ca_bundle_pem(),
        "fingerprint": registration.fingerprint,
        "profile": registration.profile,
        "not_after": _iso(registration.not_after),
        "renew_after": _iso(_renew_after(registration)),
        "identity": {"kind": identity_kind, "id": identity_id},
    }, status=201)


def _public_key(body: dict[str, Any]) -> pki.PublicKey | web.Response:
    try:
        return pki.check_csr(body.get("csr"))
    except pki.PkiError as exc:
        return _error(400, exc.reason, str(exc))


def _requires_tls(request: web.Request) -> web.Response | None:
    if request.transport is None or request.transport.get_extra_info("ssl_object") is None:
        return _error(400, "tls_required", "the internal PKI answers over HTTPS only (a token or key in the clear "
                                           "is a token or key given away)")
    return None


async def ca_pem(request: web.Request) -> web.Response:
    return web.Response(text=await request.app[PKI].ca_bundle_pem(), content_type="application/x-pem-file")


async def enroll(request: web.Request) -> web.Response:
    if (refused := _requires_tls(request)) is not None:
        return refused
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    token = body.get("token")
    if not isinstance(token, str) or not token:
        return _error(400, "bad_request", 'expected {"token": ..., "csr": PEM}')
    key = _public_key(body)  # checked before the token is touched: a bad CSR does not burn it
    if isinstance(key, web.Response):
        return key
    try:
        identity, registration = await request.app[PKI].enroll(token, key)
    except TokenRejected as exc:
        logger.warning("internal PKI: enrollment refused (%s) from %s", exc.reason, request.remote)
        return _error(401, exc.reason, str(exc))
    except IdentityRemoved as exc:
        return _error(403, f"{exc.kind}_removed", str(exc))
    except pki.PkiError as exc:
        return _error(400, exc.reason, str(exc))
    logger.info("internal PKI: %s %s enrolled, certificate %s until %s", identity.kind, identity.id,
                registration.fingerprint, _iso(registration.not_after))
    return await _issued_response(request, identity.kind, identity.id, registration)


async def _issue_for_caller(request: web.Request, *, profile_of: Callable[[Caller], pki.Profile | None],
                            what: str) -> web.Response:
    if (refused := _requires_tls(request)) is not None:
        return refused
    try:
        caller = await request.app[PKI_AUTH].identify(request, bearer=False)
    except web.HTTPException as exc:
        return web.Response(status=exc.status, text=exc.text, content_type="application/json")
    profile = profile_of(caller)
    if profile is None:
        return _error(403, "wrong_certificate", f"{what} needs the caller's current identity certificate from the "
                                                "internal PKI")
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    key = _public_key(body)
    if isinstance(key, web.Response):
        return key
    try:
        registration = await request.app[PKI].renew(caller, key, profile=profile)
    except IdentityRemoved as exc:
        return _error(403, f"{exc.kind}_removed", str(exc))
    except NotFound as exc:
        return _error(403, "unknown_identity", str(exc))
    except pki.PkiError as exc:
        return _error(400, exc.reason, str(exc))
    logger.info("internal PKI: %s certificate %s for %s %s until %s", profile.value, registration.fingerprint,
                caller.kind, caller.id, _iso(registration.not_after))
    return await _issued_response(request, caller.kind, caller.id, registration)


async def renew(request: web.Request) -> web.Response:
    def profile_of(caller: Caller) -> pki.Profile | None:
        if caller.kind == "node" and caller.profile == pki.Profile.NODE:
            return pki.Profile.NODE
        if caller.kind == "backend" and caller.profile == pki.Profile.BACKEND:
            return pki.Profile.BACKEND
        return None

    return await _issue_for_caller(request, profile_of=profile_of, what="renewal")


async def edge_client(request: web.Request) -> web.Response:
    def profile_of(caller: Caller) -> pki.Profile | None:
        return pki.Profile.EDGE_CLIENT if caller.kind == "node" and caller.profile == pki.Profile.NODE else None

    return await _issue_for_caller(request, profile_of=profile_of, what="HAProxy's client certificate (a node's)")


# -- the operators' registry ---------------------------------------------------------------------------------------

def _token_ttl(body: dict[str, Any]) -> dt.timedelta | web.Response:
    raw = body.get("token_ttl_s", DEFAULT_TOKEN_TTL_S)
    if not isinstance(raw, int | float) or isinstance(raw, bool) or not 1 <= raw <= MAX_TOKEN_TTL_S:
        return _error(400, "bad_request", f"token_ttl_s must be a number of seconds, 1 to {MAX_TOKEN_TTL_S:.0f}")
    return dt.timedelta(seconds=float(raw))


def _cert_json(c: IdentityCert) -> dict[str, Any]:
    return {"fingerprint": c.fingerprint, "profile": c.profile, "serial": c.serial, "not_after": _iso(c.not_after),
            "issued_at": _iso(c.created_at), "revoked_at": _iso(c.revoked_at)}


async def _identity_json(store: Store, kind: IdentityKind, identity_id: str, now: dt.datetime) -> dict[str, Any]:
    certs = await store.identity_certificates(kind, identity_id)
    tokens = await store.bootstrap_tokens(kind, identity_id)
    own = kind if kind == "backend" else "node"
    valid = [c for c in certs if c.profile == own and c.revoked_at is None and c.not_after > now]
    return {
        "enrolled": any(t.used_at is not None for t in tokens),
        "certificate_not_after": _iso(max((c.not_after for c in valid), default=None)),
        "pending_tokens": sum(1 for t in tokens if t.used_at is None and t.expires_at > now),
        "certificates": [_cert_json(c) for c in certs],
    }


async def _node_json(store: Store, node: Node, now: dt.datetime) -> dict[str, Any]:
    return {"id": node.node_id, "removed": node.removed, "credential": node.credential_kind,
            "created_at": _iso(node.created_at), **await _identity_json(store, "node", node.node_id, now)}


async def _backend_json(store: Store, backend: Backend, now: dt.datetime) -> dict[str, Any]:
    return {"id": backend.backend_id, "names": list(backend.names), "removed": backend.removed,
            "created_at": _iso(backend.created_at),
            **await _identity_json(store, "backend", backend.backend_id, now)}


async def _new_token(request: web.Request, kind: IdentityKind, identity_id: str,
                     ttl: dt.timedelta) -> tuple[str, dt.datetime]:
    token = new_bootstrap_token()
    expires = request.app[PKI_NOW]() + ttl
    await request.app[PKI_STORE].add_bootstrap_token(token, kind=kind, identity_id=identity_id, expires_at=expires)
    return token, expires



async def add_node(request: web.Request) -> web.Response:
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    ttl = _token_ttl(body)
    if isinstance(ttl, web.Response):
        return ttl
    try:
        node_id = pki.check_identity_id(body.get("id"))
    except pki.BadName as exc:
        return _error(400, exc.reason, str(exc))
    store = request.app[PKI_STORE]
    try:
        node = await store.add_node(node_id, pki=True)
    except AlreadyExists:
        return _error(409, "duplicate", f"node {node_id} exists (POST /v1/nodes/{node_id}/token for a new token)")
    token, expires = await _new_token(request, "node", node_id, ttl)
    logger.info("internal PKI: node %s added, bootstrap token valid until %s", node_id, _iso(expires))
    return web.json_response({**await _node_json(store, node, request.app[PKI_NOW]()), "bootstrap_token": token,
                              "token_expires_at": _iso(expires)}, status=201)


async def new_token(request: web.Request) -> web.Response:
    kind: IdentityKind = "node" if request.path.startswith("/v1/nodes/") else "backend"
    body = await _json_body(request) if request.can_read_body else {}
    if isinstance(body, web.Response):
        return body
    ttl = _token_ttl(body)
    if isinstance(ttl, web.Response):
        return ttl
    identity_id = request.match_info["id"]
    try:
        token, expires = await _new_token(request, kind, identity_id, ttl)
    except NotFound:
        return _error(404, "not_found", f"{kind} {identity_id} is not registered")
    except IdentityRemoved:
        return _error(409, f"{kind}_removed", f"{kind} {identity_id} was removed; register a new id")
    logger.info("internal PKI: new bootstrap token for %s %s, valid until %s", kind, identity_id, _iso(expires))
    return web.json_response({"id": identity_id, "kind": kind, "bootstrap_token": token,
                              "token_expires_at": _iso(expires)}, status=201)


async def list_nodes(request: web.Request) -> web.Response:
    store = request.app[PKI_STORE]
    now = request.app[PKI_NOW]()
    return web.json_response({"nodes": [await _node_json(store, n, now) for n in await store.list_nodes()]})


async def remove_node(request: web.Request) -> web.Response:
    node_id = request.match_info["id"]
    store = request.app[PKI_STORE]
    try:
        node = await store.remove_node(node_id)
    except NotFound:
        return _error(404, "not_found", f"node {node_id} is not registered")
    logger.info("internal PKI: node %s removed; its certificates are refused from now on", node_id)
    return web.json_response(await _node_json(store, node, request.app[PKI_NOW]()))


async def add_backend(request: web.Request) -> web.Response:
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    ttl = _token_ttl(body)
    if isinstance(ttl, web.Response):
        return ttl
    try:
        backend_id = pki.check_identity_id(body.get("id"))
        names = pki.check_names(body.get("names"))
    except pki.BadName as exc:
        return _error(400, exc.reason, str(exc))
    store = request.app[PKI_STORE]
    try:
        backend = await store.add_backend(backend_id, names)
    except AlreadyExists:
        return _error(409, "duplicate", f"backend {backend_id} exists")
    except InvalidRecord as exc:
        return _error(400, "bad_name", str(exc))
    token, expires = await _new_token(request, "backend", backend_id, ttl)
    logger.info("internal PKI: backend %s added for %s", backend_id, ", ".join(names))
    return web.json_response({**await _backend_json(store, backend, request.app[PKI_NOW]()),
                              "bootstrap_token": token, "token_expires_at": _iso(expires)}, status=201)


async def list_backends(request: web.Request) -> web.Response:
    store = request.app[PKI_STORE]
    now = request.app[PKI_NOW]()
    return web.json_response({"backends": [await _backend_json(store, b, now) for b in await store.list_backends()]})


async def remove_backend(request: web.Request) -> web.Response:
    backend_id = request.match_info["id"]
    store = request.app[PKI_STORE]
    try:
        backend = await store.remove_backend(backend_id)
    except NotFound:
        return _error(404, "not_found", f"backend {backend_id} is not registered")
    logger.info("internal PKI: backend %s removed", backend_id)
    return web.json_response(await _backend_json(store, backend, request.app[PKI_NOW]()))


def add_pki_routes(app: web.Application, *, store: Store, internal_pki: InternalPki,
                   authenticator: StoreAuthenticator, now: Callable[[], dt.datetime]) -> None:
    """/v1/pki/* (public or mTLS; the operator middleware must let them through) and the operator registry
    (/v1/nodes, /v1/backends: operator token)."""
    app[PKI] = internal_pki
    app[PKI_AUTH] = authenticator
    app[PKI_STORE] = store
    app[PKI_NOW] = now
    app.router.add_get("/v1/pki/ca.pem", ca_pem)
    app.router.add_post("/v1/pki/enroll", enroll)
    app.router.add_post("/v1/pki/renew", renew)
    app.router.add_post("/v1/pki/edge-client", edge_client)
    app.router.add_post("/v1/nodes", add_node)
    app.router.add_get("/v1/nodes", list_nodes)
    app.router.add_post("/v1/nodes/{id}/token", new_token)
    app.router.add_delete("/v1/nodes/{id}", remove_node)
    app.router.add_post("/v1/backends", add_backend)
    app.router.add_get("/v1/backends", list_backends)
    app.router.add_post("/v1/backends/{id}/token", new_token)
    app.router.add_delete("/v1/backends/{id}", remove_backend)

"""The control plane's HTTP application: the operators' REST API for domains and certificates, and the agents' sync
API, both over the store. Handlers parse, call the store, serialise; the pipeline runs beside them (serve.py).
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from controlplane.auth import StoreAuthenticator
from controlplane.budget import ApexQuota, BudgetError, QuotaExceeded, apex_of
from controlplane.domains import DomainStatus, InvalidDomain, normalize_domain
from controlplane.pki_api import InternalPki, add_pki_routes
from controlplane.store import AlreadyExists, NotFound, Store, StoreSyncBackend, hash_bearer_token
from controlplane.store.records import CertificateRecord, Domain
from controlplane.sync import add_sync_routes

__all__ = ["STORE", "StoreAuthenticator", "make_app"]

logger = logging.getLogger(__name__)

STORE = web.AppKey("store", Store)
NOW: web.AppKey[Callable[[], dt.datetime]] = web.AppKey("now")
QUOTA: web.AppKey[ApexQuota | None] = web.AppKey("quota")
ON_CHANGE: web.AppKey[Callable[[], None]] = web.AppKey("on_domains_changed")
MAX_BULK = 1000


def _error(status: int, reason: str, message: str) -> web.Response:
    return web.json_response({"error": reason, "message": message}, status=status)


def _iso(t: dt.datetime | None) -> str | None:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if t else None


def domain_json(d: Domain, cert: CertificateRecord | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": d.name,
        "status": d.status,
        "detail": d.status_detail,
        "issuer": d.issuer,
        "issuer_reason": d.pipeline.get("issuer_reason"),  # why this CA: order, CAA, or a failover and its cause
        "next_retry_at": _iso(d.next_retry_at),
        "ca_order_id": d.ca_order_id,
        "created_at": _iso(d.created_at),
        "updated_at": _iso(d.updated_at),
    }
    if cert is not None:
        out["certificate"] = cert_json(cert)
    return out


def cert_json(c: CertificateRecord) -> dict[str, Any]:
    return {"domain": c.domain, "fingerprint": c.fingerprint, "not_before": _iso(c.not_before),
            "not_after": _iso(c.not_after), "issuer": c.issuer, "names": list(c.names)}


def _operator_auth(api_token_hash: str) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        # The sync API and the internal PKI authenticate agents themselves (client certificate, node token, or
        # bootstrap token); /healthz and the CA certificate are public.
        if request.path.startswith(("/v1/sync/", "/v1/pki/")) or request.path == "/healthz":
            return await handler(request)  # type: ignore[no-any-return]
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(hash_bearer_token(token), api_token_hash):
            return _error(401, "unauthenticated", "an operator API token is required (Authorization: Bearer ...)")
        return await handler(request)  # type: ignore[no-any-return]

    return middleware


async def _add_one(store: Store, raw: Any, now: dt.datetime, quota: ApexQuota | None) -> tuple[int, dict[str, Any]]:
    try:
        name = normalize_domain(raw)
    except InvalidDomain as exc:
        return 400, {"name": raw if isinstance(raw, str) else None, "error": exc.reason, "message": str(exc)}
    if quota is not None:
        try:
            apex = apex_of(name)
            quota.enforce(await store.count_names_under(apex), apex=apex)
        except BudgetError as exc:
            return 422 if isinstance(exc, QuotaExceeded) else 400, {"name": name, "error": exc.reason,
                                                                     "message": str(exc)}
    try:
        domain = await store.create_domain(name, status=DomainStatus.PENDING.value,
                                           status_detail="waiting for the pipeline", next_retry_at=now)
    except AlreadyExists:
        return 409, {"name": name, "error": "duplicate", "message": f"{name} is already registered"}
    return 201, domain_json(domain)


async def add_domains(request: web.Request) -> web.Response:
    store = request.app[STORE]
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "bad_json", "the body must be JSON: {\"name\": ...} or {\"names\": [...]}")
    now = request.app[NOW]()
    if isinstance(body, dict) and "names" in body:
        names = body["names"]
        if not isinstance(names, list) or len(names) > MAX_BULK:
            return _error(400, "bad_request", f"names must be a list of at most {MAX_BULK}")
        results = [await _add_one(store, raw, now, request.app[QUOTA]) for raw in names]
        request.app[ON_CHANGE]()
        return web.json_response({
            "added": sum(1 for status, _ in results if status == 201),
            # per item: the HTTP status it would have had alone (201, 400, 409), then the domain or the error
            "results": [{"http_status": status, **body} for status, body in results],
        }, status=200)
    if not isinstance(body, dict) or "name" not in body:
        return _error(400, "bad_request", "expected {\"name\": \"shop.example.com\"}")
    status, out = await _add_one(store, body["name"], now, request.app[QUOTA])
    request.app[ON_CHANGE]()
    return web.json_response(out, status=status)


async def list_domains(request: web.Request) -> web.Response:
    store = request.app[STORE]
    try:
        limit = min(int(request.query.get("limit", "100")), 1000)
    except ValueError:
        return _error(400, "bad_request", "limit must be an integer")
    statuses = request.query.getall("status", []) or None
    page = await store.list_domains(status=statuses, prefix=request.query.get("prefix"),
                                    after=request.query.get("after"), limit=limit)
    return web.json_response({"domains": [domain_json(d) for d in page.domains], "next_after": page.next_after})


async def show_domain(request: web.Request) -> web.Response:
    store = request.app[STORE]
    try:
        name = normalize_domain(request.match_info["name"])
    except InvalidDomain as exc:
        return _error(400, exc.reason, str(exc))
    domain = await store.get_domain(name)
    if domain is None:
        return _error(404, "not_found", f"{name} is not registered")
    return web.json_response(domain_json(domain, await store.current_certificate(name)))


async def remove_domain(request: web.Request) -> web.Response:
    store = request.app[STORE]
    try:
        name = normalize_domain(request.match_info["name"])
    except InvalidDomain as exc:
        return _error(400, exc.reason, str(exc))
    try:
        domain = await store.update_domain(name, status=DomainStatus.REMOVING.value,
                                           status_detail="removal requested", next_retry_at=request.app[NOW]())
    except NotFound:
        return _error(404, "not_found", f"{name} is not registered")
    request.app[ON_CHANGE]()
    return web.json_response(domain_json(domain), status=202)


async def list_certificates(request: web.Request) -> web.Response:
    store = request.app[STORE]
    try:
        days = float(request.query.get("expiring_within_days", "36500"))
        limit = min(int(request.query.get("limit", "1000")), 10_000)
    except ValueError:
        return _error(400, "bad_request", "expiring_within_days and limit must be numbers")
    before = request.app[NOW]() + dt.timedelta(days=days)
    certs = await store.expiring_certificates(before, limit=limit)
    return web.json_response({"certificates": [cert_json(c) for c in certs]})


async def healthz(request: web.Request) -> web.Response:
    counts = await request.app[STORE].count_domains()
    return web.json_response({"ready": True, "domains": counts, "revision": await request.app[STORE].revision()})


def make_app(*, store: Store, api_token: str, now: Callable[[], dt.datetime],
             max_names_per_apex: int | None = None, internal_pki: InternalPki | None = None,
             on_domains_changed: Callable[[], None] | None = None) -> web.Application:
    """Args:
        on_domains_changed: called after domains were added or marked for removal (the pipeline's wake-up).
        internal_pki: the CA this process issues with (serve() shares it with the serving certificate); by default
            one over `store` with the default lifetimes.
    """
    app = web.Application(middlewares=[_operator_auth(hash_bearer_token(api_token))])
    app[STORE] = store
    app[NOW] = now
    app[QUOTA] = ApexQuota(max_names_per_apex) if max_names_per_apex else None
    app[ON_CHANGE] = on_domains_changed or (lambda: None)
    app.router.add_post("/v1/domains", add_domains)
    app.router.add_get("/v1/domains", list_domains)
    app.router.add_get("/v1/domains/{name}", show_domain)
    app.router.add_delete("/v1/domains/{name}", remove_domain)
    app.router.add_get("/v1/certificates", list_certificates)
    app.router.add_get("/healthz", healthz)
    authenticator = StoreAuthenticator(store, now=now)
    add_sync_routes(app, StoreSyncBackend(store), authenticator)
    add_pki_routes(app, store=store, internal_pki=internal_pki or InternalPki(store, now=now),
                   authenticator=authenticator, now=now)
    return app

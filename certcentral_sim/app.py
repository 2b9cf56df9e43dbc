"""The aiohttp application: CertCentral Services API routes under /services/v2 plus a small admin API under /_sim.

Handlers parse, call the core, and serialise; no business logic lives here. One middleware applies, in order:
injected faults, `X-DC-DEVKEY` authentication, the per-key rate limit, the view-only permission check, and maps
`ApiError` and unknown routes to the reference's error shape (§3).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import zoneinfo
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from . import views
from .clock import FakeClock
from .core import CertCentral
from .errors import ApiError
from .faults import Fault, FaultKind, FaultPlan
from .fetcher import DcvEngine
from .model import ApiKey, Order

__all__ = ["ADMIN_PREFIX", "API_PREFIX", "CORE", "ENGINE", "FAULTS", "make_app"]

API_PREFIX = "/services/v2"
ADMIN_PREFIX = "/_sim"

CORE = web.AppKey("core", CertCentral)
FAULTS = web.AppKey("faults", FaultPlan)
ENGINE = web.AppKey("engine", DcvEngine)
CLOCK = web.AppKey("clock", object)
API_KEY = web.RequestKey("api_key", ApiKey)

_REQUEST_FAULTS = frozenset({FaultKind.STATUS, FaultKind.HANG})
_MAX_WINDOW = dt.timedelta(days=7)  # status-changes: minutes + seconds <= 7 days (reference §1 step 5)
_MOUNTAIN = zoneinfo.ZoneInfo("America/Denver")  # filters[status_last_updated] dates are in MDT (reference §1)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(exc: ApiError, *, as_object: bool = False) -> web.Response:
    return web.json_response(views.error_body(exc.code, exc.message, as_object=as_object), status=exc.status)


async def _apply_fault(fault: Fault, hang_s: float) -> None:
    if fault.kind is FaultKind.HANG:
        await asyncio.sleep(fault.seconds if fault.seconds is not None else hang_s)
        raise ApiError(504, "gateway_timeout", "The request timed out.")  # simulator's choice, after the hang
    if fault.status == 429:
        raise ApiError.rate_limited()
    raise ApiError.server_error(fault.status)


@web.middleware
async def _api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith(API_PREFIX + "/"):
        return await handler(request)
    core, faults = request.app[CORE], request.app[FAULTS]
    rel = request.path[len(API_PREFIX):]
    try:
        fault = faults.take(_REQUEST_FAULTS, request.method, rel, after=False)
        if fault is not None:
            await _apply_fault(fault, core.config.hang_s)
        key = core.authenticate(request.headers.get("X-DC-DEVKEY"))
        core.admit(key)
        core.authorize(key, request.method)
        request[API_KEY] = key
        try:
            response = await handler(request)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
            raise ApiError(404, "not_found|route", "The requested route was not found.") from None
        fault = faults.take(_REQUEST_FAULTS, request.method, rel, after=True)
        if fault is not None:
            await _apply_fault(fault, core.config.hang_s)
        return response
    except ApiError as exc:
        as_object = faults.take(frozenset({FaultKind.ERRORS_OBJECT}), request.method, rel) is not None
        return _error(exc, as_object=as_object)


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError.bad_request_format() from None


def _int_query(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ApiError.invalid_value(name, f"{name} must be an integer.") from None


# ---------------------------------------------------------------------------------------------- API handlers

async def create_order(request: web.Request) -> web.Response:
    core = request.app[CORE]
    body = await _json_body(request)
    reply = core.create_order(request.match_info["ref"], body, api_key=request[API_KEY])
    return web.json_response(reply, status=201)


async def order_info(request: web.Request) -> web.Response:
    core = request.app[CORE]
    order = core.order(request.match_info["ref"])
    cert = core.certificate(order.certificate_id)
    return web.json_response(views.order_info(order, cert, ca_name=core.ca.intermediate_name, now=core.now()))


async def list_orders(request: web.Request) -> web.Response:
    core = request.app[CORE]
    q = request.query
    offset = _int_query(request, "offset", 0)
    limit = _int_query(request, "limit", 1000)
    orders, total = core.list_orders(
        status=q.get("filters[status]") or None, common_name=q.get("filters[common_name]") or None,
        domain_name=q.get("filters[domain_name]") or None, sort=q.get("sort") or "id", offset=offset, limit=limit)
    _, certs = core.snapshot()
    now = core.now()
    return web.json_response({
        "orders": [views.order_summary(o, certs[o.certificate_id], now=now) for o in orders],
        "page": {"total": total, "limit": limit, "offset": offset},
    })


async def status_changes(request: web.Request) -> web.Response:
    core = request.app[CORE]
    now = core.now()
    span = request.query.get("filters[status_last_updated]")
    if span:
        first, sep, last = span.partition("...")
        try:
            start = dt.datetime.combine(dt.date.fromisoformat(first), dt.time(), _MOUNTAIN)
            end = dt.datetime.combine(dt.date.fromisoformat(last) + dt.timedelta(days=1), dt.time(), _MOUNTAIN)
        except ValueError:
            raise ApiError.invalid_value("status_last_updated", "Use yyyy-MM-dd...yyyy-MM-dd.") from None
        if not sep or end <= start:
            raise ApiError.invalid_value("status_last_updated", "Use yyyy-MM-dd...yyyy-MM-dd.")
        end -= dt.timedelta(microseconds=1)
    else:
        if "minutes" not in request.query and "seconds" not in request.query:
            # The reference says a filter is mandatory but names no code: simulator's choice.
            raise ApiError.bad_request_format("minutes, seconds or filters[status_last_updated] is required.")
        minutes, seconds = _int_query(request, "minutes", 0), _int_query(request, "seconds", 0)
        if minutes < 0 or seconds < 0 or minutes + seconds == 0:
            raise ApiError.invalid_value("minutes", "minutes/seconds must be positive.")
        start, end = now - dt.timedelta(minutes=minutes, seconds=seconds), now
    if end - start > _MAX_WINDOW:
        raise ApiError(400, "time_frame_too_long", "The time frame may not exceed 7 days.")
    return web.json_response(views.status_changes(core.status_changes(start, end)))


async def dcv_random_value(request: web.Request) -> web.Response:
    core = request.app[CORE]
    return web.json_response(views.dcv_value(core.random_value(request.match_info["ref"])))


async def dcv_method(request: web.Request) -> web.Response:
    core = request.app[CORE]
    dcv = core.change_dcv_method(request.match_info["ref"], await _json_body(request))
    return web.json_response(views.dcv_value(dcv)) if dcv is not None else web.Response(status=204)


async def check_dcv(request: web.Request) -> web.Response:
    core, engine = request.app[CORE], request.app[ENGINE]
    body = await _json_body(request)
    names = body.get("dns_names_validations") if isinstance(body, dict) else None
    check = core.begin_check(request.match_info["ref"], names)
    outcome = await engine.check(check)
    if not outcome.all_ok:
        # §1 step 4: one code for any missing name, without saying which.
        raise ApiError(400, "file_random_value_not_found",
                       "Could not find the random value at the expected file location for one or more domains.")
    return web.json_response(views.check_dcv(outcome))


async def update_status(request: web.Request) -> web.Response:
    request.app[CORE].update_status(request.match_info["ref"], await _json_body(request))
    return web.Response(status=204)


async def reissue(request: web.Request) -> web.Response:
    reply = request.app[CORE].reissue(request.match_info["ref"], await _json_body(request))
    return web.json_response(reply, status=201)


async def revoke_order(request: web.Request) -> web.Response:
    req = request.app[CORE].revoke(order_id=request.match_info["ref"], body=await _json_body(request),
                                   api_key=request[API_KEY])
    return web.Response(status=204) if req is None else web.json_response(views.revoke_request(req), status=201)


async def revoke_certificate(request: web.Request) -> web.Response:
    req = request.app[CORE].revoke(cert_ref=request.match_info["cert"], body=await _json_body(request),
                                   api_key=request[API_KEY])
    return web.Response(status=204) if req is None else web.json_response(views.revoke_request(req), status=201)


def _download(core: CertCentral, pem: str | None, fmt: str) -> web.Response:
    if pem is None:
        raise ApiError(400, "certificate_not_issued", "The certificate has not been issued yet.")
    content_type, body = core.ca.render(pem, fmt, crlf=core.config.pem_crlf)
    return web.Response(body=body.encode(), content_type=content_type)


async def download_by_cert(request: web.Request) -> web.Response:
    core = request.app[CORE]
    cert = core.certificate(request.match_info["cert"])
    return _download(core, cert.pem, request.match_info["format"])


async def download_by_order(request: web.Request) -> web.Response:
    core = request.app[CORE]
    order = core.order(request.match_info["ref"])
    cert = core.active_certificate(order.id)
    return _download(core, cert.pem, request.match_info["format"])


# ---------------------------------------------------------------------------------------------- admin handlers

def _order_admin(core: CertCentral, order: Order) -> dict[str, Any]:
    _, certs = core.snapshot()
    out = views.order_info(order, certs[order.certificate_id], ca_name=core.ca.intermediate_name, now=core.now())
    out["dcv_random_value"] = order.dcv.value if order.dcv else None
    out["dcv_expiration_date"] = views.iso(order.dcv.expires_at) if order.dcv else None
    out["dns_name_validations"] = [{"dns_name": n, "status": str(s)} for n, s in zip(order.names, order.name_status)]
    return out


async def admin_orders(request: web.Request) -> web.Response:
    core = request.app[CORE]
    orders, _ = core.snapshot()
    return web.json_response({"orders": [_order_admin(core, o) for o in orders]})


async def admin_add_fault(request: web.Request) -> web.Response:
    body = await request.json()
    try:
        fault = Fault(kind=FaultKind(body.get("kind", "status")), count=int(body.get("count", 1)),
                      status=int(body.get("status", 500)), method=body.get("method"), path=body.get("path"),
                      after=bool(body.get("after", False)),
                      seconds=float(body["seconds"]) if body.get("seconds") is not None else None)
    except (ValueError, TypeError) as exc:
        return web.json_response(views.error_body("invalid_fault", str(exc)), status=400)
    request.app[FAULTS].add(fault)
    return web.json_response({"added": dataclasses.asdict(fault)}, status=201)


async def admin_clear_faults(request: web.Request) -> web.Response:
    request.app[FAULTS].clear()
    request.app[CORE].clear_pending_rejections()
    return web.Response(status=204)


async def admin_order_action(request: web.Request) -> web.Response:
    core = request.app[CORE]
    order_id, action = int(request.match_info["id"]), request.match_info["action"]
    actions: dict[str, Callable[[int], object]] = {
        "approve": core.approve, "reject": core.reject, "expire-random-value": core.expire_random_value}
    if action not in actions:
        raise web.HTTPNotFound()
    try:
        actions[action](order_id)
    except ApiError as exc:
        return _error(exc)
    return web.json_response(_order_admin(core, core.order(order_id)))


async def admin_reject_next(request: web.Request) -> web.Response:
    body = await request.json()
    request.app[CORE].reject_next_orders(int(body.get("count", 1)))
    return web.Response(status=204)


async def admin_resolve(request: web.Request) -> web.Response:
    core = request.app[CORE]
    if request.method == "PUT":
        try:
            core.set_resolve(await request.json())
        except (ValueError, AttributeError) as exc:
            return web.json_response(views.error_body("invalid_resolve", str(exc)), status=400)
    return web.json_response({k: list(v) for k, v in core.resolve_map().items()})


async def admin_fetches(request: web.Request) -> web.Response:
    records = request.app[CORE].fetches()
    return web.json_response({"fetches": [
        {**dataclasses.asdict(r), "at": views.iso(r.at)} for r in records]})


async def admin_pem(request: web.Request) -> web.Response:
    ca = request.app[CORE].ca
    pem = ca.root_pem if request.match_info["which"] == "root" else ca.intermediate_pem
    return web.Response(text=pem, content_type="application/x-pem-file")


async def admin_clock(request: web.Request) -> web.Response:
    core = request.app[CORE]
    clock = request.app[CLOCK]
    if request.method == "POST":
        if not isinstance(clock, FakeClock):
            return web.json_response(views.error_body("clock_not_fake", "Only a fake clock can be advanced."),
                                     status=400)
        clock.advance(float((await request.json()).get("seconds", 0)))
    return web.json_response({"now": views.iso(core.now())})


# ---------------------------------------------------------------------------------------------- factory

def make_app(core: CertCentral, *, faults: FaultPlan | None = None, clock: object = None) -> web.Application:
    """The simulator as an aiohttp application; the DCV engine (HTTP client + poll loop) lives in cleanup_ctx."""
    app = web.Application(middlewares=[_api_middleware])
    app[CORE] = core
    app[FAULTS] = faults or FaultPlan()
    app[CLOCK] = clock

    async def engine_ctx(app: web.Application) -> AsyncIterator[None]:
        engine = DcvEngine(core)
        await engine.start()
        app[ENGINE] = engine
        yield
        await engine.aclose()

    app.cleanup_ctx.append(engine_ctx)
    p = API_PREFIX
    app.router.add_get(f"{p}/order/certificate/status-changes", status_changes)
    app.router.add_get(f"{p}/order/certificate", list_orders)
    app.router.add_post(f"{p}/order/certificate/{{ref}}", create_order)
    app.router.add_get(f"{p}/order/certificate/{{ref}}", order_info)
    app.router.add_put(f"{p}/order/certificate/{{ref}}/dcv-random-value", dcv_random_value)
    app.router.add_put(f"{p}/order/certificate/{{ref}}/dcv-method", dcv_method)
    app.router.add_put(f"{p}/order/certificate/{{ref}}/check-dcv", check_dcv)
    app.router.add_put(f"{p}/order/certificate/{{ref}}/status", update_status)
    app.router.add_post(f"{p}/order/certificate/{{ref}}/reissue", reissue)
    app.router.add_put(f"{p}/order/certificate/{{ref}}/revoke", revoke_order)
    app.router.add_put(f"{p}/certificate/{{cert}}/revoke", revoke_certificate)
    app.router.add_get(f"{p}/certificate/{{cert}}/download/format/{{format}}", download_by_cert)
    app.router.add_get(f"{p}/certificate/download/order/{{ref}}/format/{{format}}", download_by_order)
    app.router.add_route("*", f"{p}/{{tail:.*}}", _no_route)
    a = ADMIN_PREFIX
    app.router.add_get(f"{a}/orders", admin_orders)
    app.router.add_post(f"{a}/faults", admin_add_fault)
    app.router.add_delete(f"{a}/faults", admin_clear_faults)
    app.router.add_post(f"{a}/orders/{{id:\\d+}}/{{action}}", admin_order_action)
    app.router.add_post(f"{a}/reject-next", admin_reject_next)
    app.router.add_route("GET", f"{a}/resolve", admin_resolve)
    app.router.add_route("PUT", f"{a}/resolve", admin_resolve)
    app.router.add_get(f"{a}/fetches", admin_fetches)
    app.router.add_get(f"{a}/{{which:root|intermediate}}.pem", admin_pem)
    app.router.add_get(f"{a}/clock", admin_clock)
    app.router.add_post(f"{a}/clock", admin_clock)
    return app


async def _no_route(request: web.Request) -> web.Response:
    raise ApiError(404, "not_found|route", "The requested route was not found.")

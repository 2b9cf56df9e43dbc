"""`DigiCertIssuer`: the `Issuer` over DigiCert CertCentral's Services API v2, with http-token (file) DCV.

Owns the IO: requests through an injected `httpx.AsyncClient`, pacing through a shared `TokenBucket`, retries with
backoff and jitter. It makes no decisions about *when* to place, check, cancel or give up (that is the provisioning
pipeline's) and validates no certificate (the pipeline checks key and names). Wire details live in the pure
`certcentral.py`; the behaviour follows the reference (/work/shared/reference/digicert-certcentral.md, §n):

* Every request goes through the bucket (one per API key, shared by every coroutine using the key, §3).
* Idempotent requests (GET, PUT) are retried on 429, 5xx, 408 and transport errors, with backoff + jitter that
  honours Retry-After, until `max_attempts` or the per-call deadline (`retry_deadline_s`).
* Order creation (POST) is not idempotent (§3). It is retried only when the CA certainly did not act on it: 429
  (the key is blocked before any processing) and connection failures before the request was sent. A timeout,
  a dropped connection or a 5xx after sending raise `UnknownOutcome`; the caller then calls `find_order`.
* The API key travels only in the `X-DC-DEVKEY` header. It is kept in a wrapper whose repr is "<redacted>", and is
  scrubbed from every text copied into an error or a log line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, final

import httpx

from . import certcentral as cc
from .base import FILEAUTH_PATH, Order, OrderStatus, RevocationStatus, ValidationToken
from .certcentral import Op
from .errors import (
    ApiErrorItem,
    CaAuthError,
    CaError,
    CaProtocolError,
    CaRequestError,
    CaUnavailable,
    OrderNotFound,
    RateLimited,
    UnknownOutcome,
)
from .ratelimit import Backoff, TokenBucket, retry_delay

__all__ = ["DEFAULT_BASE_URL", "DigiCertIssuer"]

logger = logging.getLogger(__name__)

#: Production base URL (§0). The simulator serves the same paths under http://127.0.0.1:<port>/services/v2.
DEFAULT_BASE_URL = "https://www.digicert.com/services/v2"

#: Transport errors raised before the request left this process: safe to retry even for a POST.
_NOT_SENT: tuple[type[Exception], ...] = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@final
class _Secret:
    """Holds the API key; prints as <redacted>."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<redacted>"

    __str__ = __repr__


def _normalise_domain(domain: str) -> str:
    name = domain.strip().lower().removesuffix(".")
    if not name or any(c.isspace() or c in "/?#@" for c in name):
        raise ValueError(f"not a domain name: {domain!r}")
    return name


def _id_key(order_id: str) -> tuple[int, int, str]:
    return (1, int(order_id), "") if order_id.isdigit() else (0, 0, order_id)


@final
class DigiCertIssuer:
    """The CertCentral issuer. One instance per API key and product; safe to use from many coroutines at once.

    Args:
        http: the client to send with; not owned (the caller closes it). Its own base_url is not used.
        api_key: the CertCentral API key (`X-DC-DEVKEY`, §0); an admin key lets `revoke` skip approval (§6).
        product_id: the product `name_id` to order (§1 step 1), a DV product for http-token.
        base_url: the API root, e.g. `DEFAULT_BASE_URL` or a simulator's `.url`.
        bucket: the pacing bucket for this API key; share one among all issuers using the key. Default: a new
            `TokenBucket()` (5 requests/s, burst 10, from the reference's windows).
        sleep: awaitable sleep (injected for tests).
        clock: monotonic clock, seconds (bucket and deadlines).
        wall_clock: aware UTC "now" (token expiry estimates, HTTP-date Retry-After).
        rng: jitter source.
        request_timeout_s: bound on one request (connect, send, wait and read together).
        max_attempts: attempts per idempotent call, the first included.
        retry_deadline_s: a retry never starts later than this after the call began.
        backoff: retry delays; default `Backoff()` (5 s doubling to 300 s, +0-25% jitter; >= 5 s start, §3).
        name: the `Issuer.name` stamped on orders.
        skip_approval: send `skip_approval` with orders (no in-account approval step, §1 step 1).
        download_format: `pem_noroot` (leaf + intermediates: what TLS servers send, §5) or `pem_all`.
        list_page_size, max_list_pages: bounds of the `find_order` search.
        user_agent: the User-Agent header (§0 asks for one).
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        api_key: str,
        product_id: str = "ssl_dv_geotrust",
        base_url: str = DEFAULT_BASE_URL,
        bucket: TokenBucket | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], dt.datetime] = _utcnow,
        rng: random.Random | None = None,
        request_timeout_s: float = 30.0,
        max_attempts: int = 5,
        retry_deadline_s: float = 120.0,
        backoff: Backoff | None = None,
        name: str = "digicert",
        skip_approval: bool = True,
        download_format: str = "pem_noroot",
        list_page_size: int = 100,
        max_list_pages: int = 10,
        user_agent: str = "lockstep-controlplane/0.1",
    ) -> None:
        if not api_key:
            raise ValueError("api_key is required")
        if not product_id:
            raise ValueError("product_id is required")
        if request_timeout_s <= 0 or retry_deadline_s < 0:
            raise ValueError("request_timeout_s must be positive and retry_deadline_s not negative")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if download_format not in ("pem_noroot", "pem_all"):
            raise ValueError("download_format must be pem_noroot or pem_all")
        if not 1 <= list_page_size <= 1000 or max_list_pages < 1:
            raise ValueError("list_page_size must be 1..1000 and max_list_pages positive")
        self.name = name
        self._http = http
        self._key = _Secret(api_key)
        self._product_id = product_id
        self._base_url = base_url.rstrip("/")
        self._bucket = bucket if bucket is not None else TokenBucket()
        self._sleep = sleep
        self._clock = clock
        self._wall_clock = wall_clock
        self._rng = rng or random.Random()
        self._request_timeout_s = request_timeout_s
        self._max_attempts = max_attempts
        self._retry_deadline_s = retry_deadline_s
        self._backoff = backoff or Backoff()
        self._skip_approval = skip_approval
        self._download_format = download_format
        self._page_size = list_page_size
        self._max_pages = max_list_pages
        self._user_agent = user_agent

    def __repr__(self) -> str:
        return (f"DigiCertIssuer(name={self.name!r}, base_url={self._base_url!r}, product_id={self._product_id!r}, "
                f"api_key=<redacted>)")

    # ------------------------------------------------------------------ Issuer

    async def place_order(self, domain: str, csr_pem: str, *, validity_days: int) -> Order:
        """`POST /order/certificate/{product_id}` with http-token DCV (§1 step 1). See `Issuer.place_order`.

        The create reply has no `expiration_date` for the random value, so the token's expiry is estimated as
        "request start + 30 days" (§4), which is never later than the real one (barring clock skew); `refresh_tokens`
        returns the CA's own date.
        """
        domain = _normalise_domain(domain)
        if validity_days < 1:
            raise ValueError("validity_days must be positive")
        if "BEGIN CERTIFICATE REQUEST" not in csr_pem:
            raise ValueError("csr_pem is not a PEM certificate request")
        body = cc.order_body(domain, csr_pem, validity_days=validity_days, skip_approval=self._skip_approval)
        started = self._wall_clock()
        resp = await self._request(Op.CREATE, "POST", cc.create_path(self._product_id), json_body=body,
                                   domain=domain)
        try:
            created = cc.parse_created(resp.content)
        except CaProtocolError as exc:
            # A 2xx means the order most likely exists; without its id we must search for it.
            raise UnknownOutcome(f"{Op.CREATE}: HTTP {resp.status_code} but {exc}", domain=domain) from exc
        tokens: tuple[ValidationToken, ...] = ()
        if created.random_value:
            tokens = (self._token(domain, created.random_value, started + cc.RANDOM_VALUE_TTL),)
        logger.info("certcentral: order %s placed for %s (%s)", created.order_id, domain, created.status,
                    extra={"order_id": created.order_id, "domain": domain, "issuer": self.name})
        return Order(issuer=self.name, order_id=created.order_id, domain=domain, tokens=tokens,
                     status=created.status, certificate_id=created.certificate_id,
                     ca_status="pending" if created.status is OrderStatus.PENDING else None)

    async def find_order(self, domain: str, *, csr_pem: str | None = None) -> Order | None:
        """The newest pending order for `domain` with this product (and, with `csr_pem`, this CSR's public key),
        with its current token; None when there is none.

        Lists `GET /order/certificate?filters[common_name]=<domain>&filters[status]=pending` (§3: what to do before
        re-placing an order whose outcome is unknown), re-checks name, status and product on each entry (filter
        semantics are not documented precisely), and with `csr_pem` reads each candidate's CSR from order info.
        """
        domain = _normalise_domain(domain)
        want_key: bytes | None = None
        if csr_pem is not None:
            want_key = cc.csr_public_key(csr_pem)
            if want_key is None:
                raise ValueError("csr_pem does not parse")
        candidates: list[cc.OrderSummary] = []
        offset = 0
        for _ in range(self._max_pages):
            params = {"filters[common_name]": domain, "filters[status]": "pending",
                      "limit": str(self._page_size), "offset": str(offset)}
            resp = await self._request(Op.LIST, "GET", cc.LIST_PATH, params=params)
            entries, total = cc.parse_order_list(resp.content)
            candidates += [e for e in entries
                           if e.ca_status == "pending" and (e.common_name or "").lower().removesuffix(".") == domain
                           and e.product_id in (None, self._product_id)]
            offset += len(entries)
            if len(entries) < self._page_size or (total is not None and offset >= total):
                break
        for summary in sorted(candidates, key=lambda s: _id_key(s.order_id), reverse=True):
            certificate_id = summary.certificate_id
            if want_key is not None:
                info = await self._order_info(summary.order_id)
                if info.status is not OrderStatus.PENDING or info.csr_pem is None:
                    continue
                if cc.csr_public_key(info.csr_pem) != want_key:
                    continue
                certificate_id = info.certificate_id or certificate_id
            order = Order(issuer=self.name, order_id=summary.order_id, domain=domain, tokens=(),
                          status=OrderStatus.PENDING, certificate_id=certificate_id, ca_status=summary.ca_status)
            logger.info("certcentral: found pending order %s for %s (%d candidates)", order.order_id, domain,
                        len(candidates), extra={"order_id": order.order_id, "domain": domain, "issuer": self.name})
            return await self.refresh_tokens(order)
        return None

    async def get_order(self, order_id: str, domain: str, *, with_tokens: bool = True) -> Order:
        """`GET /order/certificate/{id}` (§1 step 5), plus dcv-random-value when PENDING and `with_tokens`.

        Raises:
            ValueError: the CA's order is for another common name than `domain`.
            OrderNotFound: the CA does not know the id.
        """
        domain = _normalise_domain(domain)
        info = await self._order_info(order_id)
        if info.common_name is not None and info.common_name.lower().removesuffix(".") != domain:
            raise ValueError(f"order {order_id} is for {info.common_name!r}, not {domain!r}")
        order = Order(issuer=self.name, order_id=order_id, domain=domain, tokens=(), status=info.status,
                      certificate_id=info.certificate_id, ca_status=info.ca_status)
        if with_tokens and info.status is OrderStatus.PENDING:
            order = await self.refresh_tokens(order)
        return order

    async def refresh_tokens(self, order: Order) -> Order:
        """`PUT .../dcv-random-value` (§1 step 2): the current value and its real expiry.

        CertCentral keeps the value until it expires (30 days, §4) and only then makes a new one, so calling this
        early returns the same value; call it at or after `expires_at` and republish when the value changed.
        """
        resp = await self._request(Op.RANDOM_VALUE, "PUT", cc.random_value_path(order.order_id),
                                   order_id=order.order_id)
        rv = cc.parse_random_value(resp.content)
        return dataclasses.replace(order, tokens=(self._token(order.domain, rv.value, rv.expires_at),))

    async def request_validation(self, order: Order) -> Order:
        """`PUT .../check-dcv` for the whole order (§1 step 4). DigiCert polls on its own too (§4): don't hammer.

        Returns the order as PROCESSING (all names validated, not yet issued) or ISSUED.

        Raises:
            ValidationNotFound: `file_random_value_not_found` (some name did not serve the value, or not yet).
        """
        resp = await self._request(Op.CHECK_DCV, "PUT", cc.check_dcv_path(order.order_id), order_id=order.order_id)
        reply = cc.parse_check_dcv(resp.content)
        return dataclasses.replace(order, status=reply.status, ca_status=reply.ca_status or order.ca_status,
                                   certificate_id=reply.certificate_id or order.certificate_id)

    async def download(self, order: Order) -> str:
        """`GET /certificate/{certificate_id}/download/format/pem_noroot` (or by order id when the certificate id
        is unknown, §5): the PEM blocks, leaf first. Not validated here."""
        path = cc.download_path(certificate_id=order.certificate_id, order_id=order.order_id,
                                fmt=self._download_format)
        resp = await self._request(Op.DOWNLOAD, "GET", path, order_id=order.order_id, accept="*/*")
        try:
            text = resp.content.decode("utf-8")
        except UnicodeDecodeError:
            raise CaProtocolError(f"{Op.DOWNLOAD}: the certificate is not UTF-8 PEM text") from None
        blocks = cc.split_pem(text)
        if not blocks:
            raise CaProtocolError(f"{Op.DOWNLOAD}: no CERTIFICATE block in the answer")
        return "".join(cc.leaf_first(blocks))

    async def cancel(self, order: Order, *, note: str = "Abandoned by Lockstep: domain validation not completed") \
            -> None:
        """`PUT .../status` `{"status":"canceled","note":...}` -> 204 (§2). Idempotent: when the CA refuses because
        the order is already canceled or rejected (e.g. a retried request whose first answer was lost), that is
        success."""
        try:
            await self._request(Op.CANCEL, "PUT", cc.status_path(order.order_id), json_body=cc.cancel_body(note),
                                order_id=order.order_id)
        except (CaAuthError, OrderNotFound):
            raise
        except CaRequestError:
            info = await self._order_info(order.order_id)
            if info.status in (OrderStatus.CANCELED, OrderStatus.REJECTED):
                return
            raise
        logger.info("certcentral: order %s canceled", order.order_id,
                    extra={"order_id": order.order_id, "domain": order.domain, "issuer": self.name})

    async def revoke(self, order: Order, *, reason: str = "superseded",
                     comments: str = "Revoked by Lockstep") -> RevocationStatus:
        """`PUT /order/certificate/{id}/revoke` with `skip_approval` (§6): 204 = revoked now; 201 = a revoke
        request waits for an administrator (the key is not an admin key). Revokes every certificate of the order.
        Already revoked counts as success."""
        try:
            resp = await self._request(Op.REVOKE, "PUT", cc.revoke_path(order.order_id),
                                       json_body=cc.revoke_body(reason, comments=comments), order_id=order.order_id)
        except (CaAuthError, OrderNotFound):
            raise
        except CaRequestError:
            info = await self._order_info(order.order_id)
            if info.status is OrderStatus.REVOKED:
                return RevocationStatus.REVOKED
            raise
        status = RevocationStatus.REVOKED if resp.status_code == 204 else RevocationStatus.PENDING_APPROVAL
        logger.info("certcentral: order %s revoke: %s", order.order_id, status,
                    extra={"order_id": order.order_id, "domain": order.domain, "issuer": self.name})
        return status

    # ------------------------------------------------------------------ helpers

    def _token(self, domain: str, value: str, expires_at: dt.datetime) -> ValidationToken:
        return ValidationToken(host=domain, path=FILEAUTH_PATH, value=value, expires_at=expires_at)

    async def _order_info(self, order_id: str) -> cc.OrderInfo:
        resp = await self._request(Op.ORDER_INFO, "GET", cc.order_path(order_id), order_id=order_id)
        return cc.parse_order_info(resp.content)

    def _redact(self, text: str) -> str:
        key = self._key.reveal()
        return text.replace(key, "<redacted>") if key in text else text

    def _redact_items(self, items: tuple[ApiErrorItem, ...]) -> tuple[ApiErrorItem, ...]:
        return tuple(ApiErrorItem(self._redact(i.code), self._redact(i.message)) for i in items)

    async def _pace(self) -> None:
        delay = self._bucket.take(self._clock())
        if delay > 0:
            await self._sleep(delay)

    async def _send(self, method: str, path: str, *, json_body: Mapping[str, Any] | None,
                    params: Mapping[str, str] | None, accept: str) -> httpx.Response:
        headers = {"X-DC-DEVKEY": self._key.reveal(), "Accept": accept, "User-Agent": self._user_agent}
        content: bytes | None = None
        if json_body is not None:
            content = json.dumps(json_body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        # httpx's timeout bounds each phase; asyncio.timeout bounds the whole exchange (a slow-drip answer).
        async with asyncio.timeout(self._request_timeout_s):
            return await self._http.request(method, self._base_url + path, content=content, params=params,
                                            headers=headers, timeout=self._request_timeout_s)

    async def _request(self, op: Op, method: str, path: str, *, json_body: Mapping[str, Any] | None = None,
                       params: Mapping[str, str] | None = None, order_id: str | None = None,
                       domain: str | None = None, accept: str = "application/json") -> httpx.Response:
        """Send one API call with pacing and retries; return a 2xx response or raise a `CaError`.

        Order creation (op CREATE) is never retried once it may have reached the CA (see the module docstring).
        """
        creating = op is Op.CREATE
        deadline = self._clock() + self._retry_deadline_s
        attempt = 0
        while True:
            attempt += 1
            await self._pace()
            error: CaError
            cause: BaseException | None = None
            try:
                resp = await self._send(method, path, json_body=json_body, params=params, accept=accept)
            except (httpx.RequestError, TimeoutError) as exc:
                what = "timed out" if isinstance(exc, TimeoutError) else self._redact(str(exc)) or "no detail"
                message = f"{op}: {type(exc).__name__}: {what}"
                if creating and not isinstance(exc, _NOT_SENT):
                    raise UnknownOutcome(message, domain=domain or "") from exc
                error, cause = CaUnavailable(message), exc
            else:
                if 200 <= resp.status_code < 300:
                    return resp
                items = self._redact_items(cc.parse_errors(resp.content))
                retry_after = cc.parse_retry_after(resp.headers.get("Retry-After"), date=resp.headers.get("Date"),
                                                   now=self._wall_clock())
                error = cc.error_for(op, resp.status_code, items, retry_after_s=retry_after, order_id=order_id)
                if isinstance(error, RateLimited):
                    # The CA blocks the whole key (§3): pause every coroutine sharing the bucket.
                    self._bucket.penalize(self._clock(), retry_after or self._backoff.schedule_s[0])
                if creating and isinstance(error, CaUnavailable):
                    raise UnknownOutcome(str(error), domain=domain or "", retry_after_s=retry_after,
                                         status=resp.status_code)
                if not isinstance(error, (CaUnavailable, RateLimited)):
                    raise error
            retry_after_s = getattr(error, "retry_after_s", None)
            delay = None
            if attempt < self._max_attempts:
                delay = retry_delay(self._backoff, attempt, now=self._clock(), deadline=deadline, rng=self._rng,
                                    retry_after_s=retry_after_s)
            if delay is None:
                raise error from cause
            logger.warning("certcentral: %s failed (attempt %d), retrying in %.1f s: %s", op, attempt, delay, error,
                           extra={"order_id": order_id, "issuer": self.name})
            await self._sleep(delay)

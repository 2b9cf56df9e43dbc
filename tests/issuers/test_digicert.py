"""`DigiCertIssuer` over `httpx.MockTransport`: requests sent, replies mapped, retries, pacing, redaction."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import httpx
import pytest

from controlplane.issuers import (
    FILEAUTH_PATH,
    Backoff,
    CaAuthError,
    CaError,
    CaProtocolError,
    CaRequestError,
    CaUnavailable,
    DigiCertIssuer,
    Issuer,
    Order,
    OrderNotFound,
    OrderRejected,
    OrderStatus,
    RateLimited,
    RevocationStatus,
    TokenBucket,
    UnknownOutcome,
    ValidationNotFound,
    ValidationToken,
)

from .conftest import API_KEY, BASE, T0, err, make_csr, ok

DOMAIN = "shop.example.net"
CSR = make_csr(DOMAIN)
CREATED: dict[str, Any] = {"id": 5100231, "certificate_id": 7700912, "requests": [{"id": 880431, "status": "approved"}],
           "dcv_random_value": "q3k9z1m7d2h8w0p4t6c5v9b1n7x2r8f0"}
RV: dict[str, Any] = {"dcv_random_value": "q3k9z1m7d2h8w0p4t6c5v9b1n7x2r8f0", "expiration_date": "2026-03-31T12:00:00+00:00"}
EXPIRES = dt.datetime(2026, 3, 31, 12, tzinfo=dt.UTC)


def order_info(status: str = "pending", *, cn: str = DOMAIN, csr: str = CSR.pem, oid: int = 5100231) -> dict[str, Any]:
    return {"id": oid, "status": status, "certificate": {"id": 7700912, "common_name": cn, "dns_names": [cn],
                                                         "csr": csr}, "product": {"name_id": "ssl_dv_geotrust"}}


def pending_order(**kw: Any) -> Order:
    fields: dict[str, Any] = {"issuer": "digicert", "order_id": "5100231", "domain": DOMAIN, "tokens": (),
                              "status": OrderStatus.PENDING, "certificate_id": "7700912"}
    fields.update(kw)
    return Order(**fields)


async def test_digicert_issuer_satisfies_the_protocol() -> None:
    async with httpx.AsyncClient() as http:
        issuer: Issuer = DigiCertIssuer(http, api_key=API_KEY)  # mypy checks the signatures against the Protocol
        assert issuer.name == "digicert"


# ---------------------------------------------------------------------------------------------- place_order

async def test_place_order_sends_a_dv_http_token_order(make_issuer: Any) -> None:
    h = make_issuer(ok(CREATED, 201))
    order = await h.issuer.place_order("Shop.Example.NET.", CSR.pem, validity_days=90)
    req = h.script.requests[0]
    assert (req.method, str(req.url)) == ("POST", f"{BASE}/order/certificate/ssl_dv_geotrust")
    assert req.headers["X-DC-DEVKEY"] == API_KEY
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["User-Agent"].startswith("lockstep")
    body = h.script.body()
    assert body["certificate"]["common_name"] == DOMAIN
    assert body["certificate"]["csr"].strip() == CSR.pem.strip()
    assert body["dcv_method"] == "http-token" and body["skip_approval"] is True
    assert body["order_validity"] == {"days": 90} and body["certificate"]["cert_validity"] == {"days": 90}
    assert order == Order(
        issuer="digicert", order_id="5100231", domain=DOMAIN,
        tokens=(ValidationToken(DOMAIN, FILEAUTH_PATH, CREATED["dcv_random_value"], T0 + dt.timedelta(days=30)),),
        status=OrderStatus.PENDING, certificate_id="7700912", ca_status="pending")


async def test_place_order_waiting_for_approval(make_issuer: Any) -> None:
    h = make_issuer(ok({**CREATED, "requests": [{"id": 1, "status": "pending"}]}, 201))
    order = await h.issuer.place_order(DOMAIN, CSR.pem, validity_days=90)
    assert order.status is OrderStatus.NEEDS_APPROVAL


async def test_place_order_without_a_random_value_has_no_tokens(make_issuer: Any) -> None:
    h = make_issuer(ok({"id": 1, "certificate_id": 2}, 201))
    order = await h.issuer.place_order(DOMAIN, CSR.pem, validity_days=90)
    assert order.tokens == ()


@pytest.mark.parametrize(("domain", "days", "csr"), [("", 90, CSR.pem), ("a b.test", 90, CSR.pem),
                                                     (DOMAIN, 0, CSR.pem), (DOMAIN, 90, "not a csr")])
async def test_place_order_refuses_bad_arguments_without_a_request(make_issuer: Any, domain: str, days: int,
                                                                   csr: str) -> None:
    h = make_issuer()
    with pytest.raises(ValueError):
        await h.issuer.place_order(domain, csr, validity_days=days)
    assert h.script.requests == []


# Order creation is not idempotent (§3): one request, then UnknownOutcome, whenever the CA may have acted.
UNKNOWN_OUTCOMES: list[Any] = [
    httpx.ReadTimeout("read timed out"),
    httpx.WriteTimeout("write timed out"),
    httpx.ReadError("connection reset by peer"),
    httpx.WriteError("broken pipe"),
    httpx.RemoteProtocolError("server disconnected without sending a response"),
    err(500, "internal_error", "boom"),
    err(502),
    err(503, headers={"Retry-After": "120"}),
    err(504, "gateway_timeout"),
    httpx.Response(201, text="<html>created?</html>"),
    ok({"certificate_id": 1}, 201),
]


@pytest.mark.parametrize("reply", UNKNOWN_OUTCOMES, ids=lambda r: type(r).__name__ + str(getattr(r, "status_code", "")))
async def test_place_order_never_retries_once_the_ca_may_have_acted(make_issuer: Any, reply: Any) -> None:
    h = make_issuer(reply)
    with pytest.raises(UnknownOutcome) as info:
        await h.issuer.place_order(DOMAIN, CSR.pem, validity_days=90)
    assert len(h.script.requests) == 1 and h.time.sleeps == []
    assert info.value.domain == DOMAIN and info.value.kind == "unavailable"
    assert not isinstance(info.value, CaUnavailable)  # a CaUnavailable handler must not re-place the order
    if isinstance(reply, httpx.Response) and reply.status_code == 503:
        assert info.value.retry_after_s == 120.0


async def test_place_order_whole_request_timeout_is_an_unknown_outcome(make_issuer: Any) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return ok(CREATED, 201)

    script_http = httpx.AsyncClient(transport=httpx.MockTransport(slow))
    try:
        issuer = DigiCertIssuer(script_http, api_key=API_KEY, base_url=BASE, request_timeout_s=0.05)
        with pytest.raises(UnknownOutcome, match="timed out"):
            await issuer.place_order(DOMAIN, CSR.pem, validity_days=90)
    finally:
        await script_http.aclose()


@pytest.mark.parametrize("reply", [httpx.ConnectError("connection refused"), httpx.ConnectTimeout("connect"),
                                   httpx.PoolTimeout("pool"), err(429, "request_limit_exceeded")],
                         ids=["connect-error", "connect-timeout", "pool-timeout", "429"])
async def test_place_order_retries_only_what_certainly_did_not_reach_the_ca(make_issuer: Any, reply: Any) -> None:
    h = make_issuer(reply, ok(CREATED, 201))
    order = await h.issuer.place_order(DOMAIN, CSR.pem, validity_days=90)
    assert order.order_id == "5100231"
    assert len(h.script.requests) == 2 and len(h.time.sleeps) == 1 and h.time.sleeps[0] >= 5.0


@pytest.mark.parametrize(
    ("reply", "cls"),
    [
        (err(400, "caa_check_failed|shop.example.net", "CAA forbids"), OrderRejected),
        (err(400, "invalid_wildcard_dcv_method"), OrderRejected),
        (err(400, "invalid_value:days", as_object=True), OrderRejected),
        (err(404, "not_found|product"), CaRequestError),
        (err(401, "invalid_api_key"), CaAuthError),
        (err(403, "access_denied|missing_permission"), CaAuthError),
    ],
)
async def test_place_order_permanent_refusals(make_issuer: Any, reply: httpx.Response, cls: type[CaError]) -> None:
    h = make_issuer(reply)
    with pytest.raises(cls) as info:
        await h.issuer.place_order(DOMAIN, CSR.pem, validity_days=90)
    assert type(info.value) is cls and info.value.kind == "rejected"
    assert len(h.script.requests) == 1


# ---------------------------------------------------------------------------------------------- retries (GET/PUT)

async def test_idempotent_calls_retry_5xx_and_transport_errors_with_jittered_backoff(make_issuer: Any) -> None:
    h = make_issuer(err(500), httpx.ReadTimeout("slow"), err(502), httpx.ConnectError("refused"),
                    ok(order_info("issued")))
    order = await h.issuer.get_order("5100231", DOMAIN)
    assert order.status is OrderStatus.ISSUED
    assert len(h.script.requests) == 5
    for sleep, base in zip(h.time.sleeps, Backoff().schedule_s, strict=False):
        assert base <= sleep <= base * 1.25
    assert len(h.time.sleeps) == 4


async def test_retry_after_is_honoured(make_issuer: Any) -> None:
    h = make_issuer(err(503, headers={"Retry-After": "42"}), ok(order_info()), ok(RV))
    await h.issuer.get_order("5100231", DOMAIN)
    assert 42.0 <= h.time.sleeps[0] <= 42.0 * 1.25


async def test_retry_after_http_date_uses_the_servers_date(make_issuer: Any) -> None:
    headers = {"Retry-After": "Sun, 01 Mar 2026 13:00:00 GMT", "Date": "Sun, 01 Mar 2026 12:59:00 GMT"}
    h = make_issuer(err(503, headers=headers), ok(order_info("issued")))
    await h.issuer.get_order("5100231", DOMAIN)
    assert 60.0 <= h.time.sleeps[0] <= 75.0


async def test_retries_stop_at_the_deadline(make_issuer: Any) -> None:
    h = make_issuer(*[err(500)] * 10, retry_deadline_s=30.0)
    with pytest.raises(CaUnavailable):
        await h.issuer.get_order("5100231", DOMAIN)
    # 5-6.25 s, 10-12.5 s, then a 20-25 s wait would end past 30 s: three attempts, no sleep past the deadline
    assert len(h.script.requests) == 3
    assert sum(h.time.sleeps) <= 30.0


async def test_retry_after_beyond_the_deadline_is_reported_not_slept(make_issuer: Any) -> None:
    h = make_issuer(err(503, headers={"Retry-After": "3600"}), retry_deadline_s=60.0)
    with pytest.raises(CaUnavailable) as info:
        await h.issuer.get_order("5100231", DOMAIN)
    assert info.value.retry_after_s == 3600.0 and info.value.status == 503
    assert h.time.sleeps == [] and len(h.script.requests) == 1


async def test_max_attempts(make_issuer: Any) -> None:
    h = make_issuer(*[httpx.ReadError("reset")] * 3, max_attempts=3)
    with pytest.raises(CaUnavailable, match="ReadError") as info:
        await h.issuer.get_order("5100231", DOMAIN)
    assert len(h.script.requests) == 3 and len(h.time.sleeps) == 2
    assert isinstance(info.value.__cause__, httpx.ReadError)


async def test_429_is_retried_and_blocks_the_shared_bucket(make_issuer: Any) -> None:
    bucket = TokenBucket(rate_per_s=5, burst=10)
    h = make_issuer(*[err(429, "request_limit_exceeded")] * 2, bucket=bucket, max_attempts=2)
    with pytest.raises(RateLimited) as info:
        await h.issuer.get_order("5100231", DOMAIN)
    assert info.value.kind == "rate_limited" and info.value.retry_after_s is None
    assert len(h.script.requests) == 2
    # another coroutine sharing the key now waits too, instead of hitting the blocked key
    assert bucket.take(h.time.now) >= 4.0


async def test_4xx_is_never_retried(make_issuer: Any) -> None:
    h = make_issuer(err(404, "not_found|order"))
    with pytest.raises(OrderNotFound):
        await h.issuer.get_order("1", DOMAIN)
    assert len(h.script.requests) == 1 and h.time.sleeps == []


async def test_every_call_goes_through_the_bucket(make_issuer: Any) -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=2)
    h = make_issuer(*[ok(order_info("issued"))] * 5, bucket=bucket)
    for _ in range(5):
        await h.issuer.get_order("5100231", DOMAIN)
    assert h.time.sleeps == [1.0, 1.0, 1.0]  # two from the burst, then one per second


async def test_unreadable_2xx_is_a_protocol_error_not_retried(make_issuer: Any) -> None:
    h = make_issuer(httpx.Response(200, text="<html>maintenance</html>"))
    with pytest.raises(CaProtocolError) as info:
        await h.issuer.get_order("5100231", DOMAIN)
    assert info.value.kind == "unavailable" and len(h.script.requests) == 1


# ---------------------------------------------------------------------------------------------- get_order

@pytest.mark.parametrize(
    ("ca_status", "expected"),
    [("pending", OrderStatus.PENDING), ("needs_approval", OrderStatus.NEEDS_APPROVAL),
     ("issued", OrderStatus.ISSUED), ("waiting_pickup", OrderStatus.ISSUED), ("rejected", OrderStatus.REJECTED),
     ("canceled", OrderStatus.CANCELED), ("revoked", OrderStatus.REVOKED), ("expired", OrderStatus.EXPIRED),
     ("reissue_pending", OrderStatus.PENDING), ("brand_new", OrderStatus.UNKNOWN)],
)
async def test_get_order_maps_statuses(make_issuer: Any, ca_status: str, expected: OrderStatus) -> None:
    h = make_issuer(ok(order_info(ca_status)), ok(RV))
    order = await h.issuer.get_order("5100231", DOMAIN)
    assert (order.status, order.ca_status, order.certificate_id) == (expected, ca_status, "7700912")
    if expected is OrderStatus.PENDING:
        assert h.script.paths() == ["GET /services/v2/order/certificate/5100231",
                                    "PUT /services/v2/order/certificate/5100231/dcv-random-value"]
        assert order.tokens == (ValidationToken(DOMAIN, FILEAUTH_PATH, RV["dcv_random_value"], EXPIRES),)
    else:
        assert len(h.script.requests) == 1 and order.tokens == ()


async def test_get_order_without_tokens(make_issuer: Any) -> None:
    h = make_issuer(ok(order_info("pending")))
    order = await h.issuer.get_order("5100231", DOMAIN, with_tokens=False)
    assert order.tokens == () and len(h.script.requests) == 1


async def test_get_order_for_another_name_is_refused(make_issuer: Any) -> None:
    h = make_issuer(ok(order_info(cn="other.example.net")))
    with pytest.raises(ValueError, match="other.example.net"):
        await h.issuer.get_order("5100231", DOMAIN)


# ---------------------------------------------------------------------------------------------- tokens, check-dcv

async def test_refresh_tokens_uses_the_cas_value_and_expiry(make_issuer: Any) -> None:
    h = make_issuer(ok({"dcv_random_value": "fresh", "expiration_date": "2026-05-01T00:00:00+00:00"}))
    old = pending_order(tokens=(ValidationToken(DOMAIN, FILEAUTH_PATH, "stale", T0),))
    new = await h.issuer.refresh_tokens(old)
    assert h.script.paths() == ["PUT /services/v2/order/certificate/5100231/dcv-random-value"]
    assert h.script.requests[0].content == b""
    assert new.tokens == (ValidationToken(DOMAIN, FILEAUTH_PATH, "fresh",
                                          dt.datetime(2026, 5, 1, tzinfo=dt.UTC)),)
    assert new.order_id == old.order_id and old.tokens[0].value == "stale"


@pytest.mark.parametrize(
    ("body", "status"),
    [({"order_status": "issued", "certificate_id": 7700999, "dcv_status": "valid",
       "dns_name_validations": [{"dns_name": DOMAIN, "status": "approved"}]}, OrderStatus.ISSUED),
     ({"order_status": "pending", "dcv_status": "valid"}, OrderStatus.PROCESSING)],
)
async def test_request_validation_success(make_issuer: Any, body: dict[str, Any], status: OrderStatus) -> None:
    h = make_issuer(ok(body))
    order = await h.issuer.request_validation(pending_order())
    assert h.script.paths() == ["PUT /services/v2/order/certificate/5100231/check-dcv"]
    assert order.status is status
    assert order.certificate_id == ("7700999" if status is OrderStatus.ISSUED else "7700912")


@pytest.mark.parametrize("as_object", [False, True])
async def test_request_validation_not_found(make_issuer: Any, as_object: bool) -> None:
    h = make_issuer(err(400, "file_random_value_not_found", "Could not find the random value at the expected "
                        "file location for one or more domains.", as_object=as_object))
    with pytest.raises(ValidationNotFound) as info:
        await h.issuer.request_validation(pending_order())
    assert info.value.kind == "validation_failed" and info.value.order_id == "5100231"
    assert len(h.script.requests) == 1  # "not yet" is the pipeline's to retry, on its own schedule


# ---------------------------------------------------------------------------------------------- find_order

def listing(*entries: dict[str, Any], total: int | None = None) -> httpx.Response:
    return ok({"orders": list(entries), "page": {"total": total if total is not None else len(entries),
                                                 "limit": 100, "offset": 0}})


def entry(oid: int, *, cn: str = DOMAIN, status: str = "pending", product: str = "ssl_dv_geotrust") -> dict[str, Any]:
    return {"id": oid, "status": status, "certificate": {"id": oid + 1000, "common_name": cn},
            "product": {"name_id": product}}


async def test_find_order_picks_the_newest_matching_pending_order(make_issuer: Any) -> None:
    h = make_issuer(listing(entry(10), entry(12), entry(13, cn="other.example.net"), entry(14, status="issued"),
                            entry(15, product="ssl_basic")), ok(RV))
    order = await h.issuer.find_order(DOMAIN)
    assert order is not None
    assert (order.order_id, order.certificate_id, order.status) == ("12", "1012", OrderStatus.PENDING)
    assert order.tokens[0].value == RV["dcv_random_value"]
    listed = h.script.requests[0]
    assert listed.url.params["filters[common_name]"] == DOMAIN
    assert listed.url.params["filters[status]"] == "pending"
    assert h.script.paths()[1] == "PUT /services/v2/order/certificate/12/dcv-random-value"


async def test_find_order_with_csr_skips_orders_for_other_keys(make_issuer: Any) -> None:
    other = make_csr(DOMAIN)
    h = make_issuer(listing(entry(10), entry(12)), ok(order_info(oid=12, csr=other.pem)),
                    ok(order_info(oid=10, csr=CSR.pem.replace("\n", "\r\n"))), ok(RV))
    order = await h.issuer.find_order(DOMAIN, csr_pem=CSR.pem)
    assert order is not None and order.order_id == "10"
    assert h.script.paths() == ["GET /services/v2/order/certificate", "GET /services/v2/order/certificate/12",
                                "GET /services/v2/order/certificate/10",
                                "PUT /services/v2/order/certificate/10/dcv-random-value"]


async def test_find_order_none(make_issuer: Any) -> None:
    h = make_issuer(listing(entry(13, cn="other.example.net")))
    assert await h.issuer.find_order(DOMAIN) is None
    with pytest.raises(ValueError):
        await h.issuer.find_order(DOMAIN, csr_pem="garbage")


async def test_find_order_pages_through_the_list(make_issuer: Any) -> None:
    page1 = listing(*[entry(i, cn=f"x{i}.test") for i in range(2)], total=3)
    page2 = listing(entry(7), total=3)
    h = make_issuer(page1, page2, ok(RV), list_page_size=2)
    order = await h.issuer.find_order(DOMAIN)
    assert order is not None and order.order_id == "7"
    assert [r.url.params["offset"] for r in h.script.requests[:2]] == ["0", "2"]


# ---------------------------------------------------------------------------------------------- download

async def test_download_returns_the_chain_leaf_first(make_issuer: Any, chain: tuple[str, str, str]) -> None:
    leaf, inter, _root = chain
    h = make_issuer(httpx.Response(200, text=(inter + leaf).replace("\n", "\r\n"),
                                   headers={"Content-Type": "application/x-pem-file"}))
    pem = await h.issuer.download(pending_order(status=OrderStatus.ISSUED))
    assert pem == leaf + inter
    assert h.script.paths() == ["GET /services/v2/certificate/7700912/download/format/pem_noroot"]


async def test_download_by_order_when_the_certificate_id_is_unknown(make_issuer: Any,
                                                                    chain: tuple[str, str, str]) -> None:
    h = make_issuer(httpx.Response(200, text="".join(chain)), download_format="pem_all")
    pem = await h.issuer.download(pending_order(certificate_id=None))
    assert pem == "".join(chain)
    assert h.script.paths() == ["GET /services/v2/certificate/download/order/5100231/format/pem_all"]


@pytest.mark.parametrize("content", [b"", b"-----BEGIN PKCS7-----\nAA==\n-----END PKCS7-----\n", b"\xff\xfe\x00"])
async def test_download_without_certificates(make_issuer: Any, content: bytes) -> None:
    h = make_issuer(httpx.Response(200, content=content))
    with pytest.raises(CaProtocolError):
        await h.issuer.download(pending_order())


async def test_download_before_issuance(make_issuer: Any) -> None:
    h = make_issuer(err(400, "certificate_not_issued"))
    with pytest.raises(CaRequestError):
        await h.issuer.download(pending_order())


# ---------------------------------------------------------------------------------------------- cancel, revoke

async def test_cancel(make_issuer: Any) -> None:
    h = make_issuer(httpx.Response(204))
    await h.issuer.cancel(pending_order())
    assert h.script.paths() == ["PUT /services/v2/order/certificate/5100231/status"]
    body = h.script.body()
    assert body["status"] == "canceled" and body["note"]


@pytest.mark.parametrize(("now", "raises"), [("canceled", False), ("rejected", False), ("issued", True)])
async def test_cancel_refused_checks_the_order(make_issuer: Any, now: str, raises: bool) -> None:
    h = make_issuer(err(400, "invalid_order_status"), ok(order_info(now)))
    if raises:
        with pytest.raises(CaRequestError):
            await h.issuer.cancel(pending_order())
    else:
        await h.issuer.cancel(pending_order())
    assert len(h.script.requests) == 2


async def test_cancel_unknown_order(make_issuer: Any) -> None:
    h = make_issuer(err(404, "not_found|order"))
    with pytest.raises(OrderNotFound):
        await h.issuer.cancel(pending_order())


@pytest.mark.parametrize(("reply", "expected"), [
    (httpx.Response(204), RevocationStatus.REVOKED),
    (ok({"id": 1, "type": "revoke", "status": "pending"}, 201), RevocationStatus.PENDING_APPROVAL),
])
async def test_revoke(make_issuer: Any, reply: httpx.Response, expected: RevocationStatus) -> None:
    h = make_issuer(reply)
    assert await h.issuer.revoke(pending_order(status=OrderStatus.ISSUED), reason="key_compromise") is expected
    assert h.script.paths() == ["PUT /services/v2/order/certificate/5100231/revoke"]
    body = h.script.body()
    assert body["revocation_reason"] == "key_compromise" and body["skip_approval"] is True


async def test_revoke_twice_is_fine(make_issuer: Any) -> None:
    h = make_issuer(err(400, "invalid_order_status"), ok(order_info("revoked")))
    assert await h.issuer.revoke(pending_order()) is RevocationStatus.REVOKED


# ---------------------------------------------------------------------------------------------- the API key

LEAKY: list[Any] = [
    err(400, f"bad_key:{API_KEY}", f"key {API_KEY} is not valid"),
    err(401, "invalid_api_key", f"{API_KEY} unknown"),
    err(500, "internal_error", f"trace: X-DC-DEVKEY={API_KEY}"),
    err(429, "request_limit_exceeded", f"{API_KEY} blocked"),
    httpx.ConnectError(f"cannot connect for {API_KEY}"),
    httpx.ReadTimeout(f"read timeout {API_KEY}"),
]


@pytest.mark.parametrize("reply", LEAKY, ids=lambda r: type(r).__name__ + str(getattr(r, "status_code", "")))
@pytest.mark.parametrize("call", ["place", "get", "check"])
async def test_the_api_key_never_appears_in_errors(make_issuer: Any, reply: Any, call: str) -> None:
    h = make_issuer(*[reply] * 3, max_attempts=1)
    with pytest.raises(CaError) as info:
        if call == "place":
            await h.issuer.place_order(DOMAIN, CSR.pem, validity_days=90)
        elif call == "get":
            await h.issuer.get_order("1", DOMAIN)
        else:
            await h.issuer.request_validation(pending_order())
    error = info.value
    texts = [str(error), repr(error), repr(vars(error)), *(str(a) for a in error.args)]
    assert not any(API_KEY in t for t in texts)


async def test_the_api_key_never_appears_in_reprs(make_issuer: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    h = make_issuer(err(500, "internal_error", f"echo {API_KEY}"), ok(CREATED, 201), ok(RV))
    assert API_KEY not in repr(h.issuer) and API_KEY not in str(h.issuer)
    assert API_KEY not in repr(vars(h.issuer))
    with pytest.raises(UnknownOutcome):
        await h.issuer.place_order(DOMAIN, CSR.pem, validity_days=90)
    await h.issuer.place_order(DOMAIN, CSR.pem, validity_days=90)
    assert API_KEY not in caplog.text


async def test_constructor_checks() -> None:
    async with httpx.AsyncClient() as http:
        _constructor_checks(http)


def _constructor_checks(http: httpx.AsyncClient) -> None:
    for kw in ({"api_key": ""}, {"api_key": "k", "max_attempts": 0}, {"api_key": "k", "download_format": "p7b"},
               {"api_key": "k", "request_timeout_s": 0}, {"api_key": "k", "list_page_size": 0}):
        with pytest.raises(ValueError):
            DigiCertIssuer(http, **kw)

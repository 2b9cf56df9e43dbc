"""The pure CertCentral wire layer: error bodies, the error and status tables, Retry-After, replies, PEM chains."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from controlplane.issuers import certcentral as cc
from controlplane.issuers.base import OrderStatus
from controlplane.issuers.certcentral import Op
from controlplane.issuers.errors import (
    ApiErrorItem,
    CaAuthError,
    CaError,
    CaProtocolError,
    CaRequestError,
    CaUnavailable,
    NoRetry,
    OrderNotFound,
    OrderRejected,
    RateLimited,
    ValidationNotFound,
)

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"errors":[{"code":"not_found|order","message":"nope"}]}', (ApiErrorItem("not_found|order", "nope"),)),
        (b'{"errors":{"code":"x","message":"as an object [C5]"}}', (ApiErrorItem("x", "as an object [C5]"),)),
        (b'{"errors":[{"code":"a","message":"1"},{"code":"b"}]}', (ApiErrorItem("a", "1"), ApiErrorItem("b", ""))),
        (b'{"errors":["plain text"]}', (ApiErrorItem("", "plain text"),)),
        (b'{"errors":[{"code":42,"message":null}]}', (ApiErrorItem("", ""),)),
        (b"<html>502 Bad Gateway</html>", ()),
        (b"", ()),
        (b'{"errors":null}', ()),
        (b"[]", ()),
        (b"\xff\xfe", ()),
    ],
)
def test_parse_errors_is_defensive(content: bytes, expected: tuple[ApiErrorItem, ...]) -> None:
    assert cc.parse_errors(content) == expected


def test_base_code_strips_sub_parts() -> None:
    assert ApiErrorItem("not_found|order", "").base_code == "not_found"
    assert ApiErrorItem("invalid_value:validity_years", "").base_code == "invalid_value"
    assert ApiErrorItem("caa_check_failed|shop.example.net", "").base_code == "caa_check_failed"


def _items(*codes: str) -> tuple[ApiErrorItem, ...]:
    return tuple(ApiErrorItem(c, f"message for {c}") for c in codes)


# The error mapping table (reference §3), one row per (operation, answer).
ERROR_TABLE = [
    (Op.ORDER_INFO, 429, ("request_limit_exceeded",), RateLimited, "rate_limited"),
    (Op.CREATE, 429, ("request_limit_exceeded",), RateLimited, "rate_limited"),
    (Op.ORDER_INFO, 500, ("internal_error",), CaUnavailable, "unavailable"),
    (Op.ORDER_INFO, 502, (), CaUnavailable, "unavailable"),
    (Op.ORDER_INFO, 503, (), CaUnavailable, "unavailable"),
    (Op.ORDER_INFO, 504, ("gateway_timeout",), CaUnavailable, "unavailable"),
    (Op.ORDER_INFO, 408, (), CaUnavailable, "unavailable"),
    (Op.ORDER_INFO, 401, ("invalid_api_key",), CaAuthError, "rejected"),
    (Op.CREATE, 403, ("access_denied|missing_permission",), CaAuthError, "rejected"),
    (Op.ORDER_INFO, 404, ("not_found|order",), OrderNotFound, "rejected"),
    (Op.RANDOM_VALUE, 404, ("not_found|order",), OrderNotFound, "rejected"),
    (Op.ORDER_INFO, 404, ("not_found|route",), CaRequestError, "rejected"),
    (Op.CHECK_DCV, 400, ("file_random_value_not_found",), ValidationNotFound, "validation_failed"),
    (Op.CHECK_DCV, 400, ("invalid_dns_txt",), ValidationNotFound, "validation_failed"),
    (Op.CHECK_DCV, 400, ("invalid_dns_method",), CaRequestError, "rejected"),
    (Op.CHECK_DCV, 400, ("invalid_order_status",), CaRequestError, "rejected"),
    (Op.ORDER_INFO, 400, ("file_random_value_not_found",), CaRequestError, "rejected"),  # only check-dcv means DCV
    (Op.CREATE, 400, ("caa_check_failed|shop.example.net",), OrderRejected, "rejected"),
    (Op.CREATE, 400, ("invalid_wildcard_dcv_method",), OrderRejected, "rejected"),
    (Op.CREATE, 400, ("invalid_value:days",), OrderRejected, "rejected"),
    (Op.CREATE, 400, ("csr_invalid_cannot_parse",), OrderRejected, "rejected"),
    (Op.CREATE, 400, (), OrderRejected, "rejected"),
    (Op.CREATE, 409, ("duplicate",), OrderRejected, "rejected"),
    (Op.CREATE, 404, ("not_found|product",), CaRequestError, "rejected"),  # configuration, not the name
    (Op.CREATE, 404, ("not_found|route",), CaRequestError, "rejected"),
    (Op.CANCEL, 400, ("invalid_value:note",), CaRequestError, "rejected"),
    (Op.DOWNLOAD, 400, ("certificate_not_issued",), CaRequestError, "rejected"),
    (Op.LIST, 400, ("invalid_value:limit",), CaRequestError, "rejected"),
    (Op.ORDER_INFO, 302, (), CaRequestError, "rejected"),
]


@pytest.mark.parametrize(("op", "status", "codes", "cls", "kind"), ERROR_TABLE,
                         ids=[f"{r[0].name}-{r[1]}-{'+'.join(r[2]) or 'nobody'}" for r in ERROR_TABLE])
def test_error_table(op: Op, status: int, codes: tuple[str, ...], cls: type[CaError], kind: str) -> None:
    error = cc.error_for(op, status, _items(*codes), retry_after_s=7.0, order_id="5100231")
    assert type(error) is cls
    assert error.kind == kind
    assert isinstance(error, NoRetry) == (kind == "rejected")
    assert str(status) in str(error) and op.value in str(error)
    if codes:
        assert codes[0] in str(error)
    if isinstance(error, (RateLimited, CaUnavailable)):
        assert error.retry_after_s == 7.0
    if isinstance(error, NoRetry):
        assert error.status == status and error.code == (codes[0] if codes else "")
    if isinstance(error, ValidationNotFound):
        assert error.order_id == "5100231" and error.code == codes[0]


STATUS_TABLE = [
    ("needs_approval", OrderStatus.NEEDS_APPROVAL),
    ("pending", OrderStatus.PENDING),
    ("reissue_pending", OrderStatus.PENDING),
    ("processing", OrderStatus.PROCESSING),
    ("issued", OrderStatus.ISSUED),
    ("waiting_pickup", OrderStatus.ISSUED),
    ("rejected", OrderStatus.REJECTED),
    ("canceled", OrderStatus.CANCELED),
    ("revoked", OrderStatus.REVOKED),
    ("expired", OrderStatus.EXPIRED),
    ("Issued", OrderStatus.ISSUED),
    ("something_new", OrderStatus.UNKNOWN),
    (None, OrderStatus.UNKNOWN),
    (3, OrderStatus.UNKNOWN),
]


@pytest.mark.parametrize(("raw", "expected"), STATUS_TABLE)
def test_status_table(raw: object, expected: OrderStatus) -> None:
    assert cc.map_status(raw) is expected


def test_terminal_statuses() -> None:
    terminal = {s for s in OrderStatus if s.is_terminal}
    assert terminal == {OrderStatus.REJECTED, OrderStatus.CANCELED, OrderStatus.REVOKED, OrderStatus.EXPIRED}
    assert [s for s in OrderStatus if s.awaits_validation] == [OrderStatus.PENDING]


@pytest.mark.parametrize(
    ("value", "date", "expected"),
    [
        (None, None, None),
        ("", None, None),
        ("30", None, 30.0),
        ("1.5", None, 1.5),
        ("-5", None, None),
        ("soon", None, None),
        ("Sun, 01 Mar 2026 12:02:00 GMT", None, 120.0),  # against `now`
        ("Sun, 01 Mar 2026 12:02:00 GMT", "Sun, 01 Mar 2026 12:01:30 GMT", 30.0),  # against the server's Date
        ("Sun, 01 Mar 2026 11:00:00 GMT", None, 0.0),  # in the past: retry now
        ("Sun, 01 Mar 2026 12:02:00 GMT", "garbage", 120.0),
    ],
)
def test_parse_retry_after(value: str | None, date: str | None, expected: float | None) -> None:
    assert cc.parse_retry_after(value, date=date, now=NOW) == expected


def test_order_body_is_a_dv_http_token_order() -> None:
    body = cc.order_body("shop.example.net", "-----BEGIN CERTIFICATE REQUEST-----\nAA==\n"
                         "-----END CERTIFICATE REQUEST-----\n\n", validity_days=90)
    assert body == {
        "certificate": {
            "common_name": "shop.example.net",
            "csr": "-----BEGIN CERTIFICATE REQUEST-----\nAA==\n-----END CERTIFICATE REQUEST-----\n",
            "signature_hash": "sha256",
            "server_platform": {"id": -1},
            "cert_validity": {"days": 90},
        },
        "order_validity": {"days": 90},
        "dcv_method": "http-token",
        "skip_approval": True,
    }
    encoded = json.dumps(body)
    assert "\n" not in encoded  # line breaks travel escaped (§1 step 1)


def test_paths_quote_their_segments() -> None:
    assert cc.order_path("5100231") == "/order/certificate/5100231"
    assert cc.order_path("../x") == "/order/certificate/..%2Fx"
    assert cc.download_path(certificate_id="77", order_id="51", fmt="pem_noroot") == \
        "/certificate/77/download/format/pem_noroot"
    assert cc.download_path(certificate_id=None, order_id="51", fmt="pem_all") == \
        "/certificate/download/order/51/format/pem_all"
    with pytest.raises(ValueError):
        cc.order_path("")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"id": 5100231, "certificate_id": 7700912, "requests": [{"id": 1, "status": "approved"}],
          "dcv_random_value": "q3k9"}, cc.CreatedOrder("5100231", "7700912", "q3k9", OrderStatus.PENDING)),
        ({"id": "5100231", "requests": [{"id": 1, "status": "pending"}], "dcv_random_value": "v"},
         cc.CreatedOrder("5100231", None, "v", OrderStatus.NEEDS_APPROVAL)),
        ({"id": 1, "certificate_id": 2, "requests": [{"status": "approved"}],
          "certificate_chain": [{"subject_common_name": "x", "pem": "..."}]},
         cc.CreatedOrder("1", "2", None, OrderStatus.ISSUED)),
    ],
)
def test_parse_created(body: object, expected: cc.CreatedOrder) -> None:
    assert cc.parse_created(json.dumps(body).encode()) == expected


@pytest.mark.parametrize("content", [b"not json", b"[]", b'{"certificate_id": 1}', b'{"id": true}', b'{"id": ""}'])
def test_parse_created_refuses_what_has_no_order_id(content: bytes) -> None:
    with pytest.raises(CaProtocolError):
        cc.parse_created(content)


def test_parse_random_value() -> None:
    rv = cc.parse_random_value(b'{"dcv_random_value":"abc","expiration_date":"2026-04-02T17:04:11+00:00"}')
    assert rv == cc.RandomValue("abc", dt.datetime(2026, 4, 2, 17, 4, 11, tzinfo=dt.UTC))
    naive = cc.parse_random_value(b'{"dcv_random_value":"abc","expiration_date":"2026-04-02T17:04:11"}')
    assert naive.expires_at.tzinfo is not None
    zulu = cc.parse_random_value(b'{"dcv_random_value":"abc","expiration_date":"2026-04-02T19:04:11+02:00"}')
    assert zulu.expires_at == rv.expires_at
    for bad in (b'{"dcv_random_value":"abc"}', b'{"expiration_date":"2026-04-02T17:04:11Z"}',
                b'{"dcv_random_value":"abc","expiration_date":"tomorrow"}'):
        with pytest.raises(CaProtocolError):
            cc.parse_random_value(bad)


@pytest.mark.parametrize(
    ("body", "status", "cert"),
    [
        ({"order_status": "issued", "certificate_id": 77, "dcv_status": "valid"}, OrderStatus.ISSUED, "77"),
        ({"order_status": "pending", "certificate_id": 77, "dcv_status": "valid"}, OrderStatus.PROCESSING, "77"),
        ({"order_status": "pending"}, OrderStatus.PROCESSING, None),
        ({"order_status": "pending", "dcv_status": "pending"}, OrderStatus.PENDING, None),
    ],
)
def test_parse_check_dcv(body: object, status: OrderStatus, cert: str | None) -> None:
    reply = cc.parse_check_dcv(json.dumps(body).encode())
    assert (reply.status, reply.certificate_id) == (status, cert)


def test_parse_order_list_skips_junk() -> None:
    body = {"orders": [
        {"id": 3, "status": "pending", "certificate": {"id": 30, "common_name": "a.test"},
         "product": {"name_id": "ssl_dv_geotrust"}},
        {"status": "pending"},
        "junk",
        {"id": 4, "status": "issued"},
    ], "page": {"total": 4, "limit": 100, "offset": 0}}
    entries, total = cc.parse_order_list(json.dumps(body).encode())
    assert total == 4
    assert entries == [
        cc.OrderSummary("3", "pending", OrderStatus.PENDING, "30", "a.test", "ssl_dv_geotrust"),
        cc.OrderSummary("4", "issued", OrderStatus.ISSUED, None, None, None),
    ]
    assert cc.parse_order_list(b'{"orders": []}') == ([], None)
    with pytest.raises(CaProtocolError):
        cc.parse_order_list(b'{"orders": {}}')


def test_split_pem_normalises_and_counts_nothing(chain: tuple[str, str, str]) -> None:
    leaf, inter, root = chain
    crlf = (leaf + inter + root).replace("\n", "\r\n")
    noisy = "junk\r\n" + crlf + "-----BEGIN PKCS7-----\nAAAA\n-----END PKCS7-----\n"
    assert cc.split_pem(noisy) == [leaf, inter, root]
    assert cc.split_pem("no pem here") == []


def test_leaf_first_orders_by_names(chain: tuple[str, str, str]) -> None:
    leaf, inter, root = chain
    for shuffled in ([root, inter, leaf], [inter, leaf, root], [root, leaf, inter], [leaf, inter, root]):
        assert cc.leaf_first(shuffled) == [leaf, inter, root]
    assert cc.leaf_first([inter, leaf]) == [leaf, inter]
    assert cc.leaf_first([leaf]) == [leaf]
    # no single leaf (two unrelated certificates): the CA's order stands
    assert cc.leaf_first([root, leaf]) == [root, leaf]


def test_leaf_first_keeps_unparseable_chains() -> None:
    junk = ["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"] * 2
    assert cc.leaf_first(junk) == junk


def test_csr_public_key() -> None:
    from .conftest import make_csr

    csr = make_csr()
    assert cc.csr_public_key(csr.pem) == csr.spki()
    assert cc.csr_public_key(csr.pem.replace("\n", "\r\n")) == csr.spki()
    assert cc.csr_public_key("garbage") is None

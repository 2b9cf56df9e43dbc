"""CertCentral Services API v2 wire format: paths, request bodies, response parsing, error and status mapping.

Pure: no IO, no clock (times are passed in). `digicert.py` is the IO shell around it. Everything follows the
reference (/work/shared/reference/digicert-certcentral.md, cited as §n); where the reference marks something
unconfirmed, parsing is lenient (ids as numbers or strings, `errors` as a list or an object [C5], dates with or without
an offset).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.utils
import enum
import json
import re
import textwrap
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .base import OrderStatus
from .errors import (
    ApiErrorItem,
    CaAuthError,
    CaError,
    CaProtocolError,
    CaRequestError,
    CaUnavailable,
    OrderNotFound,
    OrderRejected,
    RateLimited,
    ValidationNotFound,
)

__all__ = [
    "DCV_METHOD",
    "LIST_PATH",
    "RANDOM_VALUE_TTL",
    "STATUS_MAP",
    "VALIDATION_NOT_FOUND_CODES",
    "CheckDcvReply",
    "CreatedOrder",
    "Op",
    "OrderInfo",
    "OrderSummary",
    "RandomValue",
    "cancel_body",
    "check_dcv_path",
    "create_path",
    "csr_public_key",
    "download_path",
    "error_for",
    "leaf_first",
    "map_status",
    "order_body",
    "order_path",
    "parse_check_dcv",
    "parse_created",
    "parse_datetime",
    "parse_errors",
    "parse_json",
    "parse_order_info",
    "parse_order_list",
    "parse_random_value",
    "parse_retry_after",
    "random_value_path",
    "revoke_body",
    "revoke_path",
    "split_pem",
    "status_path",
]

#: DV certificates support only file DCV with the fixed fileauth.txt name (§4).
DCV_METHOD = "http-token"

#: Random values expire 30 days after generation (§4); used only to estimate the expiry of the value in a create
#: reply, which carries no `expiration_date` (§1 step 1). dcv-random-value returns the real one.
RANDOM_VALUE_TTL = dt.timedelta(days=30)

#: CertCentral order `status` -> ours (§2). waiting_pickup counts as issued, as in the reference's client checklist
#: ([C2]). reissue_pending is PENDING, not ISSUED: the order's current certificate is the reissued one, which needs
#: fresh DCV (DV never reuses it, §4) before it can be downloaded; this client never reissues, so an operator did.
STATUS_MAP: Mapping[str, OrderStatus] = {
    "needs_approval": OrderStatus.NEEDS_APPROVAL,
    "pending": OrderStatus.PENDING,
    "reissue_pending": OrderStatus.PENDING,
    "processing": OrderStatus.PROCESSING,  # public clients only (unconfirmed, §2)
    "issued": OrderStatus.ISSUED,
    "waiting_pickup": OrderStatus.ISSUED,
    "rejected": OrderStatus.REJECTED,
    "canceled": OrderStatus.CANCELED,
    "cancelled": OrderStatus.CANCELED,  # defensive spelling
    "revoked": OrderStatus.REVOKED,
    "expired": OrderStatus.EXPIRED,  # public clients only (unconfirmed, §2)
}

#: check-dcv codes meaning "the value was not found (yet)" (§1 step 4): the file method's, and the TXT one's.
VALIDATION_NOT_FOUND_CODES = frozenset({"file_random_value_not_found", "invalid_dns_txt"})


class Op(enum.StrEnum):
    """The API operations this client uses; error mapping depends on which one failed."""

    CREATE = "create order"
    ORDER_INFO = "order info"
    LIST = "list orders"
    RANDOM_VALUE = "dcv-random-value"
    CHECK_DCV = "check-dcv"
    DOWNLOAD = "download"
    CANCEL = "cancel order"
    REVOKE = "revoke order"


# ---------------------------------------------------------------------------------------------- paths and bodies

def _seg(value: str) -> str:
    if not value:
        raise ValueError("empty path segment")
    return quote(value, safe="")


def create_path(product_id: str) -> str:
    return f"/order/certificate/{_seg(product_id)}"


def order_path(order_id: str) -> str:
    return f"/order/certificate/{_seg(order_id)}"


def random_value_path(order_id: str) -> str:
    return f"{order_path(order_id)}/dcv-random-value"


def check_dcv_path(order_id: str) -> str:
    return f"{order_path(order_id)}/check-dcv"


def status_path(order_id: str) -> str:
    return f"{order_path(order_id)}/status"


def revoke_path(order_id: str) -> str:
    return f"{order_path(order_id)}/revoke"


def download_path(*, certificate_id: str | None, order_id: str, fmt: str) -> str:
    """By certificate id when known, else the order's current active certificate (§5)."""
    if certificate_id:
        return f"/certificate/{_seg(certificate_id)}/download/format/{_seg(fmt)}"
    return f"/certificate/download/order/{_seg(order_id)}/format/{_seg(fmt)}"


LIST_PATH = "/order/certificate"


def order_body(domain: str, csr_pem: str, *, validity_days: int, signature_hash: str = "sha256",
               skip_approval: bool = True, comments: str | None = None,
               container_id: int | None = None) -> dict[str, Any]:
    """The DV order request (§1 step 1): one FQDN (the common name is always a SAN), http-token DCV.

    `order_validity` and `cert_validity` both get `validity_days`; the CA caps the certificate at its own maximum
    (199 days since 2026-02-24, §6).
    """
    body: dict[str, Any] = {
        "certificate": {
            "common_name": domain,
            "csr": csr_pem.strip() + "\n",  # JSON-escaped newlines, not raw line breaks (§1 step 1)
            "signature_hash": signature_hash,
            "server_platform": {"id": -1},
            "cert_validity": {"days": validity_days},
        },
        "order_validity": {"days": validity_days},
        "dcv_method": DCV_METHOD,
        "skip_approval": skip_approval,
    }
    if comments:
        body["comments"] = comments
    if container_id is not None:
        body["container"] = {"id": container_id}
    return body


def cancel_body(note: str) -> dict[str, Any]:
    """`PUT .../status`: the note is required (§2 transition 3)."""
    return {"status": "canceled", "note": note or "canceled"}


def revoke_body(reason: str, *, comments: str, skip_approval: bool = True) -> dict[str, Any]:
    """`PUT .../revoke` (§6): with an admin key and skip_approval the CA revokes at once (204)."""
    return {"revocation_reason": reason, "comments": comments, "skip_approval": skip_approval}


# ---------------------------------------------------------------------------------------------- parsing helpers

def parse_json(content: bytes, *, op: Op) -> Any:
    try:
        return json.loads(content)
    except (ValueError, UnicodeDecodeError):
        raise CaProtocolError(f"{op}: the CA's answer is not JSON") from None


def _obj(value: Any, what: str, op: Op) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise CaProtocolError(f"{op}: {what} is not a JSON object")
    return value


def _id(value: Any) -> str | None:
    """Ids are numbers in every example; accept digit strings too. None when absent or unusable."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _required_id(body: Mapping[str, Any], key: str, op: Op) -> str:
    found = _id(body.get(key))
    if found is None:
        raise CaProtocolError(f"{op}: the answer has no usable {key!r}")
    return found


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def parse_datetime(value: Any) -> dt.datetime | None:
    """ISO 8601; a value without an offset is taken as UTC (the reference's examples carry +00:00)."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        when = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC)


def map_status(value: Any) -> OrderStatus:
    """A CertCentral order status -> `OrderStatus`; UNKNOWN for anything unlisted."""
    if not isinstance(value, str):
        return OrderStatus.UNKNOWN
    return STATUS_MAP.get(value.strip().lower(), OrderStatus.UNKNOWN)


# ---------------------------------------------------------------------------------------------- errors

def parse_errors(content: bytes) -> tuple[ApiErrorItem, ...]:
    """`{"errors":[{"code","message"}]}` (§3), defensively: `errors` as one object [C5], missing fields, non-JSON."""
    try:
        body = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return ()
    if not isinstance(body, Mapping):
        return ()
    raw = body.get("errors")
    if isinstance(raw, Mapping):
        raw = [raw]
    if not isinstance(raw, list):
        return ()
    items = []
    for entry in raw:
        if isinstance(entry, Mapping):
            code, message = entry.get("code"), entry.get("message")
            items.append(ApiErrorItem(code if isinstance(code, str) else "",
                                      message if isinstance(message, str) else ""))
        elif isinstance(entry, str):
            items.append(ApiErrorItem("", entry))
    return tuple(items)


def parse_retry_after(value: str | None, *, date: str | None = None, now: dt.datetime) -> float | None:
    """Retry-After as seconds: delta-seconds, or an HTTP-date measured against the response's Date header (the
    server's clock) or else `now`. None when absent or unreadable; never negative. CertCentral documents no
    Retry-After (§3), but proxies and maintenance pages send one."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text)) if re.fullmatch(r"\d+(\.\d+)?", text) else _retry_after_date(text, date, now)
    except (TypeError, ValueError, OverflowError):
        return None


def _retry_after_date(text: str, date: str | None, now: dt.datetime) -> float | None:
    when = email.utils.parsedate_to_datetime(text)
    ref = now
    if date:
        try:
            ref = email.utils.parsedate_to_datetime(date)
        except (TypeError, ValueError):
            ref = now
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    if ref.tzinfo is None:
        ref = ref.replace(tzinfo=dt.UTC)
    return max(0.0, (when - ref).total_seconds())


def _describe(op: Op, status: int, errors: tuple[ApiErrorItem, ...]) -> str:
    text = f"{op}: HTTP {status}"
    if not errors:
        return text
    first = errors[0]
    detail = ": ".join(part for part in (first.code, first.message) if part)
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{text} {detail}{more}" if detail else f"{text}{more}"


def error_for(op: Op, status: int, errors: tuple[ApiErrorItem, ...], *, retry_after_s: float | None = None,
              order_id: str | None = None) -> CaError:
    """The typed error for a non-2xx answer to `op` (§3).

    | answer                                   | error                               |
    |------------------------------------------|-------------------------------------|
    | 429                                      | RateLimited                         |
    | 5xx, 408                                 | CaUnavailable (the shell turns a    |
    |                                          | CREATE 5xx into UnknownOutcome)     |
    | 401, 403                                 | CaAuthError                         |
    | CHECK_DCV + file_random_value_not_found  | ValidationNotFound                  |
    | 404 not_found|order                      | OrderNotFound                       |
    | CREATE + other 4xx, except 404 route or  | OrderRejected                       |
    |   product (configuration, not the name)  |                                     |
    | any other 4xx / status                   | CaRequestError                      |
    """
    message = _describe(op, status, errors)
    codes = {e.code for e in errors}
    bases = {e.base_code for e in errors}
    if status == 429:
        return RateLimited(message, retry_after_s=retry_after_s)
    if status >= 500 or status == 408:
        return CaUnavailable(message, retry_after_s=retry_after_s, status=status)
    if status in (401, 403):
        return CaAuthError(message, status=status, errors=errors)
    if op is Op.CHECK_DCV and codes & VALIDATION_NOT_FOUND_CODES:
        code = next(iter(sorted(codes & VALIDATION_NOT_FOUND_CODES)))
        return ValidationNotFound(message, order_id=order_id or "", code=code)
    if status == 404 and "not_found|order" in codes:
        return OrderNotFound(message, status=status, errors=errors)
    if op is Op.CREATE and 400 <= status < 500 and not (status == 404 and "not_found" in bases):
        return OrderRejected(message, status=status, errors=errors)
    return CaRequestError(message, status=status, errors=errors)


# ---------------------------------------------------------------------------------------------- replies

@dataclasses.dataclass(frozen=True, slots=True)
class CreatedOrder:
    """The 201 reply to order creation (§1 step 1)."""

    order_id: str
    certificate_id: str | None
    random_value: str | None
    status: OrderStatus  # PENDING, NEEDS_APPROVAL (request waits for approval) or ISSUED (immediate issuance)


def parse_created(content: bytes) -> CreatedOrder:
    body = _obj(parse_json(content, op=Op.CREATE), "the reply", Op.CREATE)
    order_id = _required_id(body, "id", Op.CREATE)
    status = OrderStatus.PENDING
    requests = body.get("requests")
    if isinstance(requests, list) and requests and isinstance(requests[0], Mapping):
        if requests[0].get("status") == "pending":
            status = OrderStatus.NEEDS_APPROVAL  # waits for an in-account approval (§1 step 1, [34])
        elif requests[0].get("status") == "rejected":
            status = OrderStatus.REJECTED
    if isinstance(body.get("certificate_chain"), list) and body["certificate_chain"]:
        status = OrderStatus.ISSUED  # AuthKey immediate issuance (§1 step 1, [27])
    return CreatedOrder(order_id=order_id, certificate_id=_id(body.get("certificate_id")),
                        random_value=_str(body.get("dcv_random_value")), status=status)


@dataclasses.dataclass(frozen=True, slots=True)
class RandomValue:
    value: str
    expires_at: dt.datetime


def parse_random_value(content: bytes) -> RandomValue:
    """`PUT .../dcv-random-value` -> `{dcv_random_value, expiration_date}` (§1 step 2)."""
    body = _obj(parse_json(content, op=Op.RANDOM_VALUE), "the reply", Op.RANDOM_VALUE)
    value = _str(body.get("dcv_random_value"))
    expires = parse_datetime(body.get("expiration_date"))
    if value is None or expires is None:
        raise CaProtocolError(f"{Op.RANDOM_VALUE}: the answer lacks dcv_random_value or expiration_date")
    return RandomValue(value.strip(), expires)


@dataclasses.dataclass(frozen=True, slots=True)
class OrderInfo:
    """The fields of `GET /order/certificate/{id}` this client uses (§1 step 5)."""

    order_id: str
    ca_status: str
    status: OrderStatus
    certificate_id: str | None
    common_name: str | None
    csr_pem: str | None


def parse_order_info(content: bytes) -> OrderInfo:
    body = _obj(parse_json(content, op=Op.ORDER_INFO), "the reply", Op.ORDER_INFO)
    cert = body.get("certificate")
    cert = cert if isinstance(cert, Mapping) else {}
    raw_status = body.get("status")
    return OrderInfo(order_id=_required_id(body, "id", Op.ORDER_INFO),
                     ca_status=raw_status if isinstance(raw_status, str) else "", status=map_status(raw_status),
                     certificate_id=_id(cert.get("id")), common_name=_str(cert.get("common_name")),
                     csr_pem=_str(cert.get("csr")))


@dataclasses.dataclass(frozen=True, slots=True)
class OrderSummary:
    """One entry of `GET /order/certificate` (§1 step 5)."""

    order_id: str
    ca_status: str
    status: OrderStatus
    certificate_id: str | None
    common_name: str | None
    product_id: str | None


def parse_order_list(content: bytes) -> tuple[list[OrderSummary], int | None]:
    """The orders of one page, and the `page.total` when present (unconfirmed, §0)."""
    body = _obj(parse_json(content, op=Op.LIST), "the reply", Op.LIST)
    raw = body.get("orders", [])
    if not isinstance(raw, list):
        raise CaProtocolError(f"{Op.LIST}: 'orders' is not a list")
    out: list[OrderSummary] = []
    for entry in raw:
        if not isinstance(entry, Mapping):
            continue
        order_id = _id(entry.get("id"))
        if order_id is None:
            continue
        cert = entry.get("certificate")
        cert = cert if isinstance(cert, Mapping) else {}
        product = entry.get("product")
        product = product if isinstance(product, Mapping) else {}
        raw_status = entry.get("status")
        out.append(OrderSummary(order_id=order_id, ca_status=raw_status if isinstance(raw_status, str) else "",
                                status=map_status(raw_status), certificate_id=_id(cert.get("id")),
                                common_name=_str(cert.get("common_name")), product_id=_str(product.get("name_id"))))
    page = body.get("page")
    total = page.get("total") if isinstance(page, Mapping) else None
    return out, total if isinstance(total, int) and not isinstance(total, bool) else None


@dataclasses.dataclass(frozen=True, slots=True)
class CheckDcvReply:
    status: OrderStatus
    ca_status: str
    certificate_id: str | None


def parse_check_dcv(content: bytes) -> CheckDcvReply:
    """200 from check-dcv: the value was found on every checked name (§1 step 4).

    `order_status` stays `pending` until issuance; a 200 with `pending` is therefore PROCESSING (validated, being
    issued), unless `dcv_status` explicitly says otherwise.
    """
    body = _obj(parse_json(content, op=Op.CHECK_DCV), "the reply", Op.CHECK_DCV)
    raw_status = body.get("order_status")
    status = map_status(raw_status)
    dcv_status = body.get("dcv_status")
    if status is OrderStatus.PENDING and (dcv_status is None or dcv_status == "valid"):
        status = OrderStatus.PROCESSING
    return CheckDcvReply(status=status, ca_status=raw_status if isinstance(raw_status, str) else "",
                         certificate_id=_id(body.get("certificate_id")))


# ---------------------------------------------------------------------------------------------- PEM chains

_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL)


def split_pem(text: str) -> list[str]:
    """Every CERTIFICATE block, in order, normalised (LF, 64-column base64, trailing newline). No count assumed
    (§5: chains may hold extra intermediates or cross-certificates); other block types are ignored."""
    blocks = []
    for match in _PEM_CERT.finditer(text):
        b64 = "".join(match.group(1).split())
        body = "\n".join(textwrap.wrap(b64, 64))
        blocks.append(f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n")
    return blocks


def leaf_first(blocks: list[str]) -> list[str]:
    """Order a chain leaf -> issuer -> ... by subject/issuer names; leftovers keep their place at the end.

    The leaf is the one certificate that issued none of the others. Signatures are not checked (the pipeline
    validates). When the blocks cannot be parsed or no single leaf stands out, the CA's order is kept (pem_all is
    leaf first, §5).
    """
    if len(blocks) < 2:
        return list(blocks)
    try:
        certs = [x509.load_pem_x509_certificate(b.encode()) for b in blocks]
    except ValueError:
        return list(blocks)
    issuers = [c.issuer for c in certs]
    leaves = [i for i, c in enumerate(certs)
              if not any(j != i and c.subject == issuers[j] for j in range(len(certs)))]
    if len(leaves) != 1:
        return list(blocks)
    order = [leaves[0]]
    while True:
        current = certs[order[-1]]
        if current.issuer == current.subject:
            break
        nxt = next((j for j, c in enumerate(certs) if j not in order and c.subject == current.issuer), None)
        if nxt is None:
            break
        order.append(nxt)
    order += [j for j in range(len(certs)) if j not in order]
    return [blocks[j] for j in order]


def csr_public_key(csr_pem: str) -> bytes | None:
    """The CSR's SubjectPublicKeyInfo (DER), to recognise an order by its key; None if the CSR does not parse."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.strip().encode())
        return csr.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, TypeError):
        return None

"""Pure JSON renderings of simulator values in CertCentral's shapes (reference §1, §3)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from .core import CheckOutcome
from .model import (
    DV_PRODUCTS,
    OV_EV_PRODUCTS,
    CertRecord,
    DcvValue,
    Order,
    RevokeRequest,
    StatusChange,
)

__all__ = [
    "check_dcv",
    "day",
    "dcv_value",
    "error_body",
    "iso",
    "order_info",
    "order_summary",
    "revoke_request",
    "status_changes",
]


def iso(when: dt.datetime) -> str:
    """ISO 8601 UTC with offset, as in the reference's examples ("2026-04-02T17:04:11+00:00")."""
    return when.astimezone(dt.UTC).replace(microsecond=0).isoformat()


def day(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).date().isoformat()


def error_body(code: str, message: str, *, as_object: bool = False) -> dict[str, Any]:
    """`{"errors":[{"code","message"}]}`; `as_object` gives the variant one public fixture shows [C5]."""
    err = {"code": code, "message": message}
    return {"errors": err if as_object else [err]}


def _product(order: Order) -> dict[str, Any]:
    name_id = order.product_name_id
    kind = "dv_ssl_certificate" if name_id in DV_PRODUCTS else "ssl_certificate"
    return {"name_id": name_id, "name": DV_PRODUCTS.get(name_id) or OV_EV_PRODUCTS.get(name_id, name_id),
            "type": kind, "validation_type": "dv" if name_id in DV_PRODUCTS else "ov"}


def _certificate(order: Order, cert: CertRecord, ca_name: str, now: dt.datetime, *, full: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": cert.id,
        "common_name": cert.common_name,
        "dns_names": list(cert.dns_names),
        "signature_hash": cert.signature_hash,
    }
    if cert.not_after is not None:
        out["valid_till"] = day(cert.not_after)
        out["days_remaining"] = max(0, (cert.not_after - now).days)
    if full:
        out["csr"] = cert.csr_pem
        out["cert_validity"] = dict(order.cert_validity) if order.cert_validity else {"days": cert.days}
        out["ca_cert"] = {"id": "sim-intermediate", "name": ca_name}
        if cert.issued:
            assert cert.not_before is not None
            out.update(serial_number=cert.serial_number, thumbprint=cert.thumbprint, date_issued=iso(cert.not_before),
                       valid_from=day(cert.not_before), key_size=cert.key_size)
    return out


def order_info(order: Order, cert: CertRecord, *, ca_name: str, now: dt.datetime) -> dict[str, Any]:
    """`GET /order/certificate/{id}` (reference §1 step 5)."""
    out: dict[str, Any] = {
        "id": order.id,
        "status": str(order.status),
        "date_created": iso(order.date_created),
        "certificate": _certificate(order, cert, ca_name, now, full=True),
        "product": _product(order),
        "order_validity": dict(order.order_validity),
        "container": {"id": 1, "name": "Simulated Account"},
        "requests": [{"id": order.request_id, "status": order.request_status}],
        "dcv_method": str(order.dcv_method),
        "is_renewal": order.renewal_of_order_id is not None,
        "is_renewed": order.renewed_order_id is not None,
        "renewed_order_id": order.renewed_order_id,
        "disable_ct": False,
        "comments": order.comments,
    }
    if order.organization_id is not None:
        out["organization"] = {"id": order.organization_id}
    if order.renewal_of_order_id is not None:
        out["renewal_of_order_id"] = order.renewal_of_order_id
    return out


def order_summary(order: Order, cert: CertRecord, *, now: dt.datetime) -> dict[str, Any]:
    """One entry of `GET /order/certificate` (reference §1 step 5)."""
    return {
        "id": order.id,
        "certificate": _certificate(order, cert, "", now, full=False),
        "status": str(order.status),
        "is_renewed": order.renewed_order_id is not None,
        "date_created": iso(order.date_created),
        "product": _product(order),
        "has_duplicates": False,
    }


def dcv_value(dcv: DcvValue) -> dict[str, Any]:
    return {"dcv_random_value": dcv.value, "expiration_date": iso(dcv.expires_at)}


def check_dcv(outcome: CheckOutcome) -> dict[str, Any]:
    return {
        "order_status": str(outcome.order_status),
        "certificate_id": outcome.certificate_id,
        "dcv_status": "valid" if outcome.all_ok else "pending",
        "dns_name_validations": [{"dns_name": n, "status": str(s)} for n, s in outcome.validations],
    }


def status_changes(changes: list[StatusChange]) -> dict[str, Any]:
    return {"orders": [{"order_id": c.order_id, "certificate_id": c.certificate_id, "status": str(c.status)}
                       for c in changes]}


def revoke_request(req: RevokeRequest) -> dict[str, Any]:
    return {"id": req.id, "date": iso(req.date), "type": "revoke", "status": req.status,
            "requester": {"name": req.requester}, "comments": req.comments}

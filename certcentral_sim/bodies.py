"""Pure parsing and validation of CertCentral request bodies into values; errors are the reference's 400s.

No state: the limits come from `SimConfig`, "today" is passed in.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from .ca import parse_csr
from .errors import ApiError
from .model import DV_PRODUCTS, OV_EV_PRODUCTS, DcvMethod, SimConfig
from .rules import is_wildcard, normalise_name

__all__ = [
    "SIGNATURE_HASHES",
    "OrderRequest",
    "ReissueRequest",
    "parse_dcv_method",
    "parse_names",
    "parse_order_request",
    "parse_reissue_request",
]

SIGNATURE_HASHES = frozenset({"sha256", "sha384", "sha512"})


@dataclasses.dataclass(frozen=True, slots=True)
class OrderRequest:
    product_name_id: str
    names: tuple[str, ...]
    csr_pem: str
    signature_hash: str
    dcv_method: DcvMethod
    order_validity_days: int
    order_validity: Mapping[str, object]
    cert_days: int  # already capped at max_cert_days
    cert_validity: Mapping[str, int] | None
    skip_approval: bool
    comments: str
    organization_id: int | None
    renewal_of_order_id: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class ReissueRequest:
    names: tuple[str, ...] | None
    csr_pem: str
    signature_hash: str | None
    skip_approval: bool
    comments: str


def _obj(value: Any, field: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ApiError.invalid_value(field, f"{field} must be an object.")
    return value


def _int(value: Any, field: str, *, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ApiError.invalid_value(field, f"{field} must be an integer between {lo} and {hi}.")
    return value


def parse_names(common_name: Any, dns_names: Any, dcv_method: DcvMethod | None) -> tuple[str, ...]:
    """common_name first, then extra SANs, normalised and deduplicated; wildcards refused with http-token (§4)."""
    if not isinstance(common_name, str) or not common_name.strip():
        raise ApiError.invalid_value("common_name", "certificate.common_name is required.")
    try:
        names = [normalise_name(common_name)]
    except ValueError as exc:
        raise ApiError.invalid_value("common_name", f"Invalid common name: {exc}.") from None
    if dns_names is not None:
        if not isinstance(dns_names, Sequence) or isinstance(dns_names, str):
            raise ApiError.invalid_value("dns_names", "certificate.dns_names must be a list of strings.")
        for raw in dns_names:
            try:
                name = normalise_name(raw)
            except ValueError as exc:
                raise ApiError.invalid_value("dns_names", f"Invalid DNS name {raw!r}: {exc}.") from None
            if name not in names:
                names.append(name)
    if dcv_method is DcvMethod.HTTP_TOKEN and any(is_wildcard(n) for n in names):
        # §1 step 1 / §4: file DCV cannot validate wildcards (CA/B ballot SC45).
        raise ApiError(400, "invalid_wildcard_dcv_method",
                       "Wildcard domains cannot be validated with the http-token DCV method.")
    return tuple(names)


def parse_dcv_method(value: Any, product_name_id: str) -> DcvMethod:
    if value is None:
        return DcvMethod.EMAIL  # default when omitted (unconfirmed, reference §1)
    try:
        return DcvMethod(value)
    except ValueError:
        # http-token-dynamic is OV/EV only and not simulated; DV supports only the four DV methods (§4).
        raise ApiError(400, "invalid_dcv_method", f"DCV method {value!r} is not supported for {product_name_id}.") \
            from None


def _order_validity(body: Mapping[str, Any], cfg: SimConfig, today: dt.date) -> tuple[int, Mapping[str, object]]:
    """§1 step 1 / §6: `order_validity` {years|days|custom_expiration_date}, or the legacy root fields."""
    ov = _obj(body.get("order_validity"), "order_validity")
    legacy = {k.removeprefix("validity_"): body[k] for k in ("validity_years", "validity_days") if k in body}
    if "custom_expiration_date" in body:
        legacy["custom_expiration_date"] = body["custom_expiration_date"]
    source = dict(ov) or legacy
    max_days = cfg.max_order_years * 366
    if "years" in source:
        years = _int(source["years"], "years", lo=1, hi=cfg.max_order_years)
        return years * 365, {"years": years}
    if "days" in source:
        days = _int(source["days"], "days", lo=1, hi=max_days)
        return days, {"days": days}
    if "custom_expiration_date" in source:
        raw = source["custom_expiration_date"]
        try:
            date = dt.date.fromisoformat(str(raw))
        except ValueError:
            raise ApiError.invalid_value("custom_expiration_date", "Use yyyy-MM-dd.") from None
        days = (date - today).days
        if not 1 <= days <= max_days:
            raise ApiError.invalid_value("custom_expiration_date", "The date is outside the allowed plan length.")
        return days, {"custom_expiration_date": date.isoformat()}
    raise ApiError.invalid_value("order_validity", "order_validity (years, days or custom_expiration_date) is required.")


def parse_order_request(product_name_id: str, body: Any, cfg: SimConfig, *, today: dt.date) -> OrderRequest:
    """Validate `POST /order/certificate/{product_name_id}` (reference §1 step 1)."""
    if product_name_id not in DV_PRODUCTS and product_name_id not in OV_EV_PRODUCTS:
        raise ApiError.not_found("product")
    if not isinstance(body, Mapping):
        raise ApiError.bad_request_format("The request body must be a JSON object.")
    cert = _obj(body.get("certificate"), "certificate")
    dcv_method = parse_dcv_method(body.get("dcv_method"), product_name_id)
    names = parse_names(cert.get("common_name"), cert.get("dns_names"), dcv_method)
    csr_pem = cert.get("csr")
    if not isinstance(csr_pem, str) or not csr_pem.strip():
        raise ApiError.invalid_value("csr", "certificate.csr is required.")
    parse_csr(csr_pem)
    signature_hash = cert.get("signature_hash", "sha256")
    if signature_hash not in SIGNATURE_HASHES:
        raise ApiError.invalid_value("signature_hash", "Use sha256, sha384 or sha512.")
    order_days, order_validity = _order_validity(body, cfg, today)
    cv = _obj(cert.get("cert_validity"), "cert_validity")
    cert_validity: dict[str, int] | None = None
    requested = order_days
    if cv:
        if "days" in cv:
            requested = _int(cv["days"], "cert_validity", lo=1, hi=100_000)
            cert_validity = {"days": requested}
        elif "years" in cv:
            years = _int(cv["years"], "cert_validity", lo=1, hi=100)
            requested, cert_validity = years * 365, {"years": years}
        else:
            raise ApiError.invalid_value("cert_validity", "cert_validity takes days or years.")
        if requested > order_days:
            raise ApiError(400, "cert_validity_exceeds_order_validity",
                           "The certificate validity exceeds the order validity.")
    org = _obj(body.get("organization"), "organization")
    org_id = org.get("id")
    if org_id is not None:
        org_id = _int(org_id, "organization.id", lo=1, hi=2**31)
    renewal = body.get("renewal_of_order_id")
    if renewal is not None:
        renewal = _int(renewal, "renewal_of_order_id", lo=1, hi=2**31)
    comments = body.get("comments", "")
    return OrderRequest(
        product_name_id=product_name_id,
        names=names,
        csr_pem=csr_pem.strip() + "\n",
        signature_hash=signature_hash,
        dcv_method=dcv_method,
        order_validity_days=order_days,
        order_validity=order_validity,
        cert_days=min(requested, cfg.max_cert_days),
        cert_validity=cert_validity,
        skip_approval=body.get("skip_approval") is True,
        comments=comments if isinstance(comments, str) else "",
        organization_id=org_id,
        renewal_of_order_id=renewal,
    )


def parse_reissue_request(body: Any, dcv_method: DcvMethod) -> ReissueRequest:
    """Validate `POST /order/certificate/{id}/reissue` (reference §6): the CSR is required for TLS."""
    if body is None:
        body = {}
    if not isinstance(body, Mapping):
        raise ApiError.bad_request_format("The request body must be a JSON object.")
    cert = _obj(body.get("certificate"), "certificate")
    csr_pem = cert.get("csr")
    if not isinstance(csr_pem, str) or not csr_pem.strip():
        raise ApiError.invalid_value("csr", "certificate.csr is required.")
    parse_csr(csr_pem)
    names = None
    if cert.get("common_name") is not None:
        names = parse_names(cert.get("common_name"), cert.get("dns_names"), dcv_method)
    signature_hash = cert.get("signature_hash")
    if signature_hash is not None and signature_hash not in SIGNATURE_HASHES:
        raise ApiError.invalid_value("signature_hash", "Use sha256, sha384 or sha512.")
    comments = body.get("comments", "")
    return ReissueRequest(names=names, csr_pem=csr_pem.strip() + "\n", signature_hash=signature_hash,
                          skip_approval=body.get("skip_approval") is True,
                          comments=comments if isinstance(comments, str) else "")

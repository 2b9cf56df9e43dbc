"""Values of the simulator: order and certificate records, statuses, API keys, configuration.

Frozen, slotted dataclasses only; the state machine in `core.py` replaces them, never mutates them.
Statuses and product ids follow reference §1-§2.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Mapping

from .errors import ConfigError

__all__ = [
    "DV_PRODUCTS",
    "OV_EV_PRODUCTS",
    "TERMINAL_STATUSES", "DEFAULT_RATE_LIMITS",
    "TOKEN_METHODS",
    "ApiKey",
    "CertRecord",
    "DcvMethod",
    "DcvValue",
    "FetchRecord",
    "NameStatus",
    "Order",
    "OrderStatus",
    "Permission",
    "RevokeRequest",
    "SimConfig",
    "StatusChange",
]


class OrderStatus(enum.StrEnum):
    """Order `status` values (reference §2)."""

    NEEDS_APPROVAL = "needs_approval"
    PENDING = "pending"
    ISSUED = "issued"
    REJECTED = "rejected"
    REVOKED = "revoked"
    CANCELED = "canceled"
    REISSUE_PENDING = "reissue_pending"
    WAITING_PICKUP = "waiting_pickup"
    EXPIRED = "expired"  # only in public clients (unconfirmed); set once the cert's valid_till has passed


TERMINAL_STATUSES = frozenset({OrderStatus.REJECTED, OrderStatus.REVOKED, OrderStatus.CANCELED, OrderStatus.EXPIRED})

# Statuses in which DCV is still outstanding for the order's current request.
DCV_STATUSES = frozenset({OrderStatus.PENDING, OrderStatus.REISSUE_PENDING})


class NameStatus(enum.StrEnum):
    """Per-FQDN DCV status in `dns_name_validations` (`approved` documented, `pending` unconfirmed)."""

    PENDING = "pending"
    APPROVED = "approved"


class DcvMethod(enum.StrEnum):
    EMAIL = "email"
    DNS_TXT_TOKEN = "dns-txt-token"
    DNS_CNAME_TOKEN = "dns-cname-token"
    HTTP_TOKEN = "http-token"


TOKEN_METHODS = frozenset({DcvMethod.DNS_TXT_TOKEN, DcvMethod.DNS_CNAME_TOKEN, DcvMethod.HTTP_TOKEN})

# Product ids (reference §1 step 1). DV ids accept only the four DV methods.
DV_PRODUCTS: Mapping[str, str] = {
    "ssl_dv_geotrust": "GeoTrust Standard DV",
    "ssl_dv_rapidssl": "RapidSSL Standard DV",
    "wildcard_dv_geotrust": "GeoTrust Wildcard DV",
    "wildcard_dv_rapidssl": "RapidSSL Wildcard DV",
    "cloud_dv_geotrust": "GeoTrust Cloud DV",
    "ssl_dv_geotrust_flex": "GeoTrust DV SSL",
}
OV_EV_PRODUCTS: Mapping[str, str] = {
    "ssl_basic": "Basic OV",
    "ssl_securesite_flex": "Secure Site OV",
    "ssl_ev_basic": "Basic EV",
    "ssl_ev_securesite_flex": "Secure Site EV",
}


class Permission(enum.StrEnum):
    """What an API key may do (reference §0): full admin, orders management, or GET only."""

    ADMIN = "admin"
    ORDERS = "orders"
    VIEW_ONLY = "view_only"


@dataclasses.dataclass(frozen=True, slots=True)
class ApiKey:
    key: str
    permission: Permission = Permission.ADMIN
    name: str = "sim user"


@dataclasses.dataclass(frozen=True, slots=True)
class DcvValue:
    """The order-level random value (one value for every FQDN of a DV order, reference §1 step 1)."""

    value: str
    created_at: dt.datetime
    expires_at: dt.datetime

    def valid_at(self, now: dt.datetime) -> bool:
        return now < self.expires_at


@dataclasses.dataclass(frozen=True, slots=True)
class CertRecord:
    """One certificate of an order: allocated (id) at order/reissue time, material filled in at issuance."""

    id: int
    order_id: int
    common_name: str
    dns_names: tuple[str, ...]
    csr_pem: str
    signature_hash: str
    days: int
    pem: str | None = None  # the leaf only; the chain is the simulator's CA
    serial_number: str | None = None  # upper-case hex
    thumbprint: str | None = None  # upper-case hex SHA-1, as CertCentral shows it
    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None
    key_size: int | None = None
    revoked_at: dt.datetime | None = None

    @property
    def issued(self) -> bool:
        return self.pem is not None


@dataclasses.dataclass(frozen=True, slots=True)
class RevokeRequest:
    id: int
    order_id: int
    certificate_id: int | None
    date: dt.datetime
    requester: str
    comments: str
    reason: str | None
    status: str = "pending"


@dataclasses.dataclass(frozen=True, slots=True)
class Order:
    id: int
    product_name_id: str
    status: OrderStatus
    date_created: dt.datetime
    certificate_id: int  # the current certificate (the reissued one while reissue_pending)
    request_id: int
    dcv_method: DcvMethod
    dcv: DcvValue | None  # None for email
    names: tuple[str, ...]  # common_name first, then the extra SANs; lower-case, deduplicated
    name_status: tuple[NameStatus, ...]  # parallel to `names`
    order_validity_days: int
    order_validity: Mapping[str, object]
    cert_validity: Mapping[str, int] | None
    status_updated_at: dt.datetime
    api_key_name: str
    skip_approval: bool = False
    comments: str = ""
    organization_id: int | None = None
    poll_anchor: dt.datetime | None = None  # start of DigiCert's automatic-poll schedule (reference §4)
    last_poll_at: dt.datetime | None = None
    issue_at: dt.datetime | None = None  # all names validated; issuance scheduled for this moment
    doomed: bool = False  # fault injection: rejected instead of issued
    renewal_of_order_id: int | None = None
    renewed_order_id: int | None = None
    cancel_note: str | None = None
    certificate_ids: tuple[int, ...] = ()  # every certificate the order ever had, oldest first

    @property
    def common_name(self) -> str:
        return self.names[0]

    @property
    def request_status(self) -> str:
        """Status of the order's request object (`requests[].status`: pending/approved/rejected)."""
        if self.status is OrderStatus.NEEDS_APPROVAL:
            return "pending"
        if self.status is OrderStatus.REJECTED:
            return "rejected"
        return "approved"

    @property
    def dns_names(self) -> tuple[str, ...]:
        return self.names

    def all_validated(self) -> bool:
        return all(s is NameStatus.APPROVED for s in self.name_status)


@dataclasses.dataclass(frozen=True, slots=True)
class StatusChange:
    order_id: int
    certificate_id: int
    status: OrderStatus
    at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class FetchRecord:
    """One real fileauth.txt fetch, for assertions: which name, through which hops, with what outcome."""

    order_id: int
    fqdn: str
    urls: tuple[str, ...]
    peers: tuple[str, ...]  # "ip:port" the resolve map picked, per connection attempt
    status: int | None  # HTTP status of the last response, None when no response
    ok: bool
    reason: str
    at: dt.datetime
    trigger: str  # "check-dcv" or "poll"


# Reference §3, current page: 100 requests / 5 s plus 1000 requests / 3 min, per API key.
DEFAULT_RATE_LIMITS: tuple[tuple[int, float], ...] = ((100, 5.0), (1000, 180.0))


@dataclasses.dataclass(frozen=True, slots=True)
class SimConfig:
    """Simulator settings. Every number the reference calls unstable is here (reference: keep them configurable).

    Attributes:
        api_keys: accepted `X-DC-DEVKEY` values.
        rate_limits: rolling windows `(max_requests, seconds)` per API key; reference §3 (100/5 s + 1000/180 s).
        random_value_ttl_s: random value lifetime; 30 days (reference §4).
        random_value_length: 32 characters from [0-9a-z] (doc examples are lower-case alphanumerics).
        max_cert_days: cap on a certificate's lifetime; 199 days since 2026-02-24 (reference §6).
        max_order_years: multi-year plans end at 3 years (reference §6).
        issuance_delay_s: simulated time between the last name passing DCV and issuance.
        require_approval: account approval step; orders without `skip_approval` start in needs_approval.
        max_redirects: redirects followed per fetch; the reference's "safe contract" is 1.
        fetch_connect_timeout_s / fetch_read_timeout_s: 2 s / 5 s, as DigiCert's DCV library [C1].
        max_body_bytes: read at most 5000 bytes of fileauth.txt [C1].
        auto_poll: run DigiCert's automatic DCV checks (1/5/15/60-minute tiers for 10 days, reference §4).
        poll_tick_s: real seconds between scans for due polls (the schedule itself runs on the simulated clock).
        hang_s: how long an injected "timeout" fault holds the request.
        extra_public_suffixes: multi-label suffixes (e.g. "co.uk") for the same-base-domain redirect rule.
        pem_crlf: send downloads with CRLF line endings.
    """

    api_keys: tuple[ApiKey, ...] = (ApiKey("sim-api-key"),)
    rate_limits: tuple[tuple[int, float], ...] = DEFAULT_RATE_LIMITS
    random_value_ttl_s: float = 30 * 86400.0
    random_value_length: int = 32
    max_cert_days: int = 199
    max_order_years: int = 3
    issuance_delay_s: float = 0.0
    require_approval: bool = False
    max_redirects: int = 1
    fetch_connect_timeout_s: float = 2.0
    fetch_read_timeout_s: float = 5.0
    max_body_bytes: int = 5000
    auto_poll: bool = True
    poll_tick_s: float = 1.0
    hang_s: float = 60.0
    extra_public_suffixes: frozenset[str] = frozenset()
    pem_crlf: bool = False
    first_order_id: int = 5100001
    first_certificate_id: int = 7700001

    def __post_init__(self) -> None:
        if not self.api_keys:
            raise ConfigError("api_keys: at least one key is required")
        for i, (limit, window) in enumerate(self.rate_limits):
            if limit < 1 or window <= 0:
                raise ConfigError(f"rate_limits[{i}]: need a positive count and window")
        for name in ("random_value_ttl_s", "fetch_connect_timeout_s", "fetch_read_timeout_s", "poll_tick_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be positive")
        if self.max_cert_days < 1:
            raise ConfigError("max_cert_days: must be positive")
        if self.max_redirects < 0:
            raise ConfigError("max_redirects: must not be negative")
        if self.issuance_delay_s < 0:
            raise ConfigError("issuance_delay_s: must not be negative")

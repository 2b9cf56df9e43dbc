"""The CA error tree. Every failure of an `Issuer` is a `CaError`.

Owns only the classes. Messages are built from HTTP statuses, CA error codes and messages, order ids and constants;
never from request headers, so an API key can never end up in one (`DigiCertIssuer` also redacts its key from any
text it copies into an error).

Each class carries a `kind`, the failover policy's coarse classification:

    CaError
    ├── CaUnavailable(retry_after_s)      "unavailable"        transport error, timeout, 5xx, 408
    │   └── CaProtocolError               "unavailable"        an answer this client cannot read
    ├── RateLimited(retry_after_s)        "rate_limited"       429 (request_limit_exceeded)
    ├── UnknownOutcome(retry_after_s)     "unavailable"        order creation may or may not have happened:
    │                                                          call `find_order` before placing another one
    ├── ValidationNotFound(order_id)      "validation_failed"  check-dcv did not find the token (yet)
    └── NoRetry                                                permanent: retrying the same request cannot help
        ├── OrderRejected                 "rejected"           the CA refused to create the order (4xx on create)
        └── CaRequestError                "rejected"           any other 4xx
            ├── CaAuthError               "rejected"           401/403: bad key or missing permission
            └── OrderNotFound             "rejected"           404 not_found|order

`UnknownOutcome` is deliberately *not* a `CaUnavailable`: code that retries on `CaUnavailable` must not re-place an
order whose creation may have succeeded. Handle `UnknownOutcome` before classifying by `kind`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal, final

__all__ = [
    "ApiErrorItem",
    "CaAuthError",
    "CaError",
    "CaProtocolError",
    "CaRequestError",
    "CaUnavailable",
    "ErrorKind",
    "NoRetry",
    "OrderNotFound",
    "OrderRejected",
    "RateLimited",
    "UnknownOutcome",
    "ValidationNotFound",
]

ErrorKind = Literal["unavailable", "rate_limited", "validation_failed", "rejected"]


@dataclasses.dataclass(frozen=True, slots=True)
class ApiErrorItem:
    """One `{"code", "message"}` entry of a CertCentral error body (reference §3)."""

    code: str
    message: str

    @property
    def base_code(self) -> str:
        """The code without its sub-part: `not_found|order` -> `not_found`, `invalid_value:days` -> `invalid_value`."""
        return self.code.split("|", 1)[0].split(":", 1)[0]


class CaError(Exception):
    """Root of the CA errors."""

    kind: ClassVar[ErrorKind] = "unavailable"


class CaUnavailable(CaError):
    """The CA could not be reached or failed on its side (transport error, timeout, 5xx); retry later."""

    kind = "unavailable"

    def __init__(self, message: str, *, retry_after_s: float | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.status = status


@final
class CaProtocolError(CaUnavailable):
    """The CA answered, but not in a shape this client understands (not JSON, a missing field, no PEM)."""


@final
class RateLimited(CaError):
    """429: the API key is over one of its rolling windows and temporarily blocked (reference §3)."""

    kind = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.status = 429


@final
class UnknownOutcome(CaError):
    """An order-creating request was (possibly) sent but no usable answer came back: the order may exist.

    Order creation is not idempotent (reference §3), so the caller must look for it (`Issuer.find_order`) before
    placing another one.
    """

    kind = "unavailable"

    def __init__(self, message: str, *, domain: str, retry_after_s: float | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.domain = domain
        self.retry_after_s = retry_after_s
        self.status = status


@final
class ValidationNotFound(CaError):
    """check-dcv: the CA did not find the random value on at least one name (reference §1 step 4).

    Means "not yet" as much as "wrong": the CA keeps polling on its own schedule (reference §4).
    """

    kind = "validation_failed"

    def __init__(self, message: str, *, order_id: str, code: str) -> None:
        super().__init__(message)
        self.order_id = order_id
        self.code = code


class NoRetry(CaError):
    """Base of the permanent errors: the same request will fail the same way (STYLE 2.2 rule 11)."""

    kind = "rejected"

    def __init__(self, message: str, *, status: int, errors: tuple[ApiErrorItem, ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.errors = errors

    @property
    def code(self) -> str:
        """The first error code, or "" when the CA sent none."""
        return self.errors[0].code if self.errors else ""


@final
class OrderRejected(NoRetry):
    """The CA refused to create the order: permanent for this name (and request) with this CA.

    Typical codes: `caa_check_failed|<domain>`, `invalid_wildcard_dcv_method`, `invalid_value:<field>`,
    `csr_invalid_cannot_parse` (reference §3).
    """


class CaRequestError(NoRetry):
    """Any other 4xx: the request was wrong for the CA (bad route, bad state, bad value)."""


@final
class CaAuthError(CaRequestError):
    """401/403: the API key is missing, unknown, or lacks the permission (reference §0, §3)."""


@final
class OrderNotFound(CaRequestError):
    """404 `not_found|order`: the CA does not know this order id (reference §1 step 5)."""

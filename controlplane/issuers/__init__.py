"""Certificate issuers: the `Issuer` seam, the CA error tree, pacing, and the DigiCert CertCentral client.

`base` holds the protocol and values, `errors` the `CaError` tree, `ratelimit` the pure token bucket and backoff,
`certcentral` the pure CertCentral wire format, and `digicert` the httpx shell (the only module here doing IO).
"""

from __future__ import annotations

from .base import FILEAUTH_PATH, Issuer, Order, OrderStatus, RevocationStatus, ValidationToken
from .digicert import DEFAULT_BASE_URL, DigiCertIssuer
from .errors import (
    ApiErrorItem,
    CaAuthError,
    CaError,
    CaProtocolError,
    CaRequestError,
    CaUnavailable,
    ErrorKind,
    NoRetry,
    OrderNotFound,
    OrderRejected,
    RateLimited,
    UnknownOutcome,
    ValidationNotFound,
)
from .ratelimit import Backoff, TokenBucket, retry_delay

__all__ = [
    "DEFAULT_BASE_URL",
    "FILEAUTH_PATH",
    "ApiErrorItem",
    "Backoff",
    "CaAuthError",
    "CaError",
    "CaProtocolError",
    "CaRequestError",
    "CaUnavailable",
    "DigiCertIssuer",
    "ErrorKind",
    "Issuer",
    "NoRetry",
    "Order",
    "OrderNotFound",
    "OrderRejected",
    "OrderStatus",
    "RateLimited",
    "RevocationStatus",
    "TokenBucket",
    "UnknownOutcome",
    "ValidationNotFound",
    "ValidationToken",
    "retry_delay",
]

"""The issuer seam: the values and the `Issuer` protocol the provisioning pipeline talks to.

Owns the contract only, no IO. `controlplane.issuers.digicert.DigiCertIssuer` implements it over the DigiCert
CertCentral Services API (reference: /work/shared/reference/digicert-certcentral.md); an ACME issuer can implement it
later (CertMagic's `Issuer` is the model: a few coarse operations, errors that say whether to retry).

Contract, for every implementation:

* Every method is a coroutine, is safe to call concurrently, and has bounded duration (timeouts, a retry deadline).
* Failures are `CaError`s (controlplane/issuers/errors.py); nothing else escapes except `CancelledError` and
  `ValueError` for arguments the caller should never have passed.
* `place_order` is the only non-idempotent operation. When its outcome is unknown it raises `UnknownOutcome`, and
  the caller must call `find_order` (with the same CSR) before placing another order for the name.
* Orders are values: every method returns a new `Order` and never mutates the one passed in.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from typing import Protocol

__all__ = [
    "FILEAUTH_PATH",
    "Issuer",
    "Order",
    "OrderStatus",
    "RevocationStatus",
    "ValidationToken",
]

#: Where file-based DCV expects the token: exact, case-sensitive, on every FQDN (reference §4).
FILEAUTH_PATH = "/.well-known/pki-validation/fileauth.txt"


class OrderStatus(enum.StrEnum):
    """An order's state, issuer-neutral. CertCentral's statuses map onto it as in `digicert.STATUS_MAP`.

    PENDING and NEEDS_APPROVAL wait (for DCV, for an account approval); PROCESSING means DCV passed and the CA is
    issuing; ISSUED means the certificate can be downloaded; the rest are terminal. UNKNOWN is a status the client
    does not know: not terminal, keep polling until the pipeline's own deadline.
    """

    NEEDS_APPROVAL = "needs_approval"
    PENDING = "pending"
    PROCESSING = "processing"
    ISSUED = "issued"
    REJECTED = "rejected"
    CANCELED = "canceled"
    REVOKED = "revoked"
    EXPIRED = "expired"
    UNKNOWN = "unknown"

    @property
    def is_terminal(self) -> bool:
        """Nothing more will happen to the order: never issued, or no longer usable (reference §2, [C2])."""
        return self in _TERMINAL

    @property
    def awaits_validation(self) -> bool:
        """The CA still needs the tokens published (and may be asked to check them)."""
        return self is OrderStatus.PENDING


_TERMINAL = frozenset({OrderStatus.REJECTED, OrderStatus.CANCELED, OrderStatus.REVOKED, OrderStatus.EXPIRED})


class RevocationStatus(enum.StrEnum):
    """What `Issuer.revoke` achieved."""

    REVOKED = "revoked"  # revoked now
    PENDING_APPROVAL = "pending_approval"  # a revoke request waits for an administrator (reference §6)


@dataclasses.dataclass(frozen=True, slots=True)
class ValidationToken:
    """Serve `value` as the body of http://`host``path` until the order is validated or `expires_at` passes.

    `expires_at` is timezone-aware UTC. After it, the value no longer validates and `Issuer.refresh_tokens` returns a
    new one that must be published instead.
    """

    host: str
    path: str
    value: str
    expires_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class Order:
    """One certificate order with one CA for one domain.

    Attributes:
        issuer: the `Issuer.name` that owns the order.
        order_id: the CA's order id, as text (persist it as soon as `place_order` returns).
        domain: the normalised FQDN the certificate is for.
        tokens: one token per name to publish; empty when not known (call `refresh_tokens`).
        status: where the order is (see `OrderStatus`).
        certificate_id: the CA's id for the order's certificate, when it has one (CertCentral allocates it at order
            creation, before issuance).
        ca_status: the CA's own status string, for logs and operators.
    """

    issuer: str
    order_id: str
    domain: str
    tokens: tuple[ValidationToken, ...]
    status: OrderStatus
    certificate_id: str | None = None
    ca_status: str | None = None


class Issuer(Protocol):
    """A CA the pipeline can get a certificate from with file-based (http-token) domain validation.

    The pipeline's flow: `place_order` (on `UnknownOutcome`: `find_order`) -> publish `order.tokens` ->
    `request_validation` (on `ValidationNotFound`: wait, republish, retry; `refresh_tokens` at expiry) ->
    `get_order` until ISSUED or terminal -> `download` -> validate the chain against the key and names itself.
    """

    name: str

    async def place_order(self, domain: str, csr_pem: str, *, validity_days: int) -> Order:
        """Create an order for `domain` with http-token DCV.

        Raises:
            UnknownOutcome: the request may have created an order; call `find_order` before placing another.
            OrderRejected: the CA refused the order (CAA, wildcard, bad value...): permanent with this CA.
            RateLimited, CaUnavailable: nothing was created; retry later.
            CaRequestError: other permanent request problems (auth, unknown product).
        """
        ...

    async def find_order(self, domain: str, *, csr_pem: str | None = None) -> Order | None:
        """The newest open (pending) order for `domain`, or None. With `csr_pem`, only an order for that CSR's key.

        Used after `UnknownOutcome` from `place_order`, instead of placing a second order.
        """
        ...

    async def get_order(self, order_id: str, domain: str, *, with_tokens: bool = True) -> Order:
        """The order's current state. With `with_tokens`, a PENDING order comes with its current tokens (which may
        cost a second request)."""
        ...

    async def refresh_tokens(self, order: Order) -> Order:
        """The order with its current tokens: the same value while valid, a new one once the old one expired."""
        ...

    async def request_validation(self, order: Order) -> Order:
        """Ask the CA to check the published tokens now.

        Returns the order with its new status (PROCESSING or ISSUED when every name passed).

        Raises:
            ValidationNotFound: the CA did not find the token on at least one name.
        """
        ...

    async def download(self, order: Order) -> str:
        """The issued certificate as a PEM chain, leaf first (not validated: the caller checks key and names)."""
        ...

    async def cancel(self, order: Order) -> None:
        """Cancel an order that will not be completed; a no-op when it is already canceled or rejected."""
        ...

    async def revoke(self, order: Order, *, reason: str = "superseded") -> RevocationStatus:
        """Revoke the order's certificate(s)."""
        ...

"""The store's records: frozen values returned by `Store` methods. No IO, no behaviour beyond small properties.

The sync protocol's own values (`Token`, `CertRef`, `Change`) come from `controlplane.sync.state` so the sync API can
serve the store directly; the records here are the control plane's internal ones.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Mapping
from typing import Any, Final, Literal, final

__all__ = ["UNSET", "Backend", "BootstrapToken", "CertIdentity", "CertRegistration", "CertificateRecord",
           "CredentialKind", "Domain", "DomainPage", "Identity", "IdentityCert", "IdentityKind", "Node", "Unset"]


@final
class Unset(enum.Enum):
    """The type of `UNSET`: "leave this field as it is" in `Store.update_domain` (None means SQL NULL there)."""

    UNSET = "UNSET"


UNSET: Final = Unset.UNSET


@dataclasses.dataclass(frozen=True, slots=True)
class Domain:
    """One customer domain and its pipeline state.

    Attributes:
        name: normalised (lower case, A-labels, no trailing dot); the primary key.
        status: the pipeline's status string (the store does not interpret it).
        status_detail: why the domain is in that status (last error, what it waits for), or None.
        issuer: the issuer in use ("digicert", "acme", ...), or None before one is chosen.
        next_retry_at: when the pipeline should look at the domain again, or None.
        ca_order_id: the order id at the CA, written as soon as the CA answers so a restarted control plane never
            places a second order.
        pipeline: free-form JSON state of the pipeline (a copy; changing it changes nothing stored).
        version: bumped by every update; pass it back as `expect_version` for a compare-and-set.
    """

    name: str
    status: str
    status_detail: str | None
    issuer: str | None
    next_retry_at: dt.datetime | None
    ca_order_id: str | None
    pipeline: Mapping[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime
    version: int


@dataclasses.dataclass(frozen=True, slots=True)
class DomainPage:
    """One page of `Store.list_domains`; pass `next_after` as `after` for the next page (None: this was the last)."""

    domains: list[Domain]
    next_after: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class CertificateRecord:
    """A certificate as stored, without its private key (which only `Store.material` decrypts).

    `current` is True for the one certificate per domain the agents serve; older ones stay for audit with
    `replaced_at` set (also set, with no successor, when the certificate was withdrawn).
    """

    id: int
    domain: str
    fingerprint: str
    not_before: dt.datetime
    not_after: dt.datetime
    names: tuple[str, ...]
    issuer: str
    created_at: dt.datetime
    current: bool
    replaced_at: dt.datetime | None
    chain_pem: str = dataclasses.field(repr=False)
    kek_id: str


CredentialKind = Literal["bearer", "client_cert", "pki"]
IdentityKind = Literal["node", "backend"]


@dataclasses.dataclass(frozen=True, slots=True)
class Node:
    """An edge node allowed to sync. `credential` is "sha256:<hex>" of its bearer token ("bearer"), a pinned client
    certificate's fingerprint ("client_cert"), or None ("pki": it authenticates only with certificates of the internal
    PKI, see `IdentityCert`); the token itself is never stored. A removed node is kept so the sync API can answer 403,
    not 401."""

    node_id: str
    credential_kind: CredentialKind
    credential: str | None
    removed: bool
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class Backend:
    """A backend server that gets its server certificate from the internal PKI, for `names` (DNS names or IPs)."""

    backend_id: str
    names: tuple[str, ...]
    removed: bool
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """Who an internal certificate is for: a node or a backend (with the names its server certificate carries)."""

    kind: IdentityKind
    id: str
    names: tuple[str, ...]
    removed: bool


@dataclasses.dataclass(frozen=True, slots=True)
class BootstrapToken:
    """A one-time enrollment token, as stored: only its hash is kept (`token_hash`, "sha256:<hex>")."""

    token_hash: str
    kind: IdentityKind
    identity_id: str
    expires_at: dt.datetime
    created_at: dt.datetime
    used_at: dt.datetime | None


@dataclasses.dataclass(frozen=True, slots=True)
class CertRegistration:
    """What the registry records of a certificate the internal CA issued (the PEM is public)."""

    fingerprint: str
    profile: str  # controlplane.pki.Profile value
    serial: str
    not_after: dt.datetime
    pem: str = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class IdentityCert:
    """One registered certificate of an identity. Several can be valid at once: a renewed certificate registers its
    fingerprint and the previous one keeps working until its `not_after`, so a rotation has no gap. Removal of the
    identity sets `revoked_at` on all of them."""

    fingerprint: str
    kind: IdentityKind
    identity_id: str
    profile: str
    serial: str
    not_after: dt.datetime
    created_at: dt.datetime
    revoked_at: dt.datetime | None


@dataclasses.dataclass(frozen=True, slots=True)
class CertIdentity:
    """The answer to "whose certificate is this?": the identity and the registration that matched."""

    identity: Identity
    cert: IdentityCert

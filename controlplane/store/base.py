"""The `Store` protocol: everything the control plane persists, behind one async interface.

Owns the contract only; `controlplane.store.sql.SqlStore` implements it over SQLite or PostgreSQL
(`open_store` picks by URL). Contract, for every implementation:

* Every method is a coroutine and never blocks the event loop (database calls run in worker threads).
* Every method is one database transaction. Writers of the desired state (tokens and certificates) append to the
  change log in that same transaction: each change gets the next revision, revisions have no gaps and no duplicates,
  and a reader never sees revision N+1 committed before N (writers of the desired state are serialised on the
  revision counter).
* `snapshot()` and `changes_since()` each read one consistent state.
* Datetimes in and out are timezone-aware (UTC out); a naive datetime is refused with `InvalidRecord`.
* Private keys are stored only sealed (controlplane/store/crypto.py); `material` is the only way to read one back.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol, Self

from controlplane.sync.state import CertRef, Change, Token

from .crypto import KeyEncryptionKey
from .records import (
    UNSET,
    Backend,
    BootstrapToken,
    CertificateRecord,
    CertIdentity,
    CertRegistration,
    Domain,
    DomainPage,
    Identity,
    IdentityCert,
    IdentityKind,
    Node,
    Unset,
)

__all__ = ["Store"]


class Store(Protocol):
    """The control plane's persistent state: domains, certificates (keys sealed), tokens, nodes, and the change log
    the sync protocol serves (docs/sync-protocol.md)."""

    @property
    def backend(self) -> str:
        """"sqlite" or "postgresql"."""
        ...

    @property
    def kek_id(self) -> str:
        """The id of the KEK new private keys are sealed under."""
        ...

    async def aclose(self) -> None: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None: ...

    # -- domains
    async def create_domain(self, name: str, *, status: str, status_detail: str | None = None,
                            issuer: str | None = None, next_retry_at: dt.datetime | None = None,
                            ca_order_id: str | None = None, pipeline: Mapping[str, Any] | None = None) -> Domain:
        """Raises: AlreadyExists; InvalidRecord (name not in normalised form, naive datetime, pipeline not JSON)."""
        ...

    async def get_domain(self, name: str) -> Domain | None: ...

    async def update_domain(self, name: str, *, expect_version: int | None = None,
                            status: str | Unset = UNSET, status_detail: str | None | Unset = UNSET,
                            issuer: str | None | Unset = UNSET, next_retry_at: dt.datetime | None | Unset = UNSET,
                            ca_order_id: str | None | Unset = UNSET,
                            pipeline: Mapping[str, Any] | Unset = UNSET) -> Domain:
        """Change the given fields (UNSET leaves a field alone, None clears it) and bump `version`.

        Args:
            expect_version: compare-and-set: fail unless the stored version is this one. Use it whenever the new
                value depends on what was read (e.g. set `ca_order_id` only if no other process placed an order).

        Raises: NotFound; Conflict (stale `expect_version`); InvalidRecord.
        """
        ...

    async def delete_domain(self, name: str) -> int:
        """Delete the domain, withdraw its current certificate and its tokens from the desired state (old
        certificates stay for audit). Returns the revision after the change. Raises: NotFound."""
        ...

    async def list_domains(self, *, status: str | Sequence[str] | None = None, prefix: str | None = None,
                           after: str | None = None, limit: int = 100) -> DomainPage:
        """Domains by name (byte order), filtered by status(es) and name prefix; keyset paging with `after`."""
        ...

    async def due_domains(self, now: dt.datetime, *, limit: int = 100) -> list[Domain]:
        """Domains whose `next_retry_at` is at or before `now`, earliest first."""
        ...

    async def count_names_under(self, apex: str) -> int:
        """Domains equal to `apex` or below it (the per-registered-domain quota)."""
        ...

    async def count_domains(self) -> dict[str, int]:
        """Number of domains per status."""
        ...

    # -- certificates
    async def put_certificate(self, domain: str, *, chain_pem: str, key_pem: str | bytes,
                              issuer: str) -> CertificateRecord:
        """Store a certificate (key sealed) and make it the domain's current one; the previous one is kept for
        audit. Putting the current certificate again changes nothing. Appends a `put` change.

        Raises: NotFound (no such domain); InvalidRecord (unreadable PEM, key not the leaf's);
            WrongKeyEncryptionKey (the store's KEK was rotated by another process since this one opened).
        """
        ...

    async def delete_certificate(self, domain: str) -> int:
        """Withdraw the domain's current certificate from the desired state (the record stays for audit). Returns
        the revision after the change; a domain with no current certificate changes nothing."""
        ...

    async def current_certificate(self, domain: str) -> CertificateRecord | None: ...

    async def certificate_history(self, domain: str) -> list[CertificateRecord]:
        """Every certificate stored for `domain`, newest first."""
        ...

    async def expiring_certificates(self, before: dt.datetime, *, limit: int = 100) -> list[CertificateRecord]:
        """Current certificates with `not_after` before `before`, soonest first (the renewal scan)."""
        ...

    # -- sealed per-domain secrets
    async def put_domain_secret(self, domain: str, purpose: str, plaintext: bytes) -> None:
        """Seal and store (or replace) a secret of the domain, e.g. purpose "pending-key": the private key of a CSR
        whose order is in flight. Sealed like certificate keys (bound to domain + purpose) and re-wrapped by
        `rotate_kek`; deleted with the domain. Keep secrets here, not in `pipeline` JSON, which is plaintext.

        Raises: NotFound (no such domain); InvalidRecord (purpose not [a-z0-9_.-]{1,64}); WrongKeyEncryptionKey.
        """
        ...

    async def put_system_secret(self, name: str, plaintext: bytes) -> None:
        """Seal and store a secret of the control plane itself (an ACME account key); rotation covers it."""
        ...

    async def get_system_secret(self, name: str) -> bytes | None: ...

    async def get_domain_secret(self, domain: str, purpose: str) -> bytes | None:
        """The plaintext, or None. Raises: WrongKeyEncryptionKey, DecryptionFailed."""
        ...

    async def delete_domain_secret(self, domain: str, purpose: str) -> bool:
        """True if there was one."""
        ...

    # -- validation tokens
    async def put_token(self, token: Token) -> int:
        """Create or replace the token at (host, path). Returns the revision after the change (unchanged when the
        token was already exactly this)."""
        ...

    async def put_tokens(self, tokens: Iterable[Token]) -> int:
        """`put_token` for many, in one transaction."""
        ...

    async def delete_token(self, host: str, path: str) -> int: ...

    async def purge_expired_tokens(self, now: dt.datetime) -> int:
        """Delete tokens with `expires_at` at or before `now`. Returns the revision after the change."""
        ...

    # -- nodes
    async def add_node(self, node_id: str, *, bearer_token: str | None = None,
                       client_cert_fingerprint: str | None = None, pki: bool = False) -> Node:
        """Register a node with exactly one credential: a bearer token (stored only as its hash), a pinned client
        certificate fingerprint, or `pki` (none of its own: it enrolls with a bootstrap token and authenticates with
        internal certificates, see `redeem_bootstrap_token`).

        Raises: AlreadyExists (node id or credential taken); InvalidRecord.
        """
        ...

    async def get_node(self, node_id: str) -> Node | None: ...
    async def node_for_bearer_token(self, token: str) -> Node | None: ...
    async def node_for_client_cert(self, fingerprint: str) -> Node | None: ...

    async def remove_node(self, node_id: str) -> Node:
        """Mark the node removed (kept so the sync API answers 403, not 401), revoke its registered internal
        certificates and delete its unused bootstrap tokens, in one transaction. Raises: NotFound."""
        ...

    async def list_nodes(self) -> list[Node]: ...

    # -- the internal PKI (controlplane/pki.py signs; the store keeps the CA, tokens and the certificate registry)
    async def ensure_internal_ca(self, create: Callable[[], tuple[str, bytes]]) -> tuple[str, bytes]:
        """(certificate PEM, key PEM) of the current internal CA. On a store without one, `create()` makes it and it
        is stored: the certificate in the clear, the key sealed as the system secret "internal-ca-key:<fingerprint>"
        (rotated with the KEK). Several processes racing here end up with one CA (the others' `create()` results are
        discarded). `create` runs in the store's worker thread, inside the transaction: keep it quick and pure.

        Raises: WrongKeyEncryptionKey, DecryptionFailed.
        """
        ...

    async def internal_ca_certificates(self) -> list[str]:
        """PEMs of every internal CA certificate, the signing one first (what /v1/pki/ca.pem serves)."""
        ...

    async def add_backend(self, backend_id: str, names: Sequence[str]) -> Backend:
        """Register a backend that gets server certificates for `names`. Raises: AlreadyExists; InvalidRecord."""
        ...

    async def get_backend(self, backend_id: str) -> Backend | None: ...
    async def list_backends(self) -> list[Backend]: ...

    async def remove_backend(self, backend_id: str) -> Backend:
        """As `remove_node`, for a backend. Raises: NotFound."""
        ...

    async def add_bootstrap_token(self, token: str, *, kind: IdentityKind, identity_id: str,
                                  expires_at: dt.datetime) -> BootstrapToken:
        """Store a one-time enrollment token for an existing node or backend (only its SHA-256 is kept).

        Raises: NotFound (no such identity); IdentityRemoved; AlreadyExists (this token was stored before, used or
            not: adding it again never revives it); InvalidRecord (shorter than 16 characters).
        """
        ...

    async def bootstrap_tokens(self, kind: IdentityKind, identity_id: str) -> list[BootstrapToken]: ...

    async def redeem_bootstrap_token(self, token: str, *, now: dt.datetime, key_id: str,
                                     issue: Callable[[Identity], CertRegistration]
                                     ) -> tuple[Identity, CertRegistration]:
        """Consume the token and register the certificate `issue(identity)` signs, in one transaction: of two
        concurrent redemptions one wins, and a failure anywhere leaves the token unused and nothing registered.

        Args:
            key_id: identifies the requester's key (SHA-256 of its SubjectPublicKeyInfo). A used token redeemed again
                with the same key returns the certificate it got (the first answer was lost), while it is valid.
            issue: signs the certificate; runs in the store's worker thread inside the transaction, only once the
                token is known good.

        Raises: TokenRejected ("unknown_token", "token_used", "token_expired"); IdentityRemoved.
        """
        ...

    async def register_identity_cert(self, kind: IdentityKind, identity_id: str, registration: CertRegistration,
                                     *, now: dt.datetime) -> None:
        """Register a renewed (or an edge-client) certificate; earlier ones stay valid until their `not_after`.
        Registrations expired for more than a week are deleted. Raises: NotFound; IdentityRemoved."""
        ...

    async def identity_for_client_cert(self, fingerprint: str, *, now: dt.datetime) -> CertIdentity | None:
        """Whose registered certificate this is, unless it has expired at `now` (a revoked one is returned, with
        `revoked_at` set: the caller answers 403, not 401)."""
        ...

    async def identity_certificates(self, kind: IdentityKind, identity_id: str) -> list[IdentityCert]:
        """An identity's registered certificates, latest expiry first."""
        ...

    # -- the sync protocol
    async def revision(self) -> int: ...

    async def snapshot(self) -> tuple[int, list[Token], list[CertRef]]:
        """The whole desired state at one revision, tokens by key and certificates by name."""
        ...

    async def changes_since(self, since: int, *, limit: int | None = None) -> list[Change]:
        """Changes with revision > `since`, oldest first (at most `limit`).

        Raises:
            ResyncRequired: `since` is newer than the current revision, or older than the retained history.
        """
        ...

    async def wait_for_change(self, since: int, timeout_s: float) -> None:
        """Return when the revision differs from `since`, or after `timeout_s`."""
        ...

    async def material(self, name: str) -> tuple[str, str] | None:
        """(fingerprint, leaf + chain + PKCS#8 key PEM) of the current certificate, or None.

        Raises: WrongKeyEncryptionKey, DecryptionFailed.
        """
        ...

    async def material_many(self, names: Iterable[str]) -> dict[str, tuple[str, str]]:
        """`material` for many names in one transaction; names without a current certificate are left out."""
        ...

    # -- keys
    async def rotate_kek(self, new_kek: KeyEncryptionKey) -> int:
        """Re-wrap every data key (current and audit certificates, domain secrets, the check value) under
        `new_kek`, in one transaction; from then on this store seals under `new_kek`. Returns the number of
        certificate keys and domain secrets re-wrapped."""
        ...

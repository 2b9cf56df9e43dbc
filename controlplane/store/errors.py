"""The store's error tree. Every failure of `controlplane.store` is a `StoreError`.

Owns only the classes. No class here ever holds or prints key material: messages are built from record names,
fingerprints, key ids (a key id is public: it names a KEK, it does not reveal it) and constants. The database URL is
never part of a message either (a PostgreSQL URL may carry a password).

    StoreError
    ├── StoreUnavailable                 the database cannot be reached or refused the operation (IO boundary)
    ├── InvalidStoreUrl (ValueError)     a store URL with an unknown scheme or no path
    ├── SchemaError                      the database's schema is newer than this code, or not ours
    ├── InvalidRecord (ValueError)       a value the store will not write (bad name, naive datetime, bad PEM)
    ├── NotFound(kind, key)              the record does not exist
    ├── Conflict(kind, key, detail)      a concurrent change won (stale `expect_version`)
    │   └── AlreadyExists                the record exists already
    ├── TokenRejected(reason)            a bootstrap token that is unknown, used or expired (nothing issued)
    ├── IdentityRemoved(kind, id)        the node or backend was removed: no certificate for it any more
    └── CryptoError                      envelope encryption
        ├── InvalidKeyEncryptionKey (ValueError)   a KEK value or file that is not 32 bytes of base64
        ├── WrongKeyEncryptionKey(expected_kek_id, given_kek_id)   encrypted under another KEK
        └── DecryptionFailed(record)     a sealed value does not authenticate for its record (tampering, swapped rows)
"""

from __future__ import annotations

from typing import final

__all__ = [
    "AlreadyExists",
    "Conflict",
    "CryptoError",
    "DecryptionFailed",
    "IdentityRemoved",
    "InvalidKeyEncryptionKey",
    "InvalidRecord",
    "InvalidStoreUrl",
    "NotFound",
    "SchemaError",
    "StoreError",
    "StoreUnavailable",
    "TokenRejected",
    "WrongKeyEncryptionKey",
]


class StoreError(Exception):
    """Root of the store's errors."""


@final
class StoreUnavailable(StoreError):
    """The database could not be reached, or refused the operation (locked, disk full, connection lost)."""


@final
class InvalidStoreUrl(StoreError, ValueError):
    """A store URL this code cannot open: `sqlite:///path/to/file.db` or `postgresql://...` only."""


@final
class SchemaError(StoreError):
    """The database's schema cannot be used by this code (written by a newer version, or by someone else)."""


@final
class InvalidRecord(StoreError, ValueError):
    """A value the store refuses to write; nothing was written."""


class NotFound(StoreError):
    """The record does not exist."""

    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"{kind} {key!r} not found")
        self.kind = kind
        self.key = key


class Conflict(StoreError):
    """A concurrent writer changed the record first (or it is in a state the operation does not allow)."""

    def __init__(self, kind: str, key: str, detail: str) -> None:
        super().__init__(f"{kind} {key!r}: {detail}")
        self.kind = kind
        self.key = key
        self.detail = detail


@final
class AlreadyExists(Conflict):
    """The record exists already."""

    def __init__(self, kind: str, key: str) -> None:
        super().__init__(kind, key, "already exists")


@final
class TokenRejected(StoreError):
    """A bootstrap token that cannot be redeemed; nothing was issued or changed.

    `reason` is the wire code: "unknown_token" (never issued, or its identity was removed), "token_used",
    "token_expired". The message never contains the token.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@final
class IdentityRemoved(StoreError):
    """The node or backend was removed by an operator: its certificates are refused, no new one is issued."""

    def __init__(self, kind: str, identity_id: str) -> None:
        super().__init__(f"{kind} {identity_id!r} was removed")
        self.kind = kind
        self.identity_id = identity_id


class CryptoError(StoreError):
    """Root of the envelope-encryption errors."""


@final
class InvalidKeyEncryptionKey(CryptoError, ValueError):
    """A KEK value or file that is not 32 random bytes in base64. The value itself is never shown."""


@final
class WrongKeyEncryptionKey(CryptoError):
    """The database (or one record) was encrypted under a KEK other than the one given.

    Raised at open time by the KEK check value, so a misconfigured control plane stops at start-up instead of
    failing on its first certificate.
    """

    def __init__(self, expected_kek_id: str, given_kek_id: str, detail: str = "") -> None:
        msg = f"wrong key-encryption key: the data is encrypted under KEK {expected_kek_id!r}, given {given_kek_id!r}"
        super().__init__(f"{msg} ({detail})" if detail else msg)
        self.expected_kek_id = expected_kek_id
        self.given_kek_id = given_kek_id


@final
class DecryptionFailed(CryptoError):
    """A sealed value did not authenticate for its record: tampered with, or moved from another row."""

    def __init__(self, record: str) -> None:
        super().__init__(f"cannot decrypt {record}: the ciphertext does not authenticate for this record")
        self.record = record

"""The control plane's store ("internal KMS"): domains, certificates with envelope-encrypted private keys,
validation tokens, nodes, and the change log behind the sync protocol. SQLite (default) or PostgreSQL.

    store = await open_store("sqlite:///var/lib/lockstep/store.db", kek=load_kek(kek_text))
    async with store:
        await store.create_domain("shop.example.test", status="pending")
"""

from .base import Store
from .connect import open_store, rotate_key
from .crypto import KeyEncryptionKey, generate_kek, load_kek, load_kek_file
from .errors import (
    AlreadyExists,
    Conflict,
    CryptoError,
    DecryptionFailed,
    IdentityRemoved,
    InvalidKeyEncryptionKey,
    InvalidRecord,
    InvalidStoreUrl,
    NotFound,
    SchemaError,
    StoreError,
    StoreUnavailable,
    TokenRejected,
    WrongKeyEncryptionKey,
)
from .records import (
    UNSET,
    Backend,
    BootstrapToken,
    CertIdentity,
    CertificateRecord,
    CertRegistration,
    Domain,
    DomainPage,
    Identity,
    IdentityCert,
    Node,
    Unset,
)
from .sql import SCHEMA_VERSION, SqlStore, hash_bearer_token
from .sync_backend import StoreSyncBackend

__all__ = [
    "SCHEMA_VERSION",
    "UNSET",
    "AlreadyExists",
    "Backend",
    "BootstrapToken",
    "CertIdentity",
    "CertRegistration",
    "CertificateRecord",
    "Conflict",
    "CryptoError",
    "DecryptionFailed",
    "Domain",
    "DomainPage",
    "Identity",
    "IdentityCert",
    "IdentityRemoved",
    "InvalidKeyEncryptionKey",
    "InvalidRecord",
    "InvalidStoreUrl",
    "KeyEncryptionKey",
    "Node",
    "NotFound",
    "SchemaError",
    "SqlStore",
    "Store",
    "StoreError",
    "StoreSyncBackend",
    "StoreUnavailable",
    "TokenRejected",
    "Unset",
    "WrongKeyEncryptionKey",
    "generate_kek",
    "hash_bearer_token",
    "load_kek",
    "load_kek_file",
    "open_store",
    "rotate_key",
]

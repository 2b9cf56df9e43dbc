"""HAProxy runtime API for certificates: pure command builders, pure reply parsers, and an async client.

`commands` builds and checks requests, `responses` classifies replies, `client.RuntimeClient` does the IO, and
`errors` holds the `RuntimeApiError` tree. This package imports nothing else of ours.
"""

from .client import ClientSettings, ClientStats, ConnectionMode, RuntimeClient
from .commands import Upload
from .errors import (
    AlreadyExists,
    BadArgument,
    CommandFailed,
    InUse,
    InvalidCertificate,
    Locked,
    NotFound,
    NoTransaction,
    PayloadTooLarge,
    PermissionDenied,
    RequestTooBig,
    RuntimeApiError,
    RuntimeTimeout,
    RuntimeUnavailable,
    TransactionConflict,
    UnknownCommand,
)
from .responses import CertDetails, CertList, CrtList, CrtListEntry, Info

__all__ = [
    "AlreadyExists",
    "BadArgument",
    "CertDetails",
    "CertList",
    "ClientSettings",
    "ClientStats",
    "CommandFailed",
    "ConnectionMode",
    "CrtList",
    "CrtListEntry",
    "InUse",
    "Info",
    "InvalidCertificate",
    "Locked",
    "NoTransaction",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "RequestTooBig",
    "RuntimeApiError",
    "RuntimeClient",
    "RuntimeTimeout",
    "RuntimeUnavailable",
    "TransactionConflict",
    "UnknownCommand",
    "Upload",
]

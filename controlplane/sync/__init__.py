"""The control plane's half of the sync protocol (docs/sync-protocol.md)."""

from .api import SYNC_BACKEND, BearerAuthenticator, add_sync_routes
from .state import CertRef, Change, DesiredState, MemorySyncBackend, ResyncRequired, Token

__all__ = [
    "SYNC_BACKEND",
    "BearerAuthenticator",
    "CertRef",
    "Change",
    "DesiredState",
    "MemorySyncBackend",
    "ResyncRequired",
    "Token",
    "add_sync_routes",
]

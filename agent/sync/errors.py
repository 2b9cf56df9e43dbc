"""The sync error tree. Every failure talking to the control plane is one of these."""

from __future__ import annotations

__all__ = ["SyncError", "ControlPlaneUnavailable", "ProtocolViolation", "ResyncRequired", "Unauthorized", "NotFound",
           "FingerprintNotCurrent"]


class SyncError(Exception):
    """Root of the agent's sync errors."""


class ControlPlaneUnavailable(SyncError):
    """Transport error, timeout or 5xx: keep serving what we have and retry on the backoff schedule."""


class ProtocolViolation(SyncError):
    """The control plane answered something docs/sync-protocol.md does not allow."""


class ResyncRequired(SyncError):
    """410: our revision is outside the server's history; take a snapshot."""


class Unauthorized(SyncError):
    """401/403: our credential is missing, wrong, or the node was removed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class NotFound(SyncError):
    """404 on material: the certificate left our scope."""


class FingerprintNotCurrent(SyncError):
    """409 on material: a newer certificate replaced the one we asked for."""

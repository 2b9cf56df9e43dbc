"""The runtime-API error tree. Every failure of `agent.runtime` is a `RuntimeApiError`.

Owns only the classes. Which HAProxy reply maps to which class is decided in `responses.py`; which local check
raises `BadArgument` is decided in `commands.py`. No class here ever holds a PEM payload: `command` is the command
line alone (for `set ssl cert X <<` the payload is left out), because payloads carry private keys.

    RuntimeApiError(command, response)
    ├── BadArgument                 refused by our builder before anything was sent
    │   └── PayloadTooLarge         the request would not fit HAProxy's buffer (tune.bufsize)
    ├── RuntimeUnavailable          connect/read/write failed, or the peer closed early (retryable)
    │   └── RuntimeTimeout          no complete reply within the call's timeout (retryable)
    └── CommandFailed               HAProxy answered, but not with the success marker we require
        ├── Locked                  "Operations on certificates are currently locked!" (retryable)
        ├── TransactionConflict     another certificate's transaction is open (carries its name)
        ├── NotFound                no such certificate / crt-list / crt-list entry
        ├── AlreadyExists           `new ssl cert` on an existing store, or the entry is already listed
        ├── InUse                   `del ssl cert` while a crt-list still references the certificate
        ├── NoTransaction           commit/abort without an open transaction
        ├── InvalidCertificate      payload not loadable, key missing, or key and certificate do not match
        ├── PermissionDenied        the socket's level is below `admin`
        ├── RequestTooBig           HAProxy's own "command is too big for the buffer size"
        └── UnknownCommand          this HAProxy does not know the command
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "RuntimeApiError",
    "BadArgument",
    "PayloadTooLarge",
    "RuntimeUnavailable",
    "RuntimeTimeout",
    "CommandFailed",
    "Locked",
    "TransactionConflict",
    "NotFound",
    "AlreadyExists",
    "InUse",
    "NoTransaction",
    "InvalidCertificate",
    "PermissionDenied",
    "RequestTooBig",
    "UnknownCommand",
]

_MAX_SHOWN = 300  # characters of a reply quoted in str(); the full reply stays in `.response`


class RuntimeApiError(Exception):
    """Root of the runtime-API errors.

    Attributes:
        command: the command line concerned (never its payload); "" when no command applies.
        response: HAProxy's reply text, "" when nothing (or nothing usable) came back.
    """

    retryable: ClassVar[bool] = False

    def __init__(self, command: str, response: str = "", *, detail: str = "") -> None:
        self.command = command
        self.response = response
        self.detail = detail
        super().__init__(command, response)

    def __str__(self) -> str:
        parts = []
        if self.command:
            parts.append(f"{self.command!r}")
        if self.detail:
            parts.append(self.detail)
        shown = self.response.strip()
        if shown:
            parts.append(f"HAProxy said {shown[:_MAX_SHOWN]!r}{'…' if len(shown) > _MAX_SHOWN else ''}")
        return ": ".join(parts) or type(self).__name__


class BadArgument(RuntimeApiError):
    """Our command builder refused an argument (name, list, payload); nothing was sent to HAProxy."""


class PayloadTooLarge(BadArgument):
    """The request (command line + payload) would not fit in HAProxy's CLI buffer; nothing was sent.

    Attributes:
        size: bytes the request would take.
        limit: the largest request we send (tune.bufsize minus our safety margin).
    """

    def __init__(self, command: str, *, size: int, limit: int, detail: str = "") -> None:
        super().__init__(command, "", detail=detail or f"request of {size} bytes exceeds the {limit}-byte limit")
        self.size = size
        self.limit = limit


class RuntimeUnavailable(RuntimeApiError):
    """The socket could not be reached, or it failed or closed before a complete reply arrived."""

    retryable = True


class RuntimeTimeout(RuntimeUnavailable):
    """No complete reply within the call's timeout; the command may or may not have run."""


class CommandFailed(RuntimeApiError):
    """HAProxy answered without the explicit success marker of the command (the reply is in `response`)."""


class Locked(CommandFailed):
    """Another CLI session holds the certificate lock (CKCH_LOCK is taken with a trylock); retry after a pause."""

    retryable = True


class TransactionConflict(CommandFailed):
    """A transaction on another certificate is open: HAProxy keeps a single, process-wide one.

    Attributes:
        open_name: the certificate whose transaction is open, when the reply names it.
    """

    retryable = True

    def __init__(self, command: str, response: str = "", *, open_name: str | None = None, detail: str = "") -> None:
        super().__init__(command, response, detail=detail)
        self.open_name = open_name


class NotFound(CommandFailed):
    """The certificate, crt-list or crt-list entry does not exist."""


class AlreadyExists(CommandFailed):
    """The certificate store already exists, or the certificate is already in the crt-list."""


class InUse(CommandFailed):
    """`del ssl cert` refused: a crt-list still references the certificate."""


class NoTransaction(CommandFailed):
    """commit/abort found no open transaction."""


class InvalidCertificate(CommandFailed):
    """HAProxy refused the PEM: unreadable, no private key, or a key that does not match the certificate."""


class PermissionDenied(CommandFailed):
    """The CLI session is below `level admin`."""


class RequestTooBig(CommandFailed):
    """HAProxy itself refused the request as larger than tune.bufsize (our own check should have caught it)."""


class UnknownCommand(CommandFailed):
    """HAProxy does not know the command (older version, or a typo)."""

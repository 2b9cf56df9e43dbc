"""Validation tokens: host normalisation, the token store, and the exact (host, path) lookup.

Pure: no IO, no clock (callers pass `now`). The SPOE handler in agent/validation.py is the only reader on the hot
path; the sync loop is the only writer.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
from collections.abc import Iterable

import idna

__all__ = [
    "ACME_PREFIX",
    "PKI_VALIDATION_PREFIX",
    "MAX_HOST_LENGTH",
    "MAX_PATH_LENGTH",
    "InvalidHost",
    "Token",
    "TokenStore",
    "normalize_host",
]

PKI_VALIDATION_PREFIX = "/.well-known/pki-validation/"
ACME_PREFIX = "/.well-known/acme-challenge/"
MAX_HOST_LENGTH = 253  # RFC 1035 presentation form without the trailing dot
MAX_PATH_LENGTH = 1024  # far above any CA's token path; bounds what we hash
MAX_RAW_HOST_LENGTH = 1024  # before normalisation (port, trailing dot, U-labels are longer than the result)


class InvalidHost(ValueError):
    """The Host header is not a domain name we could hold a token for."""


def normalize_host(raw: str) -> str:
    """The canonical form tokens are stored under: lower case, no port, no trailing dot, IDN as punycode.

    Raises:
        InvalidHost: empty, too long, an IP literal, or not a valid (IDNA 2008 / UTS 46) domain name.
    """
    if not raw or len(raw) > MAX_RAW_HOST_LENGTH:
        raise InvalidHost("empty or oversized host")
    host = raw.strip()
    if host.startswith("["):  # IPv6 literal, with or without a port: never a token host
        raise InvalidHost("IP literal")
    name, sep, port = host.rpartition(":")
    if sep:
        if not port.isdigit() or len(port) > 5:
            raise InvalidHost("bad port")
        host = name
    if host.endswith("."):
        host = host[:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        raise InvalidHost("IP literal")
    try:
        if host.isascii():
            # Fast path for the common case; still validated (labels, hyphens, length) by idna below for A-labels.
            lowered = host.lower()
            if lowered.startswith("xn--") or ".xn--" in lowered:
                lowered = idna.encode(lowered, uts46=True).decode("ascii")
            else:
                _check_ldh(lowered)
            result = lowered
        else:
            result = idna.encode(host, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise InvalidHost(f"not a domain name: {exc}") from None
    if not result or len(result) > MAX_HOST_LENGTH:
        raise InvalidHost("empty or oversized host")
    return result


def _check_ldh(host: str) -> None:
    """Letters, digits, hyphens; 1-63 octets per label; no leading or trailing hyphen (RFC 1123)."""
    for label in host.split("."):
        if not 0 < len(label) <= 63 or label[0] == "-" or label[-1] == "-":
            raise InvalidHost("bad label length or hyphen")
        if not all(c.isalnum() or c == "-" for c in label):
            raise InvalidHost("invalid character")


def is_validation_path(path: str) -> bool:
    return len(path) <= MAX_PATH_LENGTH and (path.startswith(PKI_VALIDATION_PREFIX) or path.startswith(ACME_PREFIX))


@dataclasses.dataclass(frozen=True, slots=True)
class Token:
    """A value served at exactly http://<host><path> until `expires_at`."""

    host: str
    path: str
    value: str
    expires_at: dt.datetime

    @property
    def key(self) -> str:
        return self.host + self.path


class TokenStore:
    """Current tokens keyed by (normalised host, exact path).

    Lookups never transform the path: "..", "%2F" or a trailing "/" simply do not match a stored token, so a
    request can only ever get the token published for its own path.
    """

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str], Token] = {}

    def __len__(self) -> int:
        return len(self._tokens)

    def put(self, token: Token) -> None:
        self._tokens[(token.host, token.path)] = token

    def delete(self, host: str, path: str) -> None:
        self._tokens.pop((host, path), None)

    def replace(self, tokens: Iterable[Token]) -> None:
        self._tokens = {(t.host, t.path): t for t in tokens}

    def all(self) -> list[Token]:
        return list(self._tokens.values())

    def lookup(self, raw_host: str, path: str, *, now: dt.datetime) -> str | None:
        """The token value for this request, or None (unknown host or path, expired, or invalid input)."""
        # Fast path: a CA sends the stored (normalised) host, maybe in another case. Only keys that passed
        # validation are stored, so an exact hit on an ASCII host needs no further checks.
        token = self._tokens.get((raw_host.lower(), path)) if raw_host.isascii() else None
        if token is None:
            if not is_validation_path(path):
                return None
            try:
                host = normalize_host(raw_host)
            except InvalidHost:
                return None
            token = self._tokens.get((host, path))
        if token is None or token.expires_at <= now:
            return None
        return token.value

    def prune(self, *, now: dt.datetime) -> int:
        """Drops expired tokens; returns how many."""
        expired = [k for k, t in self._tokens.items() if t.expires_at <= now]
        for k in expired:
            del self._tokens[k]
        return len(expired)

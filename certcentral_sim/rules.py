"""Pure DCV rules: name checks, random values, the fileauth.txt matching and redirect rules, the poll schedule.

No IO, no clock, no globals: callers pass in times, bytes and a `random.Random`. Each rule cites the reference
section (/work/shared/reference/digicert-certcentral.md) it implements.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import random
import string
from collections.abc import Collection
from urllib.parse import urljoin, urlsplit

__all__ = [
    "FILEAUTH_PATH",
    "POLL_TIERS",
    "REDIRECT_STATUSES",
    "FetchFailure",
    "Redirect",
    "base_domain",
    "body_matches",
    "fileauth_url",
    "is_wildcard",
    "new_random_value",
    "next_poll_at",
    "normalise_name",
    "redirect_decision",
]

# §4: exact, case-sensitive path.
FILEAUTH_PATH = "/.well-known/pki-validation/fileauth.txt"
# §4: only these redirect kinds are followed.
REDIRECT_STATUSES = frozenset({301, 302, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_VALUE_ALPHABET = string.digits + string.ascii_lowercase


class FetchFailure(enum.StrEnum):
    """Why one FQDN did not validate. Only the simulator's log sees these; the API says "one or more domains"."""

    STATUS = "status_not_200"
    EMPTY = "empty_body"
    MISMATCH = "value_not_found"
    EXPIRED = "random_value_expired"
    REDIRECT_STATUS = "redirect_kind_not_followed"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    REDIRECT_SCHEME = "redirect_scheme"
    REDIRECT_PORT = "redirect_port"
    REDIRECT_DOMAIN = "redirect_other_base_domain"
    REDIRECT_LOOP = "redirect_loop"
    REDIRECT_NO_LOCATION = "redirect_without_location"
    UNRESOLVED = "name_not_resolvable"
    UNREACHABLE = "connection_failed"
    TIMEOUT = "timeout"
    PROTOCOL = "bad_http_response"


@dataclasses.dataclass(frozen=True, slots=True)
class Redirect:
    url: str


def normalise_name(name: object) -> str:
    """Lower-case and strip one trailing dot; raises ValueError for anything that is not an FQDN (or *.FQDN)."""
    if not isinstance(name, str):
        raise ValueError("not a string")
    name = name.strip().lower().removesuffix(".")
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2:
        raise ValueError("not a fully qualified domain name")
    for i, label in enumerate(labels):
        if label == "*" and i == 0:
            continue
        if not 1 <= len(label) <= 63 or label.startswith("-") or label.endswith("-"):
            raise ValueError(f"bad label {label!r}")
        if not all(c in string.ascii_lowercase + string.digits + "-" for c in label):
            raise ValueError(f"bad label {label!r}")
    if labels[-1].isdigit():
        raise ValueError("IP addresses are not domain names")
    return name


def is_wildcard(name: str) -> bool:
    return name.startswith("*.")


def fileauth_url(fqdn: str) -> str:
    """§4: DigiCert starts at http:// on the exact FQDN, no www-stripping, no parent domain."""
    return f"http://{fqdn}{FILEAUTH_PATH}"


def new_random_value(rng: random.Random, length: int = 32) -> str:
    """§4: doc examples are 15-32 lower-case alphanumerics; we generate `length` of them."""
    return "".join(rng.choice(_VALUE_ALPHABET) for _ in range(length))


def body_matches(status: int, body: bytes, expected: str, *, max_bytes: int = 5000) -> FetchFailure | None:
    """§4 / [C1]: HTTP 200, non-empty body, and the first `max_bytes` contain the value (case-sensitive).

    Returns None when the response validates, else the reason it does not.
    """
    if status != 200:
        return FetchFailure.STATUS
    body = body[:max_bytes]
    if not body.strip():
        return FetchFailure.EMPTY
    if expected.encode("ascii") not in body:
        return FetchFailure.MISMATCH
    return None


def base_domain(host: str, extra_public_suffixes: Collection[str] = ()) -> str:
    """The registrable domain, approximated without the Public Suffix List: the last two labels, or three when the
    last two are a listed multi-label suffix (e.g. "co.uk")."""
    labels = host.lower().removesuffix(".").split(".")
    for size in (3, 2):
        if len(labels) > size and ".".join(labels[-size:]) in extra_public_suffixes:
            return ".".join(labels[-(size + 1):])
    return ".".join(labels[-2:])


def redirect_decision(
    *,
    fqdn: str,
    current_url: str,
    status: int,
    location: str | None,
    visited: Collection[str],
    max_redirects: int,
    extra_public_suffixes: Collection[str] = (),
) -> Redirect | FetchFailure:
    """Whether to follow a 3xx answer, per the reference's safe contract (§4): at most `max_redirects` hops
    (`visited` holds the URLs fetched so far), only 301/302/307/308, only to http on :80 or https on :443, only
    inside the base domain of `fqdn`, never back to a URL already fetched."""
    if status not in REDIRECT_STATUSES:
        return FetchFailure.REDIRECT_STATUS
    if not location:
        return FetchFailure.REDIRECT_NO_LOCATION
    if len(visited) > max_redirects:
        return FetchFailure.TOO_MANY_REDIRECTS
    target = urljoin(current_url, location.strip())
    try:
        parts = urlsplit(target)
        port = parts.port
    except ValueError:
        return FetchFailure.REDIRECT_PORT
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return FetchFailure.REDIRECT_SCHEME
    if port is not None and port != _DEFAULT_PORTS[parts.scheme]:
        return FetchFailure.REDIRECT_PORT
    if base_domain(parts.hostname, extra_public_suffixes) != base_domain(fqdn, extra_public_suffixes):
        return FetchFailure.REDIRECT_DOMAIN
    if _canonical(target) in {_canonical(u) for u in visited}:
        return FetchFailure.REDIRECT_LOOP
    return Redirect(target)


def _canonical(url: str) -> str:
    p = urlsplit(url)
    port = p.port or _DEFAULT_PORTS.get(p.scheme, 0)
    return f"{p.scheme}://{(p.hostname or '').lower()}:{port}{p.path or '/'}?{p.query}"


# §4: every 1 min for 15 min, every 5 min up to 1 h, every 15 min up to 1 day, hourly up to 10 days, then stop.
POLL_TIERS: tuple[tuple[dt.timedelta, dt.timedelta], ...] = (
    (dt.timedelta(minutes=15), dt.timedelta(minutes=1)),
    (dt.timedelta(hours=1), dt.timedelta(minutes=5)),
    (dt.timedelta(days=1), dt.timedelta(minutes=15)),
    (dt.timedelta(days=10), dt.timedelta(hours=1)),
)


def next_poll_at(anchor: dt.datetime, last_poll: dt.datetime | None) -> dt.datetime | None:
    """The next automatic DCV check after `last_poll` (or after `anchor` when none yet), or None once the
    10-day schedule is over. Missed slots are not replayed: one late poll stands for all of them."""
    elapsed = (last_poll - anchor) if last_poll is not None else dt.timedelta(0)
    for until, step in POLL_TIERS:
        if elapsed < until:
            slots = elapsed // step + 1
            return anchor + step * slots
    return None

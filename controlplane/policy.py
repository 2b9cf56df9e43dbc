"""Issuer policy: an ordered list of CAs, and what a failure of one of them means for a domain. Pure.

A failure is classified by its `kind` (controlplane/issuers/errors.py):

| kind | meaning | decision |
|---|---|---|
| rejected | the CA refused this name or request (4xx, rejected order, CAA) | next issuer now |
| rate_limited | the CA throttles us | next issuer now; this CA is retried later for other domains |
| unavailable | transport error, timeout, 5xx | same issuer again, up to `unavailable_attempts`, then next |
| validation_failed | the CA did not see the token | same issuer again, up to `validation_attempts`, then next |

When the list is exhausted the domain fails with the last cause and starts again from the first issuer after the
retry delay.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

__all__ = ["Decision", "IssuerPolicy"]


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    issuer: str | None  # the issuer to use next; None = every issuer failed
    switch: bool  # a different issuer than the failing one
    reason: str  # for the domain's status detail


@dataclasses.dataclass(frozen=True, slots=True)
class IssuerPolicy:
    order: tuple[str, ...]
    unavailable_attempts: int = 3
    validation_attempts: int = 5

    def first(self, allowed: Sequence[str] | None = None) -> str | None:
        for name in self.order:
            if allowed is None or name in allowed:
                return name
        return None

    def after_failure(self, current: str, kind: str, attempts: int, *, cause: str,
                      allowed: Sequence[str] | None = None) -> Decision:
        """What to do after `current` failed with `kind` for the `attempts`-th time in a row for this domain."""
        stay = (kind == "unavailable" and attempts < self.unavailable_attempts) or (
            kind == "validation_failed" and attempts < self.validation_attempts)
        if stay and (allowed is None or current in allowed):
            return Decision(current, False, f"{current}: {cause}; retrying {current}")
        nxt = self._next(current, allowed)
        if nxt is None:
            return Decision(None, False, f"{current}: {cause}; no other issuer left")
        why = {"rejected": "rejected", "rate_limited": "rate limited", "unavailable": "unavailable",
               "validation_failed": "validation failed"}.get(kind, kind)
        return Decision(nxt, True, f"switched from {current} to {nxt}: {current} {why} ({cause})")

    def _next(self, current: str, allowed: Sequence[str] | None) -> str | None:
        names = list(self.order)
        start = names.index(current) + 1 if current in names else 0
        for name in names[start:]:
            if allowed is None or name in allowed:
                return name
        return None

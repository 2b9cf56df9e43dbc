"""Fault injection: a thread-safe plan of "the next N matching requests get X".

Owns only the plan; the HTTP layer asks it before (and, for `after=True` faults, after) handling each API request.
`after=True` means the request is really processed (an order really gets created) and then the answer is lost or
replaced: the "unknown outcome" a client must recover from (reference §3, order creation is not idempotent).
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
import threading
from typing import final

__all__ = ["Fault", "FaultKind", "FaultPlan"]


class FaultKind(enum.StrEnum):
    STATUS = "status"  # answer with `status` (429 gets the reference's request_limit_exceeded body)
    HANG = "hang"  # hold the request for `seconds` (longer than the client's timeout), then 504-style error
    ERRORS_OBJECT = "errors_object"  # render the next error bodies with `errors` as an object, not an array [C5]


@dataclasses.dataclass(frozen=True, slots=True)
class Fault:
    """`method` (e.g. "POST") and `path` (a glob over the path after /services/v2, e.g. "/order/certificate/*")
    restrict which requests the fault hits; None matches all."""

    kind: FaultKind
    count: int = 1
    status: int = 500
    method: str | None = None
    path: str | None = None
    after: bool = False
    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError("count must be positive")
        if self.kind is FaultKind.STATUS and not 400 <= self.status <= 599:
            raise ValueError("status must be a 4xx or 5xx code")

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self.path is None or fnmatch.fnmatchcase(path, self.path)


@final
class FaultPlan:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[tuple[Fault, int]] = []  # (fault, remaining)

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append((fault, fault.count))

    def take(self, kinds: frozenset[FaultKind], method: str, path: str, *, after: bool | None = None) -> Fault | None:
        """Consume one use of the first matching fault of one of `kinds` (in the order they were added)."""
        with self._lock:
            for i, (fault, remaining) in enumerate(self._faults):
                if fault.kind not in kinds or (after is not None and fault.after != after):
                    continue
                if not fault.matches(method, path):
                    continue
                if remaining <= 1:
                    del self._faults[i]
                else:
                    self._faults[i] = (fault, remaining - 1)
                return fault
        return None

    def pending(self) -> list[tuple[Fault, int]]:
        with self._lock:
            return list(self._faults)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

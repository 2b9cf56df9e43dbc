"""Per-API-key rolling-window rate limiter (reference §3): pure, the caller passes the time in.

Every request is checked against every window; a request over any window is refused and not counted, so access
comes back as old requests age out of the window (no fixed reset point, as the reference says).
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import final

__all__ = ["RollingLimiter"]


@final
class RollingLimiter:
    """`windows` are `(max_requests, seconds)` pairs, e.g. ((100, 5.0), (1000, 180.0)). Not thread-safe by itself:
    the owner (the simulator core) serialises calls."""

    def __init__(self, windows: Sequence[tuple[int, float]]) -> None:
        self._windows = tuple(windows)
        self._log: dict[str, collections.deque[float]] = {}
        self._horizon = max((w for _, w in self._windows), default=0.0)

    @property
    def windows(self) -> tuple[tuple[int, float], ...]:
        return self._windows

    def admit(self, key: str, now: float) -> bool:
        """Record a request by `key` at `now` (seconds) if every window has room; return whether it was admitted."""
        if not self._windows:
            return True
        log = self._log.setdefault(key, collections.deque())
        while log and log[0] <= now - self._horizon:
            log.popleft()
        for limit, window in self._windows:
            start = now - window
            # The log is sorted: count entries inside (start, now] from the right.
            count = 0
            for t in reversed(log):
                if t <= start:
                    break
                count += 1
                if count >= limit:
                    return False
        log.append(now)
        return True

    def in_window(self, key: str, now: float, window: float) -> int:
        """How many admitted requests of `key` fall inside the last `window` seconds (for tests and the admin API)."""
        return sum(1 for t in self._log.get(key, ()) if t > now - window)

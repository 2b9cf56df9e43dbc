"""Clocks for the simulator: wall clock (optionally compressed) and a fake clock for tests.

Owns time only. Everything else in the simulator receives a `Clock` and never calls `datetime.now()` itself, so the
order lifecycle, random-value expiry, DCV polling tiers and rate-limit windows can all be driven by a test.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Protocol, final

__all__ = ["Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """The current simulated time, timezone-aware UTC."""
        ...


@final
class SystemClock:
    """Wall-clock time, optionally running `speed` times faster than real time from the moment it was created.

    `speed=60` turns DigiCert's one-minute DCV polling tier into one real second (a "compressible clock").
    """

    def __init__(self, *, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self._speed = speed
        self._start_wall = dt.datetime.now(dt.UTC)
        self._start_mono = time.monotonic()

    def now(self) -> dt.datetime:
        if self._speed == 1.0:
            return dt.datetime.now(dt.UTC)
        elapsed = (time.monotonic() - self._start_mono) * self._speed
        return self._start_wall + dt.timedelta(seconds=elapsed)


@final
class FakeClock:
    """A clock that only moves when told to; safe to advance from any thread."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        start = start or dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> dt.datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> dt.datetime:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        with self._lock:
            self._now += dt.timedelta(seconds=seconds)
            return self._now

    def set(self, when: dt.datetime) -> None:
        with self._lock:
            if when < self._now:
                raise ValueError("a clock does not go backwards")
            self._now = when

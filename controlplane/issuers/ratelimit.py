"""Client-side pacing for a CA API: a token bucket per API key, and backoff with jitter for retries.

Pure: no clock, sleep or randomness of its own. Callers pass `now` (a monotonic time in seconds) and a
`random.Random`, so tests drive both deterministically. Not thread-safe: share one bucket per API key among the
coroutines of one event loop (several processes sharing a key must split the rate between them).

Numbers come from the reference (digicert-certcentral.md §3): CertCentral limits each key to 100 requests / 5 s and
1000 requests / 3 min (rolling windows; earlier published values differed, so everything is configurable), and
advises backoff starting at >= 5 s with jitter, capped at minutes.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import final

__all__ = [
    "DEFAULT_BURST",
    "DEFAULT_RATE_PER_S",
    "REFERENCE_WINDOWS",
    "Backoff",
    "TokenBucket",
    "retry_delay",
]

#: CertCentral's rolling windows per API key, (requests, seconds) (reference §3, current page [16]).
REFERENCE_WINDOWS: tuple[tuple[int, float], ...] = ((100, 5.0), (1000, 180.0))

#: Sustained rate: 1000/180 s is ~5.5/s; the reference advises <= 5/s.
DEFAULT_RATE_PER_S = 5.0

#: Burst size: with 5/s, any 5 s window sees <= 10 + 25 = 35 requests (limit 100) and any 180 s window
#: <= 10 + 900 = 910 (limit 1000); the reference advises bursts "well under 20/s".
DEFAULT_BURST = 10


@final
class TokenBucket:
    """A reserving token bucket: `take` always grants, and says how long to wait before using the grant.

    Tokens may go negative: each caller reserves its slot in the future, so concurrent callers queue fairly with no
    lock and no busy loop. Over any interval of length `w`, at most `burst + rate_per_s * w` requests start.

    Args:
        rate_per_s: sustained requests per second (> 0).
        burst: bucket size, the number of requests allowed back to back (>= 1).
    """

    __slots__ = ("_last", "_tokens", "burst", "rate_per_s")

    def __init__(self, *, rate_per_s: float = DEFAULT_RATE_PER_S, burst: float = DEFAULT_BURST) -> None:
        if not rate_per_s > 0:
            raise ValueError("rate_per_s must be positive")
        if not burst >= 1:
            raise ValueError("burst must be at least 1")
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._last: float | None = None

    @classmethod
    def for_windows(cls, windows: Sequence[tuple[int, float]] = REFERENCE_WINDOWS, *, burst: float = DEFAULT_BURST,
                    safety: float = 0.9) -> TokenBucket:
        """The fastest bucket that keeps every rolling window `(requests, seconds)` under `safety` x its limit.

        For the reference's windows and burst 10: min((90-10)/5, (900-10)/180) = 4.94 requests/s.
        """
        if not windows:
            raise ValueError("windows must not be empty")
        if not 0 < safety <= 1:
            raise ValueError("safety must be in (0, 1]")
        rates = [(limit * safety - burst) / seconds for limit, seconds in windows]
        rate = min(rates)
        if rate <= 0:
            raise ValueError("burst is too large for these windows")
        return cls(rate_per_s=rate, burst=burst)

    def _refill(self, now: float) -> None:
        if self._last is None:
            self._last = now
            return
        if now > self._last:  # a clock that steps back refills nothing
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate_per_s)
            self._last = now

    def take(self, now: float, n: float = 1.0) -> float:
        """Reserve `n` tokens at monotonic time `now`; return the seconds to wait before using them (0 = go now)."""
        self._refill(now)
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate_per_s

    def penalize(self, now: float, seconds: float) -> None:
        """Block the bucket: the next reservation waits at least `seconds` from `now` (after a 429, the CA blocks
        the whole key, so every coroutine sharing it should pause, not only the one that got the 429)."""
        if seconds <= 0:
            return
        self._refill(now)
        self._tokens = min(self._tokens, -seconds * self.rate_per_s)

    def available(self, now: float) -> float:
        """Tokens available at `now` (negative: the backlog of reservations), without taking any."""
        self._refill(now)
        return self._tokens

    def __repr__(self) -> str:
        return f"TokenBucket(rate_per_s={self.rate_per_s:g}, burst={self.burst:g})"


@dataclasses.dataclass(frozen=True, slots=True)
class Backoff:
    """Retry delays: an explicit schedule (the last entry repeats), stretched by up to `jitter` so that workers do
    not retry in lockstep.

    The n-th retry waits `max(schedule_s[n-1], retry_after_s) * (1 + jitter * u)`, `u` uniform in [0, 1): never less
    than the schedule or the server's Retry-After, at most (1 + jitter) times that.
    """

    schedule_s: tuple[float, ...] = (5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0)  # >= 5 s start, minutes cap (§3)
    jitter: float = 0.25

    def __post_init__(self) -> None:
        if not self.schedule_s or any(s < 0 for s in self.schedule_s):
            raise ValueError("schedule_s must be non-empty and non-negative")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be in [0, 1]")

    def delay(self, attempt: int, rng: random.Random, *, retry_after_s: float | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if attempt < 1:
            raise ValueError("attempt is 1-based")
        base = self.schedule_s[min(attempt, len(self.schedule_s)) - 1]
        if retry_after_s is not None and retry_after_s > base:
            base = retry_after_s
        return base * (1.0 + self.jitter * rng.random())


def retry_delay(backoff: Backoff, attempt: int, *, now: float, deadline: float, rng: random.Random,
                retry_after_s: float | None = None) -> float | None:
    """The wait before the next attempt, or None when that attempt could not start before `deadline`.

    Retry-After is honoured (never retry earlier) and capped by the absolute deadline: a wait that would end past
    the deadline ends the retries instead of sleeping into a last attempt that is too late or too early.

    Args:
        backoff: the schedule.
        attempt: how many attempts failed so far (>= 1).
        now: monotonic time, seconds.
        deadline: absolute monotonic time by which the next attempt must have started.
        rng: jitter source.
        retry_after_s: the server's Retry-After, if any.
    """
    delay = backoff.delay(attempt, rng, retry_after_s=retry_after_s)
    if now + delay > deadline:
        return None
    return delay

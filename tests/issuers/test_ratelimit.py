"""The pure token bucket and backoff: pacing on a fake clock, window guarantees, jitter bounds, deadlines."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.issuers.ratelimit import (
    DEFAULT_BURST,
    DEFAULT_RATE_PER_S,
    REFERENCE_WINDOWS,
    Backoff,
    TokenBucket,
    retry_delay,
)


def test_burst_then_paced_reservations() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=3)
    delays = [bucket.take(10.0) for _ in range(6)]
    # three from the burst, then one slot every 0.5 s, each caller queued behind the previous one
    assert delays == [0.0, 0.0, 0.0, 0.5, 1.0, 1.5]


def test_refill_over_time_is_capped_at_burst() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=2)
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == pytest.approx(1.0)
    assert bucket.available(1000.0) == 2.0  # long idle: full, not more
    assert [bucket.take(1000.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]


def test_clock_stepping_back_refills_nothing() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=1)
    assert bucket.take(50.0) == 0.0
    assert bucket.take(40.0) == pytest.approx(1.0)


def test_penalize_blocks_every_later_reservation() -> None:
    bucket = TokenBucket(rate_per_s=5.0, burst=10)
    bucket.penalize(100.0, 30.0)
    assert bucket.take(100.0) >= 30.0
    assert bucket.take(130.0) == pytest.approx(0.4)  # the backlog drains at the normal rate
    bucket.penalize(200.0, 0)  # no-op
    fresh = TokenBucket(rate_per_s=5.0, burst=10)
    fresh.penalize(0.0, 0.0)
    assert fresh.take(0.0) == 0.0


def test_defaults_match_the_reference() -> None:
    assert (DEFAULT_RATE_PER_S, DEFAULT_BURST) == (5.0, 10)
    assert REFERENCE_WINDOWS == ((100, 5.0), (1000, 180.0))
    derived = TokenBucket.for_windows()
    assert derived.rate_per_s == pytest.approx(min((90 - 10) / 5, (900 - 10) / 180))
    assert derived.burst == 10
    with pytest.raises(ValueError):
        TokenBucket.for_windows(((10, 1.0),), burst=20)
    with pytest.raises(ValueError):
        TokenBucket(rate_per_s=0)
    with pytest.raises(ValueError):
        TokenBucket(burst=0.5)


@settings(max_examples=60, deadline=None)
@given(gaps=st.lists(st.floats(min_value=0, max_value=2.0), min_size=1, max_size=400))
def test_starts_never_exceed_the_rolling_windows(gaps: list[float]) -> None:
    """Whatever the arrival pattern, requests started at `arrival + delay` respect 100/5 s and 1000/180 s."""
    bucket = TokenBucket()
    now, starts = 0.0, []
    for gap in gaps:
        now += gap
        starts.append(now + bucket.take(now))
    starts.sort()
    for limit, window in REFERENCE_WINDOWS:
        j = 0
        for i, start in enumerate(starts):
            while starts[j] <= start - window:
                j += 1
            assert i - j + 1 <= limit


@settings(max_examples=200, deadline=None)
@given(attempt=st.integers(min_value=1, max_value=20), seed=st.integers(0, 2**32),
       retry_after=st.one_of(st.none(), st.floats(min_value=0, max_value=3600)))
def test_jitter_bounds(attempt: int, seed: int, retry_after: float | None) -> None:
    backoff = Backoff()
    schedule = backoff.schedule_s[min(attempt, len(backoff.schedule_s)) - 1]
    base = max(schedule, retry_after or 0.0)
    delay = backoff.delay(attempt, random.Random(seed), retry_after_s=retry_after)
    assert base <= delay <= base * (1 + backoff.jitter)
    assert delay >= 5.0  # the reference: start >= 5 s


def test_jitter_spreads_workers() -> None:
    rng = random.Random(1)
    delays = {round(Backoff().delay(1, rng), 6) for _ in range(50)}
    assert len(delays) > 40


def test_schedule_grows_then_repeats_its_last_entry() -> None:
    backoff = Backoff(schedule_s=(1.0, 2.0, 4.0), jitter=0.0)
    rng = random.Random(0)
    assert [backoff.delay(n, rng) for n in range(1, 6)] == [1.0, 2.0, 4.0, 4.0, 4.0]
    with pytest.raises(ValueError):
        backoff.delay(0, rng)
    with pytest.raises(ValueError):
        Backoff(schedule_s=())
    with pytest.raises(ValueError):
        Backoff(jitter=2.0)


@pytest.mark.parametrize(
    ("now", "deadline", "retry_after", "expected"),
    [
        (0.0, 100.0, None, 5.0),  # the schedule
        (0.0, 100.0, 30.0, 30.0),  # Retry-After wins over a shorter schedule
        (0.0, 100.0, 1.0, 5.0),  # ... but never makes it shorter
        (0.0, 29.0, 30.0, None),  # a wait past the deadline ends the retries
        (96.0, 100.0, None, None),
        (95.0, 100.0, None, 5.0),  # exactly at the deadline still starts in time
    ],
)
def test_retry_delay_respects_retry_after_and_deadline(now: float, deadline: float, retry_after: float | None,
                                                       expected: float | None) -> None:
    got = retry_delay(Backoff(jitter=0.0), 1, now=now, deadline=deadline, rng=random.Random(0),
                      retry_after_s=retry_after)
    assert got == expected

"""The per-key rolling-window limiter (reference §3)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from certcentral_sim.ratelimit import RollingLimiter


def test_reference_defaults_burst_window() -> None:
    lim = RollingLimiter([(100, 5.0), (1000, 180.0)])
    assert all(lim.admit("k", 0.0) for _ in range(100))
    assert not lim.admit("k", 4.99)  # the 101st inside 5 s
    assert lim.admit("other", 4.99)  # per key
    assert lim.admit("k", 5.0)  # the first requests aged out: no fixed reset point, rolling


def test_long_window() -> None:
    lim = RollingLimiter([(100, 5.0), (1000, 180.0)])
    t = 0.0
    admitted = 0
    while t < 180.0:
        admitted += lim.admit("k", t)
        t += 0.04  # 25/s: under 100/5 s, over 1000/180 s
    assert admitted == 1000
    assert not lim.admit("k", 179.99)
    assert lim.admit("k", 180.01)


def test_refused_requests_do_not_count() -> None:
    lim = RollingLimiter([(2, 10.0)])
    assert lim.admit("k", 0.0) and lim.admit("k", 1.0)
    for t in range(2, 10):
        assert not lim.admit("k", float(t))
    assert lim.admit("k", 10.0)  # only the admitted ones aged; the refused ones never counted
    assert lim.in_window("k", 10.0, 10.0) == 2


def test_no_windows_means_no_limit() -> None:
    lim = RollingLimiter([])
    assert all(lim.admit("k", 0.0) for _ in range(10_000))


@given(st.lists(st.floats(min_value=0, max_value=0.5, allow_nan=False), min_size=1, max_size=300),
       st.integers(min_value=1, max_value=20), st.floats(min_value=0.1, max_value=3.0))
def test_never_more_than_limit_in_any_window(gaps: list[float], limit: int, window: float) -> None:
    lim = RollingLimiter([(limit, window)])
    t, admitted = 0.0, []
    for gap in gaps:
        t += gap
        if lim.admit("k", t):
            admitted.append(t)
    for i, start in enumerate(admitted):
        inside = [x for x in admitted[i:] if x < start + window]
        assert len(inside) <= limit

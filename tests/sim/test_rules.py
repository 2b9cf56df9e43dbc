"""Pure DCV rules: names, matching, redirects, poll schedule, random values (reference §4)."""

from __future__ import annotations

import datetime as dt
import functools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certcentral_sim.rules import (
    FetchFailure,
    Redirect,
    base_domain,
    body_matches,
    fileauth_url,
    is_wildcard,
    new_random_value,
    next_poll_at,
    normalise_name,
    redirect_decision,
)

VALUE = "q3k9z1m7d2h8w0p4t6c5v9b1n7x2r8f0"


@pytest.mark.parametrize("raw,want", [
    ("Shop.Example.TEST", "shop.example.test"),
    ("shop.example.test.", "shop.example.test"),
    ("*.example.test", "*.example.test"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
])
def test_normalise_name_ok(raw: str, want: str) -> None:
    assert normalise_name(raw) == want


@pytest.mark.parametrize("raw", ["localhost", "", "a..b", "-a.example", "a_b.example", "1.2.3.4", "a.*.example",
                                 "x" * 64 + ".example", "shop example.test"])
def test_normalise_name_rejects(raw: str) -> None:
    with pytest.raises(ValueError):
        normalise_name(raw)


def test_wildcard_and_url() -> None:
    assert is_wildcard("*.example.test") and not is_wildcard("shop.example.test")
    assert fileauth_url("shop.example.test") == "http://shop.example.test/.well-known/pki-validation/fileauth.txt"


@pytest.mark.parametrize("status,body,want", [
    (200, VALUE.encode(), None),
    (200, f"{VALUE}\n".encode(), None),  # surrounding whitespace is harmless: "contains"
    (200, f"\r\n  {VALUE}  \r\n".encode(), None),
    (200, f"token={VALUE};".encode(), None),
    (200, VALUE.upper().encode(), FetchFailure.MISMATCH),  # case-sensitive
    (200, VALUE[:-1].encode(), FetchFailure.MISMATCH),
    (200, b"", FetchFailure.EMPTY),
    (200, b" \n", FetchFailure.EMPTY),
    (404, VALUE.encode(), FetchFailure.STATUS),
    (201, VALUE.encode(), FetchFailure.STATUS),
    (500, VALUE.encode(), FetchFailure.STATUS),
])
def test_body_matches(status: int, body: bytes, want: FetchFailure | None) -> None:
    assert body_matches(status, body, VALUE) is want


def test_body_matches_reads_only_5000_bytes() -> None:
    assert body_matches(200, b"x" * 4968 + VALUE.encode(), VALUE) is None  # ends exactly at byte 5000
    assert body_matches(200, b"x" * 4969 + VALUE.encode(), VALUE) is FetchFailure.MISMATCH


@pytest.mark.parametrize("host,want", [
    ("shop.example.test", "example.test"), ("a.b.example.test", "example.test"), ("example.test", "example.test"),
    ("www.shop.co.uk", "shop.co.uk"),
])
def test_base_domain(host: str, want: str) -> None:
    assert base_domain(host, {"co.uk"}) == want


START = "http://shop.example.test/.well-known/pki-validation/fileauth.txt"


@pytest.mark.parametrize("status,location,want", [
    (301, "https://shop.example.test/.well-known/pki-validation/fileauth.txt",
     Redirect("https://shop.example.test/.well-known/pki-validation/fileauth.txt")),
    (302, "http://www.example.test/x.txt", Redirect("http://www.example.test/x.txt")),
    (307, "/elsewhere/fileauth.txt", Redirect("http://shop.example.test/elsewhere/fileauth.txt")),
    (308, "https://example.test:443/f", Redirect("https://example.test:443/f")),
    (303, "http://www.example.test/f", FetchFailure.REDIRECT_STATUS),
    (300, "http://www.example.test/f", FetchFailure.REDIRECT_STATUS),
    (301, None, FetchFailure.REDIRECT_NO_LOCATION),
    (301, "http://shop.example.test:8080/f", FetchFailure.REDIRECT_PORT),
    (301, "https://shop.example.test:80/f", FetchFailure.REDIRECT_PORT),
    (301, "ftp://shop.example.test/f", FetchFailure.REDIRECT_SCHEME),
    (301, "http://shop.example.net/f", FetchFailure.REDIRECT_DOMAIN),
    (301, "http://example.test.evil.net/f", FetchFailure.REDIRECT_DOMAIN),
    (301, START, FetchFailure.REDIRECT_LOOP),
    (301, "HTTP://SHOP.example.test:80/.well-known/pki-validation/fileauth.txt", FetchFailure.REDIRECT_LOOP),
])
def test_first_redirect(status: int, location: str | None, want: object) -> None:
    got = redirect_decision(fqdn="shop.example.test", current_url=START, status=status, location=location,
                            visited=[START], max_redirects=1)
    assert got == want


def test_second_redirect_is_refused_by_default_but_configurable() -> None:
    hop = "https://www.example.test/f"
    second = functools.partial(redirect_decision, fqdn="shop.example.test", current_url=hop, status=301,
                               location="https://w2.example.test/f", visited=[START, hop])
    assert second(max_redirects=1) is FetchFailure.TOO_MANY_REDIRECTS
    assert second(max_redirects=2) == Redirect("https://w2.example.test/f")
    assert redirect_decision(fqdn="shop.example.test", current_url=START, status=301, location=hop,
                             visited=[START], max_redirects=0) is FetchFailure.TOO_MANY_REDIRECTS


T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
M = dt.timedelta(minutes=1)


def _schedule(limit: int = 10_000) -> list[dt.timedelta]:
    out: list[dt.timedelta] = []
    last = None
    while (nxt := next_poll_at(T0, last)) is not None and len(out) < limit:
        out.append(nxt - T0)
        last = nxt
    return out


def test_poll_schedule_tiers() -> None:
    offsets = _schedule()
    assert offsets[:15] == [M * i for i in range(1, 16)]  # every minute for 15 minutes
    assert offsets[15:24] == [M * i for i in range(20, 61, 5)]  # every 5 minutes up to 1 h
    assert offsets[24] == M * 75  # every 15 minutes up to a day
    assert dt.timedelta(days=1) in offsets and dt.timedelta(days=1, hours=1) in offsets
    assert offsets[-1] == dt.timedelta(days=10)  # hourly up to 10 days, then it stops
    assert len(offsets) == 15 + 9 + 92 + 216


def test_poll_schedule_does_not_replay_missed_slots() -> None:
    late = T0 + dt.timedelta(hours=5, minutes=7)
    assert next_poll_at(T0, late) == T0 + dt.timedelta(hours=5, minutes=15)
    assert next_poll_at(T0, T0 + dt.timedelta(days=11)) is None


def test_random_values() -> None:
    a = new_random_value(random.Random(7))
    assert len(a) == 32 and a.isalnum() and a == a.lower()
    assert a == new_random_value(random.Random(7)) and a != new_random_value(random.Random(8))


@given(st.binary(max_size=200), st.binary(max_size=200))
def test_value_anywhere_in_first_5000_bytes_matches(prefix: bytes, suffix: bytes) -> None:
    assert body_matches(200, prefix + VALUE.encode() + suffix, VALUE) is None

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.tokens import InvalidHost, Token, TokenStore, normalize_host

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.timezone.utc)
FILEAUTH = "/.well-known/pki-validation/fileauth.txt"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("shop.example.test", "shop.example.test"),
        ("Shop.EXAMPLE.test", "shop.example.test"),
        ("shop.example.test:80", "shop.example.test"),
        ("shop.example.test.", "shop.example.test"),
        ("SHOP.example.test.:8080", "shop.example.test"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("a-b.c1.example", "a-b.c1.example"),
    ],
)
def test_normalize_host(raw: str, expected: str) -> None:
    assert normalize_host(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["", " ", "[::1]", "[::1]:80", "127.0.0.1", "127.0.0.1:80", "a..b", "-a.example", "a-.example",
     "a" * 64 + ".example", ("a" * 63 + ".") * 4 + "example", "exa mple.test", "a_b.test", "a.test:",
     "a.test:123456", "a.test:x", "xn--invalid-.test", "a/b.test", "x" * 2000],
)
def test_normalize_host_rejects(raw: str) -> None:
    with pytest.raises(InvalidHost):
        normalize_host(raw)


@given(st.text(max_size=300))
def test_normalize_host_returns_ascii_or_raises_invalid_host(raw: str) -> None:
    try:
        out = normalize_host(raw)
    except InvalidHost:
        return
    assert out.isascii() and out == out.lower() and 0 < len(out) <= 253
    assert normalize_host(out) == out  # idempotent


def _store(*tokens: Token) -> TokenStore:
    store = TokenStore()
    for t in tokens:
        store.put(t)
    return store


def test_lookup_is_exact_and_respects_expiry() -> None:
    store = _store(
        Token("shop.example.test", FILEAUTH, "v1", NOW + dt.timedelta(minutes=5)),
        Token("old.example.test", FILEAUTH, "v2", NOW),
    )
    assert store.lookup("Shop.Example.Test:80", FILEAUTH, now=NOW) == "v1"
    assert store.lookup("old.example.test", FILEAUTH, now=NOW) is None  # expires_at is exclusive
    assert store.lookup("shop.example.test", FILEAUTH + "/", now=NOW) is None
    assert store.lookup("shop.example.test", "/.well-known/pki-validation/../pki-validation/fileauth.txt",
                        now=NOW) is None
    assert store.lookup("shop.example.test", "/fileauth.txt", now=NOW) is None
    assert store.lookup("bad host", FILEAUTH, now=NOW) is None
    assert store.lookup("shop.example.test", FILEAUTH, now=NOW + dt.timedelta(minutes=5)) is None


def test_replace_delete_prune() -> None:
    store = _store(Token("a.test", FILEAUTH, "x", NOW + dt.timedelta(seconds=1)))
    store.replace([Token("b.test", FILEAUTH, "y", NOW + dt.timedelta(seconds=10))])
    assert store.lookup("a.test", FILEAUTH, now=NOW) is None
    assert store.lookup("b.test", FILEAUTH, now=NOW) == "y"
    store.put(Token("c.test", FILEAUTH, "z", NOW))
    assert store.prune(now=NOW) == 1 and len(store) == 1
    store.delete("b.test", FILEAUTH)
    assert len(store) == 0

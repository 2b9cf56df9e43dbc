"""Validation tokens through real HAProxy (2.6, 2.8, container) → SPOE → sidecar, published via the sync protocol.

Nothing here talks to the agent directly: every answer comes through HAProxy's port 80.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import time

import pytest

from controlplane.sync import Token
from lockstep.devserver import SyncServerThread
from tests.harness.edge import Edge
from tests.harness.net import HttpResult, http_get, https_get, tls_peer_cert
from tests.harness.pki import DEFAULT_NAME, TestPki

pytestmark = pytest.mark.haproxy

FILEAUTH = "/.well-known/pki-validation/fileauth.txt"
ACME = "/.well-known/acme-challenge/"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _publish(sync: SyncServerThread, host: str, path: str, *, value: str | None = None,
             ttl_s: float = 3600) -> str:
    value = value or secrets.token_hex(16)
    sync.publish_token(Token(host=host, path=path, value=value, expires_at=_now() + dt.timedelta(seconds=ttl_s)))
    return value


def _poll(edge: Edge, host: str, path: str, *, want: int, timeout_s: float = 5.0) -> tuple[HttpResult, float]:
    """GET until the status is `want`; returns the last response and the seconds it took."""
    start = time.monotonic()
    while True:
        res = http_get(edge.http, path, host=host)
        elapsed = time.monotonic() - start
        if res.status == want or elapsed > timeout_s:
            return res, elapsed
        time.sleep(0.01)


def _host(edge: Edge, label: str) -> str:
    return f"{label}-{edge.kind.replace('.', '')}.example.test"


def test_fileauth_served_exactly_within_one_second_of_publishing(edge: Edge, sync_server: SyncServerThread) -> None:
    host = _host(edge, "shop")
    assert http_get(edge.http, FILEAUTH, host=host).status == 404
    value = _publish(sync_server, host, FILEAUTH)
    res, elapsed = _poll(edge, host, FILEAUTH, want=200)
    assert res.status == 200, edge.logs()
    assert res.body == value.encode()
    assert res.headers["content-type"].startswith("text/plain")
    assert elapsed < 1.0, f"token visible after {elapsed:.3f} s"


def test_acme_challenge_returns_key_authorization(edge: Edge, sync_server: SyncServerThread) -> None:
    host = _host(edge, "acme")
    token = secrets.token_urlsafe(32)
    key_authz = f"{token}.{secrets.token_urlsafe(32)}"
    _publish(sync_server, host, ACME + token, value=key_authz)
    res, _ = _poll(edge, host, ACME + token, want=200)
    assert (res.status, res.body) == (200, key_authz.encode())
    # Another token of the same host, and the same token on another host, are not served.
    assert http_get(edge.http, ACME + token[:-1] + "x", host=host).status == 404
    assert http_get(edge.http, ACME + token, host=_host(edge, "other")).status == 404


def test_unknown_host_unknown_token_expired_and_withdrawn_are_404(edge: Edge, sync_server: SyncServerThread) -> None:
    host = _host(edge, "gone")
    _publish(sync_server, _host(edge, "expired"), FILEAUTH, ttl_s=-1)
    value = _publish(sync_server, host, FILEAUTH)
    assert _poll(edge, host, FILEAUTH, want=200)[0].body == value.encode()
    assert http_get(edge.http, FILEAUTH, host="unknown.example.test").status == 404
    assert http_get(edge.http, ACME + "nope", host=host).status == 404
    assert http_get(edge.http, FILEAUTH, host=_host(edge, "expired")).status == 404
    sync_server.withdraw_token(host + FILEAUTH)
    assert _poll(edge, host, FILEAUTH, want=404)[0].status == 404


def test_token_stops_being_served_when_it_expires(edge: Edge, sync_server: SyncServerThread) -> None:
    host = _host(edge, "ttl")
    value = _publish(sync_server, host, FILEAUTH, ttl_s=1.5)
    assert _poll(edge, host, FILEAUTH, want=200)[0].body == value.encode()
    res, _ = _poll(edge, host, FILEAUTH, want=404, timeout_s=4)
    assert res.status == 404


@pytest.mark.parametrize("path", ["/", "/index.html?x=1", "/.well-known/other", "/.well-known/pki-validation"])
def test_other_paths_redirect_to_https(edge: Edge, path: str) -> None:
    res = http_get(edge.http, path, host="shop.example.test")
    assert res.status == 301
    assert res.headers["location"] == f"https://shop.example.test{path}"


def test_host_normalisation(edge: Edge, sync_server: SyncServerThread) -> None:
    host = _host(edge, "norm")
    value = _publish(sync_server, host, FILEAUTH)
    _poll(edge, host, FILEAUTH, want=200)
    for variant in (host.upper(), f"{host}:80", f"{host}.", f"{host.title()}.:8080"):
        res = http_get(edge.http, FILEAUTH, host=variant)
        assert (res.status, res.body) == (200, value.encode()), variant


def test_idn_host_matches_its_punycode_token(edge: Edge, sync_server: SyncServerThread) -> None:
    unicode_host = f"bücher-{edge.kind.replace('.', '')}.example.test"
    punycode = unicode_host.encode("idna").decode()
    value = _publish(sync_server, punycode, FILEAUTH)
    _poll(edge, punycode, FILEAUTH, want=200)
    raw = f"GET {FILEAUTH} HTTP/1.1\r\nHost: ".encode() + unicode_host.encode() + b"\r\nConnection: close\r\n\r\n"
    res = http_get(edge.http, FILEAUTH, host=None, raw_request=raw)
    if edge.kind == "2.8":
        # 2.8's HTTP parser refuses non-ASCII in Host before any rule runs; CAs send the A-label form anyway.
        assert res.status == 400
    else:
        # 2.6 passes the raw UTF-8 bytes to the agent, which maps them to the punycode the token is stored under.
        assert (res.status, res.body) == (200, value.encode())


BAD_PATHS = [
    "/.well-known/pki-validation/../pki-validation/fileauth.txt",
    "/.well-known/pki-validation/./fileauth.txt",
    "/.well-known/pki-validation/fileauth.txt/",
    "/.well-known/pki-validation//fileauth.txt",
    "/.well-known/pki-validation/%66ileauth.txt",
    "/.well-known/pki-validation/fileauth.txt%00",
    "/.well-known/acme-challenge/..%2F..%2Fpki-validation%2Ffileauth.txt",
    "/.well-known/acme-challenge/../pki-validation/fileauth.txt",
    "/.well-known/pki-validation/FILEAUTH.TXT",
    "/.well-known/pki-validation/" + "a" * 5000,
]


def test_bad_input_never_leaks_another_paths_token_or_crashes(edge: Edge, sync_server: SyncServerThread) -> None:
    host = _host(edge, "bad")
    value = _publish(sync_server, host, FILEAUTH)
    _poll(edge, host, FILEAUTH, want=200)
    for path in BAD_PATHS:
        res = http_get(edge.http, path, host=host)
        assert res.status in (400, 404, 414), (path, res.status)
        assert value.encode() not in res.body
    for bad_host in ("", " ", "a" * 300 + ".test", "x" * 5000, "[::1]:80", "127.0.0.1", "bad host.test",
                     f"{host}:notaport", f"{host}\x7f", "-leading.example.test"):
        raw = f"GET {FILEAUTH} HTTP/1.1\r\nHost: {bad_host}\r\nConnection: close\r\n\r\n".encode()
        res = http_get(edge.http, FILEAUTH, host=None, raw_request=raw)
        assert res.status in (400, 404), (bad_host[:40], res.status)
        assert value.encode() not in res.body
    # HTTP/1.0 without any Host header
    assert http_get(edge.http, FILEAUTH, host=None).status in (400, 404)
    # Nothing above hurt the node: the agent still runs and answers.
    assert edge.agent.is_running()
    assert http_get(edge.http, FILEAUTH, host=host).body == value.encode()


def test_https_serves_default_certificate_with_alpn_and_reaches_backend(edge: Edge, pki: TestPki) -> None:
    cert, alpn = tls_peer_cert(edge.https, DEFAULT_NAME, cafile=str(pki.edge_ca_file), alpn=["h2", "http/1.1"])
    assert cert == pki.default.cert
    assert alpn == "h2"
    res = https_get(edge.https, "/hello", sni=DEFAULT_NAME, cafile=str(pki.edge_ca_file))
    assert res.status == 200, edge.logs()
    seen = json.loads(res.body)
    assert seen["host"].split(":")[0] == DEFAULT_NAME
    assert seen["path"] == "/hello"
    assert seen["client_cn"] == "edge.internal.lockstep.test"
    assert seen["forwarded_proto"] == "https"

"""Fixtures for the issuer tests: fake time, CSRs, a test PKI chain, a scripted `httpx.MockTransport`, and a tiny
per-Host fileauth.txt server on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import datetime as dt
import http.server
import json
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from controlplane.issuers import Backoff, DigiCertIssuer, TokenBucket

API_KEY = "k3y-SECRET-0123456789abcdef"
BASE = "https://ca.test/services/v2"
T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


class FakeTime:
    """A monotonic clock that only moves when something sleeps; wall time follows it from T0."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def wall(self) -> dt.datetime:
        return T0 + dt.timedelta(seconds=self.now - 1000.0)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


Reply = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


class Script:
    """A MockTransport handler answering from a queue (one reply per request) and recording every request."""

    def __init__(self, *replies: Reply) -> None:
        self.replies: list[Reply] = list(replies)
        self.requests: list[httpx.Request] = []

    def add(self, *replies: Reply) -> Script:
        self.replies.extend(replies)
        return self

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.replies:
            raise AssertionError(f"unexpected request {request.method} {request.url}")
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            if isinstance(reply, httpx.RequestError):
                reply.request = request
            raise reply
        if callable(reply) and not isinstance(reply, httpx.Response):
            return reply(request)
        return reply

    def paths(self) -> list[str]:
        return [f"{r.method} {r.url.path}" for r in self.requests]

    def body(self, i: int = -1) -> Any:
        return json.loads(self.requests[i].content)


def ok(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def err(status: int, code: str = "", message: str = "", *, as_object: bool = False,
        headers: dict[str, str] | None = None) -> httpx.Response:
    item = {"code": code, "message": message}
    return httpx.Response(status, json={"errors": item if as_object else [item]}, headers=headers)


@dataclasses.dataclass
class Harness:
    issuer: DigiCertIssuer
    script: Script
    time: FakeTime
    bucket: TokenBucket
    http: httpx.AsyncClient


@pytest.fixture
async def make_issuer() -> Any:
    clients: list[httpx.AsyncClient] = []

    def make(*replies: Reply, **kw: Any) -> Harness:
        script = Script(*replies)
        ft = FakeTime()
        http = httpx.AsyncClient(transport=httpx.MockTransport(script))
        clients.append(http)
        bucket = kw.pop("bucket", None) or TokenBucket(rate_per_s=1000, burst=1000)
        opts: dict[str, Any] = {
            "api_key": API_KEY, "product_id": "ssl_dv_geotrust", "base_url": BASE, "bucket": bucket,
            "sleep": ft.sleep, "clock": ft.clock, "wall_clock": ft.wall, "rng": random.Random(7),
            "request_timeout_s": 5.0, "max_attempts": 5, "retry_deadline_s": 600.0, "backoff": Backoff(),
        }
        opts.update(kw)
        return Harness(DigiCertIssuer(http, **opts), script, ft, bucket, http)

    yield make
    for c in clients:
        await c.aclose()


# ---------------------------------------------------------------------------------------------- PKI helpers

@dataclasses.dataclass(frozen=True)
class Csr:
    key: ec.EllipticCurvePrivateKey
    pem: str

    def spki(self) -> bytes:
        return self.key.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)


def make_csr(common_name: str = "shop.example.test") -> Csr:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
           .sign(key, hashes.SHA256()))
    return Csr(key, csr.public_bytes(serialization.Encoding.PEM).decode())


def _cert(subject: str, issuer: str, key: ec.EllipticCurvePrivateKey, signer: ec.EllipticCurvePrivateKey, *,
          ca: bool) -> str:
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(T0).not_valid_after(T0 + dt.timedelta(days=90))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(signer, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="session")
def chain() -> tuple[str, str, str]:
    """(leaf, intermediate, root) PEMs: a three-level chain by subject/issuer names."""
    root_k, int_k, leaf_k = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _cert("Test Root", "Test Root", root_k, root_k, ca=True)
    inter = _cert("Test Intermediate", "Test Root", int_k, root_k, ca=True)
    leaf = _cert("shop.example.test", "Test Intermediate", leaf_k, int_k, ca=False)
    return leaf, inter, root


# ---------------------------------------------------------------------------------------------- fileauth server

class FileauthServer:
    """Serves `/.well-known/pki-validation/fileauth.txt` per Host header from `files` on 127.0.0.1:0."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}
        self.hits: list[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host = self.headers.get("Host", "").split(":")[0].lower()
                owner.hits.append(host)
                value = owner.files.get(host)
                if self.path != "/.well-known/pki-validation/fileauth.txt" or value is None:
                    self.send_error(404)
                    return
                body = (value + "\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="fileauth", daemon=True)

    def start(self) -> FileauthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@pytest.fixture
def fileauth() -> Iterator[FileauthServer]:
    server = FileauthServer().start()
    yield server
    server.stop()

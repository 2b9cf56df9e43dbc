"""Fixtures for the simulator tests: CSRs, a running simulator, and a tiny per-Host fileauth.txt web server."""

from __future__ import annotations

import dataclasses
import http.server
import socket
import ssl
import threading
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certcentral_sim import SimConfig, SimulatorThread

FILEAUTH = "/.well-known/pki-validation/fileauth.txt"


@dataclasses.dataclass(frozen=True)
class Csr:
    key: ec.EllipticCurvePrivateKey
    pem: str


def make_csr(common_name: str = "shop.example.test") -> Csr:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
           .sign(key, hashes.SHA256()))
    return Csr(key, csr.public_bytes(serialization.Encoding.PEM).decode())


@pytest.fixture(scope="session")
def csr() -> Csr:
    return make_csr()


@dataclasses.dataclass(frozen=True)
class Page:
    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


class FileServer:
    """A threaded HTTP(S) server on 127.0.0.1:0 answering per (Host, path) from `pages`; records every request."""

    def __init__(self, *, tls: ssl.SSLContext | None = None) -> None:
        self.pages: dict[tuple[str, str], Page] = {}
        self.requests: list[tuple[str, str]] = []  # (Host header, path)
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host = self.headers.get("Host", "")
                owner.requests.append((host, self.path))
                page = owner.pages.get((host.rsplit(":", 1)[0] if host.count(":") == 1 else host, self.path))
                page = page or Page(404, b"not found")
                self.send_response(page.status)
                for k, v in page.headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(page.body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(page.body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def serve(self, host: str, body: str | bytes, *, status: int = 200, path: str = FILEAUTH,
              headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.pages[(host, path)] = Page(status, body.encode() if isinstance(body, str) else body, headers)

    def redirect(self, host: str, location: str, *, status: int = 301, path: str = FILEAUTH) -> None:
        self.serve(host, b"", status=status, path=path, headers=(("Location", location),))

    def start(self) -> FileServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def web() -> Iterator[FileServer]:
    server = FileServer().start()
    yield server
    server.stop()


@pytest.fixture
def sim() -> Iterator[SimulatorThread]:
    simulator = SimulatorThread(config=SimConfig(poll_tick_s=0.05), seed=1).start()
    yield simulator
    simulator.stop()


def closed_port() -> int:
    """A loopback port with no listener (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dv_order_body(csr_pem: str, common_name: str = "shop.example.test", *, dns_names: list[str] | None = None,
                  dcv_method: str = "http-token", **extra: object) -> dict[str, object]:
    cert: dict[str, object] = {"common_name": common_name, "csr": csr_pem, "signature_hash": "sha256"}
    if dns_names is not None:
        cert["dns_names"] = dns_names
    return {"certificate": cert, "order_validity": {"years": 1}, "dcv_method": dcv_method, "skip_approval": True,
            **extra}

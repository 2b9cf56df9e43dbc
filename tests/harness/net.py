"""Loopback helpers: free ports, waiting for a listener, tiny HTTP and TLS clients with timeouts."""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509


def free_port(ip: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (HAProxy uses SO_REUSEPORT: never share one between tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((ip, 0))
        return int(sock.getsockname()[1])


def split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


def wait_listening(addr: str, *, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(split(addr), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {addr} after {timeout_s} s")


@dataclass(frozen=True)
class HttpResult:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed_s: float


def http_get(addr: str, path: str, *, host: str | None, timeout_s: float = 5.0,
             raw_request: bytes | None = None) -> HttpResult:
    """One HTTP/1.1 GET on a fresh connection. `host=None` sends no Host header (HTTP/1.0)."""
    start = time.monotonic()
    if raw_request is not None or host is None:
        request = raw_request or f"GET {path} HTTP/1.0\r\n\r\n".encode()
        with socket.create_connection(split(addr), timeout=timeout_s) as sock:
            sock.sendall(request)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        return HttpResult(status, headers, body, time.monotonic() - start)
    conn = http.client.HTTPConnection(*split(addr), timeout=timeout_s)
    try:
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        conn.putheader("Connection", "close")
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read()
        return HttpResult(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body, time.monotonic() - start)
    finally:
        conn.close()


def tls_peer_cert(addr: str, sni: str | None, *, cafile: str | None = None, timeout_s: float = 5.0,
                  alpn: list[str] | None = None) -> tuple[x509.Certificate, str | None]:
    """Handshake (verifying against `cafile` when given) and return the served leaf and the negotiated ALPN."""
    ctx = ssl.create_default_context(cafile=cafile) if cafile else ssl._create_unverified_context()
    if not cafile:
        ctx.check_hostname = False
    if alpn:
        ctx.set_alpn_protocols(alpn)
    with socket.create_connection(split(addr), timeout=timeout_s) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return x509.load_der_x509_certificate(der), tls.selected_alpn_protocol()


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """Connects to a fixed address while SNI, certificate check and Host use the customer's name."""

    def __init__(self, addr: str, name: str, *, context: ssl.SSLContext, timeout: float) -> None:
        super().__init__(name, split(addr)[1], context=context, timeout=timeout)
        self._addr = split(addr)

    def connect(self) -> None:
        sock = socket.create_connection(self._addr, timeout=self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def https_get(addr: str, path: str, *, sni: str, cafile: str, timeout_s: float = 5.0) -> HttpResult:
    """GET https://<sni><path> sent to addr, verifying the served chain against `cafile`."""
    start = time.monotonic()
    conn = _PinnedHTTPSConnection(addr, sni, context=ssl.create_default_context(cafile=cafile), timeout=timeout_s)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
        return HttpResult(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body, time.monotonic() - start)
    finally:
        conn.close()


def haproxy_command(admin_socket: str | Path, command: str, *, timeout_s: float = 10.0) -> str:
    """One non-interactive runtime API command (tests only read; the agent is the only writer)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(admin_socket))
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()

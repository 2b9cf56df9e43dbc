"""No plaintext hop behind the edge, against real HAProxy 2.6 and 2.8 with the shipped configuration:

* a request through HAProxy reaches the demo backend (`lockstep demo-backend`, a real process) over TLS with the
  original Host, and the backend saw HAProxy's client certificate;
* the demo backend refuses clients without a certificate from the internal CA;
* HAProxy refuses a backend whose certificate is not from the internal CA, names another host, or that speaks
  plain HTTP: the client gets 503 and nothing is sent in clear.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.haproxy import HAProxyProcess, find_haproxy
from lockstep.pki import issue, make_ca
from tests.harness.agentproc import REPO_ROOT
from tests.harness.backend import TlsBackend
from tests.harness.edge import make_layout
from tests.harness.net import free_port, https_get, wait_listening
from tests.harness.pki import (
    BACKEND_NAME,
    DEFAULT_NAME,
    HAPROXY_CLIENT_NAME,
    TestPki,
    write_private,
)

pytestmark = pytest.mark.haproxy

NOW = dt.datetime.now(dt.timezone.utc)


class _PlainHandler(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:
        _PlainHandler.seen.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(params=["2.6", "2.8"], ids=["haproxy-2.6", "haproxy-2.8"])
def version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def node_dir(short_tmp: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix="mtls-", dir=short_tmp))


def _haproxy(version: str, root: Path, pki: TestPki, backend_port: int) -> HAProxyProcess:
    layout = make_layout(root, pki, backend_port=backend_port, spoe_port=free_port())
    proc = HAProxyProcess(layout, binary=find_haproxy(version), log_path=root / "haproxy.log")
    proc.start()
    return proc


@pytest.fixture
def demo_backend(pki: TestPki, node_dir: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lockstep.cli", "demo-backend", "--listen", f"127.0.0.1:{port}",
         "--cert", str(pki.backend_file), "--client-ca", str(pki.internal_ca_file), "--name", "b1"],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.DEVNULL, stderr=open(node_dir / "backend.log", "w"))
    try:
        wait_listening(f"127.0.0.1:{port}")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_request_reaches_the_demo_backend_over_mtls_with_the_original_host(
        version: str, pki: TestPki, node_dir: Path, demo_backend: str) -> None:
    haproxy = _haproxy(version, node_dir, pki, int(demo_backend.rsplit(":", 1)[1]))
    try:
        res = https_get(haproxy.layout.https_bind, "/orders?id=7", sni=DEFAULT_NAME, cafile=str(pki.edge_ca_file))
        assert res.status == 200, (node_dir / "haproxy.log").read_text()
        seen = json.loads(res.body)
        assert seen["host"].split(":")[0] == DEFAULT_NAME
        assert seen["path"] == "/orders?id=7"
        assert seen["haproxy_client_cert"] == HAPROXY_CLIENT_NAME
        assert seen["forwarded_proto"] == "https"
        assert seen["backend"] == "b1"
    finally:
        haproxy.stop()


def test_demo_backend_refuses_clients_without_an_internal_ca_certificate(
        pki: TestPki, node_dir: Path, demo_backend: str) -> None:
    host, port = demo_backend.rsplit(":", 1)
    other_ca = make_ca("Not The Internal CA", now=NOW)
    impostor = write_private(node_dir / "impostor.pem", issue(other_ca, [HAPROXY_CLIENT_NAME], now=NOW, client=True,
                                                              server=False).bundle_pem)
    for client_cert in (None, impostor):
        ctx = ssl.create_default_context(cafile=str(pki.internal_ca_file))
        if client_cert is not None:
            ctx.load_cert_chain(str(client_cert))
        # TLS 1.3: the server checks the client certificate after the client's handshake ends, so the refusal
        # arrives as an alert on the first read.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with ssl_socket(ctx, host, int(port)) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if not sock.recv(1024):
                    raise ConnectionError("closed without an answer")


def ssl_socket(ctx: ssl.SSLContext, host: str, port: int) -> ssl.SSLSocket:
    import socket

    raw = socket.create_connection((host, port), timeout=5)
    return ctx.wrap_socket(raw, server_hostname=BACKEND_NAME)


@pytest.mark.parametrize("case", ["foreign_ca", "other_name", "plaintext"])
def test_haproxy_refuses_a_backend_it_cannot_verify(version: str, pki: TestPki, node_dir: Path, case: str) -> None:
    port = free_port()
    if case == "plaintext":
        _PlainHandler.seen.clear()
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _PlainHandler)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        thread.start()
        stop = lambda: (server.shutdown(), server.server_close())
    else:
        if case == "foreign_ca":  # the right name, signed by someone else
            cert = issue(make_ca("Foreign CA", now=NOW), [BACKEND_NAME], now=NOW)
        else:  # our CA, but the certificate of another internal service
            cert = issue(pki.internal_ca, ["billing.internal.lockstep.test"], now=NOW)
        cert_file = write_private(node_dir / f"{case}.pem", cert.bundle_pem)
        backend = TlsBackend(port=port, cert_file=cert_file, client_ca=pki.internal_ca_file).start()
        stop = backend.stop
    haproxy = _haproxy(version, node_dir, pki, port)
    try:
        res = https_get(haproxy.layout.https_bind, "/secret", sni=DEFAULT_NAME, cafile=str(pki.edge_ca_file))
        assert res.status == 503, res
        assert b"hello" not in res.body
        if case == "plaintext":
            assert _PlainHandler.seen == []  # HAProxy sent a TLS ClientHello, never the HTTP request
    finally:
        haproxy.stop()
        stop()

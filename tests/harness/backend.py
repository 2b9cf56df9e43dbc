"""A TLS application server standing in for a customer's backend: mTLS only, reports the Host it saw."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from pathlib import Path


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        peer = self.connection.getpeercert()  # type: ignore[attr-defined]
        subject = dict(x[0] for x in peer["subject"]) if peer else {}
        body = json.dumps({
            "host": self.headers.get("Host"),
            "path": self.path,
            "client_cn": subject.get("commonName"),
            "client_serial": peer.get("serialNumber") if peer else None,
            "forwarded_proto": self.headers.get("X-Forwarded-Proto"),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class TlsBackend:
    """Listens on 127.0.0.1:port; only clients with a certificate from `client_ca` complete the handshake."""

    def __init__(self, *, port: int, cert_file: Path, client_ca: Path) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert_file))
        ctx.load_verify_locations(str(client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.num_tickets = 0  # as lockstep/demo_backend.py: no resumption, every connection proves a valid certificate
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self.server.daemon_threads = True
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def start(self) -> TlsBackend:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

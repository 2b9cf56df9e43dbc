"""The zero-trust data path with every certificate from the control plane's internal PKI, all real processes: a
control plane (`tls: internal`), a `lockstep agent` enrolled with a one-time bootstrap token, HAProxy (2.6 and 2.8)
whose backend client certificate and internal CA bundle the agent obtains and publishes, and a
`lockstep demo-backend` enrolled with its own token.

With lifetimes of a few seconds, every certificate on the path is renewed several times while requests flow:
HAProxy's client certificate (pushed live through the runtime API, same HAProxy PID), the backend's server
certificate (re-read by the backend), the node's identity. No request fails. Then the node is removed: the
control plane refuses it at once, it cannot renew HAProxy's client certificate, and once the last one expires the
backend refuses HAProxy too: a removed node loses access to the application servers, not only to the control plane.
"""

from __future__ import annotations

import dataclasses
import json
import os
import ssl
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from agent.haproxy import HAProxyProcess, find_haproxy
from tests.harness.agentproc import REPO_ROOT, AgentProcess
from tests.harness.cpproc import ControlPlaneProcess
from tests.harness.edge import make_layout
from tests.harness.net import free_port, https_get, wait_listening
from tests.harness.pki import BACKEND_NAME, DEFAULT_NAME, TestPki

pytestmark = pytest.mark.haproxy

LIFETIME_S = 6  # every internal certificate: renewed about every 4 s


def _pin(ca_file: Path) -> str:
    return "sha256:" + x509.load_pem_x509_certificate(ca_file.read_bytes()).fingerprint(hashes.SHA256()).hex()


def _health(addr: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://{addr}/healthz", timeout=5) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())  # type: ignore[no-any-return]
    except urllib.error.URLError:
        return {}


def _wait(what: str, check: Callable[[], bool], timeout_s: float, log: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{log()[-4000:]}")
        time.sleep(0.1)


def _backend_serial(addr: str, client_bundle: Path, ca_file: Path) -> int:
    """The serial of the certificate the backend serves now (as HAProxy would see it)."""
    import socket

    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.load_cert_chain(str(client_bundle))
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=BACKEND_NAME) as tls:
            der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


@pytest.mark.parametrize("version", ["2.6", "2.8"])
def test_internal_pki_end_to_end_with_rotation_and_removal(version: str, short_tmp: Path, pki: TestPki) -> None:
    root = Path(tempfile.mkdtemp(prefix="zt-", dir=short_tmp))
    cp = ControlPlaneProcess(
        root / "cp", issuer_url=f"http://127.0.0.1:{free_port()}", issuer_api_key="unused", tls_internal=True,
        nodes=[], extra={"pki": {"node_validity_s": LIFETIME_S, "edge_client_validity_s": LIFETIME_S,
                                 "backend_validity_s": LIFETIME_S}}).start()
    backend: subprocess.Popen[bytes] | None = None
    agent: AgentProcess | None = None
    haproxy: HAProxyProcess | None = None
    try:
        pin = _pin(cp.ca_file)
        status, node = cp.api("POST", "/v1/nodes", {"id": "edge-z"})
        assert status == 201, node
        status, app = cp.api("POST", "/v1/backends", {"id": "app-1", "names": [BACKEND_NAME]})
        assert status == 201, app

        backend_addr = f"127.0.0.1:{free_port()}"
        backend_log = root / "backend.log"
        backend = subprocess.Popen(
            [sys.executable, "-m", "lockstep.cli", "demo-backend", "--listen", backend_addr, "--name", "app-1",
             "--enroll", cp.url, "--token", app["bootstrap_token"], "--ca-sha256", pin,
             "--state-dir", str(root / "backend")],
            cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            stdout=subprocess.DEVNULL, stderr=backend_log.open("w"))
        wait_listening(backend_addr, timeout_s=30)
        assert stat.S_IMODE((root / "backend" / "backend.pem").stat().st_mode) == 0o600

        edge_dir = root / "edge"
        layout = make_layout(edge_dir, pki, backend_port=int(backend_addr.rsplit(":", 1)[1]), spoe_port=free_port())
        (edge_dir / "pki").mkdir(mode=0o700)
        layout = dataclasses.replace(layout, backend_client_cert=edge_dir / "pki" / "edge-client.pem",
                                     backend_ca=edge_dir / "pki" / "internal-ca.pem")
        status_addr = f"127.0.0.1:{free_port()}"
        agent = AgentProcess(
            workdir=root / "agent", node="edge-z", spoe_port=int(layout.spoe_addr.rsplit(":", 1)[1]),
            control_plane_url=cp.url, bearer_token=None,
            control_plane={"bootstrap_token": node["bootstrap_token"], "ca_sha256": pin, "wait_s": 2.0},
            extra={"status": {"host": "127.0.0.1", "port": int(status_addr.rsplit(":", 1)[1])},
                   "haproxy": {"admin_socket": str(layout.admin_socket), "cert_dir": str(layout.cert_dir),
                               "https_addr": layout.https_bind,
                               "backend_client_cert": str(layout.backend_client_cert),
                               "backend_ca": str(layout.backend_ca)}}).start()
        logs = lambda: agent.log() + "\n--- backend\n" + backend_log.read_text()
        # HAProxy needs both files before it starts (the compose stack's HAProxy waits for them the same way).
        _wait("HAProxy's client certificate and CA from the agent",
              lambda: layout.backend_client_cert.exists() and layout.backend_ca.exists(), 30, logs)
        for path in (layout.backend_client_cert, layout.backend_ca):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
        haproxy = HAProxyProcess(layout, binary=find_haproxy(version), log_path=root / "haproxy.log")
        haproxy.start()
        pid = haproxy.pid

        client_serials, backend_serials, failures = set(), set(), []
        deadline = time.monotonic() + 60
        while (len(client_serials) < 3 or len(backend_serials) < 3) and time.monotonic() < deadline:
            res = https_get(layout.https_bind, "/orders", sni=DEFAULT_NAME, cafile=str(pki.edge_ca_file))
            if res.status != 200:
                failures.append((res.status, res.body[:200]))
            else:
                seen = json.loads(res.body)
                assert seen["host"].split(":")[0] == DEFAULT_NAME and seen["backend"] == "app-1"
                assert seen["haproxy_client_cert"] == "edge.edge-z"
                client_serials.add(seen["haproxy_client_serial"])
            backend_serials.add(_backend_serial(backend_addr, layout.backend_client_cert, layout.backend_ca))
            time.sleep(0.2)
        assert failures == [], (failures[:3], (root / "haproxy.log").read_text()[-2000:])
        assert len(client_serials) >= 3 and len(backend_serials) >= 3, (client_serials, backend_serials, logs())
        assert haproxy.pid == pid and haproxy.is_running()  # every renewal taken live
        health = _health(status_addr)
        assert health["identity"]["renewals"] >= 2 and health["edge_pki"]["published"] >= 3, health
        assert health["edge_pki"]["errors"] == 0, health

        # Removed: refused by the control plane at once; HAProxy's client certificate runs out and the backend,
        # which only trusts the internal CA's unexpired certificates, refuses the node.
        cp.cli("nodes", "remove", "edge-z")
        _wait("the agent to report the removal", lambda: _health(status_addr).get("access_denied") is True, 20, logs)
        _wait("the backend to refuse the removed node",
              # TLS 1.3: the backend checks the client certificate after HAProxy's Finished, so HAProxy has sent
              # the request when the alert comes back: 502 (503 when the handshake itself fails)
              lambda: https_get(layout.https_bind, "/", sni=DEFAULT_NAME,
                                cafile=str(pki.edge_ca_file)).status in (502, 503),
              3 * LIFETIME_S, logs)
        assert haproxy.is_running() and agent.is_running()
    finally:
        if agent is not None:
            agent.stop()
        if haproxy is not None:
            haproxy.stop()
        if backend is not None:
            backend.terminate()
            backend.wait(10)
        cp.stop()

"""A real `lockstep agent` process enrolled in the internal PKI of a real control plane (`tls: internal`), the
compose way: the node and its bootstrap token come from the control plane's configuration file, the agent trusts the
control plane by the CA's SHA-256 pin and renews its short-lived certificate while syncing. Removal: the agent
reports it and keeps what it has. Then the same with HAProxy: a domain provisioned through the CertCentral simulator
is served by a node whose agent enrolled, and keeps being served after the node is removed."""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import stat
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

from certcentral_sim import SimulatorThread
from controlplane.store import load_kek_file, open_store
from controlplane.sync.state import Token
from tests.harness.agentproc import AgentProcess
from tests.harness.cpproc import ControlPlaneProcess
from tests.harness.edge import Edge
from tests.harness.net import free_port, split
from tests.harness.pki import TestPki

FILEAUTH = "/.well-known/pki-validation/fileauth.txt"


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except urllib.error.URLError:
        return 0, b""


def _health(addr: str) -> dict[str, Any]:
    status, body = _get(f"http://{addr}/healthz")
    return json.loads(body) if status else {}


def _wait(what: str, check: Callable[[], bool], timeout_s: float, log: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{log()[-4000:]}")
        time.sleep(0.1)


def _pin(ca_file: Path) -> str:
    return "sha256:" + x509.load_pem_x509_certificate(ca_file.read_bytes()).fingerprint(hashes.SHA256()).hex()


async def test_agent_enrolls_from_config_token_renews_and_reports_removal(short_tmp: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="pa-", dir=short_tmp))
    token_file = root / "edge-a.token"
    token_file.write_text("lsbt_compose-provided-token-0123456789\n")
    cp = ControlPlaneProcess(
        root / "cp", issuer_url=f"http://127.0.0.1:{free_port()}", issuer_api_key="unused", tls_internal=True,
        nodes=[{"id": "edge-a", "http": "127.0.0.1:1", "https": "127.0.0.1:2",
                "bootstrap_token_file": str(token_file)}],
        extra={"pki": {"node_validity_s": 8}}).start()
    agent: AgentProcess | None = None
    try:
        status_port = free_port()
        agent = AgentProcess(
            workdir=root / "agent", node="edge-a", spoe_port=free_port(), control_plane_url=cp.url,
            bearer_token=None, control_plane={"bootstrap_token_file": str(token_file),
                                              "ca_sha256": _pin(cp.ca_file), "wait_s": 2.0},
            extra={"status": {"host": "127.0.0.1", "port": status_port}}).start()
        addr = f"127.0.0.1:{status_port}"
        _wait("enrollment and a first sync", lambda: _health(addr).get("ready") is True, 30, agent.log)
        health = _health(addr)
        assert health["identity"]["enrolled"] and health["identity"]["id"] == "edge-a"
        identity_file = root / "agent" / "state" / "identity" / "identity.pem"
        assert stat.S_IMODE(identity_file.stat().st_mode) == 0o600
        # The short-lived certificate is renewed (8 s lifetime: about every 5 s) while the agent keeps syncing.
        _wait("two renewals", lambda: _health(addr)["identity"]["renewals"] >= 3, 40, agent.log)
        async with await open_store(cp.store_url, kek=load_kek_file(cp.workdir / "kek")) as store:
            for i in range(3):
                await store.put_token(Token(f"a{i}.example.test", FILEAUTH, f"v{i}",
                                            dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=10)))
        _wait("the tokens", lambda: _health(addr)["tokens"] == 3, 20, agent.log)
        health = _health(addr)
        assert health["sync"]["failures"] == 0 and not health["access_denied"]
        _, metrics = _get(f"http://{addr}/metrics")
        text = metrics.decode()
        assert "lockstep_agent_identity_not_after_timestamp_seconds" in text
        assert "lockstep_agent_sync_failures 0.0" in text, text
        # Removed: the next request is refused; the agent says so and keeps the tokens it has.
        cp.cli("nodes", "remove", "edge-a")
        _wait("the agent to report the removal", lambda: _health(addr).get("access_denied") is True, 30, agent.log)
        health = _health(addr)
        assert health["tokens"] == 3 and agent.is_running()
        assert "403" in (health["sync"]["last_error"] or "") or health["identity"]["removed"]
        _, metrics = _get(f"http://{addr}/metrics")
        assert "lockstep_agent_control_plane_access_denied 1.0" in metrics.decode()
        assert identity_file.exists()
        # The token in the configuration was spent once and is never registered again after a restart.
        cp.stop()
        cp.start()
        status, body = cp.api("GET", "/v1/nodes")
        node = next(n for n in body["nodes"] if n["id"] == "edge-a")
        assert node["removed"] and node["pending_tokens"] == 0
    finally:
        if agent is not None:
            agent.stop()
        cp.stop()


@pytest.mark.haproxy
def test_haproxy_node_with_an_enrolled_agent_serves_a_provisioned_domain(short_tmp: Path, pki: TestPki) -> None:
    root = Path(tempfile.mkdtemp(prefix="ph-", dir=short_tmp))
    sim = SimulatorThread().start()
    edge: Edge | None = None
    cp: ControlPlaneProcess | None = None
    try:
        token_file = root / "edge-h.token"
        token_file.write_text("lsbt_haproxy-node-token-0123456789\n")
        cp_port = free_port()
        cp_url = f"https://127.0.0.1:{cp_port}"
        ca_file = root / "cp" / "internal-ca.pem"  # written by the control plane harness once it is up
        edge = Edge("2.6", root / "n0", pki, backend_port=free_port(), node="edge-h", ip="127.0.0.2",
                    control_plane_url=cp_url, bearer_token=None,
                    control_plane={"bootstrap_token_file": str(token_file), "ca_file": str(ca_file)})
        cp = ControlPlaneProcess(
            root / "cp", issuer_url=sim.url, issuer_api_key=sim.api_key, port=cp_port, tls_internal=True,
            nodes=[{"id": "edge-h", "http": edge.layout.http_bind, "https": edge.layout.https_bind,
                    "bootstrap_token_file": str(token_file)}],
            pipeline={"retry_s": [0.5, 1.0, 2.0]}).start()
        assert cp.ca_file == ca_file
        edge.start()
        name = "enrolled.example.test"
        sim.set_resolve({name: [edge.layout.http_bind]})
        cp.cli("domains", "add", name)
        cp.wait_status(name, "deployed", 90)
        assert edge.health()["identity"]["id"] == "edge-h"
        root_file = root / "sim-root.pem"
        root_file.write_text(sim.root_pem)
        ctx = ssl.create_default_context(cafile=str(root_file))

        def served_leaf() -> bytes:
            with socket.create_connection(split(edge.https), timeout=5) as raw:
                with ctx.wrap_socket(raw, server_hostname=name) as tls:  # chain and name verified
                    der = tls.getpeercert(binary_form=True)
                    assert der is not None
                    return der

        before = served_leaf()
        cp.cli("nodes", "remove", "edge-h")
        deadline = time.monotonic() + 40
        while not edge.health().get("access_denied"):
            assert time.monotonic() < deadline, edge.logs()
            time.sleep(0.2)
        # Removed from the control plane, the node still serves what it has (nothing wiped), verified by TLS.
        assert served_leaf() == before
        assert (edge.layout.cert_dir / f"{name}.pem").exists()
        assert edge.health()["certificates"]["applied"] == 1
    finally:
        if edge is not None:
            edge.close()
        if cp is not None:
            cp.stop()
        sim.stop()

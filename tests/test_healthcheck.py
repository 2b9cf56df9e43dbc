"""lockstep/healthcheck.py, the role images' HEALTHCHECK: the pure planners and verdicts, then the real thing against
a real control plane process (plain HTTP, `tls: internal`, `tls_cert` files) and a real agent that enrolls and is
then removed. tests/test_compose.py runs the same checks inside the images, as Docker's healthchecks."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from agent.config import parse_config as parse_agent_config
from lockstep.healthcheck import (
    HealthcheckError,
    Probe,
    agent_probe,
    agent_verdict,
    controlplane_probe,
    controlplane_verdict,
    main,
    run_probe,
)
from lockstep.pki import issue, make_ca
from tests.harness.agentproc import REPO_ROOT, AgentProcess
from tests.harness.cpproc import ControlPlaneProcess
from tests.harness.net import free_port

NOW = dt.datetime.now(dt.UTC)


def _agent_cfg(status: dict[str, object] | None) -> object:
    raw: dict[str, object] = {"node": "n1", "control_plane": {"url": "http://127.0.0.1:1", "bearer_token": "t"}}
    if status is not None:
        raw["status"] = status
    return parse_agent_config(raw)


# -- pure ------------------------------------------------------------------------------------------------------------


def test_agent_probe_dials_the_status_address_and_loopback_for_a_wildcard() -> None:
    assert agent_probe(_agent_cfg({"host": "127.0.0.3", "port": 9100})).url == "http://127.0.0.3:9100/healthz"
    assert agent_probe(_agent_cfg({"host": "0.0.0.0", "port": 9100})).host == "127.0.0.1"
    with pytest.raises(HealthcheckError, match="status.port is 0"):
        agent_probe(_agent_cfg(None))


def test_controlplane_probe_follows_listen_and_tls_mode() -> None:
    base = Path("/etc/cp")
    plain = controlplane_probe({"listen": "127.0.0.1:8000"}, base=base)
    assert plain == Probe(host="127.0.0.1", port=8000, tls="none")
    internal = controlplane_probe({"listen": "0.0.0.0:8000", "tls": "internal", "tls_names": ["cp.internal"]},
                                  base=base)
    # Dialled on loopback, verified for a name the serving certificate carries.
    assert (internal.host, internal.tls, internal.server_hostname) == ("127.0.0.1", "internal", "cp.internal")
    assert internal.url == "https://127.0.0.1:8000/healthz"
    listed = controlplane_probe({"listen": "127.0.0.1:8000", "tls": "internal", "tls_names": ["x", "127.0.0.1"]},
                                base=base)
    assert listed.server_hostname == "127.0.0.1"
    default_names = controlplane_probe({"listen": "127.0.0.1:8000", "tls": "internal"}, base=base)
    assert default_names.server_hostname == "127.0.0.1"
    files = controlplane_probe({"listen": "[::]:8443", "tls_cert": "tls/chain.pem"}, base=base)
    assert (files.host, files.tls, files.trust_file) == ("::1", "files", base / "tls" / "chain.pem")
    assert files.url == "https://[::1]:8443/healthz"
    for bad in ({}, {"listen": 8000}, {"listen": "127.0.0.1"}, {"listen": "127.0.0.1:http"}, ["listen"]):
        with pytest.raises(HealthcheckError, match="listen"):
            controlplane_probe(bad, base=base)  # type: ignore[arg-type]


def test_agent_verdict() -> None:
    ready = {"ready": True, "node": "node1", "sync": {"revision": 4, "synced": True}, "tokens": 2,
             "access_denied": False, "certificates": {"applied": 3}}
    assert agent_verdict(200, json.dumps(ready).encode()) == (
        True, "node1: ready, revision 4, 2 token(s), 3 certificate(s)")
    # Still serving what it has, but refused by the control plane: unhealthy.
    healthy, line = agent_verdict(200, json.dumps({**ready, "access_denied": True,
                                                    "sync": {"last_error": "403"}}).encode())
    assert not healthy and "access_denied" in line and "403" in line
    enrolling = {"ready": False, "node": "node1", "identity": {"enrolled": False},
                 "sync": {"synced": False, "failures": 0, "last_error": None}}
    healthy, line = agent_verdict(503, json.dumps(enrolling).encode())
    assert not healthy and "not enrolled yet" in line
    healthy, line = agent_verdict(503, json.dumps({**enrolling, "identity": {"enrolled": True}}).encode())
    assert not healthy and "no desired state yet" in line
    assert agent_verdict(502, b"<html>bad gateway</html>")[0] is False
    assert agent_verdict(200, b'{"ready": false}')[0] is False


def test_controlplane_verdict() -> None:
    assert controlplane_verdict(200, b'{"ready": true, "revision": 7, "domains": {}}') == (
        True, "ready, revision 7, domains {}")
    assert controlplane_verdict(500, b"oops")[0] is False
    assert controlplane_verdict(200, b"[]")[0] is False


# -- real processes --------------------------------------------------------------------------------------------------


def _cli(role: str, config: Path) -> subprocess.CompletedProcess[str]:
    """The command the images' HEALTHCHECK runs."""
    return subprocess.run([sys.executable, "-m", "lockstep.healthcheck", role, "--config", str(config)],
                          cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True,
                          text=True, timeout=60, check=False)


def _check(role: str, config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main([role, "--config", str(config)])
    return code, capsys.readouterr().out.strip()


def _wait(what: str, check: Callable[[], bool], timeout_s: float, log: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{log()[-4000:]}")
        time.sleep(0.2)


def _pin(ca_file: Path) -> str:
    return "sha256:" + x509.load_pem_x509_certificate(ca_file.read_bytes()).fingerprint(hashes.SHA256()).hex()


def test_controlplane_over_plain_http_and_tls_files(short_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(tempfile.mkdtemp(prefix="hc-", dir=short_tmp))
    cp = ControlPlaneProcess(root / "plain", issuer_url=f"http://127.0.0.1:{free_port()}", issuer_api_key="x",
                             nodes=[]).start()
    try:
        code, out = _check("controlplane", cp.config_file, capsys)
        assert code == 0 and out.startswith("healthy: ready, revision"), out
    finally:
        cp.stop()
    code, out = _check("controlplane", cp.config_file, capsys)
    assert code == 1 and out.startswith("unhealthy: http://127.0.0.1:") and "refused" in out, out

    # tls_cert: the file's certificates are the anchors. A served certificate of another CA does not verify.
    ca = make_ca("Healthcheck Test CA", now=NOW)
    served = issue(ca, ["cp.example.test"], now=NOW)
    (root / "files").mkdir()
    (root / "files" / "chain.pem").write_text(served.cert_pem + served.chain_pem)
    (root / "files" / "key.pem").write_text(served.key_pem)
    cp = ControlPlaneProcess(root / "files", issuer_url=f"http://127.0.0.1:{free_port()}", issuer_api_key="x",
                             nodes=[], extra={"tls_cert": "chain.pem", "tls_key": "key.pem"})
    cp.url = cp.url.replace("http://", "https://")  # the harness's readiness probe: any answer over TLS
    cp.tls_internal = True
    cp.start()
    try:
        code, out = _check("controlplane", cp.config_file, capsys)
        assert code == 0 and out.startswith("healthy: ready"), out
        other = issue(make_ca("Another CA", now=NOW), ["cp.example.test"], now=NOW)
        (root / "files" / "other.pem").write_text(other.cert_pem)
        with pytest.raises(HealthcheckError, match="does not verify"):
            run_probe(Probe(host="127.0.0.1", port=cp.port, tls="files", trust_file=root / "files" / "other.pem"))
    finally:
        cp.stop()


def test_internal_tls_control_plane_and_an_agent_until_its_removal(
        short_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(tempfile.mkdtemp(prefix="hc-", dir=short_tmp))
    token_file = root / "edge-a.token"
    token_file.write_text("lsbt_healthcheck-test-token-0123456789\n")
    cp = ControlPlaneProcess(
        root / "cp", issuer_url=f"http://127.0.0.1:{free_port()}", issuer_api_key="unused", tls_internal=True,
        nodes=[{"id": "edge-a", "http": "127.0.0.1:1", "https": "127.0.0.1:2",
                "bootstrap_token_file": str(token_file)}]).start()
    agent: AgentProcess | None = None
    try:
        # The images' command line, exit status and output: HTTPS verified against the internal CA.
        res = _cli("controlplane", cp.config_file)
        assert res.returncode == 0 and res.stdout.startswith("healthy: ready, revision"), res
        # The same verification fails for a name the serving certificate does not carry.
        with pytest.raises(HealthcheckError, match="does not verify"):
            run_probe(Probe(host="127.0.0.1", port=cp.port, tls="internal", server_hostname="elsewhere.test"))
        plain = yaml.safe_load(cp.config_file.read_text())
        plain.pop("tls")
        (root / "cp" / "plain.yaml").write_text(yaml.safe_dump(plain))
        code, out = _check("controlplane", root / "cp" / "plain.yaml", capsys)  # HTTP to an HTTPS port
        assert code == 1 and out.startswith(f"unhealthy: http://127.0.0.1:{cp.port}/healthz: "), out

        agent = AgentProcess(
            workdir=root / "agent", node="edge-a", spoe_port=free_port(), control_plane_url=cp.url,
            bearer_token=None, control_plane={"bootstrap_token_file": str(token_file),
                                              "ca_sha256": _pin(cp.ca_file), "wait_s": 2.0},
            extra={"status": {"host": "0.0.0.0", "port": free_port()}}).start()

        def agent_health() -> tuple[int, str]:
            return _check("agent", agent.config_file, capsys)  # type: ignore[union-attr]

        _wait("the agent healthy", lambda: agent_health()[0] == 0, 30, agent.log)
        assert agent_health()[1].startswith("healthy: edge-a: ready, revision"), agent_health()
        res = _cli("agent", agent.config_file)
        assert res.returncode == 0 and res.stdout.startswith("healthy: edge-a: ready"), res

        cp.cli("nodes", "remove", "edge-a")
        _wait("the agent unhealthy", lambda: agent_health()[0] == 1, 30, agent.log)
        code, out = agent_health()
        assert out.startswith("unhealthy: edge-a: the control plane refuses this node (access_denied"), out
    finally:
        if agent is not None:
            agent.stop()
        cp.stop()
    code, out = _check("agent", root / "agent" / "agent.yaml", capsys)
    assert code == 1 and "refused" in out, out

"""`python -m lockstep.stack init`, the compose stack's setup, against plain directories standing in for its volumes:
what it writes (read back with the agent's and the control plane's own config loaders), the modes, what a second
run keeps, what it renews, and its errors. The same code runs in the stack itself in tests/test_compose.py."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from agent.config import parse_config as parse_agent_config
from controlplane.serve import load_config as load_controlplane_config
from controlplane.store import load_kek_file
from lockstep.stack import NODE_DIR, StackError, init_stack, main, settings_from_env

NOW = dt.datetime.now(dt.timezone.utc)
ME = (os.getuid(), os.getgid())
ENV = {"LOCKSTEP_NODE_IPS": "127.0.0.2,127.0.0.3,127.0.0.4", "LOCKSTEP_NODE_HTTP_PORT": "18080",
       "LOCKSTEP_CONTROLPLANE_ADDR": "127.0.0.1:18000", "LOCKSTEP_ISSUER_URL": "http://127.0.0.1:18099/services/v2"}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for volume in ("ca", "controlplane", "edge-pki", "backend-pki", "node1", "node2", "node3"):
        (tmp_path / volume).mkdir()
    return tmp_path


def _leaf(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def test_first_run_writes_private_files_the_services_can_load(root: Path) -> None:
    settings = settings_from_env(ENV)
    written = init_stack(root, settings, now=NOW, owner=ME)
    assert "controlplane/controlplane.yaml" in written and "node3/agent.yaml" in written
    for path in root.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), path
        assert (path.stat().st_uid, path.stat().st_gid) == ME
    # The control plane's loader reads it, secrets included (files relative to the config).
    cp = load_controlplane_config(root / "controlplane" / "controlplane.yaml")
    assert cp.listen == "127.0.0.1:18000"
    assert [(n.node_id, n.http, n.https) for n in cp.nodes] == [
        ("node1", "127.0.0.2:18080", "127.0.0.2:8443"), ("node2", "127.0.0.3:18080", "127.0.0.3:8443"),
        ("node3", "127.0.0.4:18080", "127.0.0.4:8443")]
    assert cp.issuers[0].url == "http://127.0.0.1:18099/services/v2" and cp.kek_file is not None
    load_kek_file(cp.kek_file)
    assert len(cp.api_token) >= 32
    # Each agent presents its node's token, and names paths under the volume its HAProxy shares.
    for i, node in enumerate(cp.nodes):
        agent = parse_agent_config(yaml.safe_load((root / f"node{i + 1}" / "agent.yaml").read_text()))
        assert agent.node == node.node_id and agent.control_plane.bearer_token == node.bearer_token
        assert agent.control_plane.url == "http://127.0.0.1:18000"
        assert agent.haproxy is not None and agent.haproxy.cert_dir == Path(NODE_DIR / "certs")
        assert agent.spoe.host == settings.node_ips[i] and agent.status.host == settings.node_ips[i]
        assert (root / f"node{i + 1}" / "run").is_dir() and (root / f"node{i + 1}" / "certs").is_dir()
    assert len({n.bearer_token for n in cp.nodes}) == 3
    # PKI: every leaf chains to the internal CA both sides trust; the CA key stays in the ca volume.
    ca = x509.load_pem_x509_certificate((root / "edge-pki" / "internal-ca.pem").read_bytes())
    both_sides = {(root / pki / "internal-ca.pem").read_bytes() for pki in ("edge-pki", "backend-pki")}
    assert len(both_sides) == 1
    for leaf in ("edge-pki/default.pem", "edge-pki/edge-client.pem", "backend-pki/backend.pem"):
        _leaf(root / leaf).verify_directly_issued_by(ca)
        assert b"PRIVATE KEY" in (root / leaf).read_bytes()
    ca_key = (root / "ca" / "ca.pem").read_bytes().split(b"-----BEGIN PRIVATE KEY-----")[1][:64]
    assert not [p for p in root.rglob("*") if p.is_file() and p.parent.name != "ca" and ca_key in p.read_bytes()]
    san = _leaf(root / "backend-pki" / "backend.pem").extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["app.internal.lockstep.test"]


def test_second_run_keeps_secrets_and_rewrites_only_what_changed(root: Path) -> None:
    init_stack(root, settings_from_env(ENV), now=NOW, owner=ME)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert init_stack(root, settings_from_env(ENV), now=NOW, owner=ME) == []
    assert before == {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    # A new port: configuration rewritten, secrets and certificates untouched.
    env = {**ENV, "LOCKSTEP_NODE_HTTPS_PORT": "18443"}
    written = init_stack(root, settings_from_env(env), now=NOW, owner=ME)
    assert sorted(written) == ["controlplane/controlplane.yaml", "node1/agent.yaml", "node2/agent.yaml",
                               "node3/agent.yaml"]
    assert "127.0.0.3:18443" in (root / "node2" / "agent.yaml").read_text()
    # A new backend name: only the backend's certificate is reissued.
    env["LOCKSTEP_BACKEND_NAME"] = "app2.internal.test"
    written = init_stack(root, settings_from_env(env), now=NOW, owner=ME)
    assert written == ["backend-pki/backend.pem"]
    # An operator token from the environment replaces the stored one.
    token = "operator-token-from-env-0123456789"
    written = init_stack(root, settings_from_env({**env, "LOCKSTEP_API_TOKEN": token}), now=NOW, owner=ME)
    assert written == ["controlplane/api-token"]
    assert load_controlplane_config(root / "controlplane" / "controlplane.yaml").api_token == token


def test_leaves_close_to_expiry_are_reissued_under_the_same_ca(root: Path) -> None:
    init_stack(root, settings_from_env(ENV), now=NOW, owner=ME)
    ca_before = (root / "ca" / "ca.pem").read_bytes()
    old = _leaf(root / "edge-pki" / "default.pem")
    later = old.not_valid_after_utc - dt.timedelta(days=10)
    written = init_stack(root, settings_from_env(ENV), now=later, owner=ME)
    assert sorted(written) == ["backend-pki/backend.pem", "edge-pki/default.pem", "edge-pki/edge-client.pem"]
    assert (root / "ca" / "ca.pem").read_bytes() == ca_before
    assert _leaf(root / "edge-pki" / "default.pem").not_valid_after_utc > old.not_valid_after_utc


def test_a_broken_leaf_is_replaced(root: Path) -> None:
    init_stack(root, settings_from_env(ENV), now=NOW, owner=ME)
    (root / "edge-pki" / "edge-client.pem").write_text("not a certificate\n")
    assert init_stack(root, settings_from_env(ENV), now=NOW, owner=ME) == ["edge-pki/edge-client.pem"]


@pytest.mark.parametrize("env,variable", [
    ({"LOCKSTEP_NODE_IPS": "127.0.0.2,localhost"}, "LOCKSTEP_NODE_IPS"),
    ({"LOCKSTEP_NODE_IPS": "127.0.0.2,127.0.0.2"}, "LOCKSTEP_NODE_IPS"),
    ({"LOCKSTEP_NODE_HTTP_PORT": "80a"}, "LOCKSTEP_NODE_HTTP_PORT"),
    ({"LOCKSTEP_NODE_SPOE_PORT": "70000"}, "LOCKSTEP_NODE_SPOE_PORT"),
    ({"LOCKSTEP_CONTROLPLANE_ADDR": "127.0.0.1"}, "LOCKSTEP_CONTROLPLANE_ADDR"),
    ({"LOCKSTEP_ISSUER_URL": "ftp://x"}, "LOCKSTEP_ISSUER_URL"),
    ({"LOCKSTEP_API_TOKEN": "short"}, "LOCKSTEP_API_TOKEN"),
    ({"LOCKSTEP_BACKEND_NAME": "bad name"}, "LOCKSTEP_BACKEND_NAME"),
])
def test_bad_settings_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(StackError, match=variable):
        settings_from_env(env)


def test_missing_volume_and_the_command_line(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (root / "node3").rmdir()
    with pytest.raises(StackError, match="node3 volume"):
        init_stack(root, settings_from_env(ENV), now=NOW, owner=ME)
    owner = f"{ME[0]}:{ME[1]}"
    assert main(["init", "--root", str(root), "--owner", owner], env=ENV) == 2
    assert "node3" in capsys.readouterr().err
    (root / "node3").mkdir()
    assert main(["init", "--root", str(root), "--owner", owner], env=ENV) == 0
    out = capsys.readouterr().out
    assert "file(s) written" in out and "node3/agent.yaml" in out
    token = (root / "controlplane" / "api-token").read_text().strip()
    assert token not in out  # names only, never values
    assert main(["init", "--root", str(root), "--owner", owner], env={**ENV, "LOCKSTEP_NODE_IPS": "x"}) == 2

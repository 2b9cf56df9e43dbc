"""`python -m lockstep.stack init`, the compose stack's setup, against plain directories standing in for its volumes:
what it writes (read back with the agent's and the control plane's own config loaders), the modes, what a second
run keeps, and its errors; then a real control plane started on what it wrote (in-process, its store and address
moved to this machine) serves the CA whose pin the agents got, and every node's and backend's token enrolls exactly
once. The same code runs in the stack itself in tests/test_compose.py."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import random
import stat
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from agent.config import parse_config as parse_agent_config
from controlplane.serve import load_config as load_controlplane_config
from controlplane.serve import serve
from controlplane.store import generate_kek, load_kek_file
from lockstep import cli
from lockstep.enroll import IdentityManager, Refused
from lockstep.stack import (
    BACKEND_IDS,
    DEFAULT_CERT_NAME,
    EDGE_CA,
    EDGE_CLIENT_CERT,
    NODE_DIR,
    StackError,
    backend_command_files,
    init_stack,
    main,
    settings_from_env,
)
from tests.harness.net import free_port

NOW = dt.datetime.now(dt.timezone.utc)
ME = (os.getuid(), os.getgid())
VOLUMES = ("controlplane", "edge-default", "backend1", "backend2", "node1", "node2", "node3")
ENV = {"LOCKSTEP_NODE_IPS": "127.0.0.2,127.0.0.3,127.0.0.4", "LOCKSTEP_NODE_HTTP_PORT": "18080",
       "LOCKSTEP_CONTROLPLANE_ADDR": "127.0.0.1:18000", "LOCKSTEP_ISSUER_URL": "http://127.0.0.1:18099/services/v2"}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for volume in VOLUMES:
        (tmp_path / volume).mkdir()
    return tmp_path


def _leaf(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def _cli_pin(root: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """What `lockstep controlplane ca --pin` (the documented command) says about the store init wrote."""
    raw = yaml.safe_load((root / "controlplane" / "controlplane.yaml").read_text())
    raw["store_url"] = f"sqlite://{root}/controlplane/store.db"  # the container's path, moved here
    config = root / "controlplane" / "cli-copy.yaml"
    config.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert cli.main(["controlplane", "ca", "--config", str(config), "--pin"]) == 0
    config.unlink()
    return capsys.readouterr().out.strip()


def test_first_run_writes_private_files_the_services_can_load(root: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    settings = settings_from_env(ENV)
    written = init_stack(root, settings, now=NOW, owner=ME)
    assert {"controlplane/controlplane.yaml", "controlplane/store.db", "node3/agent.yaml",
            "backend2/bootstrap-token"} <= set(written)
    for path in root.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), path
        assert (path.stat().st_uid, path.stat().st_gid) == ME
    # The control plane's loader reads it, secrets included (files relative to the config).
    cp = load_controlplane_config(root / "controlplane" / "controlplane.yaml")
    assert cp.listen == "127.0.0.1:18000"
    assert cp.tls_internal and "127.0.0.1" in cp.tls_names  # the address agents and backends dial
    assert (cp.pki.validity.node_s, cp.pki.validity.edge_client_s, cp.pki.validity.backend_s) == (
        86400, 86400, 7 * 86400)
    assert [(n.node_id, n.http, n.https) for n in cp.nodes] == [
        ("node1", "127.0.0.2:18080", "127.0.0.2:8443"), ("node2", "127.0.0.3:18080", "127.0.0.3:8443"),
        ("node3", "127.0.0.4:18080", "127.0.0.4:8443")]
    assert all(n.bearer_token is None and n.client_cert_fingerprint is None for n in cp.nodes)  # PKI nodes only
    assert [(b.backend_id, b.names) for b in cp.backends] == [
        ("backend1", ("app.internal.lockstep.test",)), ("backend2", ("app.internal.lockstep.test",))]
    assert cp.issuers[0].url == "http://127.0.0.1:18099/services/v2" and cp.kek_file is not None
    load_kek_file(cp.kek_file)
    assert len(cp.api_token) >= 32
    # One-time tokens: each distinct, in the control plane's format, the same value on both sides.
    tokens = [n.bootstrap_token for n in cp.nodes] + [b.bootstrap_token for b in cp.backends]
    assert len(set(tokens)) == 5 and all(t and t.startswith("lsbt_") and len(t) > 40 for t in tokens)
    pin = _cli_pin(root, capsys)
    assert pin.startswith("sha256:") and len(pin) == 71
    for i, node in enumerate(cp.nodes):
        agent = parse_agent_config(yaml.safe_load((root / f"node{i + 1}" / "agent.yaml").read_text()))
        assert agent.node == node.node_id and agent.control_plane.bearer_token is None
        assert agent.control_plane.url == "https://127.0.0.1:18000" and agent.control_plane.ca_sha256 == pin
        assert agent.control_plane.bootstrap_token_file == Path(NODE_DIR / "bootstrap-token")
        assert (root / f"node{i + 1}" / "bootstrap-token").read_text().strip() == node.bootstrap_token
        # HAProxy's backend-facing files: written by the agent on the node volume HAProxy shares, not in certs/.
        assert agent.haproxy is not None and agent.haproxy.cert_dir == Path(NODE_DIR / "certs")
        assert (agent.haproxy.backend_client_cert, agent.haproxy.backend_ca) == (Path(EDGE_CLIENT_CERT), Path(EDGE_CA))
        assert Path(EDGE_CA).parent != agent.haproxy.cert_dir
        assert agent.spoe.host == settings.node_ips[i] and agent.status.host == settings.node_ips[i]
        for sub in ("run", "certs", "pki"):
            assert (root / f"node{i + 1}" / sub).is_dir()
    for backend, token in zip(cp.backends, tokens[3:]):
        assert backend_command_files(pin, str(token)) == {
            name: (root / backend.backend_id / name).read_bytes() for name in ("bootstrap-token", "ca-sha256")}
    # No CA key anywhere on disk: it lives sealed in the store, and nothing else of the internal PKI is pre-made.
    assert not [p for p in root.rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()
                and p.name != "default.pem"]
    default = _leaf(root / "edge-default" / "default.pem")
    san = default.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == [DEFAULT_CERT_NAME]


def test_second_run_keeps_secrets_and_rewrites_only_what_changed(root: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    init_stack(root, settings_from_env(ENV), now=NOW, owner=ME)
    pin = _cli_pin(root, capsys)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert init_stack(root, settings_from_env(ENV), now=NOW, owner=ME) == []
    assert before == {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    # A new port: configuration rewritten, secrets, tokens and the CA untouched.
    env = {**ENV, "LOCKSTEP_NODE_HTTPS_PORT": "18443"}
    written = init_stack(root, settings_from_env(env), now=NOW, owner=ME)
    assert sorted(written) == ["controlplane/controlplane.yaml", "node1/agent.yaml", "node2/agent.yaml",
                               "node3/agent.yaml"]
    assert "127.0.0.3:18443" in (root / "node2" / "agent.yaml").read_text()
    # Lifetimes and the backend name are the control plane's business only.
    env.update({"LOCKSTEP_BACKEND_NAME": "app2.internal.test", "LOCKSTEP_PKI_EDGE_CLIENT_VALIDITY_S": "20"})
    assert init_stack(root, settings_from_env(env), now=NOW, owner=ME) == ["controlplane/controlplane.yaml"]
    cp = load_controlplane_config(root / "controlplane" / "controlplane.yaml")
    assert cp.pki.validity.edge_client_s == 20 and cp.backends[0].names == ("app2.internal.test",)
    # An operator token from the environment replaces the stored one.
    token = "operator-token-from-env-0123456789"
    written = init_stack(root, settings_from_env({**env, "LOCKSTEP_API_TOKEN": token}), now=NOW, owner=ME)
    assert written == ["controlplane/api-token"]
    assert load_controlplane_config(root / "controlplane" / "controlplane.yaml").api_token == token
    assert _cli_pin(root, capsys) == pin
    assert {p.name: p.read_bytes() for p in (root / "controlplane" / "bootstrap-tokens").iterdir()} == {
        p.name: b for p, b in before.items() if p.parent.name == "bootstrap-tokens"}


def test_default_certificate_close_to_expiry_or_broken_is_replaced(root: Path) -> None:
    init_stack(root, settings_from_env(ENV), now=NOW, owner=ME)
    old = _leaf(root / "edge-default" / "default.pem")
    later = old.not_valid_after_utc - dt.timedelta(days=10)
    assert init_stack(root, settings_from_env(ENV), now=later, owner=ME) == ["edge-default/default.pem"]
    assert _leaf(root / "edge-default" / "default.pem").not_valid_after_utc > old.not_valid_after_utc
    (root / "edge-default" / "default.pem").write_text("not a certificate\n")
    assert init_stack(root, settings_from_env(ENV), now=NOW, owner=ME) == ["edge-default/default.pem"]


def test_another_kek_is_a_clear_error_and_loses_nothing(root: Path) -> None:
    init_stack(root, settings_from_env(ENV), now=NOW, owner=ME)
    store_before = (root / "controlplane" / "store.db").read_bytes()
    (root / "controlplane" / "kek").write_text(generate_kek() + "\n")
    with pytest.raises(StackError, match="store.db"):
        init_stack(root, settings_from_env(ENV), now=NOW, owner=ME)
    assert (root / "controlplane" / "store.db").read_bytes() == store_before


@pytest.mark.parametrize("env,variable", [
    ({"LOCKSTEP_NODE_IPS": "127.0.0.2,localhost"}, "LOCKSTEP_NODE_IPS"),
    ({"LOCKSTEP_NODE_IPS": "127.0.0.2,127.0.0.2"}, "LOCKSTEP_NODE_IPS"),
    ({"LOCKSTEP_NODE_HTTP_PORT": "80a"}, "LOCKSTEP_NODE_HTTP_PORT"),
    ({"LOCKSTEP_NODE_SPOE_PORT": "70000"}, "LOCKSTEP_NODE_SPOE_PORT"),
    ({"LOCKSTEP_CONTROLPLANE_ADDR": "127.0.0.1"}, "LOCKSTEP_CONTROLPLANE_ADDR"),
    ({"LOCKSTEP_ISSUER_URL": "ftp://x"}, "LOCKSTEP_ISSUER_URL"),
    ({"LOCKSTEP_API_TOKEN": "short"}, "LOCKSTEP_API_TOKEN"),
    ({"LOCKSTEP_BACKEND_NAME": "bad name"}, "LOCKSTEP_BACKEND_NAME"),
    ({"LOCKSTEP_PKI_NODE_VALIDITY_S": "5"}, "LOCKSTEP_PKI_NODE_VALIDITY_S"),
    ({"LOCKSTEP_PKI_BACKEND_VALIDITY_S": "1d"}, "LOCKSTEP_PKI_BACKEND_VALIDITY_S"),
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
    secrets = [(root / "controlplane" / "api-token").read_text().strip()]
    secrets += [p.read_text().strip() for p in (root / "controlplane" / "bootstrap-tokens").iterdir()]
    assert not [s for s in secrets if s in out]  # names only, never values
    assert main(["init", "--root", str(root), "--owner", owner], env={**ENV, "LOCKSTEP_NODE_IPS": "x"}) == 2


async def test_a_control_plane_on_what_init_wrote_trusts_each_token_once(root: Path) -> None:
    """The control plane started from the written configuration (store and listen address moved to this machine)
    serves the CA the agents' pin names, and each node's and backend's token file enrolls: once."""
    port = free_port("127.0.0.1")
    env = {**ENV, "LOCKSTEP_CONTROLPLANE_ADDR": f"127.0.0.1:{port}"}
    await asyncio.to_thread(init_stack, root, settings_from_env(env), now=NOW, owner=ME)
    cfg = load_controlplane_config(root / "controlplane" / "controlplane.yaml")
    cfg = dataclasses.replace(cfg, store_url=f"sqlite://{root}/controlplane/store.db")
    pin = yaml.safe_load((root / "node1" / "agent.yaml").read_text())["control_plane"]["ca_sha256"]
    stop, ready = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(serve(cfg, load_kek_file(cfg.kek_file or Path()), stop=stop, ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 30)
        token_files = {f"node{i}": root / f"node{i}" / "bootstrap-token" for i in (1, 2, 3)}
        token_files.update({b: root / b / "bootstrap-token" for b in BACKEND_IDS})
        for who, token_file in token_files.items():
            def manager(directory: Path, token_file: Path = token_file) -> IdentityManager:
                return IdentityManager(url=f"https://127.0.0.1:{port}", directory=directory, ca_sha256=pin,
                                       token=lambda: token_file.read_text().strip(), name="identity",
                                       now=lambda: dt.datetime.now(dt.timezone.utc), rand=random.Random(1),
                                       retry_s=(0.1,))
            first = await manager(root / "enrolled" / who).start()
            assert first.id == who and first.kind == ("backend" if who.startswith("backend") else "node")
            with pytest.raises(Refused) as refused:  # another key with the same token: spent
                await manager(root / "thief" / who).start()
            assert refused.value.wire_reason == "token_used"
    finally:
        stop.set()
        await asyncio.wait_for(server, 30)

"""The compose stack (docker/compose.yaml) on real containers, built offline from this tree:

images built by tests/harness/images.py (what scripts/build-images.sh runs; cached by content hash) → `docker-compose
up` under a project name of its own, on free ports → a domain added through the control plane's API with the
operator CLI → the CertCentral simulator validates it by fetching fileauth.txt through the nodes → `deployed` →
on EACH of the three nodes (127.0.0.2-4) a TLS handshake with SNI verifies the chain against the simulator's root,
and the HTTPS response comes from a demo backend over mTLS with the original Host. `docker-compose down -v` always
runs, and the test checks that no container or volume of the project is left.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from tests.harness.container import DockerUnavailable, docker_client
from tests.harness.edge import docker_required
from tests.harness.images import build_images
from tests.harness.net import free_port, https_get, tls_peer_cert

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO_ROOT / "docker" / "compose.yaml"
NODE_IPS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
STACK_IP = "127.0.0.1"
EDGE_CLIENT_NAME = "edge.internal.lockstep.test"  # lockstep/stack.py: HAProxy's client certificate


def _unavailable(reason: str) -> None:
    if docker_required():
        pytest.fail(reason)
    pytest.skip(reason)


def _port_free_everywhere(ips: tuple[str, ...], taken: set[int]) -> int:
    """A port nothing listens on at any of `ips` (the nodes share their port numbers)."""
    for _ in range(100):
        port = free_port(ips[0])
        if port in taken:
            continue
        try:
            for ip in ips[1:]:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind((ip, port))
        except OSError:
            continue
        taken.add(port)
        return port
    raise RuntimeError(f"no port free on all of {ips}")


@dataclass
class Stack:
    project: str
    env: dict[str, str]
    timings: dict[str, float]

    def compose(self, *args: str, timeout_s: float = 300.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(["docker-compose", "-f", str(COMPOSE_FILE), "-p", self.project, *args],
                             env=self.env, capture_output=True, text=True, timeout=timeout_s, check=False)
        if check and res.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n"
                                 f"{res.stderr}\n{self.logs()}")
        return res

    def logs(self) -> str:
        res = subprocess.run(["docker-compose", "-f", str(COMPOSE_FILE), "-p", self.project, "logs", "--no-color",
                              "--tail", "40"], env=self.env, capture_output=True, text=True, timeout=60, check=False)
        return res.stdout[-12000:]

    def var(self, name: str) -> str:
        return self.env[name]

    @property
    def controlplane_url(self) -> str:
        return f"http://{STACK_IP}:{self.var('LOCKSTEP_CONTROLPLANE_PORT')}"

    @property
    def simulator_url(self) -> str:
        return f"http://{STACK_IP}:{self.var('LOCKSTEP_SIM_PORT')}"


def _left_over(project: str) -> list[tuple[str, str]]:
    label = f"label=com.docker.compose.project={project}"
    containers = subprocess.run(["docker", "ps", "-aq", "--filter", label], capture_output=True, text=True,
                                timeout=60, check=True).stdout.split()
    volumes = subprocess.run(["docker", "volume", "ls", "-q", "--filter", label], capture_output=True, text=True,
                             timeout=60, check=True).stdout.split()
    return [("container", c) for c in containers] + [("volume", v) for v in volumes]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    if shutil.which("docker-compose") is None:
        _unavailable("docker-compose is not installed (scripts/install-system.sh installs it)")
    try:
        client = docker_client()
        start = time.monotonic()
        images = build_images(client)
        built_s = time.monotonic() - start
    except DockerUnavailable as exc:
        _unavailable(str(exc))
        raise  # unreachable: _unavailable skips or fails
    client.close()
    taken: set[int] = set()
    stack_ports = {name: free_port(STACK_IP) for name in (
        "LOCKSTEP_CONTROLPLANE_PORT", "LOCKSTEP_SIM_PORT", "LOCKSTEP_BACKEND1_PORT", "LOCKSTEP_BACKEND2_PORT")}
    node_ports = {name: _port_free_everywhere(NODE_IPS, taken) for name in (
        "LOCKSTEP_NODE_HTTP_PORT", "LOCKSTEP_NODE_HTTPS_PORT", "LOCKSTEP_NODE_SPOE_PORT", "LOCKSTEP_NODE_STATUS_PORT")}
    # Nothing of the caller's LOCKSTEP_* settings (an operator token, say) leaks into the stack.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCKSTEP_")}
    env.update(images)
    env.update({k: str(v) for k, v in {**stack_ports, **node_ports}.items()})
    env.update({"LOCKSTEP_STACK_IP": STACK_IP, "LOCKSTEP_NODE1_IP": NODE_IPS[0], "LOCKSTEP_NODE2_IP": NODE_IPS[1],
                "LOCKSTEP_NODE3_IP": NODE_IPS[2]})
    s = Stack(project=f"lockstep-test-{uuid.uuid4().hex[:10]}", env=env, timings={"images_s": built_s})
    try:
        start = time.monotonic()
        s.compose("up", "-d", "--no-build")
        s.timings["up_s"] = time.monotonic() - start
        yield s
    finally:
        start = time.monotonic()
        down = s.compose("down", "-v", "--remove-orphans", "-t", "10", check=False)
        s.timings["down_s"] = time.monotonic() - start
        left = _left_over(s.project)
        for kind, ident in left:  # remove by ID anyway, then fail
            command = ["docker", "rm", "-f", ident] if kind == "container" else ["docker", "volume", "rm", "-f", ident]
            subprocess.run(command, capture_output=True, timeout=60, check=False)
        print(f"\ncompose stack timings: {', '.join(f'{k} {v:.1f}' for k, v in s.timings.items())}")
        assert down.returncode == 0, f"docker-compose down failed:\n{down.stdout}\n{down.stderr}"
        assert not left, f"left behind by docker-compose down -v: {left}"


def _get_json(url: str, *, token: str | None = None, timeout_s: float = 5.0) -> object:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s) as resp:
        return json.loads(resp.read())


def _wait(what: str, probe: object, stack: Stack, timeout_s: float) -> object:
    """Polls `probe()` until it returns something truthy; fails with the stack's logs."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = probe()  # type: ignore[operator]
            if last:
                return last
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"{what} not within {timeout_s} s (last: {last!r})\n{stack.logs()}")


def test_domain_added_through_the_api_is_served_by_every_node_over_mtls(stack: Stack, tmp_path: Path) -> None:
    start = time.monotonic()
    _wait("control plane up", lambda: _get_json(f"{stack.controlplane_url}/healthz") is not None, stack, 120)
    # The operator token the init service generated, read the way docker/README.md says.
    token = stack.compose("exec", "-T", "controlplane", "cat", "/var/lib/lockstep/controlplane/api-token",
                          timeout_s=60).stdout.strip()
    assert len(token) >= 32
    name = "shop.compose.lockstep.test"
    cli = subprocess.run([sys.executable, "-m", "lockstep.cli", "domains", "add", name], cwd=REPO_ROOT,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "LOCKSTEP_URL": stack.controlplane_url,
                              "LOCKSTEP_API_TOKEN": token},
                         capture_output=True, text=True, timeout=60, check=False)
    assert cli.returncode == 0 and "added 1 domain(s)" in cli.stdout, f"{cli.stdout}\n{cli.stderr}"

    def deployed() -> bool:
        domain = _get_json(f"{stack.controlplane_url}/v1/domains/{name}", token=token)
        assert isinstance(domain, dict) and domain["status"] != "failed", domain
        return domain["status"] == "deployed"

    _wait(f"{name} deployed", deployed, stack, 120)
    stack.timings["deployed_s"] = time.monotonic() - start

    with urllib.request.urlopen(f"{stack.simulator_url}/_sim/root.pem", timeout=5) as resp:
        root_pem = resp.read()
    root_file = tmp_path / "sim-root.pem"
    root_file.write_bytes(root_pem)
    https_port = stack.var("LOCKSTEP_NODE_HTTPS_PORT")
    backends: set[str] = set()
    for ip in NODE_IPS:
        addr = f"{ip}:{https_port}"
        # The chain verifies against the simulator's root (not the stack's default certificate) for this name.
        leaf, _ = tls_peer_cert(addr, name, cafile=str(root_file))
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert name in names.get_values_for_type(x509.DNSName), names
        # Two requests per node: HAProxy balances over both demo backends.
        for _ in range(2):
            res = https_get(addr, "/hello?node=" + ip, sni=name, cafile=str(root_file), timeout_s=10)
            assert res.status == 200, (ip, res)
            body = json.loads(res.body)
            assert body["host"] == f"{name}:{https_port}", body  # the Host the client sent, unchanged
            assert body["path"] == f"/hello?node={ip}" and body["forwarded_proto"] == "https", body
            assert body["haproxy_client_cert"] == EDGE_CLIENT_NAME, body  # mTLS: HAProxy's client certificate
            backends.add(body["backend"])
        status = _get_json(f"http://{ip}:{stack.var('LOCKSTEP_NODE_STATUS_PORT')}/healthz")
        assert isinstance(status, dict) and status["certificates"]["applied"] >= 1, status
    assert backends == {"backend1", "backend2"}
    # The simulator validated the domain by fetching fileauth.txt through the nodes' port 80 stand-in.
    fetches = _get_json(f"{stack.simulator_url}/_sim/fetches")
    assert isinstance(fetches, dict)
    ours = [f for f in fetches["fetches"] if f["fqdn"] == name and f["ok"]]
    node_http = {f"{ip}:{stack.var('LOCKSTEP_NODE_HTTP_PORT')}" for ip in NODE_IPS}
    assert ours and all(set(f["peers"]) <= node_http for f in ours), fetches

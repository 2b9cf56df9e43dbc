"""The shipped configuration's optional second application server (LOCKSTEP_BACKEND_ADDR_2, as the compose stack
uses it), on real HAProxy 2.6 and 2.8 in front of two real `lockstep demo-backend` processes: requests alternate
between them over mTLS, and with one of them gone every request still succeeds on the other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.haproxy import HAProxyProcess, find_haproxy
from tests.harness.agentproc import REPO_ROOT
from tests.harness.edge import make_layout
from tests.harness.net import free_port, https_get, wait_listening
from tests.harness.pki import DEFAULT_NAME, HAPROXY_CLIENT_NAME, TestPki

pytestmark = pytest.mark.haproxy


def _backend(pki: TestPki, name: str, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lockstep.cli", "demo-backend", "--listen", f"127.0.0.1:{port}", "--name", name,
             "--cert", str(pki.backend_file), "--client-ca", str(pki.internal_ca_file)],
            cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, stdout=out, stderr=out,
            stdin=subprocess.DEVNULL)
    return proc, port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def backends(short_tmp: Path, pki: TestPki) -> Iterator[dict[str, tuple[subprocess.Popen[bytes], int]]]:
    root = Path(tempfile.mkdtemp(prefix="pair-", dir=short_tmp))
    procs = {name: _backend(pki, name, root / f"{name}.log") for name in ("b1", "b2")}
    try:
        for _, port in procs.values():
            wait_listening(f"127.0.0.1:{port}")
        yield procs
    finally:
        for proc, _ in procs.values():
            _stop(proc)


@pytest.mark.parametrize("version", ["2.6", "2.8"])
def test_requests_alternate_and_survive_a_dead_backend(
        version: str, short_tmp: Path, pki: TestPki,
        backends: dict[str, tuple[subprocess.Popen[bytes], int]]) -> None:
    root = Path(tempfile.mkdtemp(prefix=f"pair{version}-", dir=short_tmp))
    layout = make_layout(root, pki, backend_port=backends["b1"][1], spoe_port=free_port())
    spare_port = free_port()  # a second server nothing listens on: a dead backend
    haproxy = HAProxyProcess(layout, binary=find_haproxy(version), log_path=root / "haproxy.log",
                             extra_env={"LOCKSTEP_BACKEND_ADDR_2": f"127.0.0.1:{backends['b2'][1]}"})
    dead = HAProxyProcess(layout, binary=find_haproxy(version), log_path=root / "haproxy-dead.log",
                          extra_env={"LOCKSTEP_BACKEND_ADDR_2": f"127.0.0.1:{spare_port}"})

    def four_requests() -> list[str]:
        seen = []
        for i in range(4):
            res = https_get(layout.https_bind, f"/r{i}", sni=DEFAULT_NAME, cafile=str(pki.edge_ca_file))
            assert res.status == 200, (res.status, res.body)
            body = json.loads(res.body)
            assert body["haproxy_client_cert"] == HAPROXY_CLIENT_NAME and body["path"] == f"/r{i}", body
            seen.append(body["backend"])
        return seen

    haproxy.start()
    try:
        assert sorted(four_requests()) == ["b1", "b1", "b2", "b2"]  # round robin over both servers
    finally:
        haproxy.stop()
    dead.start()
    try:
        assert four_requests() == ["b1"] * 4  # refused by the dead one: retried on the other, never an error
    finally:
        dead.stop()

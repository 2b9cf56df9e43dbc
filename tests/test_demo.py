"""The README's run command as a new user runs it: `lockstep demo` comes up, its printed curl commands work, and
Ctrl-C stops everything it started."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness.agentproc import REPO_ROOT

pytestmark = pytest.mark.haproxy


def test_demo_serves_token_and_https_then_stops_cleanly(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lockstep.cli", "demo", "--workdir", str(tmp_path / "demo")],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "ready", ready
        lines = []
        while not (line := proc.stdout.readline()).startswith("  Ctrl-C"):
            lines.append(line.strip())
        commands = [ln for ln in lines if ln.startswith("curl ")]
        assert len(commands) == 3
        token = subprocess.run([*shlex.split(commands[0]), "-sS", "--max-time", "5"], capture_output=True,
                               text=True, check=True).stdout
        assert len(token) == 32
        redirect = subprocess.run([*shlex.split(commands[1]), "-sS", "--max-time", "5"], capture_output=True,
                                  text=True, check=True).stdout
        assert "301" in redirect.splitlines()[0]
        https = subprocess.run([*shlex.split(commands[2]), "-sS", "--max-time", "5"], capture_output=True,
                               text=True, check=True).stdout  # curl verifies the chain with --cacert
        assert json.loads(https)["haproxy_client_cert"] == "edge.internal.lockstep.test"
        haproxy_pid = int(next(ln for ln in lines if "pid" in ln).split("pid ")[1].rstrip(").").strip())
    except BaseException:
        proc.kill()
        raise
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    deadline = time.monotonic() + 5
    while Path(f"/proc/{haproxy_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{haproxy_pid}").exists(), "demo left HAProxy running"

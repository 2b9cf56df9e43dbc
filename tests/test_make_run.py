"""The README's run command, literally: `make run` in the repository (its setup steps are idempotent, so on a
machine `make test` has set up they only check), until the demo's first domain is served over HTTPS with a
verified chain; then Ctrl-C (SIGINT to the foreground process group, as a terminal sends it) stops everything.

tests/test_demo.py checks everything the demo prints; this test checks the README's command itself works."""

from __future__ import annotations

import json
import os
import select
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness.agentproc import REPO_ROOT

pytestmark = [pytest.mark.haproxy, pytest.mark.slow]


def _pids_of_session(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_make_run_serves_its_first_domain_over_https_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    if shutil.which("make") is None or not (REPO_ROOT / ".venv" / "bin" / "lockstep").exists():
        pytest.skip("needs make and the project's .venv (make test / make run create it)")
    workdir = tmp_path / "demo"
    # The README's command; the workdir is the Makefile's own variable so parallel runs do not share var/demo.
    proc = subprocess.Popen(["make", "run", f"DEMO_ARGS=--workdir {workdir}"], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=(tmp_path / "make.err").open("wb"),
                            start_new_session=True)
    assert proc.stdout is not None
    try:
        buffer, ready, deadline = b"", None, time.monotonic() + 180
        while ready is None:
            assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "make.err").read_text()[-3000:]
            if select.select([proc.stdout], [], [], 0.5)[0]:
                buffer += os.read(proc.stdout.fileno(), 65536)
            for line in buffer.decode(errors="replace").splitlines():
                if line.startswith('{"event": "ready"'):
                    ready = json.loads(line)
        # The first curl the demo prints for its first domain: a verified chain, SNI, the backend's answer.
        while b"curl " not in buffer:
            assert select.select([proc.stdout], [], [], 30)[0], "no curl line printed"
            buffer += os.read(proc.stdout.fileno(), 65536)
        first = next(ln.strip() for ln in buffer.decode().splitlines() if ln.strip().startswith("curl "))
        out = subprocess.run([*shlex.split(first), "-sS", "--max-time", "10"], capture_output=True, text=True,
                             timeout=30)
        assert out.returncode == 0, (first, out.stderr)
        assert json.loads(out.stdout)["message"].startswith("hello from the demo backend")
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    deadline = time.monotonic() + 20
    while (left := _pids_of_session(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == [], f"processes left running after Ctrl-C: {left}"
    assert ready is not None and ready["domains"]

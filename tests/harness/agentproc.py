"""The sidecar as a real process (`python -m lockstep.cli agent`), stopped and killed by its PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from .net import wait_listening

REPO_ROOT = Path(__file__).resolve().parents[2]


class AgentProcess:
    def __init__(self, *, workdir: Path, node: str, spoe_port: int, control_plane_url: str,
                 bearer_token: str | None, extra: dict[str, object] | None = None,
                 control_plane: dict[str, object] | None = None, wait_s: float = 20.0) -> None:
        """Args:
            control_plane: more keys of the control_plane section (e.g. bootstrap_token and ca_file for the
                internal PKI, with bearer_token None).
            wait_s: the sync long-poll's wait.
        """
        self.workdir = workdir
        self.spoe_addr = f"127.0.0.1:{spoe_port}"
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "node": node,
            "state_dir": str(workdir / "state"),
            "spoe": {"host": "127.0.0.1", "port": spoe_port},
            "control_plane": {"url": control_plane_url, "wait_s": wait_s,
                              **({"bearer_token": bearer_token} if bearer_token is not None else {}),
                              **(control_plane or {})},
            **(extra or {}),
        }
        self.config_file = workdir / "agent.yaml"
        self.config_file.write_text(yaml.safe_dump(config))
        self.log_file = workdir / "agent.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self, *, timeout_s: float = 20.0) -> AgentProcess:
        assert self._proc is None or self._proc.poll() is not None, "already running"
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "lockstep.cli", "agent", "--config", str(self.config_file)],
                cwd=REPO_ROOT, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            )
        try:
            wait_listening(self.spoe_addr, timeout_s=timeout_s)
        except TimeoutError:
            self.kill()
            raise TimeoutError(f"agent did not listen on {self.spoe_addr}; log:\n{self.log()}") from None
        return self

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, *, timeout_s: float = 10.0) -> int | None:
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        return self._proc.returncode

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

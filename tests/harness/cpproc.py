"""The control plane as a real process (`python -m lockstep.cli controlplane serve`), and the operator CLI."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from controlplane.store import generate_kek

from .agentproc import REPO_ROOT
from .net import free_port

API_TOKEN = "operator-test-token"


class ControlPlaneProcess:
    def __init__(self, workdir: Path, *, issuer_url: str, issuer_api_key: str,
                 nodes: list[dict[str, str]], pipeline: dict[str, Any] | None = None,
                 store_url: str | None = None, port: int | None = None,
                 issuer_extra: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                 tls_internal: bool = False) -> None:
        """Args:
            tls_internal: `tls: internal`: HTTPS with a serving certificate from the internal CA (for localhost and
                127.0.0.1); after start(), `ca_file` holds the internal CA certificate.
        """
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.tls_internal = tls_internal
        self.url = f"{'https' if tls_internal else 'http'}://127.0.0.1:{self.port}"
        self.ca_file = workdir / "internal-ca.pem"
        kek = workdir / "kek"
        if not kek.exists():
            fd = os.open(kek, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(generate_kek())
        self.store_url = store_url or f"sqlite:///{workdir}/store.db"
        config = {
            "listen": f"127.0.0.1:{self.port}",
            "store_url": self.store_url,
            "kek_file": "kek",
            "api_token": API_TOKEN,
            "issuers": [{"name": "digicert", "kind": "digicert", "base_url": issuer_url, "api_key": issuer_api_key,
                         "request_timeout_s": 3.0, **(issuer_extra or {})}],
            "nodes": nodes,
            "pipeline": {"poll_s": 0.5, "node_wait_s": 0.2, **(pipeline or {})},
            **({"tls": "internal", "tls_names": ["localhost", "127.0.0.1"]} if tls_internal else {}),
            **(extra or {}),
        }
        self.config_file = workdir / "cp.yaml"
        self.config_file.write_text(yaml.safe_dump(config))
        self.log_file = workdir / "controlplane.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    def start(self, *, timeout_s: float = 20.0) -> ControlPlaneProcess:
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "lockstep.cli", "controlplane", "serve", "--config", str(self.config_file)],
                cwd=REPO_ROOT, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        deadline = time.monotonic() + timeout_s
        # Readiness only: whether the server answers. What it serves is verified with the CA fetched below.
        probe = ssl._create_unverified_context() if self.tls_internal else None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"control plane exited with {self._proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1, context=probe):
                    break
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        else:
            self.kill()
            raise TimeoutError(f"control plane not ready:\n{self.log()}")
        if self.tls_internal:
            with urllib.request.urlopen(f"{self.url}/v1/pki/ca.pem", timeout=5, context=probe) as resp:
                self.ca_file.write_bytes(resp.read())
        return self

    def ssl_context(self) -> ssl.SSLContext | None:
        """Verifies the control plane's certificate with the internal CA (None over plain HTTP)."""
        return ssl.create_default_context(cafile=str(self.ca_file)) if self.tls_internal else None

    def api(self, method: str, path: str, body: Any = None, *,
            token: str | None = API_TOKEN) -> tuple[int, Any]:
        """(status, JSON body) of one operator request."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data else {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10, context=self.ssl_context()) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")[-5000:] if self.log_file.exists() else ""

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`lockstep <args> --url ... --token ...` as an operator would type it."""
        tls = ["--cacert", str(self.ca_file)] if self.tls_internal else []
        res = subprocess.run(
            [sys.executable, "-m", "lockstep.cli", *args, "--url", self.url, "--token", API_TOKEN, *tls],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        if check and res.returncode != 0:
            raise AssertionError(f"lockstep {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    def domain(self, name: str) -> dict[str, Any]:
        req = urllib.request.Request(f"{self.url}/v1/domains/{name}",
                                     headers={"Authorization": f"Bearer {API_TOKEN}"})
        with urllib.request.urlopen(req, timeout=5, context=self.ssl_context()) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    def wait_status(self, name: str, status: str, timeout_s: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = self.domain(name)
            if last["status"] == status:
                return last
            time.sleep(0.1)
        raise AssertionError(f"{name} never reached {status}; last: {last}\n{self.log()}")

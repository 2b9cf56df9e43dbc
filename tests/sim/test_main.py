"""`python -m certcentral_sim` as a standalone process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from certcentral_sim.__main__ import _parse_resolve, build, parse_args

from .conftest import closed_port

ROOT = Path(__file__).resolve().parents[2]


def test_arguments() -> None:
    args = parse_args(["--port", "1", "--api-key", "k1", "--api-key", "k2:view_only", "--resolve",
                       "a.example.test=127.0.0.1:8080,127.0.0.1:8081", "--rate-limit", "10/5", "--fake-clock"])
    core, _, _ = build(args)
    assert [k.key for k in core.config.api_keys] == ["k1", "k2"]
    assert core.config.rate_limits == ((10, 5.0),)
    assert core.resolve_map() == {"a.example.test": ("127.0.0.1:8080", "127.0.0.1:8081")}
    assert _parse_resolve(["b.example.test=127.0.0.1"]) == {"b.example.test": ["127.0.0.1"]}


def test_standalone_server_answers_and_stops() -> None:
    port = closed_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "certcentral_sim", "--port", str(port), "--api-key", "k",
         "--resolve", "shop.example.test=127.0.0.1:9"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                resp = httpx.get(f"{base}/services/v2/order/certificate", headers={"X-DC-DEVKEY": "k"}, timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "simulator did not start"
                time.sleep(0.05)
        assert resp.status_code == 200 and resp.json()["orders"] == []
        assert httpx.get(f"{base}/services/v2/order/certificate", timeout=1).status_code == 401
        assert "BEGIN CERTIFICATE" in httpx.get(f"{base}/_sim/root.pem", timeout=1).text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            assert proc.stdout is not None
            proc.stdout.close()

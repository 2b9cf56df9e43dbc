"""fileauth.txt through HAProxy + SPOE + sidecar, against the same answer served natively by the same HAProxy.

Both run in one HAProxy process (the shipped config plus bench/native.cfg), alternating SPOE and native rounds so
machine noise hits both alike. wrk must see only 200s: a 404/503 would be fast and wrong.
"""

from __future__ import annotations

import datetime as dt
import secrets
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from agent.haproxy import HAProxyProcess, find_haproxy
from controlplane.sync import Token
from lockstep.devserver import SyncServerThread
from tests.harness.agentproc import AgentProcess
from tests.harness.edge import make_layout
from tests.harness.net import free_port, http_get
from tests.harness.pki import TestPki

from . import wrk
from .report import Row

FILEAUTH = "/.well-known/pki-validation/fileauth.txt"
HOST = "bench.example.test"


def run(*, duration_s: float = 5.0, rounds: int = 2, connections: int = 32, haproxy_version: str = "2.6") -> list[Row]:
    root = Path(tempfile.mkdtemp(prefix="bspoe-", dir="/tmp"))
    pki = TestPki.create(root / "pki")
    token_value = secrets.token_hex(32)
    node_token = secrets.token_hex(16)
    sync = SyncServerThread(node_tokens={node_token: "bench"}).start()
    spoe_port = free_port()
    layout = make_layout(root / "edge", pki, backend_port=free_port(), spoe_port=spoe_port)
    native_bind = f"127.0.0.1:{free_port()}"
    haproxy = HAProxyProcess(
        layout, binary=find_haproxy(haproxy_version), log_path=root / "haproxy.log",
        extra_config=[Path(__file__).with_name("native.cfg")],
        extra_env={"LOCKSTEP_BENCH_NATIVE_BIND": native_bind, "LOCKSTEP_BENCH_TOKEN": token_value},
    )
    agent = AgentProcess(workdir=root / "agent", node="bench", spoe_port=spoe_port, control_plane_url=sync.url,
                         bearer_token=node_token)
    try:
        agent.start()
        haproxy.start()
        sync.publish_token(Token(HOST, FILEAUTH, token_value, dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)))
        deadline = time.monotonic() + 10
        while http_get(layout.http_bind, FILEAUTH, host=HOST).body != token_value.encode():
            if time.monotonic() > deadline:
                raise RuntimeError("token never served through SPOE")
            time.sleep(0.05)
        assert http_get(native_bind, FILEAUTH, host=HOST).body == token_value.encode()
        spoe: list[wrk.WrkResult] = []
        native: list[wrk.WrkResult] = []
        for _ in range(rounds):
            spoe.append(wrk.run(f"http://{layout.http_bind}{FILEAUTH}", host=HOST, duration_s=duration_s,
                                connections=connections))
            native.append(wrk.run(f"http://{native_bind}{FILEAUTH}", host=HOST, duration_s=duration_s,
                                  connections=connections))
    finally:
        haproxy.stop()
        agent.stop()
        sync.stop()
        shutil.rmtree(root, ignore_errors=True)

    def med(results: list[wrk.WrkResult], field: str) -> float:
        return statistics.median(getattr(r, field) for r in results)

    ver = f"HAProxy {haproxy_version}, {connections} conns, {rounds}×{duration_s:g} s"
    return [
        Row("fileauth.txt via SPOE: requests/s", med(spoe, "requests_per_s"), "req/s",
            "native http-request return", med(native, "requests_per_s"), goal=0.5, note=ver),
        Row("fileauth.txt via SPOE: p50 latency", med(spoe, "p50_ms"), "ms",
            "native http-request return", med(native, "p50_ms"), higher_is_better=False, note=ver),
        Row("fileauth.txt via SPOE: p99 latency", med(spoe, "p99_ms"), "ms",
            "native http-request return", med(native, "p99_ms"), higher_is_better=False, note=ver),
    ]

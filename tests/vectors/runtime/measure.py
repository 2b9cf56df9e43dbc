"""Measure RuntimeClient throughput on real HAProxy: per-command connections vs one persistent prompt connection.

Run from the repository root:  .venv/bin/python tests/vectors/runtime/measure.py [N] [2.6] [2.8]

For each version and mode: add N certificates (probe + new + set + commit + add crt-list), update them (probe + set
+ commit), remove them (probe + del crt-list + del cert); prints ms per certificate. Then, with N certificates
loaded, the cost of the two ways to find a leftover transaction: `show ssl cert` (lists every store) against the
`abort ssl cert <name>` probe the client uses. Certificates are ECDSA P-256 from the test PKI, made beforehand.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from agent.haproxy import HAProxyProcess, find_haproxy  # noqa: E402
from agent.runtime import ClientSettings, ConnectionMode, RuntimeClient  # noqa: E402
from agent.runtime import commands as c  # noqa: E402
from agent.runtime.responses import check_reply, parse_cert_list  # noqa: E402
from lockstep.pki import issue  # noqa: E402
from tests.harness.edge import make_layout  # noqa: E402
from tests.harness.net import free_port  # noqa: E402
from tests.harness.pki import TestPki  # noqa: E402


async def measure(version: str, n: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="rtm", dir="/tmp"))
    pki = TestPki.create(root / "pki")
    layout = make_layout(root, pki, backend_port=free_port(), spoe_port=free_port())
    proc = HAProxyProcess(layout, binary=find_haproxy(version), log_path=root / "haproxy.log")
    now = dt.datetime.now(dt.timezone.utc)
    pems = [issue(pki.edge_ca, [f"h{i}.example.com"], now=now).bundle_pem for i in range(n)]
    proc.start()
    try:
        d = str(layout.cert_dir)
        for mode in ConnectionMode:
            async with RuntimeClient(layout.admin_socket, cert_dir=d, settings=ClientSettings(mode=mode)) as client:
                names = [f"{d}/{mode.value}-{i}.pem" for i in range(n)]
                timings = []
                for op in ("add", "update", "remove"):
                    start = time.perf_counter()
                    for name, pem in zip(names, pems, strict=True):
                        if op == "add":
                            await client.add_certificate(name, pem)
                        elif op == "update":
                            await client.update_certificate(name, pem)
                        else:
                            await client.remove_certificate(name)
                    timings.append(f"{op} {(time.perf_counter() - start) / n * 1000:.2f}")
                print(f"{proc.version()} {mode.value:11} N={n}: " + ", ".join(timings) + " ms/cert")
        async with RuntimeClient(layout.admin_socket, cert_dir=d) as client:
            for i, pem in enumerate(pems):
                await client.add_certificate(f"{d}/kept-{i}.pem", pem)
            start = time.perf_counter()
            for _ in range(20):
                listing = await client.run(c.show_ssl_cert(), parse_cert_list)
            show_ms = (time.perf_counter() - start) / 20 * 1000
            start = time.perf_counter()
            for _ in range(20):
                try:
                    await client.run(c.abort_ssl_cert(f"{d}/kept-0.pem"), check_reply)
                except Exception:  # "No ongoing transaction!" is the expected answer
                    pass
            probe_ms = (time.perf_counter() - start) / 20 * 1000
            print(f"{proc.version()} with {len(listing.names)} stores: show ssl cert {show_ms:.2f} ms, "
                  f"abort probe {probe_ms:.3f} ms")
    finally:
        proc.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 1000
    for v in [a for a in sys.argv[1:] if not a.isdigit()] or ["2.6", "2.8"]:
        asyncio.run(measure(v, count))

"""`lockstep demo`: HAProxy + the sidecar + an in-memory control-plane sync endpoint + an mTLS demo backend, all on
127.0.0.1, serving a demo validation token. Ctrl-C stops everything it started.

This is the embedded single-machine shape of Lockstep; the full control plane (domains, CA orders, certificates)
replaces the in-memory sync backend as it lands.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import secrets
import shlex
import signal
import socket
import sys
from pathlib import Path

from aiohttp import web

from agent.config import AgentConfig, ControlPlaneConfig, SpoeConfig
from agent.haproxy import EdgeLayout, HAProxyProcess, find_haproxy
from agent.main import run_agent
from controlplane.sync import BearerAuthenticator, MemorySyncBackend, Token, add_sync_routes

from .demo_backend import BackendFiles, start_backend
from .pki import issue, make_ca

__all__ = ["run_demo"]

DEMO_HOST = "demo.lockstep.test"
DEFAULT_NAME = "default.demo.lockstep.test"
BACKEND_NAME = "app.internal.lockstep.test"
FILEAUTH = "/.well-known/pki-validation/fileauth.txt"


def _port(preferred: int) -> int:
    """`preferred` if nothing listens there, else any free port (demo ports are fixed only when they can be)."""
    for candidate in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise OSError("no free port")


def _write_private(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return path


async def _sync_endpoint(port: int, backend: MemorySyncBackend, token: str) -> web.AppRunner:
    app = web.Application()
    add_sync_routes(app, backend, BearerAuthenticator({token: "demo-node"}))
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def _fetch(addr: str, host: str, path: str) -> tuple[int, bytes]:
    h, _, p = addr.rpartition(":")
    reader, writer = await asyncio.wait_for(asyncio.open_connection(h, int(p)), 5)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def _demo(workdir: Path, haproxy_version: str) -> int:
    workdir = workdir.resolve()  # HAProxy reads a relative socket path as host:port, and cert names are absolute
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o700)
    pki_dir = workdir / "pki"
    pki_dir.mkdir(mode=0o700, exist_ok=True)
    (workdir / "certs").mkdir(mode=0o700, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    edge_ca = make_ca("Lockstep Demo Edge CA", now=now)
    internal_ca = make_ca("Lockstep Demo Internal CA", now=now)
    _write_private(pki_dir / "edge-ca.pem", edge_ca.cert_pem)
    _write_private(pki_dir / "internal-ca.pem", internal_ca.cert_pem)

    node_token = secrets.token_urlsafe(24)
    ports = {"http": _port(8080), "https": _port(8443), "spoe": _port(12345), "sync": _port(9080),
             "backend": _port(9443)}
    layout = EdgeLayout(
        http_bind=f"127.0.0.1:{ports['http']}",
        https_bind=f"127.0.0.1:{ports['https']}",
        admin_socket=workdir / "run" / "admin.sock",
        spoe_addr=f"127.0.0.1:{ports['spoe']}",
        default_cert=_write_private(pki_dir / "default.pem", issue(edge_ca, [DEFAULT_NAME], now=now).bundle_pem),
        cert_dir=workdir / "certs",
        backend_addr=f"127.0.0.1:{ports['backend']}",
        backend_name=BACKEND_NAME,
        backend_ca=pki_dir / "internal-ca.pem",
        backend_client_cert=_write_private(
            pki_dir / "haproxy-client.pem",
            issue(internal_ca, ["edge.internal.lockstep.test"], now=now, client=True, server=False).bundle_pem,
        ),
    )

    sync_backend = MemorySyncBackend()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async with contextlib.AsyncExitStack() as stack:
        _write_private(pki_dir / "backend.pem", issue(internal_ca, [BACKEND_NAME], now=now).bundle_pem)
        backend_runner = await start_backend(
            "127.0.0.1", ports["backend"],
            BackendFiles(cert=pki_dir / "backend.pem", client_ca=pki_dir / "internal-ca.pem"))
        stack.push_async_callback(backend_runner.cleanup)
        sync_runner = await _sync_endpoint(ports["sync"], sync_backend, node_token)
        stack.push_async_callback(sync_runner.cleanup)

        agent_cfg = AgentConfig(
            node="demo-node",
            control_plane=ControlPlaneConfig(url=f"http://127.0.0.1:{ports['sync']}", bearer_token=node_token),
            spoe=SpoeConfig(port=ports["spoe"]),
            state_dir=workdir / "agent",
        )
        agent_stop = asyncio.Event()
        agent_task = asyncio.create_task(run_agent(agent_cfg, stop=agent_stop))

        async def stop_agent() -> None:
            agent_stop.set()
            await agent_task

        stack.push_async_callback(stop_agent)

        haproxy = HAProxyProcess(layout, binary=find_haproxy(haproxy_version), log_path=workdir / "haproxy.log")
        await asyncio.to_thread(haproxy.start)
        # In a thread: HAProxy's soft stop says goodbye to the SPOE agent, which runs on this event loop.
        stack.push_async_callback(asyncio.to_thread, haproxy.stop)

        value = secrets.token_hex(16)
        sync_backend.publish_token(Token(DEMO_HOST, FILEAUTH, value, now + dt.timedelta(hours=24)))
        for _ in range(100):  # wait until the token is served through HAProxy, at most ~5 s
            status, body = await _fetch(layout.http_bind, DEMO_HOST, FILEAUTH)
            if status == 200:
                break
            await asyncio.sleep(0.05)
        if status != 200 or body != value.encode():
            print(f"lockstep demo: token not served through HAProxy (HTTP {status}); see {workdir}/haproxy.log",
                  file=sys.stderr)
            return 1

        ca = shlex.quote(str((pki_dir / "edge-ca.pem").resolve()))
        print(json.dumps({"event": "ready", "http": layout.http_bind, "https": layout.https_bind,
                          "haproxy": haproxy.version(), "token_host": DEMO_HOST}), flush=True)
        print(
            f"\nLockstep demo is up (HAProxy {haproxy.version()}, pid {haproxy.pid}).\n\n"
            f"  Validation token, answered by HAProxy through the sidecar's SPOE agent:\n"
            f"    curl -H 'Host: {DEMO_HOST}' http://{layout.http_bind}{FILEAUTH}\n\n"
            f"  Everything else on port 80 redirects to HTTPS:\n"
            f"    curl -i -H 'Host: {DEMO_HOST}' http://{layout.http_bind}/\n\n"
            f"  HTTPS with the default certificate, re-encrypted to the mTLS demo backend:\n"
            f"    curl --cacert {ca} --resolve {DEFAULT_NAME}:{ports['https']}:127.0.0.1 "
            f"https://{DEFAULT_NAME}:{ports['https']}/\n\n"
            f"  Logs: {workdir}/haproxy.log   Runtime API socket (mode 0600): {layout.admin_socket}\n"
            f"  Ctrl-C stops everything.\n",
            flush=True,
        )
        await stop.wait()
        print("lockstep demo: stopping", flush=True)
    return 0


def run_demo(*, workdir: Path, haproxy_version: str = "2.6") -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_demo(workdir, haproxy_version))
    return uvloop.run(_demo(workdir, haproxy_version))

"""One Lockstep edge node for tests: HAProxy (2.6 process, 2.8 process, or container) + the sidecar process,
syncing from a sync server, in front of an mTLS backend. Everything on fresh 127.0.0.1 ports; stopped by id."""

from __future__ import annotations

import contextlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from agent.haproxy import EdgeLayout, HAProxyProcess, find_haproxy

from .agentproc import AgentProcess
from .net import free_port
from .pki import BACKEND_NAME, TestPki

EDGE_KINDS = ("2.6", "2.8", "container")


class HAProxyLike(Protocol):
    layout: EdgeLayout

    @property
    def pid(self) -> int: ...
    def start(self, *, timeout_s: float = ...) -> None: ...
    def stop(self, *, timeout_s: float = ...) -> None: ...
    def kill(self) -> None: ...
    def is_running(self) -> bool: ...
    def version(self) -> str: ...


def make_layout(root: Path, pki: TestPki, *, backend_port: int, spoe_port: int, ip: str = "127.0.0.1") -> EdgeLayout:
    (root / "certs").mkdir(mode=0o700, parents=True, exist_ok=True)
    (root / "run").mkdir(mode=0o700, exist_ok=True)
    layout = EdgeLayout(
        http_bind=f"{ip}:{free_port(ip)}",
        https_bind=f"{ip}:{free_port(ip)}",
        admin_socket=root / "run" / "admin.sock",
        spoe_addr=f"127.0.0.1:{spoe_port}",
        default_cert=pki.default_file,
        cert_dir=root / "certs",
        backend_addr=f"127.0.0.1:{backend_port}",
        backend_name=BACKEND_NAME,
        backend_ca=pki.internal_ca_file,
        backend_client_cert=pki.haproxy_client_file,
    )
    # unix socket paths are limited to 107 bytes and HAProxy appends a suffix while binding
    assert len(str(layout.admin_socket)) < 90, layout.admin_socket
    return layout


def make_haproxy(kind: str, layout: EdgeLayout, log_path: Path) -> HAProxyLike:
    if kind == "container":
        from .container import ContainerHAProxy

        return ContainerHAProxy(layout, log_path=log_path)
    return HAProxyProcess(layout, binary=find_haproxy(kind), log_path=log_path)


class Edge:
    """HAProxy + agent for one node. `start()` brings both up; `close()` stops both by id."""

    def __init__(self, kind: str, root: Path, pki: TestPki, *, backend_port: int, control_plane_url: str,
                 bearer_token: str | None, node: str = "node-1", cert_sync: bool = True, ip: str = "127.0.0.1",
                 control_plane: dict[str, object] | None = None, sync_wait_s: float = 20.0) -> None:
        spoe_port = free_port()
        self.kind = kind
        self.root = root
        self.node_id = node
        self.layout = make_layout(root, pki, backend_port=backend_port, spoe_port=spoe_port, ip=ip)
        self.haproxy = make_haproxy(kind, self.layout, root / "haproxy.log")
        self.status_addr = f"127.0.0.1:{free_port()}"
        extra: dict[str, object] = {"status": {"host": "127.0.0.1", "port": int(self.status_addr.split(":")[1])}}
        if cert_sync:
            extra["haproxy"] = {"admin_socket": str(self.layout.admin_socket), "cert_dir": str(self.layout.cert_dir),
                                "https_addr": self.layout.https_bind}
        self.agent = AgentProcess(workdir=root / "agent", node=node, spoe_port=spoe_port,
                                  control_plane_url=control_plane_url, bearer_token=bearer_token, extra=extra,
                                  control_plane=control_plane, wait_s=sync_wait_s)

    @property
    def http(self) -> str:
        return self.layout.http_bind

    @property
    def https(self) -> str:
        return self.layout.https_bind

    def start(self) -> Edge:
        self.agent.start()
        self.haproxy.start()
        return self

    def health(self) -> dict[str, Any]:
        """The agent's /healthz body (whatever the status code)."""
        try:
            with urllib.request.urlopen(f"http://{self.status_addr}/healthz", timeout=5) as resp:
                return json.loads(resp.read())  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())  # type: ignore[no-any-return]
        except urllib.error.URLError:
            return {}  # not listening yet (starting) or any more

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://{self.status_addr}/metrics", timeout=5) as resp:
            return resp.read().decode()  # type: ignore[no-any-return]

    def close(self) -> None:
        # Agent first: HAProxy's soft stop waits for open CLI sessions, and the agent keeps one.
        self.agent.stop()
        with contextlib.suppress(Exception):
            self.haproxy.stop(timeout_s=5)

    def logs(self) -> str:
        hap = (self.root / "haproxy.log")
        return f"--- agent\n{self.agent.log()[-4000:]}\n--- haproxy\n" + (
            hap.read_text(errors="replace")[-4000:] if hap.exists() else "")


@contextlib.contextmanager
def running_edge(kind: str, root: Path, pki: TestPki, **kw: object) -> Iterator[Edge]:
    edge = Edge(kind, root, pki, **kw)  # type: ignore[arg-type]
    try:
        yield edge.start()
    finally:
        edge.close()


def docker_required() -> bool:
    """In CI (or with LOCKSTEP_REQUIRE_DOCKER=1) the engine is started by `make test`; a missing engine, image or
    docker-compose there is a failure, not a skip."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("CI", "LOCKSTEP_REQUIRE_DOCKER"))

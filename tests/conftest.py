"""Shared fixtures: the session PKI, a sync server, an mTLS backend, and edge nodes on HAProxy 2.6, 2.8 and in a
container. Every process and container a fixture starts is stopped by its id when the fixture ends."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockstep.devserver import SyncServerThread
from tests.harness.backend import TlsBackend
from tests.harness.edge import EDGE_KINDS, Edge, docker_required, running_edge
from tests.harness.net import free_port
from tests.harness.pki import TestPki

NODE_TOKEN = "test-node-token-0123456789"


@pytest.fixture(scope="session")
def short_tmp() -> Iterator[Path]:
    """A short base directory: unix socket paths must stay under 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="ls-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture(scope="session")
def pki(short_tmp: Path) -> TestPki:
    return TestPki.create(short_tmp / "pki")


@pytest.fixture(scope="session")
def tls_backend(pki: TestPki) -> Iterator[TlsBackend]:
    backend = TlsBackend(port=free_port(), cert_file=pki.backend_file, client_ca=pki.internal_ca_file).start()
    yield backend
    backend.stop()


@pytest.fixture(scope="module")
def sync_server() -> Iterator[SyncServerThread]:
    server = SyncServerThread(node_tokens={NODE_TOKEN: "node-1"}).start()
    yield server
    server.stop()


def _skip_unless_docker(kind: str) -> None:
    if kind != "container":
        return
    from tests.harness.container import DockerUnavailable, build_haproxy_image, docker_client

    try:
        build_haproxy_image(docker_client())
    except DockerUnavailable as exc:
        if docker_required():
            raise
        pytest.skip(f"no Docker engine: {exc}")


@pytest.fixture(scope="module", params=EDGE_KINDS, ids=[f"haproxy-{k}" for k in EDGE_KINDS])
def edge(request: pytest.FixtureRequest, short_tmp: Path, pki: TestPki, tls_backend: TlsBackend,
         sync_server: SyncServerThread) -> Iterator[Edge]:
    """A running node (HAProxy + sidecar) per HAProxy kind, shared by the tests of one module."""
    kind: str = request.param
    _skip_unless_docker(kind)
    root = Path(tempfile.mkdtemp(prefix=f"e{kind}-", dir=short_tmp))
    with running_edge(kind, root, pki, backend_port=tls_backend.server.server_address[1],
                      control_plane_url=sync_server.url, bearer_token=NODE_TOKEN) as node:
        yield node


@pytest.fixture(params=["2.6", "2.8"], ids=["haproxy-2.6", "haproxy-2.8"])
def fresh_node(request: pytest.FixtureRequest, short_tmp: Path,
               pki: TestPki) -> Iterator[tuple[Edge, SyncServerThread]]:
    """A node of its own (HAProxy 2.6 or 2.8 + agent) with a control-plane sync endpoint of its own, per test."""
    sync = SyncServerThread(node_tokens={NODE_TOKEN: "node-1"}).start()
    root = Path(tempfile.mkdtemp(prefix=f"f{request.param}-", dir=short_tmp))
    try:
        with running_edge(request.param, root, pki, backend_port=free_port(), control_plane_url=sync.url,
                          bearer_token=NODE_TOKEN) as edge:
            yield edge, sync
    finally:
        sync.stop()

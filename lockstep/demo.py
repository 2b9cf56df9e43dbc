"""`lockstep demo`: the whole embedded stack on 127.0.0.1, a few demo domains provisioned through it end to end, and
the commands that show each one served over HTTPS with a chain that verifies. Ctrl-C (or SIGTERM) stops everything.

What runs (one process, one event loop, except HAProxy and the simulator's thread):

- the CertCentral simulator (`certcentral_sim.SimulatorThread`, its own thread): the CA. It validates each order by
  really fetching fileauth.txt; its resolve map plays the demo's DNS, pointing every registered name at HAProxy;
- the control plane (`controlplane.serve.serve`): SQLite store under the workdir, a generated key-encryption key
  (0600 file), a generated operator API token, the simulator as its DigiCert issuer, this machine as its one node,
  and its internal PKI: it serves HTTPS (`tls: internal`) with a certificate of its own internal CA, which also
  issues every certificate of the data path behind the edge;
- the demo backend (`lockstep.demo_backend.run_enrolled_backend`): enrolls with its own one-time bootstrap token
  for its server certificate, serves TLS only and requires a client certificate of the internal CA. One backend:
  the shipped haproxy.cfg names exactly one server address (LOCKSTEP_BACKEND_ADDR);
- the sidecar (`agent.main.run_agent`): enrolls as the node with its bootstrap token (trusting the control plane
  by the internal CA's SHA-256), then obtains HAProxy's client certificate and the internal CA bundle and writes
  them where haproxy.cfg reads them; SPOE validation tokens, certificate sync over the runtime API, /healthz and
  /metrics;
- HAProxy (child process, stopped by its PID) with the shipped configuration, started once the sidecar has
  written its backend-facing files.

The node's and the backend's tokens come from the REST API with the operator token (`lockstep nodes token`,
`lockstep backends add`), as an operator would get them. Internal certificates live DEMO_PKI_VALIDITY (a minute),
so renewals, all automatic, can be watched in the sidecar's /healthz while the demo runs.

Then it adds the demo domains through the control plane's REST API, as an operator would, and waits until each is
served over HTTPS (order -> token on every node -> CA fetch through HAProxy -> issued -> stored -> synced ->
hot-injected), measuring the time from "added" to "served". The first stdout line is a JSON `ready` event for
scripts; the text after it is for people. Progress goes to stderr; the components' logs go to files in the workdir.

Each run starts from a clean state in its workdir: the simulator makes a new CA per run and the new store a new
internal CA, so certificates from an earlier run would not verify against the printed roots.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import random
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import httpx

from agent.config import AgentConfig, HAProxyConfig, SpoeConfig, StatusConfig
from agent.config import ControlPlaneConfig as AgentControlPlaneConfig
from agent.haproxy import EdgeLayout, HAProxyError, HAProxyProcess, find_haproxy
from certcentral_sim import SimulatorThread
from controlplane.pki import Validity
from controlplane.pki_api import InternalPki
from controlplane.provision import PipelineSettings
from controlplane.serve import ControlPlaneConfig, IssuerConfig, NodeConfig, PkiConfig
from controlplane.store import KeyEncryptionKey, generate_kek, load_kek_file, open_store

from .demo_backend import run_enrolled_backend
from .enroll import IdentityManager
from .pki import issue, make_ca

__all__ = ["DEMO_DOMAINS", "DemoError", "run_demo"]

logger = logging.getLogger(__name__)

DEMO_DOMAINS = ("shop.demo.lockstep.test", "blog.demo.lockstep.test", "api.demo.lockstep.test",
                "docs.demo.lockstep.test", "status.demo.lockstep.test")
DEFAULT_DOMAIN_COUNT = 3
ANOTHER_DOMAIN = "new.demo.lockstep.test"  # the example in the "add another domain" line
NODE_ID = "demo-node"
DEFAULT_NAME = "default.demo.lockstep.test"  # the certificate HAProxy serves when no SNI matches
BACKEND_NAME = "app.internal.lockstep.test"
BACKEND_ID = "app"
HAPROXY_CLIENT_NAME = f"edge.{NODE_ID}"  # the CN the internal CA gives HAProxy's client certificate (edge-client)
# Every internal certificate lives a minute here and is renewed at about two thirds of that (40 s ± 5 s), so a
# renewal shows in /healthz within a minute. The defaults (24 h, backends 7 d) would show none while anyone watches;
# renewing every 40 s costs a key and a signature each, and leaves 15-25 s to retry a failed renewal. The control
# plane's own HTTPS certificate keeps its default (90 d): it is renewed the same way, but nothing shows it here.
DEMO_PKI_VALIDITY = Validity(node_s=60.0, edge_client_s=60.0, backend_s=60.0)
TOKEN_TTL_S = 600.0  # the bootstrap tokens the demo asks for are redeemed within seconds
# Friendly fixed ports, used when free (else any free port).
PREFERRED_PORTS = {"http": 8080, "https": 8443, "controlplane": 9080, "simulator": 8099, "backend": 9443,
                   "status": 9101, "spoe": 12345}
SERVE_TIMEOUT_S = 120.0  # per domain: generous for a loaded machine; a healthy run takes a few seconds
START_TIMEOUT_S = 60.0
WATCH_INTERVAL_S = 0.2
# The pipeline settings of the demo: poll the CA and re-probe the node often (one CA, one node, all local).
DEMO_PIPELINE = PipelineSettings(poll_s=0.25, node_wait_s=0.1, retry_s=(0.5, 1.0, 2.0, 5.0, 10.0),
                                 unknown_outcome_retry_s=0.5)
MARKER = ".lockstep-demo"
# What a run creates in its workdir, removed at the next start (nothing else in the directory is touched).
OWNED = ("store.db", "store.db-wal", "store.db-shm", "store.db-journal", "kek", "api-token", "pki", "certs", "agent",
         "backend", "run", "lockstep.log", "haproxy.log")
MAX_SOCKET_PATH = 90  # unix socket paths are limited to 107 bytes and HAProxy appends a suffix while binding


class DemoError(Exception):
    """The demo could not come up or a component stopped; the message says what and where to look."""


@dataclasses.dataclass(frozen=True, slots=True)
class DemoPorts:
    http: int
    https: int
    controlplane: int
    simulator: int
    backend: int
    status: int
    spoe: int


@dataclasses.dataclass(frozen=True, slots=True)
class DemoLayout:
    """Every address and file of one demo run."""

    workdir: Path
    ports: DemoPorts
    run_dir: Path  # HAProxy's admin socket lives here (short path)
    cli: str  # how to invoke `lockstep` from the user's shell

    @property
    def cacert(self) -> Path:
        """The simulator's root: what customer certificates chain to."""
        return self.workdir / "pki" / "ca-root.pem"

    @property
    def internal_ca(self) -> Path:
        """The control plane's internal CA certificate: its HTTPS certificate and every internal one chain to it."""
        return self.workdir / "pki" / "internal-ca.pem"

    @property
    def haproxy_client_cert(self) -> Path:
        """HAProxy's client certificate towards the backend (+ key), written and renewed by the sidecar."""
        return self.workdir / "pki" / "haproxy-client.pem"

    @property
    def haproxy_backend_ca(self) -> Path:
        """The internal CA bundle HAProxy verifies the backend with, written by the sidecar."""
        return self.workdir / "pki" / "haproxy-backend-ca.pem"

    @property
    def agent_state(self) -> Path:
        return self.workdir / "agent"

    @property
    def backend_state(self) -> Path:
        return self.workdir / "backend"

    @property
    def log(self) -> Path:
        return self.workdir / "lockstep.log"

    @property
    def haproxy_log(self) -> Path:
        return self.workdir / "haproxy.log"

    @property
    def controlplane_url(self) -> str:
        return f"https://127.0.0.1:{self.ports.controlplane}"

    @property
    def status_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.status}"

    @property
    def http_bind(self) -> str:
        return f"127.0.0.1:{self.ports.http}"

    @property
    def https_bind(self) -> str:
        return f"127.0.0.1:{self.ports.https}"


# ------------------------------------------------------------------ pure helpers (no IO)


def demo_domains(count: int | None, names: Sequence[str] = ()) -> tuple[str, ...]:
    """The names the demo adds: `names` when given, else the first `count` of DEMO_DOMAINS."""
    if names:
        return tuple(dict.fromkeys(n.strip().lower() for n in names if n.strip()))
    count = DEFAULT_DOMAIN_COUNT if count is None else count
    if not 1 <= count <= len(DEMO_DOMAINS):
        raise DemoError(f"--domains: between 1 and {len(DEMO_DOMAINS)} (or name them with --domain)")
    return DEMO_DOMAINS[:count]


def curl_https(name: str, layout: DemoLayout) -> str:
    """The curl that shows `name` served over HTTPS with a chain that verifies against the simulator's root."""
    port = layout.ports.https
    return (f"curl --resolve {name}:{port}:127.0.0.1 --cacert {shlex.quote(str(layout.cacert))} "
            f"https://{name}:{port}/")


def operator_env(layout: DemoLayout, api_token: str) -> str:
    return (f"LOCKSTEP_URL={layout.controlplane_url} LOCKSTEP_CACERT={shlex.quote(str(layout.internal_ca))} "
            f"LOCKSTEP_API_TOKEN={api_token}")


def ready_event(layout: DemoLayout, *, haproxy_version: str, haproxy_pid: int, api_token: str, internal_ca_pin: str,
                served: Sequence[tuple[str, float]]) -> dict[str, Any]:
    """The machine-readable first stdout line."""
    return {
        "event": "ready",
        "http": layout.http_bind,
        "https": layout.https_bind,
        "haproxy": haproxy_version,
        "haproxy_pid": haproxy_pid,
        "controlplane": layout.controlplane_url,
        "api_token": api_token,
        "simulator": f"http://127.0.0.1:{layout.ports.simulator}",
        "status": layout.status_url,
        "backend": f"127.0.0.1:{layout.ports.backend}",
        "spoe": f"127.0.0.1:{layout.ports.spoe}",
        "cacert": str(layout.cacert),
        "internal_ca": str(layout.internal_ca),
        "internal_ca_sha256": internal_ca_pin,
        "node": NODE_ID,
        "backend_id": BACKEND_ID,
        "domains": [name for name, _ in served],
        "served_after_s": {name: round(seconds, 3) for name, seconds in served},
        "workdir": str(layout.workdir),
        "logs": [str(layout.log), str(layout.haproxy_log)],
    }


def instructions(layout: DemoLayout, *, haproxy_version: str, haproxy_pid: int, api_token: str, internal_ca_pin: str,
                 served: Sequence[tuple[str, float]]) -> str:
    """The text a person reads after the ready line. Every command in it runs as printed (tests run them all)."""
    env = operator_env(layout, api_token)
    lines = [
        "",
        (f"Lockstep demo is up: {len(served)} domain(s) served over HTTPS by HAProxy {haproxy_version} "
         f"(pid {haproxy_pid}),"),
        "certificates issued by the CertCentral simulator and hot-injected by the sidecar, no reload.",
        "",
        "  Each domain over HTTPS; curl verifies the chain against the simulator's root CA. The JSON answer is the",
        (f"  demo backend's: the Host it saw, and HAProxy's client certificate ({HAPROXY_CLIENT_NAME}): mTLS behind "
         "the edge."),
    ]
    for name, seconds in served:
        lines += [f"  {name}: added -> served over HTTPS in {seconds:.1f} s", f"    {curl_https(name, layout)}"]
    lines += [
        "",
        "  Add another domain as an operator would (this window prints when it is served, within seconds):",
        f"    {env} {layout.cli} domains add {ANOTHER_DOMAIN}",
        f"    {curl_https(ANOTHER_DOMAIN, layout)}",
        "",
        "  Where the certificates come from: customer domains from the CertCentral simulator (the CA; root above);",
        f"  everything behind the edge from the control plane's internal CA, {layout.internal_ca}",
        f"  ({internal_ca_pin}), issued on request and renewed automatically:",
        (f"  - node identity {NODE_ID}: the sidecar enrolled with a one-time bootstrap token (mTLS to the control "
         "plane);"),
        (f"  - HAProxy's client certificate {HAPROXY_CLIENT_NAME}: from the sidecar, pushed to HAProxy live at each "
         "renewal;"),
        f"  - the backend's server certificate {BACKEND_NAME}: the backend enrolled with its own token;",
        "  - the control plane's HTTPS certificate (tls: internal).",
        (f"  Internal certificates live {DEMO_PKI_VALIDITY.node_s:.0f} s in the demo (defaults: 24 h, backends 7 d), "
         "so renewals show"),
        "  within a minute: identity.renewals and edge_pki.published in the sidecar's /healthz (below) grow about",
        "  every 40 s; the node and backend lists show each one's current certificate:",
        f"    {env} {layout.cli} nodes list",
        f"    {env} {layout.cli} backends list",
        "",
        "  Status: the sidecar's readiness and Prometheus metrics, the control plane's health, the domain list:",
        f"    curl {layout.status_url}/healthz",
        f"    curl {layout.status_url}/metrics",
        f"    curl --cacert {shlex.quote(str(layout.internal_ca))} {layout.controlplane_url}/healthz",
        f"    {env} {layout.cli} domains list",
        "",
        f"  Logs: {layout.log} (control plane, sidecar, backend, simulator), {layout.haproxy_log}",
        "  Ctrl-C stops everything.",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ set-up helpers (files, ports)


def _port(preferred: int, taken: set[int] | None = None) -> int:
    """`preferred` if nothing listens there, else any free port (demo ports are fixed only when they can be)."""
    taken = taken if taken is not None else set()
    for candidate in (preferred, 0, 0, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # As the listeners do: a port whose last connections sit in TIME_WAIT (the previous run) is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            port = int(sock.getsockname()[1])
        if port not in taken:
            taken.add(port)
            return port
    raise DemoError("no free TCP port on 127.0.0.1")


def _choose_ports() -> DemoPorts:
    taken: set[int] = set()
    return DemoPorts(**{name: _port(preferred, taken) for name, preferred in PREFERRED_PORTS.items()})


def _write_private(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return path


def _cli_command() -> str:
    """How the user runs `lockstep`: the venv's script when it sits next to this Python, else `python -m`."""
    script = Path(sys.executable).parent / "lockstep"
    if os.access(script, os.X_OK):
        with contextlib.suppress(ValueError):
            return shlex.quote(str(script.relative_to(Path.cwd())))
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m lockstep.cli"


def prepare_workdir(workdir: Path) -> Path:
    """The absolute workdir, with what an earlier run left removed. Refuses a directory the demo did not create."""
    workdir = workdir.resolve()  # HAProxy reads a relative socket path as host:port, and cert names are absolute
    if workdir.exists():
        if not workdir.is_dir():
            raise DemoError(f"--workdir {workdir} is not a directory")
        if any(workdir.iterdir()) and not (workdir / MARKER).exists():
            raise DemoError(f"--workdir {workdir} is not empty and was not made by `lockstep demo`; "
                            "pick a new or empty directory")
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o700)  # it holds the key-encryption key, the API token and private keys
    (workdir / MARKER).write_text("made by `lockstep demo`; each run starts from a clean state here\n")
    for name in OWNED:
        path = workdir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return workdir


def _make_layout(workdir: Path) -> DemoLayout:
    run_dir = workdir / "run"
    if len(str(run_dir / "admin.sock")) > MAX_SOCKET_PATH:
        run_dir = Path(tempfile.mkdtemp(prefix="lockstep-demo-"))
    run_dir.mkdir(mode=0o700, exist_ok=True)
    return DemoLayout(workdir=workdir, ports=_choose_ports(), run_dir=run_dir, cli=_cli_command())


# ------------------------------------------------------------------ the components


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


async def create_internal_ca(store_url: str, kek: KeyEncryptionKey) -> tuple[str, str]:
    """The control plane's internal CA (PEM) and its SHA-256 pin, created in the store before its first start, as
    `lockstep controlplane ca --pin` does in a real set-up: the agents are configured with the pin."""
    from cryptography.hazmat.primitives import hashes

    async with await open_store(store_url, kek=kek) as store:
        ca = await InternalPki(store, validity=DEMO_PKI_VALIDITY, now=_utcnow).ca()
    return ca.cert_pem, "sha256:" + ca.cert.fingerprint(hashes.SHA256()).hex()


def _edge_layout(layout: DemoLayout, now: dt.datetime) -> EdgeLayout:
    """The data path's files. Only the default certificate (served when no SNI matches; nobody should trust it) is
    made here; HAProxy's client certificate and the CA it verifies the backend with are the sidecar's to write."""
    pki = layout.workdir / "pki"
    pki.mkdir(mode=0o700, exist_ok=True)
    (layout.workdir / "certs").mkdir(mode=0o700, exist_ok=True)
    default_ca = make_ca("Lockstep Demo Default CA", now=now)
    return EdgeLayout(
        http_bind=layout.http_bind,
        https_bind=layout.https_bind,
        admin_socket=layout.run_dir / "admin.sock",
        spoe_addr=f"127.0.0.1:{layout.ports.spoe}",
        default_cert=_write_private(pki / "default.pem", issue(default_ca, [DEFAULT_NAME], now=now).bundle_pem),
        cert_dir=layout.workdir / "certs",
        backend_addr=f"127.0.0.1:{layout.ports.backend}",
        backend_name=BACKEND_NAME,
        backend_ca=layout.haproxy_backend_ca,
        backend_client_cert=layout.haproxy_client_cert,
    )


def _controlplane_config(layout: DemoLayout, sim: SimulatorThread, edge: EdgeLayout,
                         api_token: str) -> ControlPlaneConfig:
    return ControlPlaneConfig(
        listen=f"127.0.0.1:{layout.ports.controlplane}",
        store_url=f"sqlite://{layout.workdir / 'store.db'}",
        api_token=api_token,
        issuers=(IssuerConfig(kind="digicert", name="digicert", url=sim.url, api_key=sim.api_key,
                              request_timeout_s=5.0),),
        # A node of the internal PKI (no bearer token): listed here for its probe addresses; its bootstrap token
        # comes from the API, as an operator's would.
        nodes=(NodeConfig(node_id=NODE_ID, http=edge.http_bind, https=edge.https_bind),),
        kek_file=layout.workdir / "kek",
        tls_internal=True,
        tls_names=("127.0.0.1", "localhost"),
        pki=PkiConfig(validity=DEMO_PKI_VALIDITY),
        pipeline=DEMO_PIPELINE,
    )


async def _bootstrap_tokens(api: httpx.AsyncClient) -> tuple[str, str]:
    """One-time tokens for the node (`lockstep nodes token demo-node`) and for the backend, registered with its
    name (`lockstep backends add app --name app.internal.lockstep.test`): (node token, backend token)."""
    node = await api.post(f"/v1/nodes/{NODE_ID}/token", json={"token_ttl_s": TOKEN_TTL_S})
    if node.status_code != 201:
        raise DemoError(f"the control plane answered HTTP {node.status_code} to a token for {NODE_ID}: {node.text}")
    backend = await api.post("/v1/backends", json={"id": BACKEND_ID, "names": [BACKEND_NAME],
                                                   "token_ttl_s": TOKEN_TTL_S})
    if backend.status_code != 201:
        raise DemoError(f"the control plane answered HTTP {backend.status_code} to registering backend "
                        f"{BACKEND_ID}: {backend.text}")
    return str(node.json()["bootstrap_token"]), str(backend.json()["bootstrap_token"])


class Progress:
    """Human progress lines (stderr) and events after the ready line (stdout)."""

    def __init__(self, err: TextIO, out: TextIO, clock: Callable[[], float]) -> None:
        self._err = err
        self._out = out
        self._clock = clock
        self._start = clock()

    def step(self, text: str) -> None:
        self._err.write(f"[{self._clock() - self._start:6.2f} s] {text}\n")
        self._err.flush()

    def event(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()


async def _https_get(https_bind: str, name: str, ctx: ssl.SSLContext, timeout_s: float = 5.0) -> dict[str, Any]:
    """GET / over HTTPS with SNI `name`, chain and name verified by `ctx`: the backend's JSON answer.

    Raises:
        OSError (ssl.SSLError included) or TimeoutError: not served (yet), or not with a valid chain.
        ValueError: an answer that is not the backend's.
    """
    host, _, port = https_bind.rpartition(":")
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, int(port), ssl=ctx, server_hostname=name), timeout_s)
    try:
        writer.write(f"GET / HTTP/1.1\r\nHost: {name}:{port}\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 1.0)
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1:2]
    if status != [b"200"]:
        raise ValueError(f"HTTP {status[0].decode() if status else '?'} from {https_bind}")
    answer = json.loads(body)
    if not isinstance(answer, dict):
        raise ValueError("not the demo backend's answer")
    return answer


async def wait_served(https_bind: str, name: str, ctx: ssl.SSLContext, *, timeout_s: float,
                      clock: Callable[[], float] = time.monotonic, interval_s: float = 0.1) -> dict[str, Any]:
    """Polls until `name` is served over HTTPS with a valid chain for it; the backend's answer.

    Raises:
        TimeoutError: with the last reason it was not served.
    """
    deadline = clock() + timeout_s
    last = "no attempt"
    while True:
        try:
            return await _https_get(https_bind, name, ctx)
        except (OSError, TimeoutError, ValueError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if clock() >= deadline:
            raise TimeoutError(last)
        await asyncio.sleep(interval_s)


class DomainWatch:
    """The demo's DNS and its progress display, from the control plane's domain list (polled every 0.2 s).

    Every registered name resolves, for the simulator's DCV fetches, to this machine's HAProxy (as a customer's
    CNAME to the edge would). Status changes are printed as they happen; names someone else added (the "add
    another domain" line) are announced on stdout once served over HTTPS.
    """

    def __init__(self, api: httpx.AsyncClient, sim: SimulatorThread, layout: DemoLayout, ctx: ssl.SSLContext,
                 progress: Progress, *, own: Sequence[str], clock: Callable[[], float] = time.monotonic) -> None:
        self._api = api
        self._sim = sim
        self._layout = layout
        self._ctx = ctx
        self._progress = progress
        self._own = set(own)
        self._clock = clock
        self._seen: dict[str, tuple[str, str]] = {}
        self._resolved: set[str] = set()
        self._announcing: dict[str, asyncio.Task[None]] = {}

    def resolve(self, names: Sequence[str]) -> None:
        """Point `names` at HAProxy's port 80 (before they are added, so the CA never races the watcher)."""
        new = set(names) - self._resolved
        if new:
            self._resolved |= new
            self._sim.set_resolve({n: self._layout.http_bind for n in sorted(self._resolved)})

    async def poll_once(self) -> None:
        resp = await self._api.get("/v1/domains", params={"limit": 1000})
        resp.raise_for_status()
        domains = resp.json()["domains"]
        self.resolve([d["name"] for d in domains])
        for d in domains:
            state = (d["status"], d["detail"] or "")
            if self._seen.get(d["name"]) != state:
                self._seen[d["name"]] = state
                self._progress.step(f"{d['name']}: {state[0]} ({state[1]})" if state[1] else
                                    f"{d['name']}: {state[0]}")
            if d["name"] not in self._own and d["name"] not in self._announcing:
                self._announcing[d["name"]] = asyncio.create_task(self._announce(d["name"]))

    async def _announce(self, name: str) -> None:
        start = self._clock()
        try:
            answer = await wait_served(self._layout.https_bind, name, self._ctx, timeout_s=SERVE_TIMEOUT_S)
        except TimeoutError as exc:
            self._progress.event(f"{name}: not served over HTTPS within {SERVE_TIMEOUT_S:.0f} s ({exc}); "
                                 f"see {self._layout.log}")
            return
        self._progress.event(f"{name}: served over HTTPS {self._clock() - start:.1f} s after the demo saw it "
                             f"(backend saw Host {answer.get('host')})")

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self.poll_once()
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    logger.warning("demo: listing domains failed: %s", exc)
                await asyncio.sleep(WATCH_INTERVAL_S)
        finally:
            for task in self._announcing.values():
                task.cancel()
            for task in self._announcing.values():
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def _wait_until(check: Callable[[], Awaitable[bool]], *, timeout_s: float, what: str,
                      interval_s: float = 0.05, clock: Callable[[], float] = time.monotonic) -> None:
    deadline = clock() + timeout_s
    while not await check():
        if clock() >= deadline:
            raise DemoError(f"{what} did not come up within {timeout_s:.0f} s")
        await asyncio.sleep(interval_s)


async def _answers(client: httpx.AsyncClient, url: str) -> bool:
    try:
        return (await client.get(url)).status_code == 200
    except httpx.HTTPError:
        return False


async def _first_done(tasks: dict[str, asyncio.Task[Any]]) -> None:
    """Returns never; raises DemoError naming the first component that stopped."""
    done, _ = await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_COMPLETED)
    task = next(iter(done))
    name = next(n for n, t in tasks.items() if t is task)
    exc = task.exception() if not task.cancelled() else None
    detail = "" if exc is None else f": {exc}" if isinstance(exc, DemoError) else f": {exc!r}"
    raise DemoError(f"{name} stopped unexpectedly{detail}")


async def _supervise_haproxy(haproxy: HAProxyProcess, interval_s: float = 0.5) -> None:
    while haproxy.is_running():
        await asyncio.sleep(interval_s)


def _check_alive(task: asyncio.Task[Any], what: str, layout: DemoLayout) -> None:
    """Raises DemoError when `task` has ended (a component that died while the demo waits for it)."""
    if task.done():
        exc = None if task.cancelled() else task.exception()
        detail = "" if exc is None else f": {exc}" if isinstance(exc, DemoError) else f": {exc!r}"
        raise DemoError(f"{what} stopped{detail}; see {layout.log}")


async def _listening(addr: str) -> bool:
    host, _, port = addr.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 2.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 1.0)
    return True


async def _run(layout: DemoLayout, *, haproxy_version: str, names: Sequence[str], progress: Progress,
               out: TextIO) -> None:
    """Brings everything up, provisions `names`, prints the ready line and the instructions, then runs until
    cancelled. Everything started is stopped on the way out, in reverse order, whatever the reason."""
    from controlplane.serve import serve

    binary = find_haproxy(haproxy_version)
    edge = _edge_layout(layout, _utcnow())
    api_token = secrets.token_urlsafe(24)
    _write_private(layout.workdir / "api-token", api_token + "\n")
    _write_private(layout.workdir / "kek", generate_kek() + "\n")
    kek = load_kek_file(layout.workdir / "kek")

    async with contextlib.AsyncExitStack() as stack:
        progress.step(f"workdir {layout.workdir} (fresh state); logs {layout.log.name}, {layout.haproxy_log.name}")

        sim = SimulatorThread(port=layout.ports.simulator)
        sim.start()  # blocks for milliseconds; not in a thread, so a Ctrl-C cannot leave it half started
        stack.push_async_callback(asyncio.to_thread, sim.stop)
        _write_private(layout.cacert, sim.root_pem)
        progress.step(f"CertCentral simulator (the CA of customer certificates) on {sim.url}; its root: "
                      f"{layout.cacert}")

        cp_cfg = _controlplane_config(layout, sim, edge, api_token)
        ca_pem, pin = await create_internal_ca(cp_cfg.store_url, kek)
        layout.internal_ca.write_text(ca_pem)  # a CA certificate: public
        progress.step(f"internal CA created in the store (as `lockstep controlplane ca --pin`): {pin}; "
                      f"{layout.internal_ca}")
        cp_stop, cp_ready = asyncio.Event(), asyncio.Event()
        cp_task = asyncio.create_task(serve(cp_cfg, kek, stop=cp_stop, ready=cp_ready), name="control plane")

        async def stop_controlplane() -> None:
            cp_stop.set()
            with contextlib.suppress(Exception):
                await cp_task

        stack.push_async_callback(stop_controlplane)
        ready_wait = asyncio.create_task(cp_ready.wait())
        await asyncio.wait([ready_wait, cp_task], timeout=START_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        ready_wait.cancel()
        if cp_task.done():
            raise DemoError(f"the control plane did not start: {cp_task.exception()!r}; see {layout.log}")
        if not cp_ready.is_set():
            raise DemoError(f"the control plane did not start within {START_TIMEOUT_S:.0f} s; see {layout.log}")
        progress.step(f"control plane on {layout.controlplane_url} (HTTPS, certificate from its internal CA; SQLite "
                      f"store, key-encryption key 0600, provisioning pipeline)")

        api = await stack.enter_async_context(httpx.AsyncClient(
            base_url=layout.controlplane_url, headers={"Authorization": f"Bearer {api_token}"}, timeout=10.0,
            verify=ssl.create_default_context(cafile=str(layout.internal_ca))))
        node_token, backend_token = await _bootstrap_tokens(api)
        progress.step(f"one-time bootstrap tokens through the API: node {NODE_ID} (`lockstep nodes token`), backend "
                      f"{BACKEND_ID} for {BACKEND_NAME} (`lockstep backends add`)")

        backend_addr = f"127.0.0.1:{layout.ports.backend}"
        backend_identity = IdentityManager(
            url=layout.controlplane_url, directory=layout.backend_state, ca_sha256=pin, token=backend_token,
            name="backend", now=_utcnow, rand=random.Random())
        backend_stop = asyncio.Event()
        backend_task = asyncio.create_task(
            run_enrolled_backend(backend_addr, backend_identity, name=BACKEND_ID, stop=backend_stop),
            name="demo backend")

        async def stop_backend() -> None:
            backend_stop.set()
            with contextlib.suppress(Exception):
                await backend_task

        stack.push_async_callback(stop_backend)

        async def backend_up() -> bool:
            _check_alive(backend_task, "the demo backend", layout)
            return backend_identity.ready.is_set() and await _listening(backend_addr)

        await _wait_until(backend_up, timeout_s=START_TIMEOUT_S,
                          what=f"the demo backend (enrollment and {backend_addr}; see {layout.log})")
        progress.step(f"demo backend on {backend_addr}: enrolled as {BACKEND_ID}, server certificate {BACKEND_NAME} "
                      f"from the internal CA; TLS only, client certificate of the internal CA required")

        agent_cfg = AgentConfig(
            node=NODE_ID,
            control_plane=AgentControlPlaneConfig(url=layout.controlplane_url, bootstrap_token=node_token,
                                                  ca_sha256=pin, wait_s=25.0),
            spoe=SpoeConfig(port=layout.ports.spoe),
            haproxy=HAProxyConfig(admin_socket=str(edge.admin_socket), cert_dir=edge.cert_dir,
                                  https_addr=edge.https_bind, backend_client_cert=edge.backend_client_cert,
                                  backend_ca=edge.backend_ca),
            status=StatusConfig(port=layout.ports.status),
            state_dir=layout.agent_state,
        )
        agent_stop = asyncio.Event()
        agent_task = asyncio.create_task(_agent(agent_cfg, agent_stop), name="sidecar")

        async def stop_agent() -> None:  # idempotent: HAProxy's stop calls it first
            agent_stop.set()
            with contextlib.suppress(Exception):
                await agent_task

        stack.push_async_callback(stop_agent)

        async def edge_files_written() -> bool:
            _check_alive(agent_task, "the sidecar", layout)
            return edge.backend_client_cert.exists() and edge.backend_ca.exists()

        # HAProxy's backend server line names both files: it starts once the sidecar has written them.
        await _wait_until(edge_files_written, timeout_s=START_TIMEOUT_S,
                          what=f"the sidecar's enrollment and HAProxy's client certificate (see {layout.log})")
        progress.step(f"sidecar enrolled as {NODE_ID} (node certificate from the internal CA) and wrote HAProxy's "
                      f"client certificate {HAPROXY_CLIENT_NAME} ({edge.backend_client_cert.name}) and the internal "
                      f"CA bundle ({edge.backend_ca.name})")

        haproxy = HAProxyProcess(edge, binary=binary, log_path=layout.haproxy_log)
        # In a thread, shielded: a Ctrl-C while HAProxy starts still waits for the start to finish and then stops
        # it, so no HAProxy outlives the demo.
        starting = asyncio.ensure_future(asyncio.to_thread(haproxy.start, timeout_s=START_TIMEOUT_S))

        async def stop_haproxy() -> None:
            await stop_agent()  # first: HAProxy's soft stop waits for the sidecar's open CLI sessions
            with contextlib.suppress(Exception):
                await starting
            await asyncio.to_thread(haproxy.stop, timeout_s=5.0)

        stack.push_async_callback(stop_haproxy)
        try:
            await asyncio.shield(starting)
        except HAProxyError as exc:
            raise DemoError(f"HAProxy did not start: {exc}") from None
        version = haproxy.version()
        progress.step(f"HAProxy {version} (pid {haproxy.pid}) on http {edge.http_bind}, https {edge.https_bind}")

        status = await stack.enter_async_context(httpx.AsyncClient(timeout=5.0))  # no operator token here

        async def sidecar_ready() -> bool:
            _check_alive(agent_task, "the sidecar", layout)
            return await _answers(status, f"{layout.status_url}/healthz")

        await _wait_until(sidecar_ready, timeout_s=START_TIMEOUT_S,
                          what=f"the sidecar (status {layout.status_url}/healthz; see {layout.log})")
        progress.step(f"sidecar ready: SPOE on {edge.spoe_addr}, certificate sync, status {layout.status_url}")

        ctx = ssl.create_default_context(cafile=str(layout.cacert))
        watch = DomainWatch(api, sim, layout, ctx, progress, own=names)
        watch.resolve(names)
        watch_task = asyncio.create_task(watch.run(), name="domain watch")
        stack.push_async_callback(_cancel, watch_task)

        progress.step(f"adding {', '.join(names)} through the control plane's REST API")
        resp = await api.post("/v1/domains", json={"names": list(names)})
        added_at = time.monotonic()
        if resp.status_code != 200:
            raise DemoError(f"the control plane answered HTTP {resp.status_code} to adding domains: {resp.text}")
        refused = [r for r in resp.json()["results"] if r["http_status"] != 201]
        if refused:
            raise DemoError("the control plane refused " + "; ".join(f"{r['name']}: {r['message']}"
                                                                     for r in refused))

        components = {"the control plane": cp_task, "the sidecar": agent_task, "the demo backend": backend_task,
                      "HAProxy": asyncio.create_task(_supervise_haproxy(haproxy))}
        stack.push_async_callback(_cancel, components["HAProxy"])
        served = await _serve_all(names, layout, ctx, added_at, progress, components)

        out.write(json.dumps(ready_event(layout, haproxy_version=version, haproxy_pid=haproxy.pid,
                                         api_token=api_token, internal_ca_pin=pin, served=served)) + "\n")
        out.write(instructions(layout, haproxy_version=version, haproxy_pid=haproxy.pid, api_token=api_token,
                               internal_ca_pin=pin, served=served))
        out.flush()
        await _first_done(components)


async def _serve_all(names: Sequence[str], layout: DemoLayout, ctx: ssl.SSLContext, added_at: float,
                     progress: Progress, components: dict[str, asyncio.Task[Any]]) -> list[tuple[str, float]]:
    """Waits until every name is served over HTTPS (or a component dies): (name, seconds since added)."""

    async def one(name: str) -> tuple[str, float]:
        try:
            await wait_served(layout.https_bind, name, ctx, timeout_s=SERVE_TIMEOUT_S)
        except TimeoutError as exc:
            raise DemoError(f"{name} was not served over HTTPS within {SERVE_TIMEOUT_S:.0f} s (last: {exc}); "
                            f"see {layout.log} and {layout.haproxy_log}") from None
        seconds = time.monotonic() - added_at
        progress.step(f"{name}: served over HTTPS with a valid chain, {seconds:.2f} s after it was added")
        return name, seconds

    waiting = asyncio.ensure_future(asyncio.gather(*(one(n) for n in names)))
    watchdog = asyncio.create_task(_first_done(components))
    try:
        pending: list[asyncio.Future[Any]] = [waiting, watchdog]
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if watchdog.done():
            waiting.cancel()
            watchdog.result()  # raises the DemoError
        return list(waiting.result())
    finally:
        await _cancel(watchdog)
        await _cancel(waiting)


async def _cancel(task: asyncio.Future[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


async def _agent(cfg: AgentConfig, stop: asyncio.Event) -> None:
    from agent.main import run_agent

    try:
        await run_agent(cfg, stop=stop)
    except SystemExit as exc:  # the agent's "crashed, let the supervisor restart me": here, a failure of the demo
        raise DemoError(f"the sidecar exited ({exc.code})") from None


async def _main(layout: DemoLayout, *, haproxy_version: str, names: Sequence[str], out: TextIO,
                err: TextIO) -> int:
    progress = Progress(err, out, time.monotonic)
    loop = asyncio.get_running_loop()
    body = asyncio.create_task(_run(layout, haproxy_version=haproxy_version, names=names, progress=progress,
                                    out=out))
    signalled: list[int] = []

    def on_signal(sig: int) -> None:
        if not signalled:  # a second Ctrl-C must not interrupt the clean-up of the first
            signalled.append(sig)
            err.write("\nlockstep demo: stopping everything it started\n")
            err.flush()
            body.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await body
    except asyncio.CancelledError:
        if not signalled:
            raise
        err.write("lockstep demo: stopped\n")
        return 0
    except (DemoError, OSError, HAProxyError) as exc:  # OSError: a port taken between choosing and binding it
        logger.error("demo failed: %s", exc, exc_info=not isinstance(exc, DemoError))
        err.write(f"lockstep demo: {exc}\nlockstep demo: stopped everything it started; logs: {layout.log}, "
                  f"{layout.haproxy_log}\n")
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


def _log_to_file(path: Path) -> Callable[[], None]:
    """Sends every log record to `path` (stderr is for the demo's own progress); returns the undo."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    for noisy in ("httpx", "aiohttp.access"):  # one line per long-poll / per request
        logging.getLogger(noisy).setLevel(logging.WARNING)

    def undo() -> None:
        handler.close()
        root.handlers, level = saved
        root.setLevel(level)

    return undo


def run_demo(*, workdir: Path, haproxy_version: str = "2.6", domains: int | None = None,
             names: Sequence[str] = (), out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """`lockstep demo`: the process exit code (0 after Ctrl-C/SIGTERM, 1 when it could not come up, 2 bad usage)."""
    try:
        chosen = demo_domains(domains, names)
        layout = _make_layout(prepare_workdir(workdir))
    except DemoError as exc:
        err.write(f"lockstep demo: {exc}\n")
        return 2
    undo_logging = _log_to_file(layout.log)
    try:
        coro = _main(layout, haproxy_version=haproxy_version, names=chosen, out=out, err=err)
        try:
            import uvloop
        except ImportError:
            return asyncio.run(coro)
        return uvloop.run(coro)
    finally:
        undo_logging()
        if layout.run_dir != layout.workdir / "run":
            shutil.rmtree(layout.run_dir, ignore_errors=True)

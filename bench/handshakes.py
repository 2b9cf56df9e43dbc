"""Full TLS handshakes/s through our haproxy.cfg with 1, 10k (and 100k) certificates loaded, against a bare HAProxy
config with one certificate; and what those certificates cost HAProxy in memory.

Same HAProxy binary, same client (bench/hsclient.c: C, several processes, no session cache, no tickets, a new TCP
connection per handshake), same key type (ECDSA P-256), same duration. Against our config the client draws a random
SNI among the loaded names for every handshake and checks every 100th served leaf names it. Rounds alternate between
the configurations so machine noise hits them alike; every HAProxy runs for the whole benchmark.

Two figures per configuration: handshakes/s (what the client got) and handshakes per HAProxy CPU-second (from
/proc/<pid>/stat). On this 2-core machine the client needs more CPU per handshake than HAProxy does, so the first
is largely the client's ceiling; the second is HAProxy's own cost per handshake, which is what the number of loaded
certificates could change.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from agent.certs.material import cert_file_name
from agent.haproxy import HAProxyProcess, find_haproxy
from lockstep.pki import issue
from tests.harness.edge import make_layout
from tests.harness.net import free_port, split, wait_listening
from tests.harness.pki import TestPki

from .procstat import cpu_s, rss_mb
from .report import Row
from .workdir import scratch

SOURCE = Path(__file__).with_name("hsclient.c")
REFERENCE_KB_PER_CERT = 20.5  # ../shared/reference/performance-limits.md §2.3: ECDSA, 1k–100k certs, this machine type
REFERENCE_HS_PER_CPU_S = 2_600  # ibid. §2.4: ECDSA TLS 1.3, handshake only, N = 1..10k (one HAProxy thread)


def build_client(out_dir: Path) -> Path:
    """Compiles hsclient.c (gcc + libssl-dev) unless an up-to-date binary is there."""
    binary = out_dir / "hsclient"
    if binary.exists() and binary.stat().st_mtime >= SOURCE.stat().st_mtime:
        return binary
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("the handshake benchmark compiles bench/hsclient.c: install gcc and libssl-dev")
    out_dir.mkdir(parents=True, exist_ok=True)
    res = subprocess.run([cc, "-O2", "-o", str(binary), str(SOURCE), "-lssl", "-lcrypto"],
                         capture_output=True, text=True, timeout=120, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"compiling {SOURCE} failed (needs libssl-dev):\n{res.stderr}")
    return binary


def write_cert_dir(directory: Path, pki: TestPki, names: Sequence[str]) -> None:
    """One cert+key PEM per name, named as the agent names them (what HAProxy loads from our cert dir)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    for name in names:
        path = directory / cert_file_name(name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(issue(pki.edge_ca, [name], now=now).bundle_pem)


BARE_CONFIG = """\
global
    stats socket "{sock}" mode 600 level admin
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend fe
    bind "{bind}" ssl crt "{crt}"
    http-request return status 200 content-type text/plain string ok
"""


class BareHAProxy:
    """The anchor: a minimal HAProxy config serving one certificate (no SPOE, no backend, no directory)."""

    def __init__(self, root: Path, binary: str, cert_file: Path) -> None:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.bind = f"127.0.0.1:{free_port()}"
        self.config = root / "bare.cfg"
        self.config.write_text(BARE_CONFIG.format(sock=root / "admin.sock", bind=self.bind, crt=cert_file))
        self.binary = binary
        self.log = root / "haproxy.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen([self.binary, "-db", "-f", str(self.config)], stdout=log, stderr=log,
                                          stdin=subprocess.DEVNULL)
        try:
            wait_listening(self.bind, timeout_s=30)
        except TimeoutError:
            self.stop()
            raise

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGUSR1)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)


def _handshakes(client: Path, addr: str, names_file: Path, duration_s: float, procs: int,
                pid: int) -> tuple[float, float]:
    """(handshakes/s, handshakes per HAProxy CPU-second) of one round; raises on failures or wrong certificates."""
    host, port = split(addr)
    cpu0 = cpu_s(pid)
    res = subprocess.run([str(client), host, str(port), f"{duration_s:g}", str(procs), str(names_file), "100"],
                         capture_output=True, text=True, timeout=duration_s + 60, check=False)
    cpu = cpu_s(pid) - cpu0
    if res.returncode != 0:
        raise RuntimeError(f"hsclient failed ({res.returncode}): {res.stdout}{res.stderr}")
    out = json.loads(res.stdout)
    if out["failures"] or out["mismatches"] or not out["handshakes"]:
        raise RuntimeError(f"handshakes against {addr}: {out}")
    return out["handshakes"] / out["elapsed_s"], out["handshakes"] / cpu if cpu > 0 else float("nan")


@contextlib.contextmanager
def _edges(root: Path, pki: TestPki, binary: str, sizes: Sequence[int]) -> Iterator[dict[int, HAProxyProcess]]:
    started: dict[int, HAProxyProcess] = {}
    try:
        for n in sizes:
            layout = make_layout(root / f"n{n}", pki, backend_port=free_port(), spoe_port=free_port())
            write_cert_dir(layout.cert_dir, pki, [f"hs{i:06d}.bench.test" for i in range(n)])
            hap = HAProxyProcess(layout, binary=binary, log_path=root / f"n{n}" / "haproxy.log")
            hap.start(timeout_s=60 + n * 0.005)  # ~0.7 ms per certificate to load; generous on a loaded box
            started[n] = hap
        yield started
    finally:
        for hap in started.values():
            hap.stop(timeout_s=30)


def run(*, sizes: Sequence[int] = (1, 10_000), duration_s: float = 5.0, rounds: int = 3, procs: int = 4,
        haproxy_version: str = "2.6") -> list[Row]:
    with scratch("bhs-") as root:
        return _run(root, sizes=sizes, duration_s=duration_s, rounds=rounds, procs=procs,
                    haproxy_version=haproxy_version)


def _run(root: Path, *, sizes: Sequence[int], duration_s: float, rounds: int, procs: int,
         haproxy_version: str) -> list[Row]:
    client = build_client(Path(__file__).resolve().parents[1] / "var" / "bench")
    pki = TestPki.create(root / "pki")
    binary = find_haproxy(haproxy_version)
    bare_cert = root / "bare.pem"
    bare_cert.write_text(issue(pki.edge_ca, ["bare.bench.test"], now=dt.datetime.now(dt.timezone.utc)).bundle_pem)
    bare_names = root / "bare-names.txt"
    bare_names.write_text("bare.bench.test\n")
    names_files = {}
    for n in sizes:
        names_files[n] = root / f"names-{n}.txt"
        names_files[n].write_text("".join(f"hs{i:06d}.bench.test\n" for i in range(n)))

    bare = BareHAProxy(root / "bare", binary, bare_cert)
    bare.start()
    try:
        with _edges(root, pki, binary, sizes) as edges:
            time.sleep(1.0)  # let the freshly started processes settle (page faults, first allocations)
            rss = {n: rss_mb(h.pid) for n, h in edges.items()}
            bare_rss = rss_mb(bare.pid)
            rate: dict[object, list[float]] = {key: [] for key in ("bare", *sizes)}
            per_cpu: dict[object, list[float]] = {key: [] for key in ("bare", *sizes)}
            targets: list[tuple[object, str, Path, int]] = [("bare", bare.bind, bare_names, bare.pid)] + [
                (n, h.layout.https_bind, names_files[n], h.pid) for n, h in edges.items()]
            for r in range(rounds):
                order = targets[r % len(targets):] + targets[:r % len(targets)]
                for key, addr, names, pid in order:
                    hs, hs_cpu = _handshakes(client, addr, names, duration_s, procs, pid)
                    rate[key].append(hs)
                    per_cpu[key].append(hs_cpu)
    finally:
        bare.stop()

    med = {k: statistics.median(v) for k, v in rate.items()}
    med_cpu = {k: statistics.median(v) for k, v in per_cpu.items()}
    how = f"HAProxy {haproxy_version}, {procs} client procs, {rounds}×{duration_s:g} s, random SNI, ECDSA P-256"
    rows: list[Row] = []
    for n in sizes:
        goal = 0.95 if n >= 10_000 else None
        rows.append(Row(f"full TLS handshakes/s, {n:,} cert{'s' if n > 1 else ''} via our config", med[n],
                        "hs/s", "bare HAProxy, 1 cert", med["bare"], goal=goal, note=how))
        rows.append(Row(f"full TLS handshakes per HAProxy CPU-s, {n:,} cert{'s' if n > 1 else ''} via our config",
                        med_cpu[n], "hs/CPU-s", "bare HAProxy, 1 cert", med_cpu["bare"], goal=goal,
                        note=f"reference: ~{REFERENCE_HS_PER_CPU_S:,} per HAProxy CPU-s (1 thread, "
                             "performance-limits.md §2.4)"))
    # Memory per certificate: against our own config with the fewest certificates (same SPOE, backend, listeners).
    base_n = min(sizes)
    for n in sizes:
        if n < 1000 or n == base_n:
            continue
        per_cert_kb = (rss[n] - rss[base_n]) * 1024 / (n - base_n)
        rows.append(Row(f"HAProxy RSS with {n:,} certs loaded", rss[n], "MB",
                        f"our config, {base_n:,} cert{'s' if base_n > 1 else ''}", rss[base_n],
                        higher_is_better=False,
                        note=f"{per_cert_kb:.1f} KB per certificate (reference: {REFERENCE_KB_PER_CERT} KB, "
                             f"performance-limits.md §2.3); bare config {bare_rss:.0f} MB"))
    return rows

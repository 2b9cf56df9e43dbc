"""Full TLS handshakes/s through our haproxy.cfg with 1, 10k (and 100k) certificates loaded, against a bare HAProxy
config with one certificate; and what those certificates cost HAProxy in memory.

Same HAProxy binary, same client (bench/hsclient.c: C, several processes, no session cache, no tickets, a new TCP
connection per handshake), same key type (ECDSA P-256), same duration. Against our config the client draws a random
SNI among the loaded names for every handshake and checks every 100th served leaf names it.

Paired rounds: in each round one client runs against the bare HAProxy and an identical client, at the same time,
against one of our configurations. This machine is shared and its load swings the rate of a single run by ±50%
from one round to the next; two configurations measured in the same seconds see the same load, so the per-round
ratio is steady where the absolute rates are not. Rows report medians over the rounds and the median per-round ratio.

Two figures per configuration: handshakes/s (what the client got) and handshakes per HAProxy CPU-second (from
/proc/<pid>/stat). On this 2-core machine the client needs more CPU per handshake than HAProxy does, so the first
is largely the client's ceiling; the second is HAProxy's own cost per handshake, which is what the number of loaded
certificates could change.
"""

from __future__ import annotations

import contextlib
import dataclasses
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


@dataclasses.dataclass(frozen=True)
class Target:
    addr: str
    names_file: Path
    pid: int  # the HAProxy serving it


def _paired_round(client: Path, a: Target, b: Target, duration_s: float,
                  procs: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """One client against `a` and one against `b`, at the same time: per target (handshakes/s, handshakes per
    HAProxy CPU-second). Raises on failed handshakes or wrong certificates."""
    cpu0 = [cpu_s(t.pid) for t in (a, b)]
    runs = []
    for t in (a, b):
        host, port = split(t.addr)
        runs.append(subprocess.Popen(
            [str(client), host, str(port), f"{duration_s:g}", str(procs), str(t.names_file), "100"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    for t, run in zip((a, b), runs):
        try:
            stdout, stderr = run.communicate(timeout=duration_s + 60)
        except subprocess.TimeoutExpired:
            run.kill()
            raise
        if run.returncode != 0:
            raise RuntimeError(f"hsclient failed ({run.returncode}): {stdout}{stderr}")
        out = json.loads(stdout)
        if out["failures"] or out["mismatches"] or not out["handshakes"]:
            raise RuntimeError(f"handshakes against {t.addr}: {out}")
        outs.append(out)
    cpu = [cpu_s(t.pid) - c for t, c in zip((a, b), cpu0)]
    ra, rb = ((o["handshakes"] / o["elapsed_s"], o["handshakes"] / c if c > 0 else float("nan"))
              for o, c in zip(outs, cpu))
    return ra, rb


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


def run(*, sizes: Sequence[int] = (1, 10_000), duration_s: float = 3.0, rounds: int = 7, procs: int = 3,
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
            bare_t = Target(bare.bind, bare_names, bare.pid)
            ours = {n: Target(h.layout.https_bind, names_files[n], h.pid) for n, h in edges.items()}
            # (ours, bare) per paired round, for handshakes/s and for handshakes per HAProxy CPU-s
            rate: dict[int, list[tuple[float, float]]] = {n: [] for n in sizes}
            per_cpu: dict[int, list[tuple[float, float]]] = {n: [] for n in sizes}
            for r in range(rounds):
                for n in list(sizes)[r % len(sizes):] + list(sizes)[:r % len(sizes)]:
                    (b_rate, b_cpu), (o_rate, o_cpu) = _paired_round(client, bare_t, ours[n], duration_s, procs)
                    rate[n].append((o_rate, b_rate))
                    per_cpu[n].append((o_cpu, b_cpu))
    finally:
        bare.stop()

    how = (f"HAProxy {haproxy_version}, {rounds} paired rounds of {duration_s:g} s, {procs} client procs per side, "
           "random SNI, ECDSA P-256")
    rows: list[Row] = []
    for n in sizes:
        goal = 0.95 if n >= 10_000 else None
        for label, unit, pairs in (("handshakes/s", "hs/s", rate[n]), ("handshakes per HAProxy CPU-s", "hs/CPU-s",
                                                                        per_cpu[n])):
            ratios = [o / b for o, b in pairs]
            rows.append(Row(
                f"full TLS {label}, {n:,} cert{'s' if n > 1 else ''} via our config",
                statistics.median(o for o, _ in pairs), unit, "bare HAProxy, 1 cert, same seconds",
                statistics.median(b for _, b in pairs), goal=goal,
                note=f"median of per-round ratios {statistics.median(ratios):.3f}× (rounds: "
                     f"{', '.join(f'{x:.2f}' for x in ratios)}); {how}"
                     + (f"; reference ~{REFERENCE_HS_PER_CPU_S:,} per HAProxy CPU-s (1 thread, "
                        "performance-limits.md §2.4)" if unit == "hs/CPU-s" else "")))
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

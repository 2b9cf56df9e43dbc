"""SPOP fuzz campaign, suite size (Lockstep issue 7): a million frames, and fuzz connections against the real agent.

Two parts, both from tests/spoa/spop_fuzzer.py (the generator, its oracle and the in-process campaign) and
tests/spoa/spop_fuzz_wire.py (the socket campaign); tests/spoa/test_fuzz_campaign.py runs the same at CI size.

* In process: ``frames`` generated frames (valid ones from the grammar and the golden vectors, then mutated by
  token and by byte) through ``decode_frame`` and the NOTIFY fast path, and in streams split at random points
  through a ``Connection`` per stream.  Only ``SpopError`` may come out; the fast path must agree with the
  general decoder.  Spread over ``workers`` processes with consecutive seeds.
* Over sockets: ``connections`` fuzz connections against the real ``lockstep agent`` behind a real HAProxy, each
  of which must end as the oracle predicts, while a canary keeps asking for a real token.  The canary's
  latency is anchored on the same canary run alone just before.  Afterwards the agent must be alive, its RSS
  bounded, and HAProxy must still serve the token.

Crashes, mismatches, unexpected endings and canary failures must all be 0; ``python -m bench.spop_fuzz`` exits
1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import random
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

from controlplane.sync import Token
from lockstep.devserver import SyncServerThread
from tests.harness.edge import running_edge
from tests.harness.net import free_port, http_get
from tests.harness.pki import TestPki
from tests.spoa.spop_fuzz_wire import rss_bytes, run_canary, run_wire_campaign
from tests.spoa.spop_fuzzer import CampaignStats, load_seeds, peer_input_coverage, run_decoder_campaign

from .report import Row, table

FILEAUTH = "/.well-known/pki-validation/fileauth.txt"
HOST = "canary.example.test"
NODE_TOKEN = "bench-fuzz-node-token"

def _decoder_worker(seed: int, frames: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    out.put(run_decoder_campaign(random.Random(seed), frames=frames, seeds=load_seeds()))


def _decoder_campaign(frames: int, seed: int, workers: int) -> tuple[CampaignStats, float]:
    start = time.monotonic()
    if workers <= 1:
        stats = run_decoder_campaign(random.Random(seed), frames=frames, seeds=load_seeds())
        return stats, time.monotonic() - start
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_decoder_worker, args=(seed + i, -(-frames // workers), out), daemon=True)
             for i in range(workers)]
    for p in procs:
        p.start()
    stats = CampaignStats()
    for _ in procs:
        stats.merge(out.get(timeout=3600))
    for p in procs:
        p.join(30)
    return stats, time.monotonic() - start


def _statuses(counter: dict[int, int]) -> str:
    return " ".join(f"{code}:{n}" for code, n in sorted(counter.items()))


def run(frames: int = 1_000_000, *, connections: int = 20_000, seed: int = 2026, workers: int = 1,
        haproxy_version: str = "2.6", canary_anchor_s: float = 3.0) -> list[Row]:
    """The suite's entry point (bench/__main__.py): the result rows."""
    return campaign(frames, connections=connections, seed=seed, workers=workers, haproxy_version=haproxy_version,
                    canary_anchor_s=canary_anchor_s)[0]


def campaign(frames: int, *, connections: int, seed: int, workers: int, haproxy_version: str,
             canary_anchor_s: float) -> tuple[list[Row], list[str]]:
    """The rows, and every failure (first examples of each kind); the failures must be empty."""
    failures: list[str] = []
    lines, missed = peer_input_coverage(random.Random(seed), frames=min(frames, 20_000))
    covered = lines - sum(len(v) for v in missed.values())
    dec, dec_s = _decoder_campaign(frames, seed, workers)
    failures.extend(f"crash: {c[:400]}" for c in dec.crashes[:5])
    failures.extend(f"fast-path mismatch: {m[:400]}" for m in dec.mismatches[:5])

    root = Path(tempfile.mkdtemp(prefix="bfz-", dir="/tmp"))
    value = secrets.token_hex(16)
    sync = SyncServerThread(node_tokens={NODE_TOKEN: "bench"}).start()
    try:
        pki = TestPki.create(root / "pki")
        with running_edge(haproxy_version, root / "edge", pki, backend_port=free_port(), control_plane_url=sync.url,
                          bearer_token=NODE_TOKEN, cert_sync=False) as edge:
            sync.publish_token(Token(HOST, FILEAUTH, value, dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)))
            deadline = time.monotonic() + 15
            while http_get(edge.http, FILEAUTH, host=HOST).body != value.encode():
                if time.monotonic() > deadline:
                    raise RuntimeError("token never served through SPOE")
                time.sleep(0.05)
            port = int(edge.layout.spoe_addr.rsplit(":", 1)[1])
            run_wire_campaign(port, connections=200, seed=seed - 1, host=HOST, path=FILEAUTH, expect=value)  # warm-up
            idle = run_canary(port, duration_s=canary_anchor_s, host=HOST, path=FILEAUTH, expect=value)
            rss_before = rss_bytes(edge.agent.pid)
            wire, canary = run_wire_campaign(port, connections=connections, seed=seed, host=HOST, path=FILEAUTH,
                                             expect=value)
            rss_after = rss_bytes(edge.agent.pid)
            alive = edge.agent.is_running()
            served = http_get(edge.http, FILEAUTH, host=HOST).body == value.encode()
            log = edge.agent.log()
    finally:
        sync.stop()
        shutil.rmtree(root, ignore_errors=True)

    failures.extend(f"unexpected ending: {u[:400]}" for u in wire.unexpected[:5])
    failures.extend(f"canary: {f}" for f in (idle.failures + canary.failures)[:5])
    if not alive:
        failures.append("the agent process died")
    if not served:
        failures.append("HAProxy no longer serves the token after the campaign")
    if "Traceback" in log:
        failures.append("the agent logged a traceback")

    growth_mb = (rss_after - rss_before) / 2**20
    bad = len(dec.crashes) + len(dec.mismatches) + len(wire.unexpected) + len(idle.failures) + len(canary.failures)
    ver = f"HAProxy {haproxy_version}"
    rows = [
        Row("SPOP fuzz in process: frames through the decoder", dec.frames, "frames",
            note=f"{dec.frames / dec_s:,.0f} frames/s generated+decoded ({workers} worker(s)); "
                 f"{dec.frames - dec.valid_frames:,} mutated; {dec.connections:,} streams through a Connection; "
                 f"{dec.fast_path:,} via the fast path; statuses {_statuses(dec.statuses)}; "
                 f"peer-input code lines run: {covered}/{lines} (sys.settrace, first {min(frames, 20_000):,} frames)"),
        Row("SPOP fuzz over sockets: fuzz connections to the real agent", wire.connections, "connections",
            note=f"{wire.frames:,} frames, {wire.frames / wire.seconds:,.0f} frames/s; endings by status "
                 f"{_statuses(wire.statuses)}; {wire.waiting:,} valid-so-far; {wire.resets} reset before the "
                 f"answer was read; {ver}"),
        Row("SPOP fuzz: crashes + mismatches + unexpected endings + canary failures", bad, "",
            note="must be 0" + (f"; first: {failures[0][:200]}" if failures else "")),
        Row("SPOP fuzz: canary p99 latency during the campaign", canary.quantile(0.99) * 1000, "ms",
            "canary alone, same run", idle.quantile(0.99) * 1000, higher_is_better=False,
            note=f"{canary.requests:,} NOTIFYs on {canary.reconnects} connections; "
                 f"p50 {canary.quantile(0.5) * 1000:.2f} ms, max {max(canary.latencies_s, default=0) * 1000:.1f} ms"),
        Row("SPOP fuzz: agent RSS growth over the campaign", growth_mb, "MB", "RSS before",
            rss_before / 2**20, higher_is_better=False, note=f"agent alive: {alive}; token served after: {served}"),
    ]
    return rows, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.spop_fuzz")
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--connections", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--workers", type=int, default=1, help="processes for the in-process part")
    parser.add_argument("--haproxy-version", choices=["2.6", "2.8"], default="2.6")
    args = parser.parse_args(argv)
    rows, failures = campaign(args.frames, connections=args.connections, seed=args.seed, workers=args.workers,
                              haproxy_version=args.haproxy_version, canary_anchor_s=3.0)
    print(table(rows))
    for failure in failures:
        print(f"FAILURE: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

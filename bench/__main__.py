"""`python -m bench` (`make bench`): runs the benchmark suite and prints the results table.

Each benchmark measures its own anchor in the same run; ratios, not absolute numbers, are what to compare across
machines.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from .report import Row, machine, save, table

FULL_HANDSHAKE_SIZES = (1, 10_000, 100_000)
FULL_MEMORY_SIZES = (1_000, 10_000, 100_000)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x.replace("_", "")) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated counts, got {text!r}") from None
    if not sizes or any(n < 1 for n in sizes):
        raise argparse.ArgumentTypeError(f"expected positive counts, got {text!r}")
    return sizes


def _suite(args: argparse.Namespace) -> dict[str, Callable[[], list[Row]]]:
    from . import (
        cert_inject,
        handshakes,
        memory,
        reliability,
        spoe_path,
        spop_agent,
        spop_fuzz,
        time_to_https,
    )

    hv = args.haproxy_version
    return {
        "time-to-https": lambda: time_to_https.run(sizes=args.tth_sizes, haproxy_version=hv),
        "cert-inject": lambda: cert_inject.run(n=100_000 if args.full else args.certs, haproxy_version=hv),
        # Many short rounds: the client shares the 2 cores with HAProxy and whatever else runs, and the median of
        # many alternating rounds is steadier than a few long ones.
        "handshakes": lambda: handshakes.run(sizes=FULL_HANDSHAKE_SIZES if args.full else args.hs_sizes,
                                             duration_s=min(args.duration, 3.0), rounds=7, haproxy_version=hv),
        "spoe-path": lambda: spoe_path.run(duration_s=args.duration, haproxy_version=hv),
        "spop-agent": lambda: spop_agent.run(duration_s=args.duration),
        "spop-fuzz": lambda: spop_fuzz.run(haproxy_version=hv),  # a million frames, 20k connections, ~1 min
        "memory": lambda: memory.run(sizes=FULL_MEMORY_SIZES if args.full else args.mem_sizes, haproxy_version=hv),
        "reliability": lambda: reliability.run(haproxy_version=hv),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--only", action="append", help="run only these benchmarks (repeatable)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measured round")
    parser.add_argument("--haproxy-version", choices=["2.6", "2.8"], default="2.6")
    parser.add_argument("--full", action="store_true",
                        help="the large sizes: 100k certificates for cert-inject, handshakes and memory")
    parser.add_argument("--certs", type=int, default=10_000, help="certificates for cert-inject (default 10k)")
    parser.add_argument("--tth-sizes", type=_sizes, default=(1, 100, 1000), metavar="N,N,...",
                        help="domains added at once for time-to-https (default 1,100,1000)")
    parser.add_argument("--hs-sizes", type=_sizes, default=(1, 10_000), metavar="N,N,...",
                        help="certificates loaded for handshakes (default 1,10000; --full adds 100000)")
    parser.add_argument("--mem-sizes", type=_sizes, default=(1_000, 10_000), metavar="N,N,...",
                        help="domains for memory; the first is the anchor (default 1000,10000; --full adds 100000)")
    parser.add_argument("--out", type=Path, default=Path("var/bench/results.json"))
    args = parser.parse_args(argv)
    suite = _suite(args)
    selected = args.only or list(suite)
    unknown = set(selected) - set(suite)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}; known: {', '.join(suite)}")
    rows: list[Row] = []
    failed: list[str] = []
    for name in selected:
        start = time.monotonic()
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        try:
            rows.extend(suite[name]())
        except Exception as exc:  # one broken benchmark must not lose the others' rows
            traceback.print_exc()
            failed.append(name)
            rows.append(Row(f"{name}: did not complete", float("nan"), "", note=f"{type(exc).__name__}: {exc}"))
        print(f"bench: {name} done in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
        save(rows, args.out)  # after each benchmark: a long run that dies later keeps what it measured
    print(f"\nMachine: {machine()}\n")
    print(table(rows))
    if failed:
        print(f"\nbench: FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

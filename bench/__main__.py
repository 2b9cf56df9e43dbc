"""`python -m bench` (`make bench`): runs the benchmark suite and prints the results table.

Each benchmark measures its own anchor in the same run; ratios, not absolute numbers, are what to compare across
machines.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .report import Row, machine, save, table


def _suite(args: argparse.Namespace) -> dict[str, Callable[[], list[Row]]]:
    from . import cert_inject, spoe_path, spop_agent

    return {
        "cert-inject": lambda: cert_inject.run(n=100_000 if args.full else args.certs,
                                               haproxy_version=args.haproxy_version),
        "spoe-path": lambda: spoe_path.run(duration_s=args.duration, haproxy_version=args.haproxy_version),
        "spop-agent": lambda: spop_agent.run(duration_s=args.duration),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--only", action="append", help="run only these benchmarks (repeatable)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measured round")
    parser.add_argument("--haproxy-version", choices=["2.6", "2.8"], default="2.6")
    parser.add_argument("--full", action="store_true", help="the large sizes (100k certificates)")
    parser.add_argument("--certs", type=int, default=10_000, help="certificates for cert-inject (default 10k)")
    parser.add_argument("--out", type=Path, default=Path("var/bench/results.json"))
    args = parser.parse_args(argv)
    suite = _suite(args)
    selected = args.only or list(suite)
    unknown = set(selected) - set(suite)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}; known: {', '.join(suite)}")
    rows: list[Row] = []
    for name in selected:
        start = time.monotonic()
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        rows.extend(suite[name]())
        print(f"bench: {name} done in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    print(f"\nMachine: {machine()}\n")
    print(table(rows))
    save(rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

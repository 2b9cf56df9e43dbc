"""`lockstep` command line: `lockstep agent --config FILE`, `lockstep demo`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

__all__ = ["main"]


def _run(coro: object) -> None:
    try:
        import uvloop  # optional: faster SPOE path when installed
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lockstep", description="Zero-trust TLS termination on HAProxy")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    p_agent = sub.add_parser("agent", help="run the sidecar next to one HAProxy node")
    p_agent.add_argument("--config", type=Path, required=True)
    p_demo = sub.add_parser("demo", help="run HAProxy + sidecar + a demo control plane on this machine")
    p_demo.add_argument("--workdir", type=Path, default=Path("var/demo"))
    p_demo.add_argument("--haproxy-version", choices=["2.6", "2.8"], default="2.6")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per long-poll is noise

    if args.command == "agent":
        from agent.config import ConfigError, load_config
        from agent.main import run_agent

        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            print(f"lockstep agent: bad configuration: {exc}", file=sys.stderr)
            return 2
        _run(run_agent(cfg))
        return 0
    if args.command == "demo":
        from lockstep.demo import run_demo

        return run_demo(workdir=args.workdir, haproxy_version=args.haproxy_version)
    return 2


if __name__ == "__main__":
    sys.exit(main())

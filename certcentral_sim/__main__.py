"""`python -m certcentral_sim --port P --api-key K --resolve name=addr ...`: the simulator as a standalone server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import signal
from collections.abc import Sequence

from aiohttp import web

from .app import API_PREFIX, make_app
from .clock import Clock, FakeClock, SystemClock
from .core import CertCentral
from .faults import FaultPlan
from .model import DEFAULT_RATE_LIMITS, ApiKey, Permission, SimConfig


def _parse_resolve(items: Sequence[str]) -> dict[str, list[str]]:
    table: dict[str, list[str]] = {}
    for item in items:
        name, sep, addrs = item.partition("=")
        if not sep or not name or not addrs:
            raise argparse.ArgumentTypeError(f"--resolve {item!r}: use name=addr[:port][,addr[:port]...]")
        table.setdefault(name, []).extend(a for a in addrs.split(",") if a)
    return table


def _parse_limit(text: str) -> tuple[int, float]:
    count, _, window = text.partition("/")
    try:
        return int(count), float(window.removesuffix("s"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rate-limit {text!r}: use COUNT/SECONDS, e.g. 100/5") from None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m certcentral_sim", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8099)
    p.add_argument("--api-key", action="append", default=[], metavar="KEY[:PERMISSION]",
                   help="accepted X-DC-DEVKEY (repeatable); PERMISSION is admin (default), orders or view_only")
    p.add_argument("--resolve", action="append", default=[], metavar="NAME=ADDR[:PORT][,ADDR...]",
                   help="where DCV fetches for NAME connect (repeatable); several addresses = random pick per fetch; "
                        "NAME may be *.SUFFIX (names below SUFFIX) or * (every other name)")
    p.add_argument("--rate-limit", action="append", type=_parse_limit, metavar="COUNT/SECONDS",
                   help="rolling window per API key (repeatable); default 100/5 and 1000/180")
    p.add_argument("--issuance-delay", type=float, default=0.0, metavar="SECONDS")
    p.add_argument("--random-value-ttl", type=float, default=30 * 86400.0, metavar="SECONDS")
    p.add_argument("--max-cert-days", type=int, default=199)
    p.add_argument("--require-approval", action="store_true")
    p.add_argument("--no-auto-poll", action="store_true", help="disable DigiCert's automatic DCV checks")
    p.add_argument("--clock-speed", type=float, default=1.0, help="simulated seconds per real second")
    p.add_argument("--fake-clock", action="store_true", help="time moves only via POST /_sim/clock")
    p.add_argument("--seed", type=int)
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def build(args: argparse.Namespace) -> tuple[CertCentral, FaultPlan, Clock]:
    keys = []
    for item in args.api_key or ["sim-api-key"]:
        key, _, perm = item.partition(":")
        keys.append(ApiKey(key, Permission(perm or "admin")))
    config = SimConfig(
        api_keys=tuple(keys),
        rate_limits=tuple(args.rate_limit) if args.rate_limit else DEFAULT_RATE_LIMITS,
        issuance_delay_s=args.issuance_delay, random_value_ttl_s=args.random_value_ttl,
        max_cert_days=args.max_cert_days, require_approval=args.require_approval, auto_poll=not args.no_auto_poll,
    )
    clock: Clock = FakeClock() if args.fake_clock else SystemClock(speed=args.clock_speed)
    core = CertCentral(config, clock=clock, rng=random.Random(args.seed))
    core.set_resolve(_parse_resolve(args.resolve))
    return core, FaultPlan(), clock


async def serve(args: argparse.Namespace) -> None:
    core, faults, clock = build(args)
    runner = web.AppRunner(make_app(core, faults=faults, clock=clock), shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, args.host, args.port).start()
        print(f"CertCentral simulator on http://{args.host}:{args.port}{API_PREFIX} "
              f"(admin: /_sim, root CA: /_sim/root.pem)", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()

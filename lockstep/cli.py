"""`lockstep` command line: `lockstep agent --config FILE`, `lockstep demo`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
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


def _internal_ca(cfg: object, kek: object) -> tuple[str, str]:
    """The internal CA's certificate and its SHA-256 pin, creating the CA in the store if it has none yet (so a
    setup step can hand agents `ca_sha256` before the control plane first starts)."""
    import datetime as dt

    from cryptography.hazmat.primitives import hashes

    from controlplane.pki_api import InternalPki
    from controlplane.store import open_store

    async def get() -> tuple[str, str]:
        async with await open_store(cfg.store_url, kek=kek) as store:  # type: ignore[attr-defined]
            ca = await InternalPki(store, now=lambda: dt.datetime.now(dt.timezone.utc)).ca()
        return ca.cert_pem, "sha256:" + ca.cert.fingerprint(hashes.SHA256()).hex()

    return asyncio.run(get())


def _controlplane(args: argparse.Namespace) -> int:
    from controlplane.serve import ConfigError, load_config, load_kek_from, serve
    from controlplane.store import StoreError, generate_kek, load_kek_file, rotate_key

    if args.cp_action == "new-kek":
        print(generate_kek())
        return 0
    if args.cp_action == "ca":
        try:
            cfg = load_config(args.config)
            pem, pin = _internal_ca(cfg, load_kek_from(cfg, os.environ.get("LOCKSTEP_KEK")))
        except (ConfigError, StoreError) as exc:
            print(f"lockstep controlplane: {exc}", file=sys.stderr)
            return 2
        print(pin if args.pin else pem, end="\n" if args.pin else "")
        return 0
    try:
        cfg = load_config(args.config)
        kek = load_kek_from(cfg, os.environ.get("LOCKSTEP_KEK"))
        if args.cp_action == "rotate-key":
            count = rotate_key(cfg.store_url, kek, load_kek_file(args.new_kek_file))
            print(f"re-wrapped {count} key(s); point kek_file at the new key before restarting")
            return 0
        _run(serve(cfg, kek))
    except (ConfigError, StoreError) as exc:
        print(f"lockstep controlplane: {exc}", file=sys.stderr)
        return 2
    return 0


def _demo_backend(args: argparse.Namespace) -> int:
    import datetime as dt
    import random
    import signal

    from lockstep.demo_backend import BackendFiles, run_backend, run_enrolled_backend
    from lockstep.enroll import IdentityManager

    if args.enroll is None and (args.cert is None or args.client_ca is None):
        print("lockstep demo-backend: give --cert and --client-ca, or --enroll", file=sys.stderr)
        return 2

    def token() -> str | None:
        if args.token:
            return str(args.token)
        try:
            return args.token_file.read_text().strip() or None if args.token_file else None
        except OSError:
            return None

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if args.enroll is None:
            await run_backend(args.listen, BackendFiles(cert=args.cert, key=args.key, client_ca=args.client_ca),
                              name=args.name, stop=stop)
            return
        identity = IdentityManager(url=args.enroll, directory=args.state_dir, ca_file=args.ca_file,
                                   ca_sha256=args.ca_sha256, token=token, name="backend",
                                   now=lambda: dt.datetime.now(dt.timezone.utc), rand=random.Random())
        await run_enrolled_backend(args.listen, identity, name=args.name, stop=stop)

    try:
        _run(serve())
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError: unreadable or broken PEM, port taken
        print(f"lockstep demo-backend: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lockstep", description="Zero-trust TLS termination on HAProxy")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    p_agent = sub.add_parser("agent", help="run the sidecar next to one HAProxy node")
    p_agent.add_argument("--config", type=Path, required=True)
    p_cp = sub.add_parser("controlplane", help="run or administer the control plane")
    cp_sub = p_cp.add_subparsers(dest="cp_action", required=True)
    p_serve = cp_sub.add_parser("serve", help="REST API, agents' sync API and the provisioning pipeline")
    p_serve.add_argument("--config", type=Path, required=True)
    p_rot = cp_sub.add_parser("rotate-key", help="re-wrap every stored private key under a new key-encryption key")
    p_rot.add_argument("--config", type=Path, required=True)
    p_rot.add_argument("--new-kek-file", type=Path, required=True)
    cp_sub.add_parser("new-kek", help="print a new random key-encryption key (base64)")
    p_ca = cp_sub.add_parser("ca", help="print the internal CA certificate (created in the store if missing)")
    p_ca.add_argument("--config", type=Path, required=True)
    p_ca.add_argument("--pin", action="store_true", help="print the agents' ca_sha256 pin instead of the PEM")
    from .operator import add_operator_commands

    add_operator_commands(sub, dict(os.environ))
    p_demo = sub.add_parser("demo", help="the whole stack on this machine, with demo domains served over HTTPS")
    p_demo.add_argument("--workdir", type=Path, default=Path("var/demo"),
                        help="state, keys and logs of the demo (cleared at each start)")
    p_demo.add_argument("--haproxy-version", choices=["2.6", "2.8"], default="2.6")
    p_demo.add_argument("--domains", type=int, metavar="N", help="how many demo domains to add (default 3, max 5)")
    p_demo.add_argument("--domain", action="append", default=[], metavar="NAME",
                        help="add this domain instead of the demo ones (repeatable)")
    p_be = sub.add_parser("demo-backend", help="a TLS-only demo application server that requires a client certificate")
    p_be.add_argument("--listen", required=True, help="host:port")
    p_be.add_argument("--cert", type=Path, help="PEM chain (+ key unless --key); re-read on change")
    p_be.add_argument("--key", type=Path)
    p_be.add_argument("--client-ca", type=Path, help="CA of the accepted client certificates")
    p_be.add_argument("--enroll", metavar="URL", help="get the server certificate from the control plane's internal "
                                                      "PKI instead of --cert/--client-ca (https URL)")
    p_be.add_argument("--token", help="the backend's bootstrap token (lockstep backends add)")
    p_be.add_argument("--token-file", type=Path)
    p_be.add_argument("--ca-file", type=Path, help="the internal CA (trust anchor for the control plane)")
    p_be.add_argument("--ca-sha256", help="or the SHA-256 pin of the internal CA certificate")
    p_be.add_argument("--state-dir", type=Path, default=Path("var/demo-backend"))
    p_be.add_argument("--name", default="demo")
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
    if args.command == "controlplane":
        return _controlplane(args)
    if args.command in ("domains", "certs", "nodes", "backends"):
        from .operator import run_operator_command

        return run_operator_command(args)
    if args.command == "demo":
        from lockstep.demo import run_demo

        return run_demo(workdir=args.workdir, haproxy_version=args.haproxy_version, domains=args.domains,
                        names=args.domain)
    if args.command == "demo-backend":
        return _demo_backend(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())

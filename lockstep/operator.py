"""Operator commands against the control plane's REST API: `lockstep domains ...`, `lockstep certs`, and the
internal PKI's registry: `lockstep nodes ...`, `lockstep backends ...`.

Readable tables by default, `--json` for scripts. Talks HTTP only (the control plane may be elsewhere).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import httpx

__all__ = ["add_operator_commands", "run_operator_command"]

BULK_CHUNK = 200


def add_operator_commands(sub: Any, env: dict[str, str]) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default=env.get("LOCKSTEP_URL", "http://127.0.0.1:8443"),
                       help="control plane URL (env LOCKSTEP_URL)")
        p.add_argument("--token", default=env.get("LOCKSTEP_API_TOKEN"),
                       help="operator API token (env LOCKSTEP_API_TOKEN)")
        p.add_argument("--cacert", default=env.get("LOCKSTEP_CACERT"),
                       help="CA bundle that signed the control plane's certificate (env LOCKSTEP_CACERT)")
        p.add_argument("--json", action="store_true", help="machine-readable output")

    domains = sub.add_parser("domains", help="customer domains").add_subparsers(dest="action", required=True)
    p = domains.add_parser("add", help="register domains (names, or --file with one per line)")
    p.add_argument("names", nargs="*")
    p.add_argument("--file", type=Path, help="bulk import: one domain per line, # comments")
    common(p)
    p = domains.add_parser("list", help="list domains")
    p.add_argument("--status", action="append")
    p.add_argument("--prefix")
    p.add_argument("--limit", type=int, default=0, help="0 = all")
    common(p)
    p = domains.add_parser("show", help="one domain, with its certificate")
    p.add_argument("name")
    common(p)
    p = domains.add_parser("remove", help="withdraw a domain (cancel or revoke at the CA)")
    p.add_argument("name")
    common(p)
    p = sub.add_parser("certs", help="certificate expiry overview")
    p.add_argument("--expiring-within-days", type=float, default=36500)
    common(p)

    def ttl(p: argparse.ArgumentParser) -> None:
        p.add_argument("--token-ttl", type=_duration, default=3600.0, metavar="DURATION",
                       help="how long the bootstrap token can be redeemed: 90s, 30m, 1h, 2d (default 1h)")

    nodes = sub.add_parser("nodes", help="edge nodes of the internal PKI").add_subparsers(dest="action", required=True)
    p = nodes.add_parser("add", help="register a node; prints its one-time bootstrap token")
    p.add_argument("id")
    ttl(p)
    common(p)
    p = nodes.add_parser("token", help="a new bootstrap token for a registered node (re-enrollment)")
    p.add_argument("id")
    ttl(p)
    common(p)
    p = nodes.add_parser("list", help="nodes, their credential and certificate expiry")
    common(p)
    p = nodes.add_parser("remove", help="remove a node: its certificates are refused at once")
    p.add_argument("id")
    common(p)
    backends = sub.add_parser("backends", help="backends with server certificates from the internal PKI")
    backends_sub = backends.add_subparsers(dest="action", required=True)
    p = backends_sub.add_parser("add", help="register a backend and its names; prints its one-time bootstrap token")
    p.add_argument("id")
    p.add_argument("--name", dest="names", action="append", required=True, help="DNS name or IP (repeat)")
    ttl(p)
    common(p)
    p = backends_sub.add_parser("token", help="a new bootstrap token for a registered backend")
    p.add_argument("id")
    ttl(p)
    common(p)
    p = backends_sub.add_parser("list", help="backends, their names and certificate expiry")
    common(p)
    p = backends_sub.add_parser("remove", help="remove a backend: no more certificates for it")
    p.add_argument("id")
    common(p)


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text and text[-1] in units:
            value = float(text[:-1]) * units[text[-1]]
        else:
            value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration like 90s, 30m, 1h or 2d") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("the duration must be positive")
    return value


def _client(args: argparse.Namespace) -> httpx.Client:
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    return httpx.Client(base_url=args.url, headers=headers, timeout=30.0, verify=args.cacert or True)


def _table(rows: Sequence[Sequence[str]], headers: Sequence[str], out: TextIO) -> None:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    out.write("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths)).rstrip() + "\n")
    for r in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")


def _names_from(args: argparse.Namespace) -> list[str]:
    names = list(args.names)
    if args.file:
        for line in args.file.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                names.append(line)
    return names


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _progress(done: int, total: int, err: TextIO) -> None:
    width = 30
    filled = width * done // max(total, 1)
    err.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    err.flush()


def _expiry(not_after: str | None, now: dt.datetime) -> str:
    if not not_after:
        return "-"
    seconds = (dt.datetime.fromisoformat(not_after.replace("Z", "+00:00")) - now).total_seconds()
    if abs(seconds) >= 86400:
        return f"{not_after[:10]} ({seconds / 86400:.0f} d)"
    # Internal certificates live hours (minutes in the demo): the day alone would not show a renewal.
    left = f"{seconds / 3600:.0f} h" if abs(seconds) >= 3600 else f"{seconds / 60:.0f} min" if abs(seconds) >= 120 \
        else f"{seconds:.0f} s"
    return f"{not_after[:10]} {not_after[11:19]} ({left})"


def run_operator_command(args: argparse.Namespace, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Returns the process exit code: 0 ok, 1 some items refused, 2 usage or connection error."""
    try:
        with _client(args) as http:
            return _dispatch(args, http, out, err)
    except httpx.HTTPError as exc:
        err.write(f"lockstep: cannot reach the control plane at {args.url}: {exc}\n")
        return 2


def _fail(resp: httpx.Response, err: TextIO) -> int:
    try:
        body = resp.json()
        err.write(f"lockstep: {body.get('message') or body.get('error')} (HTTP {resp.status_code})\n")
    except ValueError:
        err.write(f"lockstep: HTTP {resp.status_code}\n")
    return 1 if resp.status_code < 500 else 2


def _print_json(value: Any, out: TextIO) -> None:
    json.dump(value, out, indent=2)
    out.write("\n")


def _identities(args: argparse.Namespace, http: httpx.Client, out: TextIO, err: TextIO) -> int:
    """`lockstep nodes ...` and `lockstep backends ...`."""
    kind = args.command  # "nodes" | "backends"
    now = dt.datetime.now(dt.timezone.utc)
    if args.action in ("add", "token"):
        body: dict[str, Any] = {"token_ttl_s": args.token_ttl}
        if args.action == "add":
            body["id"] = args.id
            if kind == "backends":
                body["names"] = args.names
            resp = http.post(f"/v1/{kind}", json=body)
        else:
            resp = http.post(f"/v1/{kind}/{args.id}/token", json=body)
        if resp.status_code != 201:
            return _fail(resp, err)
        answer = resp.json()
        if args.json:
            _print_json(answer, out)
        else:
            # The token goes to stdout alone (scripts: TOKEN=$(lockstep nodes add edge-4)); the rest to stderr.
            err.write(f"{kind[:-1]} {answer['id']}: bootstrap token (shown once, one use, valid until "
                      f"{answer['token_expires_at']}):\n")
            out.write(answer["bootstrap_token"] + "\n")
        return 0
    if args.action == "list":
        resp = http.get(f"/v1/{kind}")
        if resp.status_code != 200:
            return _fail(resp, err)
        items = resp.json()[kind]
        if args.json:
            _print_json(items, out)
            return 0
        rows = []
        for item in items:
            state = "removed" if item["removed"] else "enrolled" if item["certificate_not_after"] else \
                "awaiting enrollment" if item["pending_tokens"] else "no certificate"
            extra = ",".join(item["names"]) if kind == "backends" else (item.get("credential") or "-")
            rows.append([item["id"], state, extra, _expiry(item["certificate_not_after"], now)])
        _table(rows, ["id", "state", "names" if kind == "backends" else "credential", "certificate expires"], out)
        return 0
    if args.action == "remove":
        resp = http.delete(f"/v1/{kind}/{args.id}")
        if resp.status_code != 200:
            return _fail(resp, err)
        if args.json:
            _print_json(resp.json(), out)
        else:
            out.write(f"{kind[:-1]} {args.id}: removed; its certificates are refused from now on\n")
        return 0
    return 2


def _dispatch(args: argparse.Namespace, http: httpx.Client, out: TextIO, err: TextIO) -> int:
    if args.command in ("nodes", "backends"):
        return _identities(args, http, out, err)
    now = dt.datetime.now(dt.timezone.utc)
    if args.command == "certs":
        resp = http.get("/v1/certificates", params={"expiring_within_days": args.expiring_within_days})
        if resp.status_code != 200:
            return _fail(resp, err)
        certs = sorted(resp.json()["certificates"], key=lambda c: c["not_after"])
        if args.json:
            json.dump(certs, out, indent=2)
            out.write("\n")
        else:
            _table([[c["domain"], _expiry(c["not_after"], now), c["issuer"], c["fingerprint"][:23] + "…"]
                    for c in certs], ["domain", "expires", "issuer", "fingerprint"], out)
        return 0
    action = args.action
    if action == "add":
        names = _names_from(args)
        if not names:
            err.write("lockstep domains add: give names or --file\n")
            return 2
        results: list[dict[str, Any]] = []
        show_progress = len(names) > BULK_CHUNK and not args.json
        for chunk in _chunks(names, BULK_CHUNK):
            resp = http.post("/v1/domains", json={"names": chunk})
            if resp.status_code != 200:
                return _fail(resp, err)
            results.extend(resp.json()["results"])
            if show_progress:
                _progress(len(results), len(names), err)
        if show_progress:
            err.write("\n")
        refused = [r for r in results if r["http_status"] != 201]
        if args.json:
            json.dump(results, out, indent=2)
            out.write("\n")
        else:
            added = len(results) - len(refused)
            out.write(f"added {added} domain(s)" + (f", refused {len(refused)}:" if refused else "") + "\n")
            if refused:
                _table([[str(r.get("name")), r["error"], r["message"]] for r in refused],
                       ["name", "error", "reason"], out)
        return 1 if refused else 0
    if action == "list":
        domains: list[dict[str, Any]] = []
        after = None
        while True:
            params: dict[str, Any] = {"limit": 1000 if not args.limit else min(args.limit - len(domains), 1000)}
            if args.status:
                params["status"] = args.status
            if args.prefix:
                params["prefix"] = args.prefix
            if after:
                params["after"] = after
            resp = http.get("/v1/domains", params=params)
            if resp.status_code != 200:
                return _fail(resp, err)
            body = resp.json()
            domains.extend(body["domains"])
            after = body["next_after"]
            if not after or (args.limit and len(domains) >= args.limit):
                break
        if args.json:
            json.dump(domains, out, indent=2)
            out.write("\n")
        else:
            _table([[d["name"], d["status"], d["issuer"] or "-", (d["detail"] or "")[:60]] for d in domains],
                   ["domain", "status", "issuer", "detail"], out)
        return 0
    if action == "show":
        resp = http.get(f"/v1/domains/{args.name}")
        if resp.status_code != 200:
            return _fail(resp, err)
        d = resp.json()
        if args.json:
            json.dump(d, out, indent=2)
            out.write("\n")
            return 0
        cert = d.get("certificate") or {}
        rows = [["domain", d["name"]], ["status", d["status"]], ["detail", d["detail"] or "-"],
                ["issuer", d["issuer"] or "-"], ["next step", d["next_retry_at"] or "-"],
                ["CA order", d["ca_order_id"] or "-"],
                ["certificate", cert.get("fingerprint", "-")], ["expires", _expiry(cert.get("not_after"), now)]]
        _table(rows, ["field", "value"], out)
        return 0
    if action == "remove":
        resp = http.delete(f"/v1/domains/{args.name}")
        if resp.status_code != 202:
            return _fail(resp, err)
        out.write(f"{resp.json()['name']}: removal requested\n")
        return 0
    return 2

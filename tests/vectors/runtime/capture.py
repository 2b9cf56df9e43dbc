"""Capture runtime-API replies from real HAProxy binaries into tests/vectors/runtime/<version>/.

Run from the repository root:  .venv/bin/python tests/vectors/runtime/capture.py [2.6] [2.8]

For each version it starts HAProxy from the shipped haproxy/haproxy.cfg (layout rooted at /tmp/lockstep-capture so
that every captured path is the same on every run), sends each case's request on a fresh non-interactive
connection, and writes the reply bytes unchanged to <case>.txt. `cases.json` records the command line of each case
(payloads left out), `certs.json` what the certificates really hold (computed with `cryptography`, so the parsers
are checked against an independent source), and `limits.json` the measured request-size limit. Prompt-mode
replies are stored as prompt-*.txt, exactly as read up to the prompt. "Locked" replies are provoked for real: two
threads loop `show ssl cert` over ~200 certificates while the case is retried until HAProxy refuses it.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from agent.haproxy import HAProxyProcess, find_haproxy  # noqa: E402
from agent.runtime import commands as c  # noqa: E402
from lockstep.pki import Issued, issue, make_ca  # noqa: E402
from tests.harness.edge import make_layout  # noqa: E402
from tests.harness.net import free_port  # noqa: E402
from tests.harness.pki import TestPki  # noqa: E402

ROOT = Path("/tmp/lockstep-capture")
OUT = Path(__file__).resolve().parent
LOCK_ATTEMPTS = 3000


def raw(sock: Path, request: str, *, timeout_s: float = 5.0) -> str:
    """One non-interactive request; the reply up to EOF (or up to the timeout, marked)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout_s)
        s.connect(str(sock))
        s.sendall(request.encode())
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except TimeoutError:
            return out.decode() + "<<timeout>>"
        except ConnectionResetError:
            return out.decode() + "<<reset>>"
        return out.decode()


def cert_facts(issued: Issued) -> dict[str, object]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    san = issued.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {
        "serial": format(issued.cert.serial_number, "X"),
        "sha1": issued.cert.fingerprint(hashes.SHA1()).hex().upper(),  # noqa: S303 - what HAProxy prints
        "not_before": issued.cert.not_valid_before_utc.replace(microsecond=0).isoformat(),
        "not_after": issued.cert.not_valid_after_utc.replace(microsecond=0).isoformat(),
        "dns_names": san.get_values_for_type(x509.DNSName),
        "subject_cn": issued.cert.subject.rfc4514_string(),
        "chain": [ch.subject.rfc4514_string() for ch in issued.chain],
    }


class Capture:
    def __init__(self, version: str) -> None:
        self.version = version
        self.dir = OUT / version
        self.cases: dict[str, str] = {}

    def save(self, case: str, command_line: str, reply: str) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / f"{case}.txt").write_bytes(reply.encode())
        self.cases[case] = command_line
        return reply


def pipeline(sock: Path, requests: list[str]) -> str:
    return raw(sock, "".join(requests))


def run(version: str) -> None:
    if ROOT.exists():
        shutil.rmtree(ROOT)
    ROOT.mkdir(mode=0o700)
    pki = TestPki.create(ROOT / "pki")
    layout = make_layout(ROOT, pki, backend_port=free_port(), spoe_port=free_port())
    proc = HAProxyProcess(layout, binary=find_haproxy(version), log_path=ROOT / "haproxy.log")
    cap = Capture(version)
    if cap.dir.exists():
        shutil.rmtree(cap.dir)
    d = str(layout.cert_dir)
    sock = layout.admin_socket
    now = dt.datetime.now(dt.timezone.utc)
    inter = make_ca("Lockstep Test Intermediate", now=now, parent=pki.edge_ca)
    certs = {
        "a": issue(pki.edge_ca, ["a.example.com"], now=now),
        "b": issue(pki.edge_ca, ["b.example.com"], now=now),
        "rsa": issue(inter, ["rsa.example.com", "www.rsa.example.com", "192.0.2.7"], now=now, key_type="rsa"),
    }
    A, B, R = (f"{d}/{n}.example.com.pem" for n in ("a", "b", "rsa"))
    proc.start()
    try:
        (cap.dir).mkdir(parents=True, exist_ok=True)
        (cap.dir / "haproxy-version.txt").write_text(proc.version() + "\n")

        def go(case: str, cmd: c.Command | str, line: str | None = None) -> str:
            text = cmd.text if isinstance(cmd, c.Command) else cmd
            shown = cmd.line if isinstance(cmd, c.Command) else (line or cmd.split("\n")[0])
            return cap.save(case, shown, raw(sock, text))

        a_cert, a_key = c.split_pem(certs["a"].bundle_pem)
        go("show-info", c.show_info())
        go("show-ssl-cert", c.show_ssl_cert())
        go("show-ssl-crt-lists", c.show_ssl_crt_list())
        go("show-ssl-crt-list-dir-empty", c.show_ssl_crt_list(d))
        go("new-ssl-cert", c.new_ssl_cert(A, cert_dir=d))
        go("new-ssl-cert-exists", c.new_ssl_cert(A, cert_dir=d))
        go("show-ssl-cert-empty-store", c.show_ssl_cert(A))
        go("set-ssl-cert-created", c.set_ssl_cert(A, a_cert, cert_dir=d))
        go("show-ssl-cert-transaction", c.show_ssl_cert())
        go("show-ssl-cert-star", c.show_ssl_cert(A, transaction=True))
        go("commit-ssl-cert-no-key", c.commit_ssl_cert(A, cert_dir=d))
        go("set-ssl-cert-key-updated", c.set_ssl_cert_key(A, a_key, cert_dir=d))
        go("abort-ssl-cert-other", c.abort_ssl_cert(B))
        go("commit-ssl-cert-unused", c.commit_ssl_cert(A, cert_dir=d))
        go("add-ssl-crt-list", c.add_ssl_crt_list(d, A, cert_dir=d))
        go("add-ssl-crt-list-exists", c.add_ssl_crt_list(d, A, cert_dir=d))
        go("show-ssl-cert-used", c.show_ssl_cert(A))
        go("show-ssl-crt-list-dir", c.show_ssl_crt_list(d))
        go("show-ssl-crt-list-dir-n", c.show_ssl_crt_list(d, line_numbers=True))
        go("set-ssl-cert-update", c.set_ssl_cert(A, certs["a"].bundle_pem, cert_dir=d))
        go("commit-ssl-cert-used", c.commit_ssl_cert(A, cert_dir=d))
        # RSA leaf under an intermediate, with an IP SAN (HAProxy prints it as an empty item)
        pipeline(sock, [c.new_ssl_cert(R, cert_dir=d).text, c.set_ssl_cert(R, certs["rsa"].bundle_pem, cert_dir=d).text,
                        c.commit_ssl_cert(R, cert_dir=d).text])
        go("show-ssl-cert-chain", c.show_ssl_cert(R))
        go("show-ssl-cert-default", c.show_ssl_cert(str(pki.default_file)))
        # failures inside a transaction
        go("set-ssl-cert-mismatch", c.set_ssl_cert(R, certs["rsa"].cert_pem + certs["b"].key_pem, cert_dir=d))
        go("commit-ssl-cert-mismatch", c.commit_ssl_cert(R, cert_dir=d))
        go("set-ssl-cert-garbage", f"set ssl cert {R} <<\nnot a pem\n\n", f"set ssl cert {R} <<")
        go("abort-ssl-cert", c.abort_ssl_cert(R))
        go("abort-ssl-cert-none", c.abort_ssl_cert(R))
        go("commit-ssl-cert-none", c.commit_ssl_cert(R, cert_dir=d))
        go("set-ssl-cert-unknown", c.set_ssl_cert(B, certs["b"].bundle_pem, cert_dir=d))
        # deletion
        go("del-ssl-cert-in-use", c.del_ssl_cert(A, cert_dir=d))
        go("del-ssl-crt-list", c.del_ssl_crt_list(d, A, cert_dir=d))
        go("del-ssl-crt-list-not-listed", c.del_ssl_crt_list(d, A, cert_dir=d))
        go("del-ssl-cert", c.del_ssl_cert(A, cert_dir=d))
        go("del-ssl-cert-unknown", c.del_ssl_cert(A, cert_dir=d))
        go("del-ssl-crt-list-unknown-cert", c.del_ssl_crt_list(d, A, cert_dir=d))
        go("del-ssl-crt-list-unknown-list", c.del_ssl_crt_list("/nonexistent", A, cert_dir=d))
        go("add-ssl-crt-list-unknown", c.add_ssl_crt_list(d, A, cert_dir=d))
        go("show-ssl-cert-unknown", c.show_ssl_cert("/nonexistent.pem"))
        go("show-ssl-crt-list-unknown", c.show_ssl_crt_list("/nonexistent"))
        # what HAProxy itself does with names our builder refuses
        go("new-ssl-cert-relative", "new ssl cert a.pem\n")
        go("add-ssl-crt-list-relative", f"add ssl crt-list {d} a.pem\n")
        go("new-ssl-cert-dotdot", f"new ssl cert {d}/../escape.pem\n")
        pipeline(sock, [f"set ssl cert {d}/../escape.pem <<\n{c.normalize_payload(certs['b'].bundle_pem)}\n\n",
                        f"commit ssl cert {d}/../escape.pem\n"])
        go("add-ssl-crt-list-dotdot", f"add ssl crt-list {d} {d}/../escape.pem\n")
        go("new-ssl-cert-outside", f"new ssl cert {ROOT}/elsewhere.pem\n")
        go("add-ssl-crt-list-outside", f"add ssl crt-list {d} {ROOT}/elsewhere.pem\n")
        go("add-ssl-crt-list-options", f"add ssl crt-list {d} <<\n{R} [alpn h2] rsa.example.com\n\n",
           f"add ssl crt-list {d} <<")
        # the single-transaction hazard (haproxy.md C.4): A's transaction open, then set B
        pipeline(sock, [c.new_ssl_cert(A, cert_dir=d).text, c.new_ssl_cert(B, cert_dir=d).text])
        go("set-ssl-cert-open-a", c.set_ssl_cert(A, certs["a"].bundle_pem, cert_dir=d))
        go("set-ssl-cert-hazard", c.set_ssl_cert(B, certs["b"].bundle_pem, cert_dir=d))
        go("show-ssl-cert-star-after-hazard", c.show_ssl_cert(A, transaction=True))
        go("commit-ssl-cert-other", c.commit_ssl_cert(B, cert_dir=d))
        go("abort-ssl-cert-after-hazard", c.abort_ssl_cert(A))
        # session level below admin
        go("permission-denied", f"operator\n{c.new_ssl_cert(B, cert_dir=d).text}",
           f"operator; {c.new_ssl_cert(B, cert_dir=d).line}")
        go("user-level-show", "user\nshow ssl cert\n", "user; show ssl cert")
        go("unknown-command", "bogus command\n")
        capture_prompt(cap, sock, certs["a"], f"{d}/prompt.example.com.pem", d)
        capture_locked(cap, sock, certs, d, pki)
        limits = measure_limit(sock, f"{d}/limit.pem", certs["a"])
        (cap.dir / "limits.json").write_text(json.dumps(limits, indent=2) + "\n")
        # oversize last: 2.6 may crash on it (haproxy.md C.1)
        go("too-big", "set ssl cert " + A + " <<\n" + ("x" * 69 + "\n") * 250 + "\n", f"set ssl cert {A} << (17.5 KB)")
        (cap.dir / "too-big-alive.txt").write_text(f"{proc.is_running()}\n")
    finally:
        proc.stop()
    (cap.dir / "cases.json").write_text(json.dumps({"root": str(ROOT), "cert_dir": d, "cases": cap.cases},
                                                   indent=2, sort_keys=True) + "\n")
    (cap.dir / "certs.json").write_text(json.dumps({
        "names": {"a": A, "b": B, "rsa": R, "default": str(pki.default_file)},
        "certs": {k: cert_facts(v) for k, v in certs.items()} | {"default": cert_facts(pki.default)},
    }, indent=2, sort_keys=True) + "\n")
    print(f"{version}: {len(cap.cases)} cases in {cap.dir}")


def capture_prompt(cap: Capture, sock: Path, cert: Issued, name: str, d: str) -> None:
    """An interactive session: each reply exactly as read up to (and including) the prompt."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(sock))

        def tx(case: str, cmd: c.Command | str) -> None:
            text = cmd.text if isinstance(cmd, c.Command) else cmd
            s.sendall(text.encode())
            out = b""
            while not out.endswith(b"\n> "):
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
            cap.save(case, cmd.line if isinstance(cmd, c.Command) else text.rstrip("\n"), out.decode())

        tx("prompt-enter", "prompt\n")
        tx("prompt-new-ssl-cert", c.new_ssl_cert(name, cert_dir=d))
        tx("prompt-set-ssl-cert", c.set_ssl_cert(name, cert.bundle_pem, cert_dir=d))
        tx("prompt-commit-ssl-cert", c.commit_ssl_cert(name, cert_dir=d))
        tx("prompt-add-ssl-crt-list", c.add_ssl_crt_list(d, name, cert_dir=d))
        tx("prompt-show-ssl-cert", c.show_ssl_cert())
        tx("prompt-del-ssl-cert-in-use", c.del_ssl_cert(name, cert_dir=d))
        tx("prompt-del-ssl-crt-list", c.del_ssl_crt_list(d, name, cert_dir=d))
        tx("prompt-del-ssl-cert", c.del_ssl_cert(name, cert_dir=d))


def capture_locked(cap: Capture, sock: Path, certs: dict[str, Issued], d: str, pki: TestPki) -> None:
    """Provoke "currently locked" for each certificate command, with other sessions looping `show ssl cert`."""
    now = dt.datetime.now(dt.timezone.utc)
    filler = issue(pki.edge_ca, ["filler.example.com"], now=now)
    body = c.normalize_payload(filler.bundle_pem)
    batch = []
    for i in range(200):
        n = f"{d}/filler-{i:03}.pem"
        batch += [c.new_ssl_cert(n, cert_dir=d).text, f"set ssl cert {n} <<\n{body}\n\n",
                  c.commit_ssl_cert(n, cert_dir=d).text]
        if len(batch) >= 60:
            pipeline(sock, batch)
            batch = []
    pipeline(sock, batch)
    X = f"{d}/locked.example.com.pem"
    bundle = certs["b"].bundle_pem
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            raw(sock, "show ssl cert\n")

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()

    def until_locked(case: str, cmd: c.Command, undo: Callable[[], None], setup: Callable[[], None]) -> None:
        for _ in range(LOCK_ATTEMPTS):
            setup()
            reply = raw(sock, cmd.text)
            if "currently locked" in reply:
                cap.save(case, cmd.line, reply)
                undo()
                return
            undo()
        print(f"  {cap.version}: no lock provoked for {case}")

    def cleanup() -> None:
        for _ in range(50):
            r = raw(sock, f"abort ssl cert {X}\n{c.del_ssl_crt_list(d, X, cert_dir=d).text}"
                          f"{c.del_ssl_cert(X, cert_dir=d).text}")
            if "locked" not in r:
                return

    def created() -> None:
        for _ in range(50):
            if "New empty" in raw(sock, c.new_ssl_cert(X, cert_dir=d).text):
                return

    def in_transaction() -> None:
        created()
        for _ in range(50):
            if "Transaction" in raw(sock, c.set_ssl_cert(X, bundle, cert_dir=d).text):
                return

    def committed() -> None:
        in_transaction()
        for _ in range(50):
            if "Success" in raw(sock, c.commit_ssl_cert(X, cert_dir=d).text):
                return

    def listed() -> None:
        committed()
        for _ in range(50):
            if "Success" in raw(sock, c.add_ssl_crt_list(d, X, cert_dir=d).text):
                return

    try:
        cleanup()
        until_locked("locked-show-ssl-cert", c.show_ssl_cert(), lambda: None, lambda: None)
        until_locked("locked-new-ssl-cert", c.new_ssl_cert(X, cert_dir=d), cleanup, lambda: None)
        until_locked("locked-set-ssl-cert", c.set_ssl_cert(X, bundle, cert_dir=d), cleanup, created)
        until_locked("locked-commit-ssl-cert", c.commit_ssl_cert(X, cert_dir=d), cleanup, in_transaction)
        until_locked("locked-abort-ssl-cert", c.abort_ssl_cert(X), cleanup, in_transaction)
        until_locked("locked-add-ssl-crt-list", c.add_ssl_crt_list(d, X, cert_dir=d), cleanup, committed)
        until_locked("locked-del-ssl-crt-list", c.del_ssl_crt_list(d, X, cert_dir=d), cleanup, listed)
        until_locked("locked-del-ssl-cert", c.del_ssl_cert(X, cert_dir=d), cleanup, committed)
    finally:
        stop.set()
        for t in threads:
            t.join()
        cleanup()


def measure_limit(sock: Path, name: str, cert: Issued) -> dict[str, object]:
    """Largest `set ssl cert` request (bytes, command line and final empty line included) HAProxy accepts."""
    raw(sock, f"new ssl cert {name}\n")
    body = c.normalize_payload(cert.bundle_pem)
    head = f"set ssl cert {name} <<\n"
    results = {}
    for total in range(16376, 16390):
        pad = total - len(head) - len(body) - 2
        lines, left = [], pad
        while left > 0:
            n = min(70, left)
            if left - n == 1:  # never leave a 1-byte line: it would be an empty line, which ends the payload
                n -= 1
            lines.append("x" * (n - 1) + "\n")
            left -= n
        request = head + "".join(lines) + body + "\n\n"
        assert len(request) == total, (len(request), total)
        reply = raw(sock, request, timeout_s=1.5)
        results[str(total)] = reply.strip()[:60]
        raw(sock, f"abort ssl cert {name}\n")
    accepted = [int(k) for k, v in results.items() if v.startswith("Transaction")]
    return {"bufsize": 16384, "largest_accepted": max(accepted), "replies": results}


if __name__ == "__main__":
    for v in sys.argv[1:] or ["2.6", "2.8"]:
        run(v)

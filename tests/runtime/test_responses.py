"""agent.runtime.responses against replies captured from HAProxy 2.6.12 and 2.8.25 (tests/vectors/runtime/)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.runtime import commands as c
from agent.runtime.commands import Command, Verb
from agent.runtime.errors import (
    AlreadyExists,
    CommandFailed,
    InUse,
    InvalidCertificate,
    Locked,
    NotFound,
    NoTransaction,
    PermissionDenied,
    RequestTooBig,
    TransactionConflict,
    UnknownCommand,
)
from agent.runtime.responses import (
    check_reply,
    classify_error,
    parse_cert_details,
    parse_cert_list,
    parse_crt_list,
    parse_crt_lists,
    parse_info,
    strip_prompt,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "runtime"
VERSIONS = ("2.6", "2.8")


@cache
def meta(version: str) -> dict[str, Any]:
    cases: dict[str, Any] = json.loads((VECTORS / version / "cases.json").read_text())
    certs: dict[str, Any] = json.loads((VECTORS / version / "certs.json").read_text())
    return cases | certs


def reply(version: str, case: str) -> str:
    return (VECTORS / version / f"{case}.txt").read_text()


# Names used by capture.py (identical for both versions: the capture runs under /tmp/lockstep-capture).
D = meta("2.6")["cert_dir"]
A, B, R = (f"{D}/{n}.example.com.pem" for n in ("a", "b", "rsa"))
P = f"{D}/prompt.example.com.pem"
X = f"{D}/locked.example.com.pem"
PEM = "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n"  # never sent; only the command line matters


def raw_command(verb: Verb, line: str, cert: str | None = None, crt_list: str | None = None) -> Command:
    """A command our builders refuse to make, as capture.py sent it to show what HAProxy does with it."""
    return Command(verb, line, cert=cert, crt_list=crt_list)


OK = None
Expect = type[CommandFailed] | None | dict[str, type[CommandFailed] | None]

# case -> (command as sent, expected outcome of check_reply: None = success, or the exact error class)
CHECKS: dict[str, tuple[Callable[[], Command], Expect]] = {
    "new-ssl-cert": (lambda: c.new_ssl_cert(A, cert_dir=D), OK),
    "new-ssl-cert-exists": (lambda: c.new_ssl_cert(A, cert_dir=D), AlreadyExists),
    "set-ssl-cert-created": (lambda: c.set_ssl_cert(A, PEM, cert_dir=D), OK),
    "commit-ssl-cert-no-key": (lambda: c.commit_ssl_cert(A, cert_dir=D), InvalidCertificate),
    "set-ssl-cert-key-updated": (lambda: c.set_ssl_cert_key(A, PEM, cert_dir=D), OK),
    "abort-ssl-cert-other": (lambda: c.abort_ssl_cert(B), TransactionConflict),
    "commit-ssl-cert-unused": (lambda: c.commit_ssl_cert(A, cert_dir=D), OK),
    "add-ssl-crt-list": (lambda: c.add_ssl_crt_list(D, A, cert_dir=D), OK),
    "add-ssl-crt-list-exists": (lambda: c.add_ssl_crt_list(D, A, cert_dir=D), AlreadyExists),
    "set-ssl-cert-update": (lambda: c.set_ssl_cert(A, PEM, cert_dir=D), OK),
    "commit-ssl-cert-used": (lambda: c.commit_ssl_cert(A, cert_dir=D), OK),  # "Committing X." one dot per instance
    "set-ssl-cert-mismatch": (lambda: c.set_ssl_cert(R, PEM, cert_dir=D), OK),  # set accepts; commit checks the key
    "commit-ssl-cert-mismatch": (lambda: c.commit_ssl_cert(R, cert_dir=D), InvalidCertificate),
    "set-ssl-cert-garbage": (lambda: c.set_ssl_cert(R, PEM, cert_dir=D), InvalidCertificate),
    "abort-ssl-cert": (lambda: c.abort_ssl_cert(R), OK),
    "abort-ssl-cert-none": (lambda: c.abort_ssl_cert(R), NoTransaction),
    "commit-ssl-cert-none": (lambda: c.commit_ssl_cert(R, cert_dir=D), NoTransaction),
    "set-ssl-cert-unknown": (lambda: c.set_ssl_cert(B, PEM, cert_dir=D), NotFound),
    "del-ssl-cert-in-use": (lambda: c.del_ssl_cert(A, cert_dir=D), InUse),
    "del-ssl-crt-list": (lambda: c.del_ssl_crt_list(D, A, cert_dir=D), OK),
    "del-ssl-crt-list-not-listed": (lambda: c.del_ssl_crt_list(D, A, cert_dir=D), NotFound),
    "del-ssl-cert": (lambda: c.del_ssl_cert(A, cert_dir=D), OK),
    "del-ssl-cert-unknown": (lambda: c.del_ssl_cert(A, cert_dir=D), NotFound),
    "del-ssl-crt-list-unknown-cert": (lambda: c.del_ssl_crt_list(D, A, cert_dir=D), NotFound),
    "del-ssl-crt-list-unknown-list": (lambda: c.del_ssl_crt_list("/nonexistent", A, cert_dir=D), NotFound),
    "add-ssl-crt-list-unknown": (lambda: c.add_ssl_crt_list(D, A, cert_dir=D), NotFound),
    # names our builder refuses: HAProxy creates the orphan store, then refuses to list it
    "new-ssl-cert-relative": (lambda: raw_command(Verb.NEW_CERT, "new ssl cert a.pem", "a.pem"), OK),
    "add-ssl-crt-list-relative": (
        lambda: raw_command(Verb.ADD_CRT_LIST, f"add ssl crt-list {D} a.pem", "a.pem", D), CommandFailed),
    "new-ssl-cert-dotdot": (
        lambda: raw_command(Verb.NEW_CERT, f"new ssl cert {D}/../escape.pem", f"{D}/../escape.pem"), OK),
    "add-ssl-crt-list-dotdot": (
        lambda: raw_command(Verb.ADD_CRT_LIST, f"add ssl crt-list {D} {D}/../escape.pem", f"{D}/../escape.pem", D),
        CommandFailed),
    "new-ssl-cert-outside": (
        lambda: raw_command(Verb.NEW_CERT, "new ssl cert /tmp/lockstep-capture/elsewhere.pem",
                            "/tmp/lockstep-capture/elsewhere.pem"), OK),
    "add-ssl-crt-list-outside": (
        lambda: raw_command(Verb.ADD_CRT_LIST, f"add ssl crt-list {D} /tmp/lockstep-capture/elsewhere.pem",
                            "/tmp/lockstep-capture/elsewhere.pem", D), CommandFailed),
    "add-ssl-crt-list-options": (lambda: raw_command(Verb.ADD_CRT_LIST, f"add ssl crt-list {D} <<", R, D),
                                 CommandFailed),
    # haproxy.md C.4: A's transaction is open, then `set ssl cert B`. 2.6.12 answers "Transaction updated for
    # certificate A!" (and wrote B into A); 2.8.25 refuses. Both must come out as TransactionConflict.
    "set-ssl-cert-open-a": (lambda: c.set_ssl_cert(A, PEM, cert_dir=D), OK),
    "set-ssl-cert-hazard": (lambda: c.set_ssl_cert(B, PEM, cert_dir=D), TransactionConflict),
    "commit-ssl-cert-other": (lambda: c.commit_ssl_cert(B, cert_dir=D), TransactionConflict),
    "abort-ssl-cert-after-hazard": (lambda: c.abort_ssl_cert(A), OK),
    "permission-denied": (lambda: c.new_ssl_cert(B, cert_dir=D), PermissionDenied),
    "unknown-command": (lambda: raw_command(Verb.NEW_CERT, "bogus command", B), UnknownCommand),
    # 2.6 closes without a word; 2.8 explains (our builder never sends such a request)
    "too-big": (lambda: c.set_ssl_cert(A, PEM, cert_dir=D), {"2.6": CommandFailed, "2.8": RequestTooBig}),
    "locked-new-ssl-cert": (lambda: c.new_ssl_cert(X, cert_dir=D), Locked),
    "locked-set-ssl-cert": (lambda: c.set_ssl_cert(X, PEM, cert_dir=D), Locked),
    "locked-commit-ssl-cert": (lambda: c.commit_ssl_cert(X, cert_dir=D), Locked),
    "locked-abort-ssl-cert": (lambda: c.abort_ssl_cert(X), Locked),
    "locked-add-ssl-crt-list": (lambda: c.add_ssl_crt_list(D, X, cert_dir=D), Locked),
    "locked-del-ssl-crt-list": (lambda: c.del_ssl_crt_list(D, X, cert_dir=D), Locked),
    "locked-del-ssl-cert": (lambda: c.del_ssl_cert(X, cert_dir=D), Locked),
    # interactive mode: the same texts behind "+ " echoes and the "> " prompt
    "prompt-new-ssl-cert": (lambda: c.new_ssl_cert(P, cert_dir=D), OK),
    "prompt-set-ssl-cert": (lambda: c.set_ssl_cert(P, PEM, cert_dir=D), OK),
    "prompt-commit-ssl-cert": (lambda: c.commit_ssl_cert(P, cert_dir=D), OK),
    "prompt-add-ssl-crt-list": (lambda: c.add_ssl_crt_list(D, P, cert_dir=D), OK),
    "prompt-del-ssl-cert-in-use": (lambda: c.del_ssl_cert(P, cert_dir=D), InUse),
    "prompt-del-ssl-crt-list": (lambda: c.del_ssl_crt_list(D, P, cert_dir=D), OK),
    "prompt-del-ssl-cert": (lambda: c.del_ssl_cert(P, cert_dir=D), OK),
}


def _text(version: str, case: str) -> str:
    text = reply(version, case)
    return strip_prompt(text) if case.startswith("prompt-") else text


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", sorted(CHECKS))
def test_check_reply(version: str, case: str) -> None:
    build, expect = CHECKS[case]
    command = build()
    # the vector is the reply to exactly this command (two cases record a prefix or a size note around it)
    recorded = meta(version)["cases"][case]
    assert recorded == command.line or case in ("permission-denied", "too-big") and command.line in recorded
    expected = expect.get(version) if isinstance(expect, dict) else expect
    if expected is None:
        assert check_reply(command, _text(version, case)) == _text(version, case).strip("\n")
    else:
        with pytest.raises(CommandFailed) as info:
            check_reply(command, _text(version, case))
        assert type(info.value) is expected
        assert info.value.command == command.line
        assert info.value.response == _text(version, case)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", ["set-ssl-cert-hazard", "commit-ssl-cert-other", "abort-ssl-cert-other"])
def test_conflicts_name_the_open_transaction(version: str, case: str) -> None:
    build, _ = CHECKS[case]
    with pytest.raises(TransactionConflict) as info:
        check_reply(build(), reply(version, case))
    assert info.value.open_name == A
    assert info.value.retryable


def test_26_hazard_is_caught_by_the_name_check_alone() -> None:
    text = reply("2.6", "set-ssl-cert-hazard")
    assert text == f"Transaction updated for certificate {A}!\n\n"  # looks like success...
    with pytest.raises(TransactionConflict, match="another certificate's open transaction"):
        check_reply(c.set_ssl_cert(B, PEM, cert_dir=D), text)  # ...but names A, not B


def test_26_hazard_really_wrote_b_into_a() -> None:
    """The captured transaction content: on 2.6.12 A's pending transaction holds B's certificate."""
    for version, holder in (("2.6", "b"), ("2.8", "a")):
        details = parse_cert_details(c.show_ssl_cert(A, transaction=True),
                                     reply(version, "show-ssl-cert-star-after-hazard"))
        assert details.transaction and details.filename == A
        assert int(details.serial or "0", 16) == int(meta(version)["certs"][holder]["serial"], 16)


@pytest.mark.parametrize("version", VERSIONS)
def test_locked_is_retryable(version: str) -> None:
    with pytest.raises(Locked) as info:
        parse_cert_list(c.show_ssl_cert(), reply(version, "locked-show-ssl-cert"))
    assert info.value.retryable


# --- show parsers ----------------------------------------------------------------------------------------------


def _facts_match(details: Any, facts: dict[str, Any]) -> None:
    assert int(details.serial, 16) == int(facts["serial"], 16)
    assert details.sha1_fingerprint == facts["sha1"]
    assert details.not_before == dt.datetime.fromisoformat(facts["not_before"])
    assert details.not_after == dt.datetime.fromisoformat(facts["not_after"])
    assert list(details.dns_names) == facts["dns_names"]
    assert details.subject == "/" + facts["subject_cn"]
    assert [s.lstrip("/") for s in details.chain_subjects] == facts["chain"]


@pytest.mark.parametrize("version", VERSIONS)
def test_show_ssl_cert_list(version: str) -> None:
    default = meta(version)["names"]["default"]
    client_cert = default.replace("default.pem", "haproxy-client.pem")
    listing = parse_cert_list(c.show_ssl_cert(), reply(version, "show-ssl-cert"))
    assert listing.names == (default, client_cert) and listing.transaction is None
    during = parse_cert_list(c.show_ssl_cert(), reply(version, "show-ssl-cert-transaction"))
    assert during.transaction == A and A in during.names
    prompt = parse_cert_list(c.show_ssl_cert(), strip_prompt(reply(version, "prompt-show-ssl-cert")))
    assert P in prompt.names


@pytest.mark.parametrize("version", VERSIONS)
def test_show_ssl_cert_details(version: str) -> None:
    m = meta(version)
    used = parse_cert_details(c.show_ssl_cert(A), reply(version, "show-ssl-cert-used"))
    assert (used.filename, used.transaction, used.status, used.algorithm) == (A, False, "Used", "EC256")
    _facts_match(used, m["certs"]["a"])
    star = parse_cert_details(c.show_ssl_cert(A, transaction=True), reply(version, "show-ssl-cert-star"))
    assert star.transaction and star.filename == A and star.status == "Unused"
    chain = parse_cert_details(c.show_ssl_cert(R), reply(version, "show-ssl-cert-chain"))
    _facts_match(chain, m["certs"]["rsa"])  # the IP SAN is printed as an empty item and dropped
    assert chain.algorithm == "RSA2048" and chain.issuer == "/CN=Lockstep Test Intermediate"
    assert chain.chain_issuers == ("/CN=Lockstep Test Edge CA",)
    default = parse_cert_details(c.show_ssl_cert(m["names"]["default"]), reply(version, "show-ssl-cert-default"))
    _facts_match(default, m["certs"]["default"])
    empty = parse_cert_details(c.show_ssl_cert(A), reply(version, "show-ssl-cert-empty-store"))
    assert empty.status == "Empty" and empty.serial is None and empty.not_after is None and empty.dns_names == ()
    with pytest.raises(NotFound):
        parse_cert_details(c.show_ssl_cert("/nonexistent.pem"), reply(version, "show-ssl-cert-unknown"))
    with pytest.raises(CommandFailed):
        parse_cert_list(c.show_ssl_cert(), reply(version, "user-level-show"))


@pytest.mark.parametrize("version", VERSIONS)
def test_show_crt_lists(version: str) -> None:
    assert parse_crt_lists(c.show_ssl_crt_list(), reply(version, "show-ssl-crt-lists")) == (D,)
    empty = parse_crt_list(c.show_ssl_crt_list(D), reply(version, "show-ssl-crt-list-dir-empty"))
    assert (empty.name, empty.entries) == (D, ())
    listed = parse_crt_list(c.show_ssl_crt_list(D), reply(version, "show-ssl-crt-list-dir"))
    assert listed.certs == (A,) and listed.entries[0].line is None
    numbered = parse_crt_list(c.show_ssl_crt_list(D, line_numbers=True), reply(version, "show-ssl-crt-list-dir-n"))
    assert numbered.certs == (A,) and numbered.entries[0].line == 1
    with pytest.raises(NotFound):
        parse_crt_list(c.show_ssl_crt_list("/nonexistent"), reply(version, "show-ssl-crt-list-unknown"))


@pytest.mark.parametrize("version", VERSIONS)
def test_show_info(version: str) -> None:
    info = parse_info(c.show_info(), reply(version, "show-info"))
    assert info.version == (VECTORS / version / "haproxy-version.txt").read_text().strip()
    assert info.pid > 1 and info.nbthread >= 1 and info.uptime_s >= 0 and info.start_time_s
    assert ("Name", "HAProxy") in info.fields
    with pytest.raises(UnknownCommand):
        parse_info(c.show_info(), reply(version, "unknown-command"))


@pytest.mark.parametrize("version", VERSIONS)
def test_prompt_framing(version: str) -> None:
    assert reply(version, "prompt-enter") == "\n> "
    raw = reply(version, "prompt-set-ssl-cert")
    assert raw.startswith("+ + ") and raw.endswith("!\n\n> ")
    assert strip_prompt(raw) == f"Transaction created for certificate {P}!\n\n"
    for case in [k for k in CHECKS if k.startswith("prompt-")]:
        assert reply(version, case).endswith("\n\n> ")


@pytest.mark.parametrize("version", VERSIONS)
def test_every_vector_is_used(version: str) -> None:
    """A captured reply nobody checks is a reply we do not understand."""
    parsed_elsewhere = {
        "show-info", "show-ssl-cert", "show-ssl-cert-transaction", "show-ssl-cert-star", "show-ssl-cert-used",
        "show-ssl-cert-chain", "show-ssl-cert-default", "show-ssl-cert-empty-store", "show-ssl-cert-unknown",
        "show-ssl-cert-star-after-hazard", "show-ssl-crt-lists", "show-ssl-crt-list-dir-empty",
        "show-ssl-crt-list-dir", "show-ssl-crt-list-dir-n", "show-ssl-crt-list-unknown", "user-level-show",
        "unknown-command", "locked-show-ssl-cert", "prompt-enter", "prompt-show-ssl-cert",
    }
    assert set(meta(version)["cases"]) == set(CHECKS) | parsed_elsewhere


@pytest.mark.parametrize("version", VERSIONS)
def test_limit_vectors_match_the_builder(version: str) -> None:
    limits = json.loads((VECTORS / version / "limits.json").read_text())
    assert limits["largest_accepted"] == limits["bufsize"] - 1
    assert c.max_request_size(limits["bufsize"]) < limits["largest_accepted"]


# --- robustness ------------------------------------------------------------------------------------------------

ALL_COMMANDS = [
    c.show_ssl_cert(), c.show_ssl_cert(A), c.new_ssl_cert(A, cert_dir=D), c.set_ssl_cert(A, PEM, cert_dir=D),
    c.commit_ssl_cert(A, cert_dir=D), c.abort_ssl_cert(A), c.add_ssl_crt_list(D, A, cert_dir=D),
    c.del_ssl_crt_list(D, A, cert_dir=D), c.del_ssl_cert(A, cert_dir=D), c.show_ssl_crt_list(),
    c.show_ssl_crt_list(D, line_numbers=True), c.show_info(),
]
PARSERS: dict[Verb, Callable[[Command, str], object]] = {
    Verb.SHOW_CERTS: parse_cert_list, Verb.SHOW_CERT: parse_cert_details, Verb.SHOW_CRT_LISTS: parse_crt_lists,
    Verb.SHOW_CRT_LIST: parse_crt_list, Verb.SHOW_INFO: parse_info,
}


@given(st.sampled_from(ALL_COMMANDS), st.text(max_size=300) | st.sampled_from([
    "Filename: x\nnotAfter: Feb 30 00:00:00 2027 GMT\n", "Filename: x\nnotAfter: soon\n", "# /d\n/d/a.pem:x\n",
    "Name: HAProxy\nPid: x\nVersion: 1\n", "# transaction\nnot-starred\n", "# filename\n\n",
]))
def test_parsers_return_or_raise_command_failed(command: Command, text: str) -> None:
    parse = PARSERS.get(command.verb, check_reply)
    try:
        parse(command, text)
    except CommandFailed:
        pass
    assert isinstance(classify_error(command, text), CommandFailed)


def test_success_needs_the_exact_marker() -> None:
    new = c.new_ssl_cert(A, cert_dir=D)
    for text in ["", "\n", "Success!\n", f"New empty certificate store '{B}'!\n", f"New empty certificate store '{A}'"]:
        with pytest.raises(CommandFailed):
            check_reply(new, text)
    commit = c.commit_ssl_cert(A, cert_dir=D)
    for text in [f"Committing {A}\n", f"Committing {A}\nFailed!\n", f"Committing {B}\nSuccess!\n"]:
        with pytest.raises(CommandFailed):
            check_reply(commit, text)
    with pytest.raises(ValueError):
        check_reply(c.show_info(), "Name: HAProxy\n")

"""Table tests for agent.runtime.commands: exact request text, argument checks, size limit, bundle split."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest

from agent.runtime import commands as c
from agent.runtime.errors import BadArgument, PayloadTooLarge
from lockstep.pki import issue, make_ca

D = "/etc/haproxy/certs"
NAME = f"{D}/example.com.pem"
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def bundle() -> str:
    ca = make_ca("Test CA", now=NOW)
    return issue(ca, ["example.com"], now=NOW).bundle_pem


@pytest.mark.parametrize(
    ("command", "text"),
    [
        (c.show_ssl_cert(), "show ssl cert\n"),
        (c.show_ssl_cert(NAME), f"show ssl cert {NAME}\n"),
        (c.show_ssl_cert(NAME, transaction=True), f"show ssl cert *{NAME}\n"),
        (c.new_ssl_cert(NAME, cert_dir=D), f"new ssl cert {NAME}\n"),
        (c.commit_ssl_cert(NAME, cert_dir=D), f"commit ssl cert {NAME}\n"),
        (c.abort_ssl_cert(NAME), f"abort ssl cert {NAME}\n"),
        (c.abort_ssl_cert("a.pem"), "abort ssl cert a.pem\n"),  # cleaning up another client's relative name
        (c.add_ssl_crt_list(D, NAME, cert_dir=D), f"add ssl crt-list {D} {NAME}\n"),
        (c.add_ssl_crt_list(D + "/", NAME, cert_dir=D + "/"), f"add ssl crt-list {D} {NAME}\n"),
        (c.del_ssl_crt_list(D, NAME, cert_dir=D), f"del ssl crt-list {D} {NAME}\n"),
        (c.del_ssl_crt_list(D, NAME, cert_dir=D, line=3), f"del ssl crt-list {D} {NAME}:3\n"),
        (c.del_ssl_cert(NAME, cert_dir=D), f"del ssl cert {NAME}\n"),
        (c.show_ssl_crt_list(), "show ssl crt-list\n"),
        (c.show_ssl_crt_list(D), f"show ssl crt-list {D}\n"),
        (c.show_ssl_crt_list(D + "/", line_numbers=True), f"show ssl crt-list -n {D}\n"),
        (c.show_info(), "show info\n"),
    ],
)
def test_plain_commands(command: c.Command, text: str) -> None:
    assert command.text == text
    assert command.line == text[:-1]
    assert "\n" not in command.line


@pytest.mark.parametrize(
    ("pem", "body"),
    [
        ("A\nB\n", "A\nB"),
        ("A\n\n\nB\n\n", "A\nB"),  # blank lines would end the payload early
        ("A\r\nB\r\n", "A\nB"),
        ("  \nA  \n\t\nB", "A\nB"),
        ("\n\nA", "A"),
    ],
)
def test_payload_normalisation(pem: str, body: str) -> None:
    cmd = c.set_ssl_cert(NAME, pem, cert_dir=D)
    assert cmd.payload == body
    assert cmd.text == f"set ssl cert {NAME} <<\n{body}\n\n"  # exactly one empty line ends it
    assert cmd.line == f"set ssl cert {NAME} <<"
    assert "A" not in repr(cmd)  # the payload (a private key) stays out of repr/logs


def test_set_real_bundle(bundle: str) -> None:
    cmd = c.set_ssl_cert(NAME, bundle, cert_dir=D)
    assert cmd.text.startswith(f"set ssl cert {NAME} <<\n-----BEGIN CERTIFICATE-----\n")
    assert cmd.text.endswith("-----END PRIVATE KEY-----\n\n")
    assert "\n\n" not in cmd.text[:-2]
    key = c.set_ssl_cert_key(NAME, bundle.split("-----END CERTIFICATE-----\n")[-1], cert_dir=D)
    assert key.line == f"set ssl cert {NAME}.key <<" and key.cert == NAME


@pytest.mark.parametrize(
    "name",
    [
        "example.com.pem",  # relative (HAProxy's new ssl cert would accept it; add ssl crt-list refuses it)
        "certs/example.com.pem",
        f"{D}/../example.com.pem",  # escapes the directory
        f"{D}/./example.com.pem",
        f"{D}//example.com.pem",
        f"{D}/sub/example.com.pem",  # not directly inside: not loaded from the directory at startup
        "/etc/haproxy/other/example.com.pem",  # another directory
        "/etc/haproxy/certs-evil/example.com.pem",  # a sibling sharing the prefix
        D,
        D + "/",
        f"{D}/.hidden.pem",  # skipped by HAProxy's directory loader
        f"{D}/example.com.pem.key",  # companions: `set ssl cert X.key` means "the key of X"
        f"{D}/example.com.ocsp",
        f"{D}/example.com.issuer",
        f"{D}/example.com.sctl",
        f"{D}/a b.pem",
        f"{D}/a\tb.pem",
        f"{D}/a\nshow info",
        f"{D}/a.pem;show info",  # command separator
        f"{D}/a\\;b.pem",
        f"{D}/a:1.pem",  # del ssl crt-list splits <cert[:line]>
        f"{D}/*.example.com.pem",  # '*' marks the transaction in show ssl cert
        f"{D}/a#.pem",
        f"{D}/a'.pem",
        f"{D}/a\x00.pem",
        f"{D}/a\x7f.pem",
        f"{D}/é.pem",
        "",
        "/" + "a" * 2000,
        None,
        42,
    ],
)
def test_bad_names_refused(name: object, bundle: str) -> None:
    builders: list[Callable[[], object]] = [
        lambda: c.new_ssl_cert(name, cert_dir=D),  # type: ignore[arg-type]
        lambda: c.set_ssl_cert(name, bundle, cert_dir=D),  # type: ignore[arg-type]
        lambda: c.set_certificate(name, bundle, cert_dir=D),  # type: ignore[arg-type]
        lambda: c.commit_ssl_cert(name, cert_dir=D),  # type: ignore[arg-type]
        lambda: c.add_ssl_crt_list(D, name, cert_dir=D),  # type: ignore[arg-type]
        lambda: c.del_ssl_crt_list(D, name, cert_dir=D),  # type: ignore[arg-type]
        lambda: c.del_ssl_cert(name, cert_dir=D),  # type: ignore[arg-type]
        lambda: c.upload(name, bundle, cert_dir=D, crt_list=D),  # type: ignore[arg-type]
    ]
    for build in builders:
        with pytest.raises(BadArgument):
            build()


@pytest.mark.parametrize("name", [f"{D}/a b", f"{D}/a;b", "x\ny", "", "*x", f"{D}/a:1"])
def test_read_and_abort_names_still_single_words(name: str) -> None:
    with pytest.raises(BadArgument):
        c.show_ssl_cert(name)
    with pytest.raises(BadArgument):
        c.abort_ssl_cert(name)


@pytest.mark.parametrize("name", [f"{D}/example.com.pem", f"{D}/_wildcard.example.com.pem", f"{D}/xn--bcher-kva.ch",
                                  f"{D}/a-b_c+d=e@f,g~h.crt", f"{D}/example.com.pem.rsa"])
def test_good_names(name: str) -> None:
    assert c.new_ssl_cert(name, cert_dir=D).cert == name
    assert c.check_cert_name(name, cert_dir=D + "/") == name


@pytest.mark.parametrize("cert_dir", ["certs", "/", "/etc/../certs", "/etc/ha proxy", "/etc/c;d", "", "/a:b"])
def test_bad_cert_dir(cert_dir: str) -> None:
    with pytest.raises(BadArgument):
        c.check_cert_dir(cert_dir)


@pytest.mark.parametrize("pem", ["", "\n\n", "  \n", "A\x00B", "clé", 42])
def test_bad_payload(pem: object) -> None:
    with pytest.raises(BadArgument) as info:
        c.set_ssl_cert(NAME, pem, cert_dir=D)  # type: ignore[arg-type]
    assert "B" not in info.value.detail.replace("BadArgument", "")  # the payload is never echoed


@pytest.mark.parametrize("line", [0, -1, True, "2"])
def test_bad_line_number(line: object) -> None:
    with pytest.raises(BadArgument):
        c.del_ssl_crt_list(D, NAME, cert_dir=D, line=line)  # type: ignore[arg-type]


def test_size_limit_is_checked_on_the_whole_request() -> None:
    head = len(f"set ssl cert {NAME} <<\n")
    limit = c.max_request_size()
    assert limit == 16384 - 1024
    fits = "x" * (limit - head - 2)  # + "\n\n"
    assert c.set_ssl_cert(NAME, fits, cert_dir=D).size == limit
    with pytest.raises(PayloadTooLarge) as info:
        c.set_ssl_cert(NAME, fits + "x", cert_dir=D)
    assert (info.value.size, info.value.limit) == (limit + 1, limit)
    assert info.value.command == f"set ssl cert {NAME} <<"
    assert isinstance(info.value, BadArgument)  # refused locally: nothing was sent
    with pytest.raises(PayloadTooLarge):
        c.set_ssl_cert(NAME, "x" * 100, cert_dir=D, max_request=50)


@pytest.mark.parametrize(("bufsize", "margin"), [(512, 0), (16384, -1), (16384, 9000)])
def test_implausible_limits(bufsize: int, margin: int) -> None:
    with pytest.raises(ValueError):
        c.max_request_size(bufsize, margin)


def _big_bundle(sans: int, key_type: str = "rsa") -> tuple[str, str, str]:
    ca = make_ca("Test CA", now=NOW)
    leaf = issue(ca, [f"host-{i:04}.example.com" for i in range(sans)], now=NOW, key_type=key_type)
    return leaf.bundle_pem, leaf.cert_pem, leaf.key_pem


def test_set_certificate_fits_in_one_request(bundle: str) -> None:
    (one,) = c.set_certificate(NAME, bundle, cert_dir=D)
    assert one.line == f"set ssl cert {NAME} <<"


def test_set_certificate_splits_an_oversize_bundle() -> None:
    pem, cert_pem, key_pem = _big_bundle(420)
    limit = c.max_request_size()
    assert c.set_ssl_cert(NAME, cert_pem, cert_dir=D).size <= limit < len(pem)
    first, second = c.set_certificate(NAME, pem, cert_dir=D)
    assert first.line == f"set ssl cert {NAME} <<" and second.line == f"set ssl cert {NAME}.key <<"
    assert first.payload == c.normalize_payload(cert_pem)
    assert second.payload == c.normalize_payload(key_pem)
    assert first.cert == second.cert == NAME


def test_set_certificate_refuses_when_even_the_parts_are_too_big() -> None:
    pem, _, _ = _big_bundle(700, "ec")
    with pytest.raises(PayloadTooLarge) as info:
        c.set_certificate(NAME, pem, cert_dir=D)
    assert info.value.size > info.value.limit


def test_set_certificate_refuses_an_unsplittable_bundle() -> None:
    ca = make_ca("Test CA", now=NOW)
    leaf = issue(ca, ["example.com"], now=NOW)
    two_keys = leaf.cert_pem + leaf.key_pem + leaf.key_pem
    with pytest.raises(PayloadTooLarge, match="cannot be split"):
        c.set_certificate(NAME, two_keys, cert_dir=D, max_request=1000)


def test_split_pem_keeps_chain_order_and_ec_parameters() -> None:
    pem = ("junk before\n-----BEGIN CERTIFICATE-----\nLEAF\n-----END CERTIFICATE-----\n"
           "-----BEGIN CERTIFICATE-----\nCHAIN\n-----END CERTIFICATE-----\n\n"
           "-----BEGIN EC PARAMETERS-----\nP\n-----END EC PARAMETERS-----\n"
           "-----BEGIN EC PRIVATE KEY-----\nK\n-----END EC PRIVATE KEY-----\n")
    certs, key = c.split_pem(pem)
    assert certs.split("\n")[1] == "LEAF" and certs.split("\n")[4] == "CHAIN" and "junk" not in certs
    assert key.startswith("-----BEGIN EC PARAMETERS-----") and "K" in key
    with pytest.raises(BadArgument):
        c.split_pem("-----BEGIN PRIVATE KEY-----\nK\n-----END PRIVATE KEY-----\n")  # no certificate


@pytest.mark.parametrize(("cert_dir", "crt_list"), [(D, D), (D + "/", D + "/"), (D, "/etc/haproxy/list")])
def test_upload_is_what_the_single_builders_build(bundle: str, cert_dir: str, crt_list: str) -> None:
    up = c.upload(NAME, bundle, cert_dir=cert_dir, crt_list=crt_list)
    assert up.name == NAME
    assert up.new == c.new_ssl_cert(NAME, cert_dir=cert_dir)
    assert up.sets == c.set_certificate(NAME, bundle, cert_dir=cert_dir)
    assert up.commit == c.commit_ssl_cert(NAME, cert_dir=cert_dir)
    assert up.add == c.add_ssl_crt_list(crt_list, NAME, cert_dir=cert_dir)


def test_upload_refuses_a_bad_list_and_an_oversize_bundle(bundle: str) -> None:
    with pytest.raises(BadArgument):
        c.upload(NAME, bundle, cert_dir=D, crt_list="relative/list")
    with pytest.raises(PayloadTooLarge):
        c.upload(NAME, bundle, cert_dir=D, crt_list=D, max_request=200)


# The fast paths (a regex each) must accept exactly what the character loops behind them accept.
_WORD_CHARS = {chr(i) for i in range(33, 127)} - set(";\\'\"#!:*[]")


@pytest.mark.parametrize("code", [*range(256), 0x2028, 0xFEFF, 0x1F600])
def test_word_check_accepts_exactly_the_safe_characters(code: int) -> None:
    ch = chr(code)
    word = f"/etc/a{ch}b"
    if ch in _WORD_CHARS:
        assert c.show_ssl_cert(word).line == f"show ssl cert {word}"
    else:
        with pytest.raises(BadArgument):
            c.show_ssl_cert(word)


@pytest.mark.parametrize("code", [*range(256), 0x2028, 0x1F600])
def test_payload_check_accepts_exactly_printable_ascii_and_tabs(code: int) -> None:
    ch = chr(code)
    pem = f"-----BEGIN X-----\nAB{ch}CD\n-----END X-----\n"
    if ch == "\t" or 32 <= code <= 126 or ch in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028":
        # line breaks (str.splitlines() splits on these) and blanks only reshape lines; the rest must be printable
        assert "AB" in c.normalize_payload(pem)
    else:
        with pytest.raises(BadArgument):
            c.normalize_payload(pem)

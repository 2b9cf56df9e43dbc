"""agent.certs.material: file names, and every check a bundle must pass, with real certificates from lockstep.pki."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import re
import string
import warnings
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from agent.certs.errors import MaterialRejected, Reason
from agent.certs.material import (
    CLOCK_SKEW,
    MAX_CHAIN_LENGTH,
    Material,
    cert_file_name,
    check_material,
    leaf_der,
    leaf_fingerprint,
    name_from_file_name,
)
from agent.runtime.commands import check_cert_name, set_certificate, split_pem
from agent.tokens import normalize_host
from lockstep.pki import Issued, issue, make_ca

from .conftest import (
    NAME,
    NOW,
    Pki,
    assert_no_key_material,
    bundle,
    fingerprint,
    key_fragments,
    key_pem,
    leaf_with_names,
    pem,
)

CERT_DIR = "/etc/haproxy/certs"

# --- file names ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "file_name"), [
    ("shop.example.test", "shop.example.test.pem"),
    ("a.b", "a.b.pem"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example.pem"),
    ("host-1.123.example", "host-1.123.example.pem"),
    ("*.example.test", "_wildcard.example.test.pem"),
    ("*.xn--bcher-kva.example", "_wildcard.xn--bcher-kva.example.pem"),
    ("example.pem", "example.pem.pem"),
])
def test_cert_file_name(name: str, file_name: str) -> None:
    assert cert_file_name(name) == file_name
    assert name_from_file_name(file_name) == name
    check_cert_name(f"{CERT_DIR}/{file_name}", cert_dir=CERT_DIR)


BAD_NAMES = [
    "", "shop/example.test", "../shop.example.test", "..", ".", "shop..example.test", "shop.example.test/..",
    "shop .example.test", " shop.example.test", "shop.example.test ", "shop.example.test\n", "shop\texample.test",
    "shop\x00.example.test", "shop\x7f.example.test", "Shop.Example.Test", "SHOP.EXAMPLE.TEST",
    "shop.example.test.", "shop.example.test:443", "1.2.3.4", "[::1]", "::1", "2001:db8::1", "10.0.0.1:80",
    "example.123", "*", "*.", "*.test", "**.example.test", "a.*.example.test", "*a.example.test", "a*.example.test",
    "*.*.example.test", "example.*", "*example.test", "bücher.example", "xn--bcher.example", "-shop.example.test",
    "shop-.example.test", "shop_1.example.test", "_wildcard.example.test", "a" * 64 + ".test",
    ".".join(["a" * 62] * 4) + ".test",  # 256 characters: a domain, but its file name exceeds NAME_MAX
    "shop;rm.example.test", "shop\\example.test", "shop.example.test\u200b", "\ufeffshop.example.test",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_cert_file_name_rejects(name: str) -> None:
    with pytest.raises(MaterialRejected) as info:
        cert_file_name(name)
    reason: str = info.value.reason
    assert info.value.reason is Reason.BAD_NAME
    assert reason == "bad_name"  # a StrEnum: plain strings compare equal (metric labels, logs)


@pytest.mark.parametrize("name", [None, 42, b"shop.example.test", ["shop.example.test"]])
def test_cert_file_name_rejects_non_strings(name: object) -> None:
    with pytest.raises(MaterialRejected) as info:
        cert_file_name(name)  # type: ignore[arg-type]
    assert info.value.reason == "bad_name"


@pytest.mark.parametrize("file_name", [
    "", ".pem", "shop.example.test", "shop.example.test.pem.tmp", ".lockstep-tmp-0123456789abcdef",
    ".shop.example.test.pem", "Shop.example.test.pem", "shop.example.test.key", "shop.example.test.pem.key",
    "_wildcard.pem", "_wildcard..pem", "_wildcard.test.pem", "_wildcard._wildcard.example.test.pem",
    "*.example.test.pem", "default.crt", "shop.example.test.PEM", "1.2.3.4.pem", "shop example.test.pem",
    "../x.example.test.pem",
])
def test_name_from_file_name_foreign(file_name: str) -> None:
    assert name_from_file_name(file_name) is None


_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True).filter(lambda s: "--" not in s[2:4])
_host = st.lists(_label, min_size=1, max_size=5).map(".".join).filter(
    lambda h: not h.rpartition(".")[2].isdigit() and len(h) <= 240)
_cert_name = st.one_of(_host, _host.filter(lambda h: "." in h).map(lambda h: "*." + h))


@given(_cert_name)
@example("xn--bcher-kva.example")
def test_file_name_round_trip(name: str) -> None:
    file_name = cert_file_name(name)
    assert name_from_file_name(file_name) == name
    assert not file_name.startswith(".") and file_name.endswith(".pem") and "/" not in file_name
    host = name.removeprefix("*.")
    assert normalize_host(host) == host
    check_cert_name(f"{CERT_DIR}/{file_name}", cert_dir=CERT_DIR)


_name_chars = st.sampled_from(string.ascii_letters + string.digits + "-._*/ :[]@\x00\n\tßü\u200b")


@given(st.one_of(st.text(_name_chars, max_size=40), st.text(max_size=40), _cert_name.map(lambda n: n.upper())))
@example("shop.example.test")
def test_cert_file_name_never_raises_anything_else(name: str) -> None:
    """Any string: a file name that maps back to it exactly, or MaterialRejected(bad_name)."""
    try:
        file_name = cert_file_name(name)
    except MaterialRejected as exc:
        assert exc.reason == "bad_name"
        return
    assert name_from_file_name(file_name) == name
    host = name.removeprefix("*.")
    assert normalize_host(host) == host and "*" not in host


@given(st.one_of(st.text(_name_chars, max_size=40), _cert_name.map(cert_file_name),
                 _cert_name.map(lambda n: "." + cert_file_name(n))))
def test_name_from_file_name_is_exact_inverse(file_name: str) -> None:
    name = name_from_file_name(file_name)
    if name is not None:
        assert cert_file_name(name) == file_name


# --- happy paths -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", ["ec", "rsa"])
@pytest.mark.parametrize("depth", [0, 1, 2], ids=["root-signed", "1-intermediate", "2-intermediates"])
def test_valid_bundle(request: pytest.FixtureRequest, key_type: str, depth: int) -> None:
    pki: Pki = request.getfixturevalue(f"{key_type}_pki")
    issued = issue(pki.issuer(depth), [NAME, "www." + NAME], now=NOW, key_type=key_type)
    assert len(issued.chain) == depth

    material = check_material(NAME, issued.bundle_pem, expected_fingerprint=issued.fingerprint, now=NOW)

    assert material == Material(
        name=NAME,
        pem=issued.bundle_pem,
        fingerprint=issued.fingerprint,
        sha1_hex=issued.cert.fingerprint(hashes.SHA1()).hex().upper(),
        serial_hex=material.serial_hex,  # format: test_serial_hex_is_what_haproxy_prints
        not_before=issued.cert.not_valid_before_utc,
        not_after=issued.cert.not_valid_after_utc,
        domains=(NAME, "www." + NAME),
        key_type=key_type,  # type: ignore[arg-type]
    )
    assert material.file_name == NAME + ".pem"
    assert re.fullmatch(r"[0-9A-F]{40}", material.sha1_hex)
    assert re.fullmatch(r"(?:[0-9A-F]{2})+", material.serial_hex)
    assert int(material.serial_hex, 16) == issued.cert.serial_number
    assert material.not_after.tzinfo is not None and material.not_after.utcoffset() == dt.timedelta(0)
    _assert_normalized(material.pem, certs=1 + depth)
    assert "PRIVATE KEY" not in repr(material)  # pem is left out of repr


def _assert_normalized(text: str, *, certs: int) -> None:
    assert text.endswith("-----END PRIVATE KEY-----\n")
    assert "\n\n" not in text and "\r" not in text
    labels = re.findall(r"-----BEGIN ([A-Z ]+)-----", text)
    assert labels == ["CERTIFICATE"] * certs + ["PRIVATE KEY"]


@pytest.mark.parametrize("key_type", ["ec", "rsa"])
def test_material_pem_is_what_the_runtime_api_takes(request: pytest.FixtureRequest, key_type: str) -> None:
    """The normalised PEM goes to `set ssl cert` as is (one request for real bundles) and splits cleanly."""
    pki: Pki = request.getfixturevalue(f"{key_type}_pki")
    issued = issue(pki.inter2, [NAME], now=NOW, key_type=key_type)
    material = check_material(NAME, issued.bundle_pem, expected_fingerprint=issued.fingerprint, now=NOW)
    path = f"{CERT_DIR}/{material.file_name}"
    (command,) = set_certificate(path, material.pem, cert_dir=CERT_DIR)
    assert command.payload == material.pem.rstrip("\n")
    certs, key = split_pem(material.pem)
    assert certs + "\n" == issued.cert_pem + issued.chain_pem and key + "\n" == issued.key_pem


def test_valid_bundle_is_normalized(ec_pki: Pki) -> None:
    """CRLF, blank lines, key first, a traditional EC key and EC PARAMETERS: one canonical output."""
    issued = issue(ec_pki.inter2, [NAME], now=NOW)
    traditional = key_pem(issued.key, serialization.PrivateFormat.TraditionalOpenSSL)
    params = "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
    messy = ("\n\n" + params + traditional + "\n" + pem(issued.cert) + "\n\n" + issued.chain_pem + "\n\n").replace(
        "\n", "\r\n")
    material = check_material(NAME, messy, expected_fingerprint=issued.fingerprint, now=NOW)
    assert material.pem == issued.bundle_pem
    _assert_normalized(material.pem, certs=3)
    as_bytes = check_material(NAME, messy.encode(), expected_fingerprint=issued.fingerprint.upper(), now=NOW)
    assert as_bytes == material


def test_rsa_traditional_key_is_reencoded_as_pkcs8(rsa_pki: Pki) -> None:
    issued = issue(rsa_pki.inter1, [NAME], now=NOW, key_type="rsa")
    text = pem(issued.cert) + issued.chain_pem + key_pem(issued.key, serialization.PrivateFormat.TraditionalOpenSSL)
    assert "RSA PRIVATE KEY" in text
    material = check_material(NAME, text, expected_fingerprint=issued.fingerprint, now=NOW)
    assert material.pem == issued.bundle_pem and material.key_type == "rsa"


def test_serial_hex_is_what_haproxy_prints(ec_pki: Pki) -> None:
    """`show ssl cert` prints the INTEGER's content octets in upper-case hex, without the sign byte."""
    for serial, expected in [(0x0F, "0F"), (0x80, "80"), (0x80FF00, "80FF00"), (1 << 158, "40" + "00" * 19)]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, NAME)]))
            .issuer_name(ec_pki.root.cert.subject).public_key(key.public_key()).serial_number(serial)
            .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
            .sign(ec_pki.root.key, hashes.SHA256())
        )
        material = check_material(NAME, bundle(cert, [], key), expected_fingerprint=fingerprint(cert), now=NOW)
        assert material.serial_hex == expected


@pytest.mark.parametrize(("name", "sans"), [
    ("shop.example.test", ["shop.example.test"]),
    ("shop.example.test", ["other.example.test", "SHOP.example.test"]),  # DNS names compare case-insensitively
    ("a.example.test", ["*.example.test"]),
    ("xn--bcher-kva.example.test", ["*.example.test"]),
    ("*.example.test", ["*.example.test"]),
    ("*.example.test", ["example.test", "*.example.test"]),
])
def test_names_covered(ec_pki: Pki, name: str, sans: list[str]) -> None:
    issued = issue(ec_pki.inter1, sans, now=NOW)
    material = check_material(name, issued.bundle_pem, expected_fingerprint=issued.fingerprint, now=NOW)
    assert material.domains == tuple(sans)


def test_common_name_used_only_without_san(ec_pki: Pki) -> None:
    issued = leaf_with_names(ec_pki.inter1, NAME)
    material = check_material(NAME, issued.bundle_pem, expected_fingerprint=issued.fingerprint, now=NOW)
    assert material.domains == (NAME,)
    issued = leaf_with_names(ec_pki.inter1, "cn.example.test", ["*.example.test"])
    material = check_material(NAME.replace("shop.", "x."), issued.bundle_pem,
                              expected_fingerprint=issued.fingerprint, now=NOW)
    assert material.domains == ("*.example.test",)


@pytest.mark.parametrize(("not_before", "not_after_days", "ok"), [
    (NOW - dt.timedelta(days=1), 90, True),
    (NOW + CLOCK_SKEW, 90, True),  # the CA's clock may run a little ahead
    (NOW + CLOCK_SKEW + dt.timedelta(seconds=1), 90, False),
    (NOW - dt.timedelta(days=90) + dt.timedelta(seconds=1), 90, True),  # one second left
    (NOW - dt.timedelta(days=90), 90, False),  # not_after == now: expired
])
def test_validity_edges(ec_pki: Pki, not_before: dt.datetime, not_after_days: int, ok: bool) -> None:
    issued = issue(ec_pki.inter1, [NAME], now=NOW, not_before=not_before, days=not_after_days)
    if ok:
        check_material(NAME, issued.bundle_pem, expected_fingerprint=issued.fingerprint, now=NOW)
    else:
        with pytest.raises(MaterialRejected):
            check_material(NAME, issued.bundle_pem, expected_fingerprint=issued.fingerprint, now=NOW)


def test_naive_now_is_a_programming_error(leaf: Issued) -> None:
    with pytest.raises(ValueError, match="aware"):
        check_material(NAME, leaf.bundle_pem, expected_fingerprint=leaf.fingerprint, now=NOW.replace(tzinfo=None))


# --- rejections ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """A rejected bundle: what goes in (built from the session PKIs), and what must come out."""

    reason: str
    make: Callable[[Pki, Pki, Issued], tuple[str, str | bytes, str]]  # (ec_pki, other_pki, leaf) -> name, pem, fp
    max_bytes: int = 64 * 1024
    detail: str = ""  # a regex the detail must match


def _ok(leaf: Issued) -> tuple[str, str, str]:
    return NAME, leaf.bundle_pem, leaf.fingerprint


def _with(leaf: Issued, text: str) -> tuple[str, str, str]:
    return NAME, text, leaf.fingerprint


def _issued(pki: Pki, names: list[str], **kw: object) -> tuple[str, str, str]:
    issued = issue(pki.inter1, names, now=NOW, **kw)  # type: ignore[arg-type]
    return NAME, issued.bundle_pem, issued.fingerprint


def _as_case(issued: Issued) -> tuple[str, str, str]:
    return NAME, issued.bundle_pem, issued.fingerprint


def _cut(text: str, marker: str, keep: int) -> str:
    return text[: text.index(marker) + keep]


def _deep_chain(pki: Pki, _o: Pki, _l: Issued) -> tuple[str, str, str]:
    ca = pki.root
    for i in range(MAX_CHAIN_LENGTH):
        ca = make_ca(f"Deep {i}", now=NOW - dt.timedelta(days=1), parent=ca)
    issued = issue(ca, [NAME], now=NOW)
    assert len(issued.chain) == MAX_CHAIN_LENGTH
    return NAME, issued.bundle_pem, issued.fingerprint


def _encrypted_key(_p: Pki, _o: Pki, leaf: Issued) -> tuple[str, str, str]:
    key = leaf.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.BestAvailableEncryption(b"secret")).decode()
    return _with(leaf, leaf.cert_pem + leaf.chain_pem + key)


def _ed25519_key(_p: Pki, _o: Pki, leaf: Issued) -> tuple[str, str, str]:
    key = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    return _with(leaf, leaf.cert_pem + leaf.chain_pem + key)


def _corrupt_key_body(leaf: Issued) -> str:
    key = leaf.key_pem
    lines = key.split("\n")
    lines[1] = lines[1][:10] + "////" + lines[1][14:]
    return leaf.cert_pem + leaf.chain_pem + "\n".join(lines)


def _corrupt_cert_body(leaf: Issued) -> str:
    lines = leaf.cert_pem.split("\n")
    lines[3] = "A" * len(lines[3])
    return "\n".join(lines) + leaf.chain_pem + leaf.key_pem


def _chain_reversed(pki: Pki, _o: Pki, _l: Issued) -> tuple[str, str, str]:
    issued = issue(pki.inter2, [NAME], now=NOW)
    assert len(issued.chain) == 2
    return NAME, bundle(issued.cert, list(reversed(issued.chain)), issued.key), issued.fingerprint


def _unrelated_ca(pki: Pki, _o: Pki, leaf: Issued) -> tuple[str, str, str]:
    stranger = make_ca("Some Other CA", now=NOW - dt.timedelta(days=1))
    return _with(leaf, bundle(leaf.cert, [stranger.cert], leaf.key))


def _same_name_other_key(_p: Pki, other: Pki, leaf: Issued) -> tuple[str, str, str]:
    # other_pki's intermediate has the very subject leaf's issuer has: the name check passes, the signature fails.
    assert other.inter1.cert.subject == leaf.cert.issuer
    return _with(leaf, bundle(leaf.cert, [other.inter1.cert], leaf.key))


def _intermediate_not_ca(pki: Pki, _o: Pki, _l: Issued) -> tuple[str, str, str]:
    # A leaf "issued" by another leaf: name and signature are right, but the issuer is no CA.
    parent = issue(pki.inter1, ["parent.example.test"], now=NOW)
    child = issue(Issued(x509.load_pem_x509_certificate(parent.cert_pem.encode()), parent.key), [NAME], now=NOW)
    return NAME, bundle(child.cert, [parent.cert, pki.inter1.cert], child.key), child.fingerprint


def _leaf_is_ca(pki: Pki, _o: Pki, _l: Issued) -> tuple[str, str, str]:
    ca = make_ca(NAME, now=NOW - dt.timedelta(days=1), parent=pki.inter1)
    return NAME, bundle(ca.cert, [pki.inter1.cert], ca.key), ca.fingerprint


def _duplicate_intermediate(pki: Pki, _o: Pki, leaf: Issued) -> tuple[str, str, str]:
    return _with(leaf, bundle(leaf.cert, [pki.inter1.cert, pki.inter1.cert], leaf.key))


def _pem_as_name(_p: Pki, _o: Pki, leaf: Issued) -> tuple[str, str, str]:
    return leaf.key_pem, leaf.bundle_pem, leaf.fingerprint


def _named(name: str, sans: list[str]) -> Callable[[Pki, Pki, Issued], tuple[str, str, str]]:
    """A case for certificate name `name` and a fresh leaf with these SANs."""
    return lambda p, o, l: (name, *_issued(p, sans)[1:])


def _text(edit: Callable[[Issued], str]) -> Callable[[Pki, Pki, Issued], tuple[str, str, str]]:
    """A case for NAME with the bundle text `edit(leaf)` and the leaf's fingerprint."""
    return lambda p, o, l: (NAME, edit(l), l.fingerprint)


def _named_as(name: str) -> Callable[[Pki, Pki, Issued], tuple[str, str, str]]:
    return lambda p, o, l: (name, l.bundle_pem, l.fingerprint)


def _public_key_pem(leaf: Issued) -> str:
    return leaf.key.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo).decode()


CRL = "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"

CASES: dict[str, Case] = {
    # names
    "name with slash": Case("bad_name", _named_as("shop/example.test")),
    "name with dotdot": Case("bad_name", _named_as("../shop.example.test")),
    "name is dotdot": Case("bad_name", _named_as("..")),
    "name with whitespace": Case("bad_name", _named_as("shop .example.test")),
    "name with newline": Case("bad_name", _named_as(NAME + "\n")),
    "name upper case": Case("bad_name", _named_as(NAME.upper())),
    "name is the key": Case("bad_name", _pem_as_name),
    # structure
    "garbage": Case("unparsable", _text(lambda l: "this is not a certificate\n")),
    "garbage bytes": Case("unparsable", lambda p, o, l: (NAME, b"\x00\xff\xfe" * 100, l.fingerprint)),
    "non-ascii": Case("unparsable", _text(lambda l: l.bundle_pem.replace("-----\n", "-----\nü", 1))),
    "truncated in the key": Case("unparsable", _text(lambda l: _cut(l.bundle_pem, "-----BEGIN PRIVATE KEY", 60))),
    "truncated in the leaf": Case("unparsable", _text(lambda l: l.bundle_pem[:200])),
    "truncated before END": Case("unparsable", _text(lambda l: l.bundle_pem[:-10])),
    "text between blocks": Case("unparsable", _text(lambda l: l.cert_pem + "junk\n" + l.chain_pem + l.key_pem)),
    "cert body corrupt": Case("unparsable", _text(_corrupt_cert_body), detail="leaf"),
    "key body corrupt": Case("unparsable", _text(_corrupt_key_body), detail="private key"),
    "label mismatch": Case("unparsable", _text(lambda l: l.bundle_pem.replace("END PRIVATE", "END RSA PRIVATE"))),
    "crl block": Case("unsupported_block", _text(lambda l: l.bundle_pem + CRL)),
    "public key block": Case("unsupported_block", _text(lambda l: l.bundle_pem + _public_key_pem(l)),
                             detail="key block"),
    "odd key label": Case("unsupported_key", _text(lambda l: l.cert_pem + l.chain_pem + l.key_pem.replace(
        "PRIVATE KEY-----", "PRIVATE KEY 2-----"))),
    "encrypted key": Case("unsupported_key", _encrypted_key, detail="encrypted"),
    "ed25519 key": Case("unsupported_key", _ed25519_key),
    "empty": Case("no_certificate", _text(lambda l: "")),
    "whitespace only": Case("no_certificate", _text(lambda l: " \n\n")),
    "key only": Case("no_certificate", _text(lambda l: l.key_pem)),
    "certificates only": Case("no_key", _text(lambda l: l.cert_pem + l.chain_pem)),
    "two keys": Case("multiple_keys", _text(lambda l: l.bundle_pem + l.key_pem)),
    "too many certificates": Case("too_large", _deep_chain),
    "too many bytes": Case("too_large", lambda p, o, l: _ok(l), max_bytes=1000),
    # identity
    "fingerprint of another cert": Case("fingerprint_mismatch",
                                        lambda p, o, l: (NAME, l.bundle_pem, fingerprint(p.inter1.cert))),
    "fingerprint malformed": Case("fingerprint_mismatch", lambda p, o, l: (NAME, l.bundle_pem, "sha1:" + "0" * 40)),
    "fingerprint of the chain": Case("fingerprint_mismatch",
                                     lambda p, o, l: _with(l, bundle(p.inter1.cert, [l.cert], l.key))),
    "key of another cert": Case("key_mismatch", lambda p, o, l: _with(l, bundle(l.cert, l.chain, p.inter1.key))),
    "leaf is a CA": Case("leaf_is_ca", _leaf_is_ca),
    "chain reversed": Case("chain_order", _chain_reversed),
    "unrelated CA": Case("chain_order", _unrelated_ca, detail="issued by"),
    "same-name CA, other key": Case("chain_order", _same_name_other_key, detail="signature"),
    "intermediate is not a CA": Case("chain_order", _intermediate_not_ca, detail="not a CA"),
    "duplicate intermediate": Case("chain_order", _duplicate_intermediate),
    # names in the certificate
    "wrong SAN": Case("name_mismatch", _named(NAME, ["other.example.test"])),
    "CN ignored when SAN present": Case("name_mismatch",
                                        lambda p, o, l: _as_case(leaf_with_names(p.inter1, NAME, ["x.example.test"]))),
    "SAN without DNS names": Case("name_mismatch", lambda p, o, l: _as_case(leaf_with_names(p.inter1, NAME, []))),
    "wildcard does not cover apex": Case("name_mismatch", _named("example.test", ["*.example.test"])),
    "wildcard covers one label only": Case("name_mismatch", _named("a.b.example.test", ["*.example.test"])),
    "wildcard name needs wildcard SAN": Case("name_mismatch", _named("*.example.test", ["a.example.test"])),
    "wildcard name, other wildcard": Case("name_mismatch", _named("*.example.test", ["*.a.example.test"])),
    "partial wildcard SAN": Case("name_mismatch", _named("ab.example.test", ["a*.example.test"])),
    "second-level wildcard SAN": Case("name_mismatch", _named("example.test", ["*.test"])),
    "no SAN, other CN": Case("name_mismatch",
                             lambda p, o, l: _as_case(leaf_with_names(p.inter1, "other.example.test"))),
    # time
    "expired": Case("expired", lambda p, o, l: _issued(p, [NAME], not_before=NOW - dt.timedelta(days=100), days=90)),
    "not yet valid": Case("not_yet_valid", lambda p, o, l: _issued(p, [NAME], not_before=NOW + dt.timedelta(days=1))),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_rejected(case: Case, ec_pki: Pki, other_pki: Pki, leaf: Issued) -> None:
    name, text, expected = case.make(ec_pki, other_pki, leaf)
    with pytest.raises(MaterialRejected) as info:
        check_material(name, text, expected_fingerprint=expected, now=NOW, max_bytes=case.max_bytes)
    exc = info.value
    assert exc.reason == case.reason
    assert exc.reason in set(Reason)
    assert re.search(case.detail, exc.detail), exc.detail
    assert str(exc).startswith(f"{name!r}: {case.reason}: ") or case.reason == "bad_name"
    keys = [leaf.key, ec_pki.inter1.key] + _keys_in(text)
    assert_no_key_material(exc, *keys)


def _keys_in(text: str | bytes) -> list[ec.EllipticCurvePrivateKey]:
    """Keys that parse out of the bundle (so the leak check also covers the keys of one-off leaves)."""
    if isinstance(text, bytes):
        return []
    out = []
    for block in re.findall(r"-----BEGIN (?:EC |RSA )?PRIVATE KEY-----.*?-----END (?:EC |RSA )?PRIVATE KEY-----",
                            text, re.DOTALL):
        try:
            key = serialization.load_pem_private_key(block.encode(), password=None)
        except (ValueError, TypeError):
            continue
        if isinstance(key, ec.EllipticCurvePrivateKey):
            out.append(key)
    return out


def test_key_fragments_helper_finds_a_leak(leaf: Issued) -> None:
    """The leak check itself: it must notice a key in an error message."""
    leaky = MaterialRejected(NAME, Reason.UNPARSABLE, leaf.key_pem.split("\n")[2])
    with pytest.raises(AssertionError):
        assert_no_key_material(leaky, leaf.key)
    assert key_fragments(leaf.key)


def test_rejections_cover_every_reason() -> None:
    assert {c.reason for c in CASES.values()} == {r.value for r in Reason}


def test_rsa_chain_reversed_and_key_mismatch(rsa_pki: Pki, ec_pki: Pki) -> None:
    """RSA signatures are verified too (PKCS#1 v1.5), and an EC key against an RSA leaf is a mismatch."""
    issued = issue(rsa_pki.inter2, [NAME], now=NOW, key_type="rsa")
    with pytest.raises(MaterialRejected) as info:
        check_material(NAME, bundle(issued.cert, list(reversed(issued.chain)), issued.key),
                       expected_fingerprint=issued.fingerprint, now=NOW)
    assert info.value.reason == "chain_order"
    with pytest.raises(MaterialRejected) as info:
        check_material(NAME, bundle(issued.cert, issued.chain, ec_pki.inter1.key),
                       expected_fingerprint=issued.fingerprint, now=NOW)
    assert info.value.reason == "key_mismatch"
    assert_no_key_material(info.value, issued.key, ec_pki.inter1.key)


def test_rsa_pss_signature_and_mixed_key_types(ec_pki: Pki) -> None:
    """An EC leaf under an RSA root that signs with PSS (the root itself shipped at the end of the chain)."""
    root = make_ca("PSS Root", now=NOW - dt.timedelta(days=1), key_type="rsa")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, NAME)]))
        .issuer_name(root.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
        .sign(root.key, hashes.SHA256(), rsa_padding=padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32))
    )
    material = check_material(NAME, bundle(cert, [root.cert], key), expected_fingerprint=fingerprint(cert), now=NOW)
    assert material.key_type == "ec"
    with pytest.raises(MaterialRejected) as info:  # same names, another RSA key: the PSS signature fails
        other_root = make_ca("PSS Root", now=NOW - dt.timedelta(days=1), key_type="rsa")
        check_material(NAME, bundle(cert, [other_root.cert], key), expected_fingerprint=fingerprint(cert), now=NOW)
    assert info.value.reason == "chain_order"


@pytest.mark.parametrize("warnings_as_errors", [True, False])
def test_negative_serial_is_unparsable(leaf: Issued, warnings_as_errors: bool) -> None:
    """cryptography only warns about a negative serial (an error in a future release); we refuse it either way."""
    der = leaf.cert.public_bytes(serialization.Encoding.DER)
    serial = leaf.cert.serial_number.to_bytes(20, "big")
    at = der.index(b"\x02\x14" + serial) + 2
    broken = der[:at] + bytes([serial[0] | 0x80]) + der[at + 1:]
    text = pem_from_der(broken) + leaf.chain_pem + leaf.key_pem
    with warnings.catch_warnings():
        warnings.simplefilter("error" if warnings_as_errors else "ignore")
        with pytest.raises(MaterialRejected) as info:
            check_material(NAME, text, expected_fingerprint=leaf.fingerprint, now=NOW)
    assert info.value.reason == "unparsable" and "leaf" in info.value.detail


def pem_from_der(der: bytes) -> str:
    body = base64.encodebytes(der).decode().replace("\n", "")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


def test_broken_rsa_key_with_the_right_public_half(rsa_pki: Pki) -> None:
    """A key whose public numbers match the leaf but whose private numbers are wrong cannot sign for it."""
    issued = issue(rsa_pki.inter1, [NAME], now=NOW, key_type="rsa")
    assert isinstance(issued.key, rsa.RSAPrivateKey)
    good = issued.key.private_numbers()
    broken = rsa.RSAPrivateNumbers(p=good.p, q=good.q, d=good.d + 2, dmp1=good.dmp1 + 2, dmq1=good.dmq1 + 2,
                                   iqmp=good.iqmp, public_numbers=good.public_numbers)
    key = broken.private_key(unsafe_skip_rsa_key_validation=True)
    with pytest.raises(MaterialRejected) as info:
        check_material(NAME, bundle(issued.cert, issued.chain, key), expected_fingerprint=issued.fingerprint, now=NOW)
    assert info.value.reason == "key_mismatch" and "signatures" in info.value.detail
    assert_no_key_material(info.value, issued.key)


@pytest.mark.parametrize("label,encoding", [("EC PRIVATE KEY", serialization.PrivateFormat.TraditionalOpenSSL),
                                            ("PRIVATE KEY", serialization.PrivateFormat.PKCS8)])
def test_broken_ec_key_with_the_right_public_half(leaf: Issued, label: str,
                                                  encoding: serialization.PrivateFormat) -> None:
    """An EC key carrying the leaf's public point but another scalar cannot sign for the leaf. check_material
    compares public keys only for EC (no signing proof), which is enough because the loader refuses a key whose
    public point is not its scalar's; this pins that behaviour of cryptography."""
    assert isinstance(leaf.key, ec.EllipticCurvePrivateKey)
    other = ec.generate_private_key(ec.SECP256R1())
    point = serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    ours, theirs = leaf.key.public_key().public_bytes(*point), other.public_key().public_bytes(*point)
    der = other.private_bytes(serialization.Encoding.DER, encoding, serialization.NoEncryption())
    assert der.count(theirs) == 1
    broken = der.replace(theirs, ours)  # other's scalar, the leaf's public point
    body = base64.encodebytes(broken).decode()
    key_block = f"-----BEGIN {label}-----\n{body}-----END {label}-----\n"
    with pytest.raises(MaterialRejected) as info:
        check_material(NAME, leaf.cert_pem + leaf.chain_pem + key_block, expected_fingerprint=leaf.fingerprint,
                       now=NOW)
    assert info.value.reason in ("unparsable", "key_mismatch")
    assert_no_key_material(info.value, leaf.key, other)


def test_error_never_echoes_an_odd_name(leaf: Issued) -> None:
    with pytest.raises(MaterialRejected) as info:
        check_material("x" * 500, leaf.bundle_pem, expected_fingerprint=leaf.fingerprint, now=NOW)
    assert "xxxxxxxxxx" not in str(info.value) and "500 characters" in str(info.value)


# --- fuzzing ---------------------------------------------------------------------------------------------------


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300),
                 st.lists(st.sampled_from(["-----BEGIN CERTIFICATE-----\n", "-----END CERTIFICATE-----\n",
                                           "-----BEGIN PRIVATE KEY-----\n", "-----END PRIVATE KEY-----\n",
                                           "MIIB\n", "AAAA\n", "====\n", "\n", "-----BEGIN EC PARAMETERS-----\n",
                                           "-----END EC PARAMETERS-----\n"]), max_size=12).map("".join)))
def test_arbitrary_input_only_raises_material_rejected(text: str | bytes) -> None:
    with pytest.raises(MaterialRejected):
        check_material(NAME, text, expected_fingerprint="sha256:" + "0" * 64, now=NOW)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_bundle_passes_unchanged_or_is_rejected(data: st.DataObject, leaf: Issued) -> None:
    """Delete, replace or insert a few characters anywhere in a real bundle: MaterialRejected (and nothing else), or
    the original material (only whitespace changed).

    One exception, found by this test: the topmost chain certificate is signed by a root the bundle does not carry,
    so damage to its signature fields (e.g. the outer signatureAlgorithm) cannot be detected here; the leaf, the
    key and every signature inside the bundle still are verified.
    """
    text = leaf.bundle_pem
    start = data.draw(st.integers(0, len(text) - 1))
    length = data.draw(st.integers(0, 8))
    insert = data.draw(st.text(alphabet=st.sampled_from("A/+=-\n \r0zü"), max_size=4))
    mutated = text[:start] + insert + text[start + length:]
    assume(mutated != text)
    try:
        material = check_material(NAME, mutated, expected_fingerprint=leaf.fingerprint, now=NOW)
    except MaterialRejected as exc:
        assert_no_key_material(exc, leaf.key)
        return
    top_start = text.index(leaf.chain_pem)
    top_end = top_start + len(leaf.chain_pem)
    assert material.pem == text or (top_start <= start < top_end and material.pem.startswith(leaf.cert_pem)
                                    and material.pem.endswith(leaf.key_pem))


# --- leaf fingerprints -----------------------------------------------------------------------------------------


def test_leaf_fingerprint(leaf: Issued) -> None:
    der = leaf.cert.public_bytes(serialization.Encoding.DER)
    assert leaf_fingerprint(leaf.bundle_pem) == leaf.fingerprint
    assert leaf_fingerprint(leaf.bundle_pem.encode()) == leaf.fingerprint
    assert leaf_fingerprint(der) == leaf.fingerprint
    assert leaf_der(leaf.key_pem + leaf.bundle_pem) == der  # the first CERTIFICATE block, wherever it is


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "no_certificate"),
    (b"garbage", "unparsable"),  # taken as DER
    ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "unparsable"),
    ("-----BEGIN CERTIFICATE-----\nMIIB", "no_certificate"),
    ("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "no_certificate"),
])
def test_leaf_fingerprint_rejects(data: str | bytes, reason: str) -> None:
    with pytest.raises(MaterialRejected) as info:
        leaf_fingerprint(data)
    assert info.value.reason == reason

"""The pure core of controlplane/preflight.py: CAA rules (RFC 8659), CNAME chain walking, DNS verdicts."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from controlplane.preflight import (
    Alias,
    CaaRecord,
    Chain,
    Data,
    Hop,
    IssueValue,
    LookupFailed,
    NeedLookup,
    NxDomain,
    Preflight,
    PreflightSettings,
    ProbeToken,
    caa_allows,
    caa_search_names,
    hops_from_response,
    judge_caa,
    judge_dns,
    parse_issue_value,
    probe_token,
    relevant_caa,
    walk_chain,
)

DIGICERT = ("digicert.com", "www.digicert.com", "symantec.com", "thawte.com", "geotrust.com", "rapidssl.com")
PEBBLE = ("pebble.test",)
SETTINGS = PreflightSettings(edge_cname_targets=("edge.lockstep.example", "*.tenants.lockstep.example"),
                             edge_addresses=("192.0.2.10", "2001:db8::10"), resolver_address="127.0.0.1:53")


def caa(*specs: str) -> tuple[CaaRecord, ...]:
    """caa('0 issue "digicert.com"', ...) -> records."""
    out = []
    for spec in specs:
        flags, tag, value = spec.split(" ", 2)
        out.append(CaaRecord(int(flags), tag, value.strip('"')))
    return tuple(out)


# ---------------------------------------------------------------------------------------------- issue values


@pytest.mark.parametrize(("value", "issuer", "params"), [
    ("digicert.com", "digicert.com", ()),
    ("  DigiCert.COM\t", "digicert.com", ()),
    ("", None, ()),
    (";", None, ()),  # RFC 8659 §4.2: issue ";" names no issuer
    ("  ;  ", None, ()),
    ("pebble.test; accounturi=https://acme.example/acct/1", "pebble.test", (("accounturi", "https://acme.example/acct/1"),)),
    ("letsencrypt.org;validationmethods=dns-01 ; accounturi = x", "letsencrypt.org",
     (("validationmethods", "dns-01"), ("accounturi", "x"))),
    ("digicert.com;", "digicert.com", ()),
    ("digicert.com; a=b;", "digicert.com", (("a", "b"),)),  # lenient: an empty trailing parameter is skipped
    ("; a=b", None, (("a", "b"),)),
    ("%%%%%", None, ()),  # the RFC's own malformed example: forbids
    ("digi_cert.com", None, ()),
    ("-digicert.com", None, ()),
    ("digicert-.com", None, ()),
    ("digicert..com", None, ()),
    ("digicert.com.", None, ()),  # a trailing dot is not in the grammar
    ("digicert.com; no-equals-sign", None, ()),
    ("digicert.com; a=b c", None, ()),  # space inside a parameter value
    ("digi cert.com", None, ()),
    ("xn--bcher-kva.example", "xn--bcher-kva.example", ()),
])
def test_parse_issue_value(value: str, issuer: str | None, params: tuple[tuple[str, str], ...]) -> None:
    parsed = parse_issue_value(value)
    assert parsed.issuer == issuer
    if issuer is not None or params:
        assert parsed == IssueValue(issuer, params)


# ---------------------------------------------------------------------------------------------- caa_allows


@pytest.mark.parametrize(("records", "digicert", "pebble"), [
    ((), True, True),  # no CAA at all: anyone
    (caa('0 issue "digicert.com"'), True, False),
    (caa('0 issue "www.digicert.com"'), True, False),
    (caa('0 issue "geotrust.com"'), True, False),  # a DigiCert brand domain authorises DigiCert
    (caa('0 issue "pebble.test"'), False, True),
    (caa('0 issue "PEBBLE.Test"'), False, True),  # issuer names compare case-insensitively
    (caa('0 ISSUE "pebble.test"'), False, True),  # so do tags (§4.1)
    (caa('0 issue ";"'), False, False),  # no issuance at all
    (caa('0 issue ""'), False, False),
    (caa('0 issue ";"', '0 issue "pebble.test"'), False, True),  # authorisations are additive
    (caa('0 issue "%%%%%"'), False, False),  # malformed: as if empty
    (caa('0 issue "%%%%%"', '0 issue "digicert.com"'), True, False),
    (caa('0 issue "pebble.test; accounturi=https://x/acct/1"'), False, True),  # parameters do not stop matching
    (caa('0 issue "pebble.test; validationmethods=dns-01"'), False, True),  # ...and are not interpreted
    (caa('0 issue "pebble.test; broken"'), False, False),  # a malformed parameter makes the whole value malformed
    (caa('0 iodef "mailto:sec@example.com"'), True, True),  # no issue property: unrestricted
    (caa('0 issuewild "digicert.com"'), True, True),  # issuewild is irrelevant for a non-wildcard name
    (caa('0 issuewild ";"'), True, True),
    (caa('0 issuewild ";"', '0 issue "pebble.test"'), False, True),
    (caa('0 issue "pebble.test"', '0 issuewild "digicert.com"'), False, True),
    (caa('128 tbs "unknown"', '0 issue "pebble.test"'), False, False),  # critical unknown tag: nobody (§4.5)
    (caa('128 tbs "unknown"'), False, False),
    (caa('0 tbs "unknown"', '0 issue "pebble.test"'), False, True),  # not critical: ignored
    (caa('1 tbs "unknown"', '0 issue "pebble.test"'), False, True),  # only the high bit is the critical flag
    (caa('128 iodef "mailto:a@example.com"', '0 issue "pebble.test"'), False, True),  # critical but known
    (caa('128 issue "digicert.com"'), True, False),  # critical issue: known, applies normally
    (caa('128 contactemail "a@example.com"'), True, True),
    (caa('0 issue "digicert.com.evil.example"'), False, False),  # no suffix or prefix matching
    (caa('0 issue "evil-digicert.com"'), False, False),
])
def test_caa_allows(records: tuple[CaaRecord, ...], digicert: bool, pebble: bool) -> None:
    assert caa_allows(records, DIGICERT) is digicert
    assert caa_allows(records, PEBBLE) is pebble


@pytest.mark.parametrize(("records", "allowed"), [
    (caa('0 issue ";"', '0 issuewild "pebble.test"'), True),  # issuewild replaces issue for wildcards (§4.3)
    (caa('0 issue "pebble.test"', '0 issuewild ";"'), False),
    (caa('0 issue "pebble.test"'), True),  # no issuewild: issue applies
])
def test_caa_allows_wildcard(records: tuple[CaaRecord, ...], allowed: bool) -> None:
    assert caa_allows(records, PEBBLE, wildcard=True) is allowed


def test_known_tags_are_configurable() -> None:
    records = caa('128 issuevmc "digicert.com"', '0 issue "digicert.com"')
    assert caa_allows(records, DIGICERT)
    assert not caa_allows(records, DIGICERT, known_tags=frozenset({"issue", "issuewild", "iodef"}))


# ---------------------------------------------------------------------------------------------- tree climbing


def test_caa_search_names_climb_to_the_tld() -> None:
    assert caa_search_names("A.b.Example.com.") == ("a.b.example.com", "b.example.com", "example.com", "com")


def level(name: str, *specs: str, outcome: str = "data", aliases: tuple[str, ...] = ()) -> Chain[CaaRecord]:
    return Chain(name, aliases, outcome, caa(*specs) if specs else (), "SERVFAIL" if outcome == "failed" else "")  # type: ignore[arg-type]


@pytest.mark.parametrize(("levels", "owner", "records"), [
    # nothing anywhere
    ([level("a.example.com"), level("example.com"), level("com")], None, ()),
    # the closest ancestor with an RRset wins
    ([level("a.example.com"), level("example.com", '0 issue "pebble.test"'), level("com", '0 issue ";"')],
     "example.com", caa('0 issue "pebble.test"')),
    # the name's own RRset beats its parent's
    ([level("a.example.com", '0 issue "digicert.com"'), level("example.com", '0 issue "pebble.test"'), level("com")],
     "a.example.com", caa('0 issue "digicert.com"')),
    # a name that does not exist does not stop the climb
    ([level("a.example.com", outcome="nxdomain"), level("example.com", '0 issue "pebble.test"'), level("com")],
     "example.com", caa('0 issue "pebble.test"')),
    # an RRset at a CNAME target counts as the name's own (alias processing, §3)
    ([level("a.example.com", '0 issue "pebble.test"', aliases=("elsewhere.example.net",)),
      level("example.com", '0 issue "digicert.com"'), level("com")],
     "a.example.com", caa('0 issue "pebble.test"')),
    # a failure above the relevant RRset does not matter
    ([level("a.example.com", '0 issue "pebble.test"'), level("example.com", outcome="failed"), level("com")],
     "a.example.com", caa('0 issue "pebble.test"')),
])
def test_relevant_caa(levels: list[Chain[CaaRecord]], owner: str | None, records: tuple[CaaRecord, ...]) -> None:
    found = relevant_caa(levels)
    assert found.failure is None
    assert (found.owner, found.records) == (owner, records)


@pytest.mark.parametrize("outcome", ["failed", "loop", "too_long"])
def test_relevant_caa_failure_before_an_rrset(outcome: str) -> None:
    levels = [level("a.example.com"), level("example.com", outcome=outcome), level("com", '0 issue ";"')]
    assert relevant_caa(levels).failure is levels[1]


def test_judge_caa_allowed_issuers_in_caller_order() -> None:
    levels = [level("shop.example.com"), level("example.com", '0 issue "pebble.test"', '0 issue "digicert.com"'),
              level("com")]
    result = judge_caa("shop.example.com", levels, ("pebble", "digicert"), SETTINGS)
    assert (result.ok, result.allowed_issuers) == (True, ("pebble", "digicert"))
    result = judge_caa("shop.example.com", levels, ("digicert", "letsencrypt", "pebble"), SETTINGS)
    assert (result.ok, result.allowed_issuers) == (True, ("digicert", "pebble"))
    assert "forbid letsencrypt" in result.message


def test_judge_caa_forbids_with_a_fix() -> None:
    levels = [level("shop.example.com"), level("example.com", '0 issue "letsencrypt.org"'), level("com")]
    result = judge_caa("shop.example.com", levels, ("digicert", "pebble"), SETTINGS)
    assert (result.ok, result.cause, result.allowed_issuers) == (False, "caa_forbids", ())
    assert 'example.com. CAA 0 issue "digicert.com"' in result.message
    assert "letsencrypt.org" in result.message


def test_judge_caa_critical_tag_message() -> None:
    levels = [level("example.com", '128 tbs "x"', '0 issue "digicert.com"'), level("com")]
    result = judge_caa("example.com", levels, ("digicert",), SETTINGS)
    assert result.cause == "caa_forbids" and "critical" in result.message and "'tbs'" in result.message


def test_judge_caa_no_records_allows_everyone_and_failure_is_dns_error() -> None:
    levels = [level("example.com"), level("com")]
    assert judge_caa("example.com", levels, ("digicert", "pebble"), SETTINGS).allowed_issuers == ("digicert", "pebble")
    failed = judge_caa("example.com", [level("example.com", outcome="failed"), level("com")], ("digicert",), SETTINGS)
    assert (failed.ok, failed.cause) == (False, "dns_error")


def test_judge_caa_unknown_issuer_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="acme-corp"):
        judge_caa("example.com", [level("example.com")], ("acme-corp",), SETTINGS)


# ---------------------------------------------------------------------------------------------- CNAME chains

EDGE = "edge.lockstep.example"


def hops(**spec: object) -> dict[str, Hop[str]]:
    """hops(a="->b", b=("192.0.2.1",), c=None (NXDOMAIN), d="!timeout") with '_' for '.' in names."""
    out: dict[str, Hop[str]] = {}
    for key, value in spec.items():
        name = key.replace("_", ".")
        if isinstance(value, str) and value.startswith("->"):
            out[name] = Alias(value[2:])
        elif isinstance(value, str) and value.startswith("!"):
            out[name] = LookupFailed(value[1:])
        elif value is None:
            out[name] = NxDomain()
        else:
            assert isinstance(value, tuple)
            out[name] = Data(value)
    return out


@pytest.mark.parametrize(("table", "outcome", "aliases", "records"), [
    (hops(a=("192.0.2.1",)), "data", (), ("192.0.2.1",)),
    (hops(a=()), "data", (), ()),
    (hops(a="->b", b=("192.0.2.1",)), "data", ("b",), ("192.0.2.1",)),
    (hops(a="->b", b="->c", c=("192.0.2.1",)), "data", ("b", "c"), ("192.0.2.1",)),
    (hops(a=None), "nxdomain", (), ()),
    (hops(a="->b", b=None), "nxdomain", ("b",), ()),
    (hops(a="->a"), "loop", ("a",), ()),
    (hops(a="->b", b="->a"), "loop", ("b", "a"), ()),
    (hops(a="->b", b="->c", c="->b"), "loop", ("b", "c", "b"), ()),
    (hops(a="!timeout"), "failed", (), ()),
    (hops(a="->b", b="!SERVFAIL"), "failed", ("b",), ()),
    # stops at our edge target without needing its answer
    ({"a": Alias(EDGE)}, "stopped", (EDGE,), ()),
    ({"a": Alias("b"), "b": Alias(EDGE)}, "stopped", ("b", EDGE), ()),
    ({"a": Alias("c1.tenants.lockstep.example")}, "stopped", ("c1.tenants.lockstep.example",), ()),
])
def test_walk_chain(table: dict[str, Hop[str]], outcome: str, aliases: tuple[str, ...],
                    records: tuple[str, ...]) -> None:
    chain = walk_chain("a", table, stop_at=SETTINGS.is_edge_target)
    assert isinstance(chain, Chain)
    assert (chain.outcome, chain.aliases, chain.records) == (outcome, aliases, records)


def test_walk_chain_too_long() -> None:
    table: dict[str, Hop[str]] = {f"n{i}": Alias(f"n{i + 1}") for i in range(20)}
    chain = walk_chain("n0", table, max_aliases=8)
    assert isinstance(chain, Chain)
    assert chain.outcome == "too_long" and len(chain.aliases) == 8
    table["n8"] = Data(("192.0.2.1",))
    ok = walk_chain("n0", table, max_aliases=8)  # exactly 8 hops is still fine
    assert isinstance(ok, Chain) and ok.outcome == "data"


def test_walk_chain_asks_for_what_it_lacks() -> None:
    assert walk_chain("a", {}) == NeedLookup("a")
    assert walk_chain("a", {"a": Alias("b")}) == NeedLookup("b")
    assert walk_chain("a", {"a": Alias("b")}, stop_at=lambda n: n == "b") == Chain("a", ("b",), "stopped")


def test_walk_chain_terminates_with_a_bounded_number_of_lookups() -> None:
    """Whatever DNS answers, the walker asks at most max_aliases + 1 questions."""
    table: dict[str, Hop[str]] = {}
    asked = 0
    while True:
        step = walk_chain("start", table, max_aliases=5)
        if isinstance(step, Chain):
            break
        asked += 1
        table[step.name] = Alias(f"x{asked}")  # a server that always answers with a fresh CNAME
    assert step.outcome == "too_long" and asked == 6


def test_hops_from_a_full_recursive_answer() -> None:
    got = hops_from_response("a", nxdomain=False, cnames={"a": "b", "b": "c"}, data={"c": ("192.0.2.1",)})
    assert got == {"a": Alias("b"), "b": Alias("c"), "c": Data(("192.0.2.1",))}


def test_hops_from_an_answer_without_the_target_data() -> None:
    # pebble-challtestsrv answers a CAA query for a CNAME with the CNAME only: the target is asked separately.
    got: dict[str, Hop[str]] = hops_from_response("a", nxdomain=False, cnames={"a": "b"}, data={})
    assert got == {"a": Alias("b")}
    assert walk_chain("a", got) == NeedLookup("b")


def test_hops_nxdomain_marks_the_end_of_the_chain() -> None:
    assert hops_from_response("a", nxdomain=True, cnames={"a": "b"}, data={}) == {"a": Alias("b"), "b": NxDomain()}
    assert hops_from_response("a", nxdomain=True, cnames={}, data={}) == {"a": NxDomain()}
    assert hops_from_response("a", nxdomain=False, cnames={}, data={}) == {"a": Data(())}


def test_hops_from_a_looping_answer_terminate() -> None:
    assert hops_from_response("a", nxdomain=False, cnames={"a": "b", "b": "a"}, data={}) == {
        "a": Alias("b"), "b": Alias("a")}


# ---------------------------------------------------------------------------------------------- DNS verdicts


def a_chain(outcome: str, *records: str, aliases: tuple[str, ...] = (), name: str = "shop.example.com"
            ) -> Chain[str]:
    return Chain(name, aliases, outcome, records, "timed out" if outcome == "failed" else "")  # type: ignore[arg-type]


def aaaa_of(chain: Chain[str], *records: str, outcome: str = "data") -> Chain[str]:
    return Chain(chain.final, (), outcome, records)  # type: ignore[arg-type]


@pytest.mark.parametrize(("a", "aaaa", "cause"), [
    # A records on our edge
    (a_chain("data", "192.0.2.10"), (), None),
    (a_chain("data", "192.0.2.10"), ("2001:db8::10",), None),
    (a_chain("data", "192.0.2.10"), ("2001:0db8:0000::0010",), None),  # compared as addresses, not text
    # one foreign address is enough to fail: a CA may pick it
    (a_chain("data", "192.0.2.10", "198.51.100.7"), (), "dns_not_pointing_at_edge"),
    (a_chain("data", "192.0.2.10"), ("2001:db8::99",), "dns_not_pointing_at_edge"),
    (a_chain("data", "198.51.100.7"), (), "dns_not_pointing_at_edge"),
    # only AAAA, ours
    (a_chain("data"), ("2001:db8::10",), None),
    # CNAME elsewhere
    (a_chain("data", "198.51.100.7", aliases=("shop.other-cdn.example",)), (), "dns_not_pointing_at_edge"),
    # CNAME to the customer's own name that carries our addresses: fine
    (a_chain("data", "192.0.2.10", aliases=("lb.example.com",)), (), None),
    # CNAME to our target (the shell stops there) or through it
    (a_chain("stopped", aliases=(EDGE,)), None, None),
    (a_chain("data", "203.0.113.1", aliases=("x.example.com", EDGE, "lb.cloud.example")), (), None),
    (a_chain("stopped", aliases=("cust42.tenants.lockstep.example",)), None, None),
    # nothing there
    (a_chain("nxdomain"), None, "dns_nxdomain"),
    (a_chain("nxdomain", aliases=("gone.example.net",)), None, "dns_nxdomain"),
    (a_chain("data"), (), "dns_no_answer"),
    # broken
    (a_chain("loop", aliases=("b.example.com", "shop.example.com")), None, "dns_error"),
    (a_chain("too_long", aliases=tuple(f"c{i}.example.com" for i in range(8))), None, "dns_error"),
    (a_chain("failed"), None, "dns_error"),
])
def test_judge_dns(a: Chain[str], aaaa: tuple[str, ...] | None, cause: str | None) -> None:
    result = judge_dns("shop.example.com", a, None if aaaa is None else aaaa_of(a, *aaaa), SETTINGS)
    assert (result.ok, result.cause) == (cause is None, cause), result.message
    assert result.message


def test_judge_dns_messages_say_what_to_do() -> None:
    elsewhere = judge_dns("shop.example.com", a_chain("data", "198.51.100.7", aliases=("x.cdn.example",)),
                          aaaa_of(a_chain("data"), outcome="data"), SETTINGS)
    assert "shop.example.com → x.cdn.example resolves to 198.51.100.7" in elsewhere.message
    assert "CNAME edge.lockstep.example." in elsewhere.message
    missing = judge_dns("shop.example.com", a_chain("nxdomain", aliases=("gone.example.net",)), None, SETTINGS)
    assert "gone.example.net does not exist" in missing.message
    loop = judge_dns("shop.example.com", a_chain("loop", aliases=("b.example.com", "shop.example.com")), None,
                     SETTINGS)
    assert "CNAME loop: shop.example.com → b.example.com → shop.example.com" in loop.message


def test_judge_dns_aaaa_failure_is_dns_error() -> None:
    a = a_chain("data", "192.0.2.10")
    result = judge_dns("shop.example.com", a, aaaa_of(a, outcome="failed"), SETTINGS)
    assert result.cause == "dns_error"


# ---------------------------------------------------------------------------------------------- settings, tokens


def test_settings_normalise_and_validate() -> None:
    s = PreflightSettings(edge_cname_targets=("Edge.Lockstep.Example.",), edge_addresses=(" 2001:DB8::0010 ",),
                          resolver_address="[::1]:5353")
    assert s.edge_cname_targets == ("edge.lockstep.example",)
    assert s.edge_addresses == ("2001:db8::10",)
    assert s.is_edge_target("EDGE.lockstep.example.")
    assert not s.is_edge_target("notedge.lockstep.example")
    wild = PreflightSettings(edge_cname_targets=("*.t.example",))
    assert wild.is_edge_target("a.t.example") and wild.is_edge_target("a.b.t.example")
    assert not wild.is_edge_target("t.example") and not wild.is_edge_target("at.example")
    for bad in ({"edge_addresses": ("not-an-ip",)}, {"resolver_address": "127.0.0.1"},
                {"resolver_address": "dns.example:53"}, {"resolver_address": "127.0.0.1:0"}, {"timeout_s": 0}):
        with pytest.raises(ValueError):
            PreflightSettings(**bad)


def test_probe_token() -> None:
    tok = probe_token("Shop.Example.com.", "0123456789abcdef0123456789abcdef")
    assert tok == ProbeToken("shop.example.com", "/.well-known/pki-validation/lockstep-preflight-0123456789abcdef.txt",
                             "0123456789abcdef0123456789abcdef")
    host, path, value = tok  # a plain tuple too
    assert (host, value) == ("shop.example.com", "0123456789abcdef0123456789abcdef")
    assert path.startswith("/.well-known/pki-validation/")
    with pytest.raises(ValueError):
        probe_token("shop.example.com", "short")
    with pytest.raises(ValueError):
        probe_token("shop.example.com", "has/slash/0123456789")


class ScriptedProbe:
    """Answers token_served from a script of node lists (the last repeats) and records the calls."""

    def __init__(self, script: Sequence[list[str]]) -> None:
        self.script = list(script)
        self.calls: list[tuple[str, str, str]] = []

    async def token_served(self, host: str, path: str, value: str) -> list[str]:
        self.calls.append((host, path, value))
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def test_token_check_waits_for_propagation_on_an_injected_clock() -> None:
    """The DNS stage is covered against real servers (test_preflight_dns.py); here the token stage alone, with a
    domain whose DNS the settings accept without asking (it CNAMEs to the edge in a resolver we stub)."""
    t = FakeTime()
    probe = ScriptedProbe([["node-2", "node-3"], ["node-3"], []])
    settings = PreflightSettings(edge_addresses=("192.0.2.10",), resolver_address="127.0.0.1:53", token_wait_s=2.0,
                                 token_poll_s=0.5)
    pf = Preflight(settings, probe=probe, sleep=t.sleep, clock=t.clock, resolver=_StubResolver())  # type: ignore[arg-type]
    tok = probe_token("shop.example.com", "0123456789abcdef")
    result = await pf.check("shop.example.com", token=tok)
    assert result.ok and "every node serves the probe token" in result.message
    assert t.sleeps == [0.5, 0.5] and len(probe.calls) == 3 and probe.calls[0] == tuple(tok)

    t2 = FakeTime()
    stuck = ScriptedProbe([["node-3"]])
    pf = Preflight(settings, probe=stuck, sleep=t2.sleep, clock=t2.clock, resolver=_StubResolver())  # type: ignore[arg-type]
    result = await pf.check("shop.example.com", token=tok)
    assert (result.ok, result.cause) == (False, "token_not_served")
    assert "node-3" in result.message and tok.path in result.message
    assert t2.now == pytest.approx(2.0)


async def test_usage_errors_before_any_dns_traffic() -> None:
    pf = Preflight(PreflightSettings(resolver_address="127.0.0.1:53"), resolver=_StubResolver())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="probe"):
        await pf.check("shop.example.com", token=("shop.example.com", "/x", "y"))
    with pytest.raises(ValueError, match="acme-corp"):
        await pf.check("shop.example.com", issuers=("pebble", "acme-corp"))


class _StubResolver:
    """Answers every A query with 192.0.2.10 and everything else with NODATA (dnspython's Answer shape)."""

    async def resolve(self, qname: object, rdtype: object, **_: object) -> object:
        import dns.message
        import dns.rdatatype
        import dns.rrset

        query = dns.message.make_query(str(qname), rdtype)  # type: ignore[arg-type]
        response = dns.message.make_response(query)
        if rdtype == dns.rdatatype.A:
            response.answer.append(dns.rrset.from_text(str(qname), 60, "IN", "A", "192.0.2.10"))

        class _Answer:
            pass

        answer = _Answer()
        answer.response = response  # type: ignore[attr-defined]
        return answer

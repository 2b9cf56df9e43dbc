"""Preflight: before an order is placed, check what would make it fail after it has spent CA budget.

Three checks, in this order, the first failure wins:

1. **DNS** — the customer's name must reach our edge: its CNAME chain reaches one of `edge_cname_targets`, or the
   A and AAAA records at the end of the chain are all among `edge_addresses` (all of them: a CA may validate over
   IPv6, Let's Encrypt prefers it, so one stray AAAA record is enough to fail validation).
2. **CAA** (RFC 8659) — for each candidate issuer, would the relevant CAA RRset let it issue? Which issuers are
   allowed is returned in the caller's order, so the pipeline can pick the first.
3. **Token self-probe** — optional: every edge node serves a probe token for the host (the CA fetches from
   whichever node DNS sends it to).

Layout (STYLE §2.2 rule 1): a pure core — CNAME chain walking over DNS answers given as values
(`walk_chain`, `hops_from_response`), the CAA rules (`parse_issue_value`, `caa_allows`, `relevant_caa`) and the
verdicts (`judge_dns`, `judge_caa`, `judge_token`) — and a thin async shell, `Preflight`, whose only IO is DNS
queries through a dnspython async resolver and the edge probe. The shell feeds answers to the core; the core says
which name to look up next (`NeedLookup`), so chain loops and lengths are decided in one pure place.

Publishing a probe token (what the caller does before `check(..., token=...)`)::

    tok = probe_token(domain, secrets.token_hex(16))      # a path of its own: never clobbers a CA's token
    await store.put_tokens([Token(tok.host, tok.path, tok.value, now + dt.timedelta(minutes=10))])
    result = await preflight.check(domain, issuers=("digicert", "pebble"), token=tok)
    await store.delete_token(tok.host, tok.path)           # the short expiry covers a crash in between

The nodes pick the token up through the sync loop within about a second; `PreflightSettings.token_wait_s` lets
`check` re-probe until then instead of failing on the first look.

This module must not place orders, write the store or publish tokens itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, Literal, NamedTuple, Protocol, TypeVar, final

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdatatype
import dns.resolver

__all__ = [
    "CRITICAL_FLAG",
    "DEFAULT_CAA_IDENTITIES",
    "DEFAULT_KNOWN_CAA_TAGS",
    "PROBE_PATH_PREFIX",
    "Alias",
    "CaaRecord",
    "Cause",
    "Chain",
    "Data",
    "Hop",
    "IssueValue",
    "LookupFailed",
    "NeedLookup",
    "NxDomain",
    "Preflight",
    "PreflightResult",
    "PreflightSettings",
    "ProbeToken",
    "RelevantCaa",
    "TokenProbe",
    "caa_allows",
    "caa_search_names",
    "hops_from_response",
    "judge_caa",
    "judge_dns",
    "judge_token",
    "make_resolver",
    "parse_issue_value",
    "probe_token",
    "relevant_caa",
    "walk_chain",
]

#: The stable failure codes (the API and metrics use them; the message is for humans).
Cause = Literal["dns_nxdomain", "dns_no_answer", "dns_not_pointing_at_edge", "dns_error", "caa_forbids",
                "token_not_served"]

#: RFC 8659 §4.1: flags bit 0 (the most significant bit, value 128) is the Issuer Critical Flag.
CRITICAL_FLAG = 0x80

#: Property tags a CA is assumed to understand, so that a *critical* one does not forbid issuance (RFC 8659 §4.5
#: forbids issuance only for critical tags the CA does not know). issue/issuewild/iodef are RFC 8659's own; the rest
#: are in the IANA CAA registry (contactemail, contactphone: CA/B Forum BR; issuemail: RFC 9495; issuevmc: BIMI).
DEFAULT_KNOWN_CAA_TAGS: frozenset[str] = frozenset(
    {"issue", "issuewild", "iodef", "contactemail", "contactphone", "issuemail", "issuevmc"})

#: Issuer name (as the pipeline calls it) -> the CAA issuer-domain-names that authorise it. DigiCert accepts its
#: own domain and those of the brands it took over from Symantec (knowledge.digicert.com SO28343/SO28344, and its
#: "DNS CAA resource record check" page). Pebble does not check CAA at all; "pebble.test" lets tests and rehearsals
#: exercise the path with a name no real CA uses. Extend or replace through `PreflightSettings.caa_identities`.
DEFAULT_CAA_IDENTITIES: Mapping[str, tuple[str, ...]] = {
    "digicert": ("digicert.com", "www.digicert.com", "symantec.com", "thawte.com", "geotrust.com", "rapidssl.com"),
    "letsencrypt": ("letsencrypt.org",),
    "pebble": ("pebble.test",),
}

#: Probe tokens live under the PKI validation prefix the agents serve, on a path no CA uses.
PROBE_PATH_PREFIX = "/.well-known/pki-validation/lockstep-preflight-"

DEFAULT_MAX_ALIASES = 8  # CNAME hops followed; resolvers give up around 8-16 (BIND: 16), CAs sooner is fine

T = TypeVar("T")


# -------------------------------------------------------------------------------------------------- values


@dataclasses.dataclass(frozen=True, slots=True)
class PreflightResult:
    """The verdict. `ok` is False exactly when `cause` is set.

    Attributes:
        ok: an order can be placed (with one of `allowed_issuers` when issuers were asked about).
        cause: a stable code (`Cause`), None when ok.
        message: what an operator or customer reads: what was found and what to change.
        allowed_issuers: the asked-about issuers the CAA records allow, in the caller's order (empty when the
            check stopped before CAA, or when no issuer was asked about).
    """

    ok: bool
    cause: Cause | None
    message: str
    allowed_issuers: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class PreflightSettings:
    """How preflight judges a name.

    Attributes:
        edge_cname_targets: names a customer may CNAME to (e.g. "edge.lockstep.example"); an entry "*.x.example"
            accepts any name under x.example (per-customer targets).
        edge_addresses: the IPv4/IPv6 addresses of our edge or load balancer, for customers using A/AAAA records.
        resolver_address: "host:port" (IPv6 as "[::1]:53") of the DNS server to ask; None = the system resolver
            (/etc/resolv.conf). It should be a recursive resolver that sees what the CAs see.
        timeout_s: bound on the whole DNS stage of one check (every single query is bounded by it too).
        max_aliases: CNAME hops followed before giving up with dns_error.
        caa_identities: issuer name -> CAA issuer-domain-names that authorise it.
        known_caa_tags: tags whose critical flag does not forbid issuance.
        token_wait_s: how long `check` keeps re-probing a token that some node does not serve yet (0: look once).
        token_poll_s: the re-probe interval.
    """

    edge_cname_targets: tuple[str, ...] = ()
    edge_addresses: tuple[str, ...] = ()
    resolver_address: str | None = None
    timeout_s: float = 5.0
    max_aliases: int = DEFAULT_MAX_ALIASES
    caa_identities: Mapping[str, tuple[str, ...]] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_CAA_IDENTITIES), hash=False)
    known_caa_tags: frozenset[str] = DEFAULT_KNOWN_CAA_TAGS
    token_wait_s: float = 0.0
    token_poll_s: float = 0.25

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise in place once
        set_(self, "edge_cname_targets", tuple(_norm_name(n) for n in self.edge_cname_targets))
        try:
            set_(self, "edge_addresses", tuple(str(ipaddress.ip_address(a.strip())) for a in self.edge_addresses))
        except ValueError as exc:
            raise ValueError(f"edge_addresses: {exc}") from None
        if self.resolver_address is not None:
            _split_hostport(self.resolver_address)  # raises ValueError when malformed
        if not self.timeout_s > 0:
            raise ValueError("timeout_s must be positive")
        if self.max_aliases < 1:
            raise ValueError("max_aliases must be at least 1")
        if self.token_wait_s < 0 or not self.token_poll_s > 0:
            raise ValueError("token_wait_s must be >= 0 and token_poll_s > 0")
        set_(self, "caa_identities", {k: tuple(_norm_name(d) for d in v) for k, v in self.caa_identities.items()})
        set_(self, "known_caa_tags", frozenset(t.lower() for t in self.known_caa_tags))

    def is_edge_target(self, name: str) -> bool:
        """Whether `name` is one of our CNAME targets (exactly, or under a "*." entry)."""
        name = _norm_name(name)
        for target in self.edge_cname_targets:
            if target.startswith("*."):
                if name.endswith(target[1:]) and len(name) > len(target) - 1:
                    return True
            elif name == target:
                return True
        return False


class ProbeToken(NamedTuple):
    """(host, path, value): serve `value` at http://host/path. A tuple, so `check(token=(h, p, v))` works too."""

    host: str
    path: str
    value: str


def probe_token(domain: str, nonce: str) -> ProbeToken:
    """A probe token for `domain`: path and value both derive from `nonce` (give it ~128 random bits).

    Raises:
        ValueError: `nonce` is not 8-64 characters of [A-Za-z0-9_-].
    """
    if not re.fullmatch(r"[A-Za-z0-9_-]{8,64}", nonce):
        raise ValueError("nonce must be 8-64 characters of [A-Za-z0-9_-]")
    return ProbeToken(_norm_name(domain), f"{PROBE_PATH_PREFIX}{nonce[:16]}.txt", nonce)


# -------------------------------------------------------------------------------------------------- CNAME chains


@dataclasses.dataclass(frozen=True, slots=True)
class Alias:
    """The name is a CNAME to `target`."""

    target: str


@dataclasses.dataclass(frozen=True, slots=True)
class Data(Generic[T]):
    """The name holds these records of the asked type; empty is NODATA (the name exists, no such records)."""

    records: tuple[T, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class NxDomain:
    """The name does not exist (RCODE 3)."""


@dataclasses.dataclass(frozen=True, slots=True)
class LookupFailed:
    """No usable answer: timeout, SERVFAIL, REFUSED, a malformed response. `detail` says which."""

    detail: str


Hop = Alias | Data[T] | NxDomain | LookupFailed

ChainOutcome = Literal["data", "nxdomain", "loop", "too_long", "failed", "stopped"]


@dataclasses.dataclass(frozen=True, slots=True)
class Chain(Generic[T]):
    """Where following `name` through CNAMEs ended.

    Attributes:
        name: the start.
        aliases: the CNAME targets followed, in order (a loop ends with the repeated name).
        outcome: "data" (records or NODATA at the end), "nxdomain", "loop", "too_long", "failed" (a lookup
            failed), "stopped" (reached a name the caller stops at: one of our edge targets).
        records: the records at the end when outcome is "data".
        detail: why a lookup failed.
    """

    name: str
    aliases: tuple[str, ...]
    outcome: ChainOutcome
    records: tuple[T, ...] = ()
    detail: str = ""

    @property
    def final(self) -> str:
        return self.aliases[-1] if self.aliases else self.name

    def describe(self) -> str:
        """"a → b → c" for messages."""
        return " → ".join((self.name, *self.aliases))


@dataclasses.dataclass(frozen=True, slots=True)
class NeedLookup:
    """The walk needs the answer for `name` (the shell queries it and walks again)."""

    name: str


def walk_chain(name: str, hops: Mapping[str, Hop[T]], *, max_aliases: int = DEFAULT_MAX_ALIASES,
               stop_at: Callable[[str], bool] = lambda _: False) -> Chain[T] | NeedLookup:
    """Follow `name` through the CNAMEs in `hops` (name -> what DNS said about it).

    Pure. Loops are detected by name (a name seen twice), and more than `max_aliases` hops is "too_long", so the
    walk ends for any `hops`, and the shell asks at most `max_aliases + 1` questions.

    Args:
        name: the start, lower case without the final dot (as are the keys of `hops`).
        hops: answers known so far.
        max_aliases: the longest chain accepted.
        stop_at: names at which to stop with outcome "stopped" (tested on CNAME targets only, not on `name`).

    Returns:
        The `Chain`, or `NeedLookup(n)` when the answer for `n` is not in `hops` yet.
    """
    aliases: list[str] = []
    seen = {name}
    current = name
    while True:
        if aliases and stop_at(current):
            return Chain(name, tuple(aliases), "stopped")
        hop = hops.get(current)
        if hop is None:
            return NeedLookup(current)
        if isinstance(hop, Alias):
            target = hop.target
            if target in seen:
                return Chain(name, (*aliases, target), "loop")
            if len(aliases) >= max_aliases:
                return Chain(name, tuple(aliases), "too_long")
            aliases.append(target)
            seen.add(target)
            current = target
        elif isinstance(hop, Data):
            return Chain(name, tuple(aliases), "data", hop.records)
        elif isinstance(hop, NxDomain):
            return Chain(name, tuple(aliases), "nxdomain")
        else:
            return Chain(name, tuple(aliases), "failed", detail=hop.detail)


def hops_from_response(qname: str, *, nxdomain: bool, cnames: Mapping[str, str],
                       data: Mapping[str, tuple[T, ...]]) -> dict[str, Hop[T]]:
    """What one response says, as hops: the CNAMEs from `qname` on, and how the chain ends.

    Pure. `cnames` and `data` are the answer section's CNAME and asked-type RRsets by owner name. The response code
    describes the last name of the chain (RFC 6604 §3), so NXDOMAIN marks that name. A chain that ends at a name
    with no records and NOERROR is NODATA only for `qname` itself; for a CNAME target it is left out, because
    authoritative-only servers (and pebble-challtestsrv) do not chase out-of-zone targets: `walk_chain` then asks
    for the target itself.
    """
    hops: dict[str, Hop[T]] = {}
    current = qname
    while current not in hops:
        if current in cnames:
            hops[current] = Alias(cnames[current])
            current = cnames[current]
        elif current in data:
            hops[current] = Data(data[current])
        elif nxdomain:
            hops[current] = NxDomain()
        elif current == qname:
            hops[current] = Data(())
        else:
            break
    return hops


# -------------------------------------------------------------------------------------------------- CAA (RFC 8659)


@dataclasses.dataclass(frozen=True, slots=True)
class CaaRecord:
    """One CAA resource record: `flags tag "value"`."""

    flags: int
    tag: str
    value: str

    @property
    def critical(self) -> bool:
        return bool(self.flags & CRITICAL_FLAG)

    def __str__(self) -> str:
        return f'{self.flags} {self.tag} "{self.value}"'


@dataclasses.dataclass(frozen=True, slots=True)
class IssueValue:
    """A parsed issue/issuewild value. `issuer` is None when the value names none: empty, ";", or malformed
    (RFC 8659 §4.2: a value that does not match the grammar is treated as an empty issuer-domain-name)."""

    issuer: str | None
    parameters: tuple[tuple[str, str], ...] = ()


# RFC 8659 §4.2:  issue-value = *WSP [issuer-domain-name *WSP] [";" *WSP [parameters *WSP]]
#                 issuer-domain-name = label *("." label);  label = (ALPHA / DIGIT) *( *("-") (ALPHA / DIGIT))
#                 parameter = tag *WSP "=" *WSP value;  tag like label;  value = *(%x21-3A / %x3C-7E)
_LABEL = r"[A-Za-z0-9](?:-*[A-Za-z0-9])*"
_ISSUER_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_PARAM_RE = re.compile(rf"({_LABEL})[ \t]*=[ \t]*([\x21-\x3a\x3c-\x7e]*)")
_WSP = " \t"


def parse_issue_value(value: str) -> IssueValue:
    """Parse an issue/issuewild property value (pure, never raises).

    Follows the RFC 8659 grammar, with one leniency: empty parameters (a trailing ";" after a parameter) are
    skipped. Parameters are returned, not interpreted (RFC 8657 accounturi/validationmethods: see `caa_allows`).
    """
    head, sep, tail = value.partition(";")
    issuer_text = head.strip(_WSP)
    if issuer_text and not _ISSUER_RE.fullmatch(issuer_text):
        return IssueValue(None)
    params: list[tuple[str, str]] = []
    if sep:
        for part in tail.split(";"):
            part = part.strip(_WSP)
            if not part:
                continue
            m = _PARAM_RE.fullmatch(part)
            if m is None:
                return IssueValue(None)
            params.append((m.group(1).lower(), m.group(2)))
    return IssueValue(issuer_text.lower() or None, tuple(params))


def caa_allows(records: Sequence[CaaRecord], identities: Iterable[str], *, wildcard: bool = False,
               known_tags: frozenset[str] = DEFAULT_KNOWN_CAA_TAGS) -> bool:
    """Whether the relevant CAA RRset `records` lets an issuer known as `identities` issue (RFC 8659 §4).

    * No records: anyone may issue.
    * A critical property with a tag the CA does not know (not in `known_tags`) forbids issuance (§4.5).
    * For a non-wildcard name only `issue` properties count (`issuewild` is for wildcards, §4.3; for a wildcard
      name, `issuewild` properties replace `issue` ones when there are any). With none of them: anyone may issue.
    * Otherwise an issuer may issue when one property names one of its identities (case-insensitively).
      Authorisations are additive, so `issue ";"` beside `issue "digicert.com"` still allows DigiCert.

    RFC 8657 parameters (accounturi, validationmethods) are not interpreted: which account URI or method a CA
    would see is the issuer's business, and a CA that honours them reports the refusal itself.
    """
    if not records:
        return True
    if any(r.critical and r.tag.lower() not in known_tags for r in records):
        return False
    tag = "issue"
    if wildcard and any(r.tag.lower() == "issuewild" for r in records):
        tag = "issuewild"
    props = [r for r in records if r.tag.lower() == tag]
    if not props:
        return True
    ids = {_norm_name(i) for i in identities}
    return any(parse_issue_value(r.value).issuer in ids for r in props)


def caa_search_names(domain: str) -> tuple[str, ...]:
    """The names whose CAA RRsets are looked at, closest first: the domain, then each parent up to (not including)
    the root (RFC 8659 §3). "a.b.example.com" -> (a.b.example.com, b.example.com, example.com, com)."""
    labels = _norm_name(domain).split(".")
    return tuple(".".join(labels[i:]) for i in range(len(labels)))


@dataclasses.dataclass(frozen=True, slots=True)
class RelevantCaa:
    """The relevant RRset: `records` found for `owner` (None and empty when no name up the tree has any), or
    `failure`, the chain whose lookup failed before a relevant RRset was found. `source` is where the records
    live: `owner` itself, or the end of its CNAME chain (where a change has to be made)."""

    owner: str | None
    records: tuple[CaaRecord, ...] = ()
    failure: Chain[CaaRecord] | None = None
    source: str | None = None

    @property
    def location(self) -> str:
        return f"{self.owner} (via {self.source})" if self.source not in (None, self.owner) else str(self.owner)


def relevant_caa(levels: Sequence[Chain[CaaRecord]]) -> RelevantCaa:
    """Climb `levels` (the CAA chains of `caa_search_names(domain)`, in that order): the first non-empty RRset is
    the relevant one (RFC 8659 §3; a CNAME at a level is followed, the parents of its target are not climbed).

    A lookup that failed before that point makes the answer unknown, and a CA does not issue while it cannot
    look (§3 leaves no way to tell "no records" from "could not ask"), so it is returned as `failure`. NXDOMAIN at a
    level counts as empty: the climb goes on to the parent.
    """
    for chain in levels:
        if chain.outcome in ("failed", "loop", "too_long"):
            return RelevantCaa(None, failure=chain)
        if chain.outcome == "data" and chain.records:
            return RelevantCaa(chain.name, chain.records, source=chain.final)
    return RelevantCaa(None)


# -------------------------------------------------------------------------------------------------- verdicts


def judge_dns(domain: str, a_chain: Chain[str], aaaa: Chain[str] | None, settings: PreflightSettings
              ) -> PreflightResult:
    """Does `domain` reach our edge? `a_chain` follows it for A records; `aaaa` is the AAAA lookup at the end of
    that chain (None when not asked: the chain did not end in data)."""
    hint = _hint(domain, settings)
    if a_chain.outcome == "stopped" or any(settings.is_edge_target(a) for a in a_chain.aliases):
        return PreflightResult(True, None, f"{a_chain.describe()}: points at our edge")
    if a_chain.outcome == "failed":
        return PreflightResult(False, "dns_error", f"looking up {a_chain.final} failed: {a_chain.detail}")
    if a_chain.outcome == "loop":
        return PreflightResult(False, "dns_error", f"CNAME loop: {a_chain.describe()}; {hint}")
    if a_chain.outcome == "too_long":
        return PreflightResult(False, "dns_error", f"CNAME chain longer than {settings.max_aliases} "
                                                   f"({a_chain.describe()} → ...); {hint}")
    if a_chain.outcome == "nxdomain":
        if a_chain.aliases:
            return PreflightResult(False, "dns_nxdomain", f"{a_chain.describe()}: {a_chain.final} does not exist; "
                                                          f"{hint}")
        return PreflightResult(False, "dns_nxdomain", f"{domain} does not exist in DNS; {hint}")
    addresses = list(a_chain.records)
    if aaaa is not None:
        if aaaa.outcome in ("failed", "loop", "too_long"):
            return PreflightResult(False, "dns_error", f"AAAA lookup of {aaaa.describe()} failed: "
                                                       f"{aaaa.detail or aaaa.outcome}")
        if aaaa.outcome == "data":
            addresses += aaaa.records
    where = a_chain.describe()
    if not addresses:
        return PreflightResult(False, "dns_no_answer", f"{where} has no A or AAAA records; {hint}")
    ours = set(settings.edge_addresses)
    foreign = sorted({_norm_ip(a) for a in addresses} - ours)
    if foreign:
        return PreflightResult(False, "dns_not_pointing_at_edge",
                               f"{where} resolves to {', '.join(foreign)}, not to our edge; {hint}")
    return PreflightResult(True, None, f"{where} resolves to our edge ({', '.join(sorted(set(addresses)))})")


def judge_caa(domain: str, levels: Sequence[Chain[CaaRecord]], issuers: Sequence[str],
              settings: PreflightSettings) -> PreflightResult:
    """Which of `issuers` the CAA records allow. Fails with caa_forbids when none is, dns_error when the
    lookup failed.

    Raises:
        ValueError: an issuer has no entry in `settings.caa_identities` (a configuration mistake).
    """
    unknown = [i for i in issuers if i not in settings.caa_identities]
    if unknown:
        raise ValueError(f"no CAA identities configured for issuer(s) {', '.join(unknown)}")
    relevant = relevant_caa(levels)
    if relevant.failure is not None:
        f = relevant.failure
        why = f.detail or ("CNAME loop" if f.outcome == "loop" else "CNAME chain too long")
        return PreflightResult(False, "dns_error", f"CAA lookup of {f.describe()} failed ({why}); CAs do not issue "
                                                   f"while CAA records cannot be read")
    allowed = tuple(i for i in issuers if caa_allows(relevant.records, settings.caa_identities[i],
                                                     known_tags=settings.known_caa_tags))
    if not relevant.records:
        return PreflightResult(True, None, f"no CAA records for {domain} or its parents", allowed)
    shown = ", ".join(str(r) for r in relevant.records)
    denied = [i for i in issuers if i not in allowed]
    if issuers and not allowed:
        critical = [r.tag for r in relevant.records if r.critical and r.tag.lower() not in settings.known_caa_tags]
        if critical:
            return PreflightResult(False, "caa_forbids",
                                   f"the CAA records at {relevant.location} ({shown}) have a critical property "
                                   f"{critical[0]!r} that CAs do not know, which forbids issuance by any CA: "
                                   f"remove it or clear its critical flag")
        fixes = " or ".join(f'`{relevant.source}. CAA 0 issue "{settings.caa_identities[i][0]}"`' for i in issuers)
        return PreflightResult(False, "caa_forbids", f"the CAA records at {relevant.location} ({shown}) do not allow "
                                                     f"{', '.join(issuers)}: add {fixes}")
    note = f"; they forbid {', '.join(denied)}" if denied else ""
    return PreflightResult(True, None, f"CAA records at {relevant.location} ({shown}) allow "
                                       f"{', '.join(allowed) or 'any issuer'}{note}", allowed)


def judge_token(token: ProbeToken, missing: Sequence[str], allowed_issuers: tuple[str, ...] = ()
                ) -> PreflightResult:
    """Every node must serve the probe token; `missing` are the node ids that do not."""
    if missing:
        return PreflightResult(False, "token_not_served",
                               f"node(s) {', '.join(sorted(missing))} do not serve the probe token at "
                               f"http://{token.host}{token.path} yet", allowed_issuers)
    return PreflightResult(True, None, "every node serves the probe token", allowed_issuers)


# -------------------------------------------------------------------------------------------------- the shell


class TokenProbe(Protocol):
    """`controlplane.probe.EdgeProbe` fits."""

    async def token_served(self, host: str, path: str, value: str) -> list[str]:
        """Node ids that do NOT answer `value` at http://host/path yet (empty: every node does)."""
        ...


def make_resolver(settings: PreflightSettings) -> dns.asyncresolver.Resolver:
    """A dnspython async resolver for `settings.resolver_address` (or the system's), bounded by `timeout_s`."""
    if settings.resolver_address is None:
        resolver = dns.asyncresolver.Resolver()
    else:
        host, port = _split_hostport(settings.resolver_address)
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port)]
    resolver.timeout = settings.timeout_s
    resolver.lifetime = settings.timeout_s
    resolver.cache = None
    return resolver


@final
class Preflight:
    """Runs the checks for one domain at a time; safe to share between coroutines (it keeps no per-check state).

    Args:
        settings: what counts as our edge, where to ask, the CAA identities.
        resolver: a dnspython async resolver; default `make_resolver(settings)`.
        probe: the edge probe for token self-checks; without one, `check(token=...)` raises ValueError.
        sleep: injected for tests (re-probing a token).
        clock: monotonic seconds, injected for tests.
    """

    def __init__(self, settings: PreflightSettings, *, resolver: dns.asyncresolver.Resolver | None = None,
                 probe: TokenProbe | None = None, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._resolver = resolver if resolver is not None else make_resolver(settings)
        self._probe = probe
        self._sleep = sleep
        self._clock = clock

    async def check(self, domain: str, *, issuers: Sequence[str] = (),
                    token: tuple[str, str, str] | None = None) -> PreflightResult:
        """DNS, then CAA for `issuers` (skipped when empty), then the token on every node (when given).

        Args:
            domain: a normalised name (`controlplane.domains.normalize_domain`).
            issuers: candidate issuer names, in order of preference (keys of `settings.caa_identities`).
            token: (host, path, value) of a probe token the caller has published (see the module docstring).

        Returns:
            The first failing stage's result, or ok with `allowed_issuers`.

        Raises:
            ValueError: an issuer without CAA identities, or a token without a probe.
        """
        if token is not None and self._probe is None:
            raise ValueError("a token check needs a probe")
        settings = self._settings
        unknown = [i for i in issuers if i not in settings.caa_identities]
        if unknown:  # a configuration mistake: say so before any DNS traffic, whatever the DNS says
            raise ValueError(f"no CAA identities configured for issuer(s) {', '.join(unknown)}")
        name = _norm_name(domain)
        try:
            async with asyncio.timeout(settings.timeout_s):
                a_chain = await self._chase(name, dns.rdatatype.A, _address, stop_at=settings.is_edge_target)
                aaaa = None
                if a_chain.outcome == "data":
                    aaaa = await self._chase(a_chain.final, dns.rdatatype.AAAA, _address)
                verdict = judge_dns(name, a_chain, aaaa, settings)
                if not verdict.ok:
                    return verdict
                caa: PreflightResult | None = None
                if issuers:
                    levels = await asyncio.gather(*(self._chase(n, dns.rdatatype.CAA, _caa_record)
                                                    for n in caa_search_names(name)))
                    caa = judge_caa(name, levels, issuers, settings)
                    if not caa.ok:
                        return caa
        except TimeoutError:
            return PreflightResult(False, "dns_error", f"DNS did not answer for {name} within {settings.timeout_s:g} s")
        allowed = caa.allowed_issuers if caa is not None else ()
        messages = [verdict.message] + ([caa.message] if caa is not None else [])
        if token is not None:
            tok = ProbeToken(*token)
            result = judge_token(tok, await self._missing(tok), allowed)
            if not result.ok:
                return result
            messages.append(result.message)
        return PreflightResult(True, None, "; ".join(messages), allowed)

    async def _missing(self, token: ProbeToken) -> list[str]:
        assert self._probe is not None
        deadline = self._clock() + self._settings.token_wait_s
        while True:
            missing = await self._probe.token_served(token.host, token.path, token.value)
            if not missing or self._clock() >= deadline:
                return missing
            await self._sleep(self._settings.token_poll_s)

    async def _chase(self, name: str, rdtype: dns.rdatatype.RdataType, convert: Callable[[Any], T],
                     stop_at: Callable[[str], bool] = lambda _: False) -> Chain[T]:
        hops: dict[str, Hop[T]] = {}
        while True:
            step = walk_chain(name, hops, max_aliases=self._settings.max_aliases, stop_at=stop_at)
            if isinstance(step, Chain):
                return step
            hops.update(await self._lookup(step.name, rdtype, convert))

    async def _lookup(self, name: str, rdtype: dns.rdatatype.RdataType, convert: Callable[[Any], T]
                      ) -> dict[str, Hop[T]]:
        """One question; always returns a hop for `name`, so every walk makes progress."""
        qname = dns.name.from_text(name)
        response: dns.message.Message | None
        try:
            answer = await self._resolver.resolve(qname, rdtype, raise_on_no_answer=False, search=False)
            response, nxdomain = answer.response, False
        except dns.resolver.NXDOMAIN as exc:
            responses = exc.responses()  # type: ignore[no-untyped-call]
            response, nxdomain = responses.get(qname) if isinstance(responses, dict) else None, True
        except dns.exception.Timeout:
            return {name: LookupFailed(f"no answer within {self._settings.timeout_s:g} s")}
        except dns.exception.DNSException as exc:  # NoNameservers (SERVFAIL/REFUSED), YXDOMAIN, bad responses
            return {name: LookupFailed(f"{type(exc).__name__}: {exc}")}
        cnames: dict[str, str] = {}
        data: dict[str, tuple[T, ...]] = {}
        for rrset in response.answer if response is not None else ():
            owner = _norm_name(rrset.name.to_text())
            if rrset.rdtype == dns.rdatatype.CNAME:
                cnames[owner] = _norm_name(rrset[0].target.to_text())
            elif rrset.rdtype == rdtype:
                data[owner] = tuple(convert(rd) for rd in rrset)
        hops = hops_from_response(name, nxdomain=nxdomain, cnames=cnames, data=data)
        hops.setdefault(name, NxDomain() if nxdomain else Data(()))
        return hops


def _address(rd: Any) -> str:
    return _norm_ip(str(rd.address))


def _caa_record(rd: Any) -> CaaRecord:
    """Non-ASCII bytes become U+FFFD, which fails the issue-value grammar (so such a value authorises no one)."""
    return CaaRecord(int(rd.flags), bytes(rd.tag).decode("ascii", "replace"), bytes(rd.value).decode("ascii", "replace"))


# -------------------------------------------------------------------------------------------------- helpers


def _norm_name(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _norm_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text


def _hint(domain: str, settings: PreflightSettings) -> str:
    targets = [t for t in settings.edge_cname_targets if not t.startswith("*.")]
    parts = []
    if targets:
        parts.append(f"create `{domain}. CNAME {targets[0]}.`")
    if settings.edge_addresses:
        parts.append(f"A/AAAA records for {', '.join(settings.edge_addresses)} only")
    return " or ".join(parts) if parts else "point it at our edge"


def _split_hostport(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"resolver_address must be host:port, got {addr!r}")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"resolver_address must be an IP address and a port, got {addr!r}") from None
    return host, int(port)

"""Abuse and budget controls: registered domains (apexes), per-apex quotas, and the CA order scheduler.

Pure: no IO, no clock of its own, no randomness. Callers pass `now` (monotonic seconds) as they do to
`controlplane.issuers.ratelimit.TokenBucket`. Not thread-safe: one `CaBudget` per control plane, used from one event
loop (two control planes sharing a CA account must split its budget between them in their settings).

Three pieces:

* `apex_of(domain)` — the registered domain ("shop.example.co.uk" -> "example.co.uk"): the grouping key for quotas
  and fairness. It uses a small built-in suffix set plus configurable extras, not the full Public Suffix List,
  because (1) the PSL changes weekly and a copy bundled in code goes stale while looking authoritative, and the
  libraries that keep it fresh (tldextract) download it at run time, which our machines cannot and tests must not;
  (2) for quotas the failure of a short list is *over*-grouping: an unlisted multi-tenant suffix puts its customers
  in one bucket, a stricter quota, never a looser one; (3) operators who want the whole list can load the copy their
  OS ships (Debian's `publicsuffix` package: /usr/share/publicsuffix/public_suffix_list.dat) with
  `PublicSuffixes.parse(text)` and pass it in — still no network.
* `ApexQuota` — at most N names per apex, checked when names are added.
* `CaBudget` — spends each CA's order budget (N orders per rolling window W, per issuer): renewals first, then new
  names round-robin across apexes, so a bulk import of thousands of names under one apex drains at a steady,
  predictable pace (`estimate`) while other customers' names and every renewal keep moving.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Mapping
from typing import Literal, final

import idna

__all__ = [
    "BUILTIN_PUBLIC_SUFFIXES",
    "ApexQuota",
    "BudgetError",
    "CaBudget",
    "Grant",
    "Kind",
    "NotRegistrable",
    "PublicSuffixes",
    "QuotaExceeded",
    "WindowLimit",
    "apex_of",
]

Kind = Literal["renewal", "new"]


# -------------------------------------------------------------------------------------------------- errors


class BudgetError(Exception):
    """Root of this module's errors. `reason` is a stable code; the message says why in words."""

    reason = "budget"


class QuotaExceeded(BudgetError):
    """Adding the names would take the apex over its quota."""

    reason = "apex_quota"

    def __init__(self, apex: str, *, limit: int, existing: int, adding: int = 1) -> None:
        self.apex = apex
        self.limit = limit
        self.existing = existing
        self.adding = adding
        what = "a name" if adding == 1 else f"{adding} names"
        super().__init__(f"cannot add {what} under {apex or 'this registered domain'}: it has {existing} of at most "
                         f"{limit} names per registered domain; remove some or ask for a higher limit")


class NotRegistrable(BudgetError, ValueError):
    """The name is a public suffix itself (e.g. "co.uk"), so it has no registered domain."""

    reason = "public_suffix"


# -------------------------------------------------------------------------------------------------- apexes


def _a_label(rule: str) -> str:
    rule = rule.lower()
    if rule.isascii():
        return rule
    try:
        return idna.encode(rule, uts46=True).decode("ascii")
    except idna.IDNAError:
        return rule



@dataclasses.dataclass(frozen=True, slots=True)
class PublicSuffixes:
    """Public suffix rules in the PSL's three kinds (https://publicsuffix.org/list/ "format"), as A-labels.

    Attributes:
        rules: plain rules ("co.uk").
        wildcards: the parents of wildcard rules ("*.ck" is stored as "ck").
        exceptions: exception rules without the "!" ("!www.ck" is stored as "www.ck").
    """

    rules: frozenset[str]
    wildcards: frozenset[str] = frozenset()
    exceptions: frozenset[str] = frozenset()

    def with_extras(self, extras: Iterable[str]) -> PublicSuffixes:
        """These rules plus `extras` (PSL syntax: "example.net", "*.example.net", "!www.example.net")."""
        parsed = PublicSuffixes.parse("\n".join(extras))
        return PublicSuffixes(self.rules | parsed.rules, self.wildcards | parsed.wildcards,
                              self.exceptions | parsed.exceptions)

    @classmethod
    def parse(cls, text: str) -> PublicSuffixes:
        """Rules from PSL file text: one rule per line, "//" comments, only the first word of a line counts.
        Unicode rules are stored as A-labels; a rule IDNA rejects is kept as written (it then matches nothing)."""
        rules: set[str] = set()
        wildcards: set[str] = set()
        exceptions: set[str] = set()
        for line in text.splitlines():
            words = line.split()
            if not words or words[0].startswith("//"):
                continue
            rule = words[0].strip(".")
            if rule.startswith("!"):
                exceptions.add(_a_label(rule[1:]))
            elif rule.startswith("*."):
                wildcards.add(_a_label(rule[2:]))
            elif rule:
                rules.add(_a_label(rule))
        return cls(frozenset(rules), frozenset(wildcards), frozenset(exceptions))

    def suffix_labels(self, labels: list[str]) -> int:
        """How many trailing labels of `labels` form the public suffix (the PSL algorithm: exception rules win,
        else the longest matching rule, else the default rule "*", i.e. the TLD)."""
        n = len(labels)
        best = 1
        for i in range(n):
            candidate = ".".join(labels[i:])
            if candidate in self.exceptions:
                return n - i - 1
            if candidate in self.rules or (i + 1 < n and ".".join(labels[i + 1:]) in self.wildcards):
                best = max(best, n - i)
        return best


#: Generic TLDs need no entry (the default rule makes any TLD a suffix). Listed: the second-level registries of
#: the ccTLDs most seen in customer domains, and multi-tenant platform suffixes from the PSL's private section
#: where one registered-looking name is shared by many unrelated customers.
BUILTIN_PUBLIC_SUFFIXES = PublicSuffixes.parse("""
ac.uk co.uk gov.uk ltd.uk me.uk net.uk nhs.uk org.uk plc.uk
com.au net.au org.au edu.au gov.au id.au asn.au
co.nz net.nz org.nz govt.nz ac.nz geek.nz school.nz
co.jp ne.jp or.jp ac.jp go.jp gr.jp ed.jp lg.jp
co.kr or.kr ne.kr re.kr go.kr ac.kr
com.cn net.cn org.cn gov.cn edu.cn ac.cn
com.hk net.hk org.hk edu.hk gov.hk idv.hk
com.tw net.tw org.tw edu.tw gov.tw idv.tw
com.sg net.sg org.sg edu.sg gov.sg
com.my net.my org.my edu.my gov.my
co.id or.id web.id ac.id go.id
com.ph net.ph org.ph
co.th in.th or.th ac.th go.th
com.vn net.vn org.vn
co.in net.in org.in firm.in gen.in ind.in ac.in edu.in gov.in
com.pk net.pk org.pk
co.il org.il net.il ac.il gov.il
com.tr net.tr org.tr gen.tr biz.tr edu.tr gov.tr
co.za org.za net.za web.za gov.za ac.za
com.ng org.ng
co.ke or.ke
com.eg
com.sa net.sa org.sa
com.br net.br org.br art.br blog.br eco.br edu.br gov.br
com.mx net.mx org.mx gob.mx edu.mx
com.ar net.ar org.ar gob.ar edu.ar
com.co net.co org.co
com.pe net.pe org.pe
com.ua net.ua org.ua in.ua kiev.ua
com.pl net.pl org.pl biz.pl info.pl waw.pl
com.ru net.ru org.ru msk.ru spb.ru
com.es nom.es org.es gob.es edu.es
com.pt
co.at gv.at or.at
com.gr
com.cy
co.hu
com.mt
github.io gitlab.io herokuapp.com herokussl.com netlify.app vercel.app pages.dev workers.dev web.app
firebaseapp.com appspot.com blogspot.com azurewebsites.net cloudapp.net azurestaticapps.net
cloudfront.net elasticbeanstalk.com fly.dev onrender.com glitch.me repl.co
ngrok.io trycloudflare.com myshopify.com wixsite.com
""".replace(" ", "\n"))


def apex_of(domain: str, *, public_suffixes: PublicSuffixes = BUILTIN_PUBLIC_SUFFIXES,
            extra_suffixes: Iterable[str] = ()) -> str:
    """The registered domain of `domain` (its public suffix plus one label). No network.

    Args:
        domain: a normalised name (lower case A-labels; see `controlplane.domains.normalize_domain`).
        public_suffixes: the rules; default the built-in set (see the module docstring for why not the whole PSL).
        extra_suffixes: more rules in PSL syntax, e.g. an operator's own multi-tenant suffixes.

    Raises:
        NotRegistrable: `domain` is itself a public suffix.
    """
    extras = tuple(extra_suffixes)
    rules = public_suffixes.with_extras(extras) if extras else public_suffixes
    labels = domain.strip().rstrip(".").lower().split(".")
    if not all(labels):
        raise NotRegistrable(f"{domain!r} is not a domain name")
    suffix = rules.suffix_labels(labels)
    if suffix >= len(labels):
        raise NotRegistrable(f"{domain} is a public suffix, not a registered domain")
    return ".".join(labels[-(suffix + 1):])


@dataclasses.dataclass(frozen=True, slots=True)
class ApexQuota:
    """At most `max_names_per_apex` names per registered domain: stops one account fanning out thousands of
    subdomains of one apex (scanner storms, subdomain-per-visitor abuse), which would also drain the CA budget."""

    max_names_per_apex: int

    def __post_init__(self) -> None:
        if self.max_names_per_apex < 1:
            raise ValueError("max_names_per_apex must be at least 1")

    def check(self, existing_names_for_apex: int, *, apex: str = "", adding: int = 1) -> QuotaExceeded | None:
        """None when `adding` more names fit beside `existing_names_for_apex`, else the error to raise or report."""
        if existing_names_for_apex + adding > self.max_names_per_apex:
            return QuotaExceeded(apex, limit=self.max_names_per_apex, existing=existing_names_for_apex,
                                 adding=adding)
        return None

    def enforce(self, existing_names_for_apex: int, *, apex: str = "", adding: int = 1) -> None:
        """`check`, raising.

        Raises:
            QuotaExceeded: the names do not fit.
        """
        error = self.check(existing_names_for_apex, apex=apex, adding=adding)
        if error is not None:
            raise error


# -------------------------------------------------------------------------------------------------- CA budget


@dataclasses.dataclass(frozen=True, slots=True)
class WindowLimit:
    """At most `orders` orders in any rolling window of `window_s` seconds (set it below the CA's real limit when
    other clients share the account; e.g. Let's Encrypt's new-orders limit is 300 per 3 h per account)."""

    orders: int
    window_s: float

    def __post_init__(self) -> None:
        if self.orders < 1 or not self.window_s > 0:
            raise ValueError("a window needs orders >= 1 and window_s > 0")


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    """Place the order for `domain` with `issuer` now; then `release` it."""

    domain: str
    issuer: str
    kind: Kind
    apex: str
    granted_at: float


@dataclasses.dataclass(slots=True)
class _Queued:
    issuer: str
    kind: Kind
    apex: str


@dataclasses.dataclass(slots=True)
class _Lane:
    """One issuer's queues and spending."""

    limit: WindowLimit
    renewals: collections.OrderedDict[str, None] = dataclasses.field(default_factory=collections.OrderedDict)
    # The round-robin ring: the first apex is served next, then moves to the end.
    apexes: collections.OrderedDict[str, collections.OrderedDict[str, None]] = dataclasses.field(
        default_factory=collections.OrderedDict)
    spent: collections.deque[float] = dataclasses.field(default_factory=collections.deque)  # ascending grant times

    def expire(self, now: float) -> None:
        while self.spent and self.spent[0] + self.limit.window_s <= now:
            self.spent.popleft()

    def pending(self) -> int:
        return len(self.renewals) + sum(len(q) for q in self.apexes.values())


@final
class CaBudget:
    """Decides which queued names may order now, per issuer, never exceeding any issuer's `WindowLimit`.

    Order of service, per issuer:

    1. Renewals, first come first served. They go before every new name, so a bulk import cannot delay a renewal
       by more than the time until the next free slot (at most one window when fewer renewals than the window's
       budget are queued). New names wait while renewals take the whole budget; renewals are bounded by the fleet
       size over the certificate lifetime, so they cannot keep the budget forever.
    2. New names, round-robin across apexes: one name of each apex with names waiting, in the order the apexes
       first queued, then again. A customer importing 2000 names gets every k-th slot when k apexes wait, and a
       newcomer's first name is served within k grants.

    A grant spends a slot at its `granted_at`; the slot comes back `window_s` later. Spending is counted when
    granted, not when the order completes: the CA counts the request. `release(..., placed=False)` refunds a
    grant that never reached the CA (preflight failed, or no request was sent).

    Args:
        limits: issuer name -> its window.
    """

    def __init__(self, limits: Mapping[str, WindowLimit]) -> None:
        if not limits:
            raise ValueError("limits must name at least one issuer")
        self._lanes = {issuer: _Lane(limit) for issuer, limit in limits.items()}
        self._queued: dict[str, _Queued] = {}
        self._granted: dict[str, Grant] = {}
        self._now = float("-inf")

    # -- queue ---------------------------------------------------------------------------------------------------

    def submit(self, domain: str, *, apex: str, kind: Kind = "new", issuer: str) -> bool:
        """Queue `domain` for an order with `issuer`. Idempotent.

        A name already queued stays in its place, except that a renewal overtakes its own earlier "new" entry and
        a different issuer moves it to that issuer's queue. A name granted and not released yet is not queued.

        Returns:
            True when the name is (now) queued as asked, False when it is in flight.

        Raises:
            ValueError: unknown issuer or kind.
        """
        if issuer not in self._lanes:
            raise ValueError(f"no budget configured for issuer {issuer!r}")
        if kind not in ("renewal", "new"):
            raise ValueError(f"kind must be 'renewal' or 'new', not {kind!r}")
        if domain in self._granted:
            return False
        old = self._queued.get(domain)
        if old is not None:
            if old.issuer == issuer and (old.kind == kind or old.kind == "renewal"):
                return True
            self.withdraw(domain)
        lane = self._lanes[issuer]
        if kind == "renewal":
            lane.renewals[domain] = None
        else:
            lane.apexes.setdefault(apex, collections.OrderedDict())[domain] = None
        self._queued[domain] = _Queued(issuer, kind, apex)
        return True

    def withdraw(self, domain: str) -> bool:
        """Remove a queued name (the customer removed the domain). False when it was not queued."""
        entry = self._queued.pop(domain, None)
        if entry is None:
            return False
        lane = self._lanes[entry.issuer]
        if entry.kind == "renewal":
            del lane.renewals[domain]
        else:
            queue = lane.apexes[entry.apex]
            del queue[domain]
            if not queue:
                del lane.apexes[entry.apex]
        return True

    # -- spending ------------------------------------------------------------------------------------------------

    def next_due(self, now: float, *, issuer: str | None = None) -> list[Grant]:
        """Grant as many queued names as the budgets allow at `now` (all issuers, or one), in service order.

        Each grant spends a slot at `now`. A clock that steps back is treated as standing still.
        """
        now = self._tick(now)
        grants: list[Grant] = []
        for name, lane in self._lanes.items():
            if issuer is not None and name != issuer:
                continue
            lane.expire(now)
            while len(lane.spent) < lane.limit.orders:
                domain = self._pop_next(lane)
                if domain is None:
                    break
                entry = self._queued.pop(domain)
                grant = Grant(domain, name, entry.kind, entry.apex, now)
                lane.spent.append(now)
                self._granted[domain] = grant
                grants.append(grant)
        return grants

    def release(self, domain: str, issuer: str, *, placed: bool = True) -> None:
        """The order attempt for a granted name is over. `placed=True` (the default, and the answer whenever the
        request may have reached the CA, even if it failed or timed out) keeps the slot spent; `placed=False`
        gives it back. Releasing a name that is not granted to `issuer` does nothing (idempotent)."""
        grant = self._granted.get(domain)
        if grant is None or grant.issuer != issuer:
            return
        del self._granted[domain]
        if not placed:
            spent = self._lanes[issuer].spent
            try:
                spent.remove(grant.granted_at)  # equal times are interchangeable; order stays ascending
            except ValueError:  # already outside the window: nothing left to refund
                pass

    # -- introspection -------------------------------------------------------------------------------------------

    def available(self, issuer: str, now: float) -> int:
        """Slots `issuer` could grant at `now`."""
        lane = self._lanes[issuer]
        lane.expire(self._tick(now))
        return lane.limit.orders - len(lane.spent)

    def pending(self, issuer: str | None = None) -> int:
        """Names queued (for one issuer, or all)."""
        return sum(lane.pending() for name, lane in self._lanes.items() if issuer is None or name == issuer)

    def in_flight(self) -> tuple[Grant, ...]:
        return tuple(self._granted.values())

    def next_slot_at(self, issuer: str, now: float) -> float | None:
        """When `issuer` can next grant: `now` when a slot is free and names wait, the time the oldest spent slot
        comes back when names wait and none is free, None when nothing waits. The driver sleeps until then."""
        lane = self._lanes[issuer]
        now = self._tick(now)
        lane.expire(now)
        if not lane.pending():
            return None
        if len(lane.spent) < lane.limit.orders:
            return now
        return lane.spent[0] + lane.limit.window_s

    def position(self, domain: str) -> int | None:
        """How many queued names of the same issuer will be granted before `domain` (0: next), assuming nothing
        new is queued; None when it is not queued."""
        entry = self._queued.get(domain)
        if entry is None:
            return None
        lane = self._lanes[entry.issuer]
        if entry.kind == "renewal":
            return _index(lane.renewals, domain)
        k = _index(lane.apexes[entry.apex], domain)
        ahead = len(lane.renewals)
        for apex, queue in lane.apexes.items():  # round r serves the r-th name of each apex with more than r
            ahead += min(len(queue), k)
            if apex == entry.apex:
                break
            if len(queue) > k:
                ahead += 1
        for apex, queue in reversed(lane.apexes.items()):  # apexes after ours: only their first k names go first
            if apex == entry.apex:
                break
            ahead += min(len(queue), k)
        return ahead

    def estimate(self, position: int, *, issuer: str, now: float) -> float:
        """Seconds from `now` until the name at `position` (as `position` counts) is granted, if every slot is
        used as soon as it comes back and nothing overtakes it (a new renewal would, by one slot).

        The budget is periodic: slot j of the window is free at `base[j]` (now, for a free slot, else when its
        grant expires) and again every `window_s` after, so position p waits until
        `base[p mod N] + (p div N) * window_s`. With an empty window, 2000 names at 300 per 3 h: position 1999 is
        granted 6 windows (18 h) from now.
        """
        if position < 0:
            raise ValueError("position must be >= 0")
        lane = self._lanes[issuer]
        now = self._tick(now)
        lane.expire(now)
        free = lane.limit.orders - len(lane.spent)
        base = sorted([now] * free + [t + lane.limit.window_s for t in lane.spent])
        rounds, slot = divmod(position, lane.limit.orders)
        return base[slot] + rounds * lane.limit.window_s - now

    def eta(self, domain: str, now: float) -> float | None:
        """`estimate` for a queued name, None when it is not queued."""
        pos = self.position(domain)
        if pos is None:
            return None
        return self.estimate(pos, issuer=self._queued[domain].issuer, now=now)

    # -- internals -----------------------------------------------------------------------------------------------

    def _tick(self, now: float) -> float:
        self._now = max(self._now, now)
        return self._now

    @staticmethod
    def _pop_next(lane: _Lane) -> str | None:
        if lane.renewals:
            return lane.renewals.popitem(last=False)[0]
        if not lane.apexes:
            return None
        apex, queue = next(iter(lane.apexes.items()))
        domain = queue.popitem(last=False)[0]
        if queue:
            lane.apexes.move_to_end(apex)
        else:
            del lane.apexes[apex]
        return domain


def _index(queue: Mapping[str, None], key: str) -> int:
    for i, k in enumerate(queue):
        if k == key:
            return i
    raise KeyError(key)

"""The provisioning pipeline: one domain from "added" to "served by every node", renewal, and removal.

Each call of `Provisioner.step(domain)` performs the next step for the domain's status and records the result in the
store (status, cause, next_retry_at, pipeline state) before returning, so a control plane killed at any point
resumes where it was. Order creation is never retried blindly: the intent is recorded before the request, the order
id as soon as the CA answers, and after an unknown outcome the existing order is looked up instead of placing a
second one.

IO only through the injected store, issuer, node probe, clock and sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import datetime as dt
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from controlplane.domains import DomainStatus
from controlplane.issuers.base import Issuer, Order, OrderStatus, ValidationToken
from controlplane.issuers.errors import CaError, UnknownOutcome, ValidationNotFound
from controlplane.policy import IssuerPolicy
from controlplane.store.records import Domain
from controlplane.sync.state import Token

__all__ = ["NodeProbe", "PipelineSettings", "Provisioner", "check_chain", "make_key_and_csr", "renewal_time"]

logger = logging.getLogger(__name__)
S = DomainStatus
PENDING_KEY = "pending-key"  # domain secret: the private key of the order in flight
_CURRENT_ISSUER: contextvars.ContextVar[Issuer] = contextvars.ContextVar("issuer")


class NodeProbe(Protocol):
    """Looks at what the edge nodes actually serve (controlplane/probe.py does it over HTTP and TLS)."""

    async def token_served(self, host: str, path: str, value: str) -> list[str]:
        """Node ids that do NOT answer `value` at http://host/path yet (empty: every node does)."""
        ...

    async def certificate_served(self, domain: str, fingerprint: str) -> list[str]:
        """Node ids that do NOT serve `fingerprint` for SNI `domain` yet (empty: every node does)."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class PipelineSettings:
    key_type: str = "ec"  # "ec" (P-256) or "rsa" (2048)
    validity_days: int = 90
    renew_fraction: float = 2 / 3  # renew once this fraction of the lifetime has passed
    poll_s: float = 2.0  # longest interval of order status polling while the CA works
    poll_first_s: float = 0.25  # first poll after asking the CA to validate; doubles up to poll_s
    node_wait_s: float = 1.0  # longest re-probe interval while nodes pick up a token or a certificate
    node_first_wait_s: float = 0.05  # first re-probe; doubles up to node_wait_s (agents usually need tens of ms)
    token_propagation_timeout_s: float = 120.0  # then the domain fails with the nodes that never served it
    refresh_before_s: float = 3600.0  # refresh the random value when it expires within this
    retry_s: tuple[float, ...] = (5.0, 30.0, 120.0, 600.0, 3600.0)  # CA trouble, by consecutive failure
    unknown_outcome_retry_s: float = 2.0  # look for the order that may exist


def make_key_and_csr(domain: str, key_type: str) -> tuple[str, str]:
    """(PKCS#8 private key PEM, CSR PEM) for one domain: ECDSA P-256 by default, RSA 2048 as the option."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    key = rsa.generate_private_key(65537, 2048) if key_type == "rsa" else ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return key_pem, csr.public_bytes(serialization.Encoding.PEM).decode()


class ChainRejected(ValueError):
    """The CA's chain does not fit our key, our name or itself."""


def renewal_time(not_before: dt.datetime, not_after: dt.datetime, fraction: float) -> dt.datetime:
    """When to start renewing: after `fraction` of the lifetime (2/3 of 90 days = day 60, 30 days of margin)."""
    return not_before + (not_after - not_before) * fraction


def check_chain(chain_pem: str, key_pem: str, domain: str, *, now: dt.datetime) -> x509.Certificate:
    """Leaf first, key matches, SAN covers the domain, each certificate signed by the next, valid now."""
    try:
        certs = x509.load_pem_x509_certificates(chain_pem.encode())
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except ValueError as exc:
        raise ChainRejected(f"unparsable chain: {exc}") from None
    leaf = certs[0]
    if leaf.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
            != key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo):
        raise ChainRejected("the leaf is not for our key")
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName)
    except x509.ExtensionNotFound:
        sans = []
    if domain not in [s.lower() for s in sans]:
        raise ChainRejected(f"the leaf does not name {domain}")
    if not leaf.not_valid_before_utc <= now + dt.timedelta(minutes=5) or leaf.not_valid_after_utc <= now:
        raise ChainRejected("the leaf is not valid now")
    for child, parent in zip(certs, certs[1:]):
        if child.issuer != parent.subject:
            raise ChainRejected("the chain is out of order")
        pub = parent.public_key()
        try:
            if isinstance(pub, rsa.RSAPublicKey):
                pub.verify(child.signature, child.tbs_certificate_bytes, padding.PKCS1v15(),
                           child.signature_hash_algorithm)  # type: ignore[arg-type]
            elif isinstance(pub, ec.EllipticCurvePublicKey):
                pub.verify(child.signature, child.tbs_certificate_bytes,
                           ec.ECDSA(child.signature_hash_algorithm))  # type: ignore[arg-type]
            else:
                raise ChainRejected("unsupported key type in the chain")
        except Exception as exc:  # cryptography raises InvalidSignature
            if isinstance(exc, ChainRejected):
                raise
            raise ChainRejected("a chain signature does not verify") from None
    return leaf


def _tokens_json(tokens: Sequence[ValidationToken]) -> list[dict[str, str]]:
    return [{"host": t.host, "path": t.path, "value": t.value, "expires_at": t.expires_at.isoformat()}
            for t in tokens]


def _tokens_from_json(raw: Sequence[Mapping[str, str]]) -> list[ValidationToken]:
    return [ValidationToken(t["host"], t["path"], t["value"], dt.datetime.fromisoformat(t["expires_at"]))
            for t in raw]


class Provisioner:
    def __init__(
        self,
        *,
        store: Any,
        issuers: Mapping[str, Issuer],
        policy: IssuerPolicy | None = None,
        preflight: Any | None = None,
        budget: Any | None = None,
        monotonic: Callable[[], float] | None = None,
        probe: NodeProbe,
        settings: PipelineSettings = PipelineSettings(),
        now: Callable[[], dt.datetime],
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._issuers = dict(issuers)
        self._policy = policy or IssuerPolicy(order=tuple(self._issuers))
        self._preflight = preflight  # controlplane.preflight.Preflight, or None to order without checking
        self._budget = budget  # controlplane.budget.CaBudget, or None for no order pacing
        self._monotonic = monotonic or time.monotonic
        self._granted: set[str] = set()  # domains holding an order slot from the budget
        self._probe = probe
        self._settings = settings
        self._now = now
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._soonest: dt.datetime | None = None  # the earliest next_retry_at this process scheduled

    # -- driver ----------------------------------------------------------------------------------------------

    def wake(self) -> None:
        """Look for due domains now (the API added some): no poll interval between an operator and the CA."""
        self._wake.set()

    def _idle_wait(self, idle_s: float) -> float:
        """Until the soonest retry this process scheduled, at most `idle_s` (other writers are seen by polling)."""
        soonest, self._soonest = self._soonest, None
        if soonest is None:
            return idle_s
        return min(idle_s, max(0.005, (soonest - self._now()).total_seconds()))

    async def run(self, stop: asyncio.Event, *, concurrency: int = 8, idle_s: float = 0.5) -> None:
        """Step every due domain, `concurrency` at a time, until `stop` is set."""
        running: dict[str, asyncio.Task[None]] = {}
        while not stop.is_set():
            self._wake.clear()
            due = await self._store.due_domains(self._now(), limit=concurrency * 4)
            for domain in due:
                if len(running) >= concurrency:
                    break
                if domain.name not in running:
                    running[domain.name] = asyncio.create_task(self._guarded_step(domain.name))
            wake = asyncio.ensure_future(self._wake.wait())
            stopping = asyncio.ensure_future(stop.wait())
            try:
                done, _ = await asyncio.wait([*running.values(), wake, stopping], timeout=self._idle_wait(idle_s),
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                wake.cancel()
                stopping.cancel()
            for name in [n for n, t in running.items() if t in done]:
                del running[name]
        for task in running.values():
            task.cancel()

    async def _guarded_step(self, name: str) -> None:
        domain = await self._store.get_domain(name)
        if domain is None:
            return
        try:
            await self.step(domain)
        except Exception as exc:  # a bug or a store outage must not stop the other domains
            logger.exception("pipeline step for %s failed", name)
            await self._retry(domain, f"internal error: {type(exc).__name__}: {exc}", failed=True)

    @property
    def _issuer(self) -> Issuer:
        """The issuer of the domain this task is stepping (a context variable: steps run concurrently)."""
        return _CURRENT_ISSUER.get()

    def _issuer_name_for(self, domain: Domain) -> str:
        if domain.issuer in self._issuers:
            return str(domain.issuer)
        first = self._policy.first()
        assert first is not None, "no issuer configured"
        return first

    async def step(self, domain: Domain) -> None:
        _CURRENT_ISSUER.set(self._issuers[self._issuer_name_for(domain)])
        status = DomainStatus(domain.status)
        if status is S.REMOVING:
            await self._remove(domain)
        elif status in (S.PENDING, S.ORDERING, S.RENEWING):
            await self._order(domain)
        elif status is S.VALIDATING:
            await self._validate(domain)
        elif status is S.ISSUED:
            await self._deploy(domain)
        elif status is S.DEPLOYED:
            await self._maybe_renew(domain)
        elif status is S.FAILED:
            resume = domain.pipeline.get("resume", S.PENDING.value)
            await self._update(domain, status=resume, status_detail=f"retrying after: {domain.status_detail}",
                               next_retry_at=self._now())

    # -- helpers ---------------------------------------------------------------------------------------------

    def _soon_then_less(self, since_iso: str, first_s: float, cap_s: float) -> dt.datetime:
        """When to look again at something that usually settles quickly: after `first_s`, then half the time waited
        so far, at most `cap_s` (a slow CA or node costs at most one request per `cap_s`, as before)."""
        waited = (self._now() - dt.datetime.fromisoformat(since_iso)).total_seconds()
        return self._now() + dt.timedelta(seconds=min(cap_s, max(first_s, waited / 2)))

    def _node_wait(self, since_iso: str) -> dt.datetime:
        """Agents pick a change up within tens of ms: look at the nodes again soon, then back off."""
        return self._soon_then_less(since_iso, self._settings.node_first_wait_s, self._settings.node_wait_s)

    async def _update(self, domain: Domain, **fields: Any) -> Domain:
        retry_at = fields.get("next_retry_at")
        if retry_at is not None and (self._soonest is None or retry_at < self._soonest):
            self._soonest = retry_at
        return await self._store.update_domain(domain.name, expect_version=domain.version, **fields)  # type: ignore[no-any-return]

    def _backoff(self, attempts: int, retry_after_s: float | None = None) -> dt.datetime:
        table = self._settings.retry_s
        base = table[min(attempts, len(table) - 1)]
        delay = max(base * self._rng.uniform(0.8, 1.2), retry_after_s or 0.0)
        return self._now() + dt.timedelta(seconds=delay)

    async def _retry(self, domain: Domain, cause: str, *, failed: bool = False,
                     retry_after_s: float | None = None) -> None:
        attempts = int(domain.pipeline.get("attempts", 0)) + 1
        pipeline = {**domain.pipeline, "attempts": attempts}
        fields: dict[str, Any] = {"status_detail": cause, "next_retry_at": self._backoff(attempts - 1, retry_after_s),
                                  "pipeline": pipeline}
        if failed and domain.status != S.FAILED:
            pipeline["resume"] = domain.status
            fields["status"] = S.FAILED.value
        await self._update(domain, **fields)

    async def _ca_failure(self, domain: Domain, kind: str, cause: str, *, retry_after_s: float | None = None) -> None:
        """Apply the issuer policy: retry the same CA later, switch to the next one now, or fail the domain."""
        current = self._issuer.name
        pipeline = dict(domain.pipeline)
        attempts = int(pipeline.get("issuer_attempts", 0)) + 1
        decision = self._policy.after_failure(current, kind, attempts, cause=cause)
        if decision.issuer == current:
            pipeline["issuer_attempts"] = attempts
            domain = await self._update(domain, pipeline=pipeline)
            await self._retry(domain, decision.reason, retry_after_s=retry_after_s)
            return
        if decision.issuer is None and kind != "rejected":
            # Every issuer was tried: pause, then start over with the same order (it is still good at the CA).
            pipeline.update(issuer_attempts=0, resume=domain.status if domain.status != S.FAILED else S.ORDERING.value)
            attempts_all = int(pipeline.get("attempts", 0)) + 1
            pipeline["attempts"] = attempts_all
            await self._update(domain, status=S.FAILED.value, pipeline=pipeline, status_detail=decision.reason,
                               next_retry_at=self._backoff(attempts_all - 1, retry_after_s))
            return
        if domain.ca_order_id is not None:
            with contextlib.suppress(CaError):
                await self._issuer.cancel(await self._current_order(domain))
        # A new order (the same key and CSR) with the next CA, or with the first one again after a pause.
        for key in ("order_intent", "tokens", "issuer_attempts", "published_at", "validation_requested_at"):
            pipeline.pop(key, None)
        if decision.issuer is not None:
            pipeline["issuer_reason"] = decision.reason
            await self._update(domain, status=S.ORDERING.value, issuer=decision.issuer, ca_order_id=None,
                               pipeline=pipeline, status_detail=decision.reason, next_retry_at=self._now())
            return
        attempts_all = int(pipeline.get("attempts", 0)) + 1
        pipeline.update(resume=S.ORDERING.value, attempts=attempts_all)
        await self._update(domain, status=S.FAILED.value, issuer=self._policy.first(), ca_order_id=None,
                           pipeline=pipeline, status_detail=decision.reason,
                           next_retry_at=self._backoff(attempts_all - 1, retry_after_s))

    # -- steps -----------------------------------------------------------------------------------------------

    async def _order(self, domain: Domain) -> None:
        pipeline = dict(domain.pipeline)
        renewal = domain.status == S.RENEWING or pipeline.get("renewal", False)
        if "csr" not in pipeline:
            key_pem, csr_pem = make_key_and_csr(domain.name, self._settings.key_type)
            # The pending key is sealed by the store (envelope encryption, covered by key rotation).
            await self._store.put_domain_secret(domain.name, PENDING_KEY, key_pem.encode())
            pipeline.update(csr=csr_pem, renewal=renewal)
            pipeline.setdefault("issuer_reason", f"{self._issuer.name} is first in the issuer order")
            domain = await self._update(domain, status=S.ORDERING.value, pipeline=pipeline,
                                        status_detail=f"placing the order with {self._issuer.name}"
                                                      + (" (renewal)" if renewal else ""),
                                        issuer=self._issuer.name)
        if self._preflight is not None and domain.ca_order_id is None and not pipeline.get("order_intent"):
            passed = await self._run_preflight(domain)
            if passed is None:
                return
            domain = passed
            pipeline = dict(domain.pipeline)
        order: Order | None = None
        if domain.ca_order_id is None and pipeline.get("order_intent"):
            # A previous attempt may have reached the CA (unknown outcome, or we were killed mid-request).
            try:
                order = await self._issuer.find_order(domain.name, csr_pem=pipeline["csr"])
            except CaError as exc:
                await self._retry(domain, f"looking for an existing order: {exc}", retry_after_s=_after(exc))
                return
        if domain.ca_order_id is None and order is None:
            if not await self._has_budget(domain, renewal):
                return
            pipeline["order_intent"] = self._now().isoformat()
            domain = await self._update(domain, pipeline=pipeline)
            try:
                self._release_budget(domain)  # the request goes out now: its slot is spent whatever the outcome
                order = await self._issuer.place_order(domain.name, pipeline["csr"],
                                                       validity_days=self._settings.validity_days)
            except UnknownOutcome as exc:
                await self._update(domain, status_detail=f"order outcome unknown ({exc}); looking it up",
                                   next_retry_at=self._now() + dt.timedelta(
                                       seconds=self._settings.unknown_outcome_retry_s))
                return
            except CaError as exc:
                await self._ca_failure(domain, exc.kind, f"ordering: {exc}", retry_after_s=_after(exc))
                return
        elif order is None:
            try:
                order = await self._issuer.get_order(str(domain.ca_order_id), domain.name)
            except CaError as exc:
                await self._retry(domain, f"reading order {domain.ca_order_id}: {exc}", retry_after_s=_after(exc))
                return
        pipeline.update(tokens=_tokens_json(order.tokens), attempts=0)
        await self._update(domain, status=S.VALIDATING.value, ca_order_id=order.order_id, pipeline=pipeline,
                           status_detail=f"order {order.order_id} placed; publishing the validation token",
                           next_retry_at=self._now())

    async def _has_budget(self, domain: Domain, renewal: bool) -> bool:
        """Whether this domain may place its order now under the CA's order budget (renewals first, then new
        names round-robin across registered domains). If not, the domain waits with its position and ETA."""
        if self._budget is None or domain.name in self._granted:
            return True
        from controlplane.budget import NotRegistrable, apex_of

        issuer = self._issuer.name
        try:
            apex = apex_of(domain.name)
        except NotRegistrable:
            apex = domain.name
        self._budget.submit(domain.name, apex=apex, kind="renewal" if renewal else "new", issuer=issuer)
        now = self._monotonic()
        for grant in self._budget.next_due(now, issuer=issuer):
            self._granted.add(grant.domain)
            if grant.domain != domain.name:  # wake the granted domain now rather than at its next poll
                other = await self._store.get_domain(grant.domain)
                if other is not None:
                    with contextlib.suppress(Exception):
                        await self._update(other, next_retry_at=self._now())
        if domain.name in self._granted:
            return True
        eta = self._budget.eta(domain.name, now)
        position = self._budget.position(domain.name)
        wait = min(max(eta or 1.0, 0.2), 60.0)
        await self._update(domain, status_detail=f"waiting for {issuer}'s order budget: position {position}"
                                                 + (f", about {eta:.0f} s" if eta is not None else ""),
                           next_retry_at=self._now() + dt.timedelta(seconds=wait))
        return False

    def _release_budget(self, domain: Domain) -> None:
        if self._budget is not None and domain.name in self._granted:
            self._granted.discard(domain.name)
            self._budget.release(domain.name, self._issuer.name, placed=True)

    async def _run_preflight(self, domain: Domain) -> Domain | None:
        """Check DNS, CAA and the token path through every node before spending a CA order.

        Returns the (possibly re-assigned to another issuer) domain when an order may be placed, or None when the
        domain was rescheduled with the cause.
        """
        from controlplane.preflight import probe_token

        token = probe_token(domain.name, self._rng.getrandbits(128).to_bytes(16, "big").hex())
        expires = self._now() + dt.timedelta(minutes=10)
        await self._store.put_tokens([Token(token.host, token.path, token.value, expires)])
        assert self._preflight is not None
        try:
            result = await self._preflight.check(domain.name, issuers=self._policy.order, token=token)
        finally:
            await self._store.delete_token(token.host, token.path)
        if not result.ok:
            pipeline = dict(domain.pipeline)
            attempts = int(pipeline.get("preflight_attempts", 0)) + 1
            pipeline["preflight_attempts"] = attempts
            await self._update(domain, pipeline=pipeline,
                               status_detail=f"preflight failed ({result.cause}): {result.message}; no order placed",
                               next_retry_at=self._backoff(attempts - 1))
            return None
        current = self._issuer.name
        allowed = result.allowed_issuers
        if allowed and current not in allowed:
            chosen = self._policy.first(allowed)
            assert chosen is not None
            _CURRENT_ISSUER.set(self._issuers[chosen])
            reason = f"CAA records do not allow {current}; using {chosen}"
            return await self._update(domain, issuer=chosen, status_detail=reason,
                                      pipeline={**domain.pipeline, "issuer_reason": reason})
        if not allowed and self._policy.order:
            await self._update(domain, status=S.FAILED.value,
                               pipeline={**domain.pipeline, "resume": domain.status},
                               status_detail=f"preflight: CAA allows none of {', '.join(self._policy.order)}",
                               next_retry_at=self._backoff(3))
            return None
        pipeline = dict(domain.pipeline)
        pipeline.pop("preflight_attempts", None)
        return await self._update(domain, pipeline=pipeline)

    async def _current_order(self, domain: Domain) -> Order:
        return await self._issuer.get_order(str(domain.ca_order_id), domain.name)

    async def _validate(self, domain: Domain) -> None:
        pipeline = dict(domain.pipeline)
        try:
            order = await self._current_order(domain)
        except CaError as exc:
            await self._retry(domain, f"reading order {domain.ca_order_id}: {exc}", retry_after_s=_after(exc))
            return
        if order.status is OrderStatus.ISSUED:
            await self._issued(domain, order)
            return
        if order.status in (OrderStatus.REJECTED, OrderStatus.CANCELED, OrderStatus.EXPIRED, OrderStatus.REVOKED):
            await self._ca_failure(domain, "rejected", f"order {order.order_id} is {order.status.value}")
            return
        tokens = list(order.tokens) or _tokens_from_json(pipeline.get("tokens", []))
        soon = self._now() + dt.timedelta(seconds=self._settings.refresh_before_s)
        if any(t.expires_at <= soon for t in tokens):
            try:
                order = await self._issuer.refresh_tokens(order)
            except CaError as exc:
                await self._retry(domain, f"refreshing the random value: {exc}", retry_after_s=_after(exc))
                return
            tokens = list(order.tokens)
        await self._store.put_tokens([Token(t.host, t.path, t.value, t.expires_at) for t in tokens])
        missing = sorted({n for t in tokens for n in await self._probe.token_served(t.host, t.path, t.value)})
        if missing:
            started = dt.datetime.fromisoformat(pipeline.setdefault("published_at", self._now().isoformat()))
            waited = (self._now() - started).total_seconds()
            if waited > self._settings.token_propagation_timeout_s:
                await self._retry(domain, f"validation token not served by node(s) {', '.join(missing)} after "
                                          f"{waited:.0f} s", failed=True)
                return
            await self._update(domain, pipeline={**pipeline, "tokens": _tokens_json(tokens)},
                               status_detail=f"waiting for node(s) {', '.join(missing)} to serve the token",
                               next_retry_at=self._node_wait(pipeline["published_at"]))
            return
        try:
            order = await self._issuer.request_validation(order)
        except ValidationNotFound as exc:
            await self._ca_failure(domain, "validation_failed", f"did not find the token: {exc}")
            return
        except CaError as exc:
            await self._retry(domain, f"requesting validation: {exc}", retry_after_s=_after(exc))
            return
        if order.status is OrderStatus.ISSUED:
            await self._issued(domain, order)
            return
        since = pipeline.setdefault("validation_requested_at", self._now().isoformat())
        await self._update(domain, pipeline={**pipeline, "tokens": _tokens_json(tokens)},
                           status_detail=f"token served by every node; waiting for {self._issuer.name} to issue",
                           next_retry_at=self._soon_then_less(since, self._settings.poll_first_s,
                                                              self._settings.poll_s))

    async def _issued(self, domain: Domain, order: Order) -> None:
        pipeline = dict(domain.pipeline)
        try:
            chain_pem = await self._issuer.download(order)
        except CaError as exc:
            await self._retry(domain, f"downloading the certificate: {exc}", retry_after_s=_after(exc))
            return
        key_pem = await self._store.get_domain_secret(domain.name, PENDING_KEY)
        if key_pem is None:  # lost (should not happen): order again with a fresh key
            await self._update(domain, status=S.ORDERING.value, ca_order_id=None, pipeline={},
                               status_detail="pending key missing; ordering again", next_retry_at=self._now())
            return
        if isinstance(key_pem, bytes):
            key_pem = key_pem.decode()
        try:
            leaf = check_chain(chain_pem, key_pem, domain.name, now=self._now())
        except ChainRejected as exc:
            await self._retry(domain, f"certificate from {self._issuer.name} rejected: {exc}", failed=True)
            return
        record = await self._store.put_certificate(domain.name, chain_pem=chain_pem, key_pem=key_pem,
                                                   issuer=self._issuer.name)
        await self._store.delete_domain_secret(domain.name, PENDING_KEY)
        for t in _tokens_from_json(pipeline.get("tokens", [])):
            await self._store.delete_token(t.host, t.path)
        renew_at = await self._renew_at(chain_pem, leaf)
        await self._update(domain, status=S.ISSUED.value, ca_order_id=None,
                           pipeline={"certificate": record.fingerprint, "renew_at": renew_at.isoformat(),
                                     "issued_order": order.order_id,
                                     "issuer_reason": pipeline.get("issuer_reason", "")},
                           status_detail=f"issued by {self._issuer.name} (order {order.order_id}); "
                                         f"delivering to the nodes",
                           next_retry_at=self._now())

    async def _renew_at(self, chain_pem: str, leaf: x509.Certificate) -> dt.datetime:
        """The CA's ACME Renewal Information window when it offers one (RFC 9773: a random moment inside it),
        else `renew_fraction` of the lifetime."""
        ari = getattr(self._issuer, "renewal_window", None)
        if ari is not None:
            try:
                window = await ari(chain_pem)
            except (CaError, ValueError) as exc:
                logger.info("no renewal information from %s: %s", self._issuer.name, exc)
                window = None
            if window is not None:
                start, end = window
                return start + (end - start) * self._rng.random()
        return renewal_time(leaf.not_valid_before_utc, leaf.not_valid_after_utc, self._settings.renew_fraction)

    async def _deploy(self, domain: Domain) -> None:
        fingerprint = domain.pipeline.get("certificate")
        missing = await self._probe.certificate_served(domain.name, str(fingerprint))
        if missing:
            pipeline = dict(domain.pipeline)
            since = pipeline.setdefault("deploy_started_at", self._now().isoformat())
            await self._update(domain, pipeline=pipeline,
                               status_detail=f"waiting for node(s) {', '.join(sorted(missing))} to serve "
                                             f"the certificate",
                               next_retry_at=self._node_wait(since))
            return
        renew_at = dt.datetime.fromisoformat(domain.pipeline["renew_at"])
        await self._update(domain, status=S.DEPLOYED.value,
                           status_detail=f"served by every node; renewal due {renew_at:%Y-%m-%d %H:%M}Z",
                           next_retry_at=renew_at)

    async def _maybe_renew(self, domain: Domain) -> None:
        renew_at = dt.datetime.fromisoformat(domain.pipeline["renew_at"])
        if self._now() < renew_at:
            await self._update(domain, next_retry_at=renew_at)
            return
        await self._update(domain, status=S.RENEWING.value, pipeline={**domain.pipeline, "renewal": True},
                           status_detail="renewal due; the current certificate keeps serving",
                           next_retry_at=self._now())

    async def _remove(self, domain: Domain) -> None:
        if domain.ca_order_id is not None:
            try:
                await self._issuer.cancel(await self._current_order(domain))
            except CaError as exc:
                logger.warning("cancelling order %s of %s: %s", domain.ca_order_id, domain.name, exc)
        issued = domain.pipeline.get("issued_order")
        if issued:
            try:
                order = await self._issuer.get_order(str(issued), domain.name)
                await self._issuer.revoke(order)
            except CaError as exc:
                logger.warning("revoking the certificate of %s: %s", domain.name, exc)
        await self._store.delete_domain(domain.name)


def _after(exc: CaError) -> float | None:
    return getattr(exc, "retry_after_s", None)

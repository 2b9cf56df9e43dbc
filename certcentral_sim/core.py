"""The simulator's state machine: orders, certificates, DCV bookkeeping, rate limits, the status-change log.

Owns all mutable simulator state behind one lock, so the aiohttp handlers (event-loop thread) and the test's
fault/admin calls (any thread) can share it. It does no IO and never awaits: the real fileauth.txt fetches happen in
`fetcher.py`, between `begin_check` and `finish_check`. Time comes from the injected `Clock`, randomness from the
injected `random.Random`. Transitions follow reference §2:

    create -> needs_approval (account approval, no skip_approval) -> pending        (approve)
    create -> pending -> issued                        (every FQDN validated; optional issuance delay)
    pending/needs_approval/waiting_pickup -> canceled  (PUT .../status)
    pending -> rejected                                (admin/fault; a doomed order is rejected instead of issued)
    issued -> reissue_pending -> issued                (reissue: new CSR, new random value, fresh DCV)
    issued -> revoked                                  (order revoke: admin key + skip_approval, else a request)
    issued -> expired                                  (the certificate's valid_till passed)
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import heapq
import random
import threading
from collections.abc import Mapping, Sequence
from typing import Any, final

from .bodies import (
    OrderRequest,
    parse_dcv_method,
    parse_names,
    parse_order_request,
    parse_reissue_request,
)
from .ca import TestCa
from .clock import Clock
from .errors import ApiError
from .model import (
    DCV_STATUSES,
    TOKEN_METHODS,
    ApiKey,
    CertRecord,
    DcvMethod,
    DcvValue,
    FetchRecord,
    NameStatus,
    Order,
    OrderStatus,
    Permission,
    RevokeRequest,
    SimConfig,
    StatusChange,
)
from .ratelimit import RollingLimiter
from .rules import FetchFailure, new_random_value, next_poll_at, normalise_name

__all__ = ["CertCentral", "CheckOutcome", "DcvCheck"]

_ISSUE, _EXPIRE = "issue", "expire"


@dataclasses.dataclass(frozen=True, slots=True)
class DcvCheck:
    """What to fetch for one check: `value` is None when the random value has expired (nothing can match)."""

    order_id: int
    request_id: int
    value: str | None
    fetch: tuple[str, ...]  # names to fetch now
    checked: tuple[str, ...]  # names the answer reports on (fetched + already approved)
    trigger: str  # "check-dcv" or "poll"


@dataclasses.dataclass(frozen=True, slots=True)
class CheckOutcome:
    order_id: int
    all_ok: bool
    order_status: OrderStatus
    certificate_id: int
    validations: tuple[tuple[str, NameStatus], ...]


@final
class CertCentral:
    """The simulated CertCentral account. Every public method is thread-safe."""

    def __init__(self, config: SimConfig, *, clock: Clock, rng: random.Random | None = None,
                 ca: TestCa | None = None) -> None:
        self.config = config
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.RLock()
        self.ca = ca or TestCa.create(now=clock.now())
        self._keys = {k.key: k for k in config.api_keys}
        self._limiter = RollingLimiter(config.rate_limits)
        self._orders: dict[int, Order] = {}
        self._certs: dict[int, CertRecord] = {}
        self._by_serial: dict[str, int] = {}
        self._by_thumbprint: dict[str, int] = {}
        self._log: list[StatusChange] = []
        self._timers: list[tuple[dt.datetime, int, str]] = []  # (when, order id, kind), checked lazily
        self._revoke_requests: list[RevokeRequest] = []
        self._fetches: collections.deque[FetchRecord] = collections.deque(maxlen=10_000)
        self._resolve: dict[str, tuple[str, ...]] = {}
        self._next_order = config.first_order_id
        self._next_cert = config.first_certificate_id
        self._next_request = 880001
        self._doom_next = 0

    # ------------------------------------------------------------------ time, auth, limits

    def now(self) -> dt.datetime:
        return self._clock.now()

    def authenticate(self, key: str | None) -> ApiKey:
        """The API key record for an `X-DC-DEVKEY` value; 401 when missing or unknown (reference §3, unconfirmed)."""
        found = self._keys.get(key or "")
        if found is None:
            raise ApiError.unauthorized()
        return found

    @staticmethod
    def authorize(key: ApiKey, method: str) -> None:
        """View-only keys may only GET (reference §0); 403 access_denied|missing_permission otherwise."""
        if key.permission is Permission.VIEW_ONLY and method.upper() not in ("GET", "HEAD"):
            raise ApiError.forbidden()

    def admit(self, key: ApiKey) -> None:
        """Count one request against the key's rolling windows; 429 request_limit_exceeded when over (§3)."""
        with self._lock:
            if not self._limiter.admit(key.key, self.now().timestamp()):
                raise ApiError.rate_limited()

    # ------------------------------------------------------------------ orders

    def create_order(self, product_name_id: str, body: Any, *, api_key: ApiKey) -> dict[str, Any]:
        """`POST /order/certificate/{product_name_id}` -> the 201 body (reference §1 step 1)."""
        with self._lock:
            now = self.now()
            self._advance(now)
            req = parse_order_request(product_name_id, body, self.config, today=now.date())
            if req.renewal_of_order_id is not None and req.renewal_of_order_id not in self._orders:
                raise ApiError.not_found("order")
            order = self._new_order(req, api_key, now)
            if req.renewal_of_order_id is not None:
                old = self._orders[req.renewal_of_order_id]
                self._orders[old.id] = dataclasses.replace(old, renewed_order_id=order.id)
            reply: dict[str, Any] = {
                "id": order.id,
                "certificate_id": order.certificate_id,
                "requests": [{"id": order.request_id, "status": order.request_status}],
            }
            if order.dcv is not None:
                reply["dcv_random_value"] = order.dcv.value
            return reply

    def _new_order(self, req: OrderRequest, api_key: ApiKey, now: dt.datetime) -> Order:
        order_id, self._next_order = self._next_order, self._next_order + 1
        cert_id = self._alloc_cert_id()
        request_id = self._alloc_request_id()
        needs_approval = self.config.require_approval and not req.skip_approval
        status = OrderStatus.NEEDS_APPROVAL if needs_approval else OrderStatus.PENDING
        doomed = self._doom_next > 0
        self._doom_next = max(0, self._doom_next - 1)
        order = Order(
            id=order_id, product_name_id=req.product_name_id, status=status, date_created=now,
            certificate_id=cert_id, request_id=request_id, dcv_method=req.dcv_method,
            dcv=self._new_dcv(now) if req.dcv_method in TOKEN_METHODS else None,
            names=req.names, name_status=tuple(NameStatus.PENDING for _ in req.names),
            order_validity_days=req.order_validity_days, order_validity=req.order_validity,
            cert_validity=req.cert_validity, status_updated_at=now, api_key_name=api_key.name,
            skip_approval=req.skip_approval, comments=req.comments, organization_id=req.organization_id,
            poll_anchor=None if needs_approval else now, doomed=doomed,
            renewal_of_order_id=req.renewal_of_order_id, certificate_ids=(cert_id,),
        )
        self._certs[cert_id] = CertRecord(
            id=cert_id, order_id=order_id, common_name=req.names[0], dns_names=req.names, csr_pem=req.csr_pem,
            signature_hash=req.signature_hash, days=req.cert_days,
        )
        self._orders[order_id] = order
        self._log.append(StatusChange(order_id, cert_id, status, now))
        return order

    def _alloc_cert_id(self) -> int:
        cert_id, self._next_cert = self._next_cert, self._next_cert + 1
        return cert_id

    def _alloc_request_id(self) -> int:
        request_id, self._next_request = self._next_request, self._next_request + 1
        return request_id

    def _new_dcv(self, now: dt.datetime) -> DcvValue:
        value = new_random_value(self._rng, self.config.random_value_length)
        return DcvValue(value, now, now + dt.timedelta(seconds=self.config.random_value_ttl_s))

    def order(self, ref: str | int) -> Order:
        """Order by id, or by its primary certificate's serial number or thumbprint (reference §1 step 5)."""
        with self._lock:
            self._advance(self.now())
            return self._get(ref)

    def _get(self, ref: str | int) -> Order:
        text = str(ref).strip()
        order_id: int | None = None
        if text.isdigit() and int(text) in self._orders:
            order_id = int(text)
        else:
            order_id = self._by_serial.get(text.upper()) or self._by_thumbprint.get(text.upper())
        if order_id is None:
            raise ApiError.not_found("order")
        return self._orders[order_id]

    def certificate(self, cert_ref: str | int) -> CertRecord:
        """Certificate by id or serial number."""
        with self._lock:
            self._advance(self.now())
            text = str(cert_ref).strip()
            if text.isdigit() and int(text) in self._certs:
                return self._certs[int(text)]
            for cert in self._certs.values():
                if cert.serial_number is not None and cert.serial_number == text.upper():
                    return cert
            raise ApiError.not_found("certificate")

    def active_certificate(self, order_id: int) -> CertRecord:
        """The order's current active (issued, newest) certificate, for the download-by-order endpoint (§5)."""
        with self._lock:
            order = self._get(order_id)
            for cert_id in reversed(order.certificate_ids):
                cert = self._certs[cert_id]
                if cert.issued:
                    return cert
            raise ApiError(400, "certificate_not_issued", "The order has no issued certificate yet.")

    def snapshot(self) -> tuple[list[Order], dict[int, CertRecord]]:
        """Every order (by id) and every certificate, after applying due time-based transitions."""
        with self._lock:
            self._advance(self.now())
            return [self._orders[k] for k in sorted(self._orders)], dict(self._certs)

    def list_orders(self, *, status: str | None = None, common_name: str | None = None,
                    domain_name: str | None = None, sort: str = "id", offset: int = 0,
                    limit: int = 1000) -> tuple[list[Order], int]:
        """`GET /order/certificate` filtering, sorting and paging (reference §1 step 5). The `issued` filter also
        matches expired orders [12]."""
        keys = {"id": lambda o: o.id, "date_created": lambda o: (o.date_created, o.id),
                "common_name": lambda o: (o.common_name, o.id), "status": lambda o: (str(o.status), o.id)}
        field = sort.removeprefix("-")
        if field not in keys:
            raise ApiError.invalid_value("sort", f"Cannot sort by {field!r}.")
        if not 0 <= offset:
            raise ApiError.invalid_value("offset")
        if not 1 <= limit <= 1000:
            raise ApiError.invalid_value("limit", "limit must be between 1 and 1000.")
        statuses: set[str] | None = None
        if status:
            statuses = set(status.split(","))
            if "issued" in statuses:
                statuses.add("expired")
        with self._lock:
            self._advance(self.now())
            found = [o for o in self._orders.values()
                     if (statuses is None or o.status in statuses)
                     and (common_name is None or o.common_name == common_name.strip().lower())
                     and (domain_name is None or domain_name.strip().lower() in o.names)]
        found.sort(key=keys[field], reverse=sort.startswith("-"))
        return found[offset:offset + limit], len(found)

    def status_changes(self, since: dt.datetime, until: dt.datetime) -> list[StatusChange]:
        """The latest status change of every order changed within [since, until] (reference §1 step 5, bulk)."""
        with self._lock:
            self._advance(self.now())
            latest: dict[int, StatusChange] = {}
            for change in self._log:
                if since <= change.at <= until:
                    latest.pop(change.order_id, None)
                    latest[change.order_id] = change
        return sorted(latest.values(), key=lambda c: c.at)  # stable: log order breaks ties

    def change_log(self) -> list[StatusChange]:
        with self._lock:
            self._advance(self.now())
            return list(self._log)

    # ------------------------------------------------------------------ DCV

    def random_value(self, order_id: str | int) -> DcvValue:
        """`PUT .../dcv-random-value`: the current value while valid, a new one once expired (reference §1 step 2)."""
        with self._lock:
            now = self.now()
            self._advance(now)
            order = self._get(order_id)
            if order.dcv_method not in TOKEN_METHODS or order.dcv is None:
                raise ApiError(400, "invalid_dcv_method", "The order does not use a token-based DCV method.")
            if order.dcv.valid_at(now):
                return order.dcv
            dcv = self._new_dcv(now)
            self._orders[order.id] = dataclasses.replace(order, dcv=dcv)
            return dcv

    def change_dcv_method(self, order_id: str | int, body: Any) -> DcvValue | None:
        """`PUT .../dcv-method` (reference §1 step 2): token methods answer the value, email answers nothing."""
        with self._lock:
            now = self.now()
            self._advance(now)
            order = self._get(order_id)
            if not isinstance(body, Mapping):
                raise ApiError.bad_request_format("The request body must be a JSON object.")
            method = parse_dcv_method(body.get("dcv_method"), order.product_name_id)
            if order.status not in DCV_STATUSES and order.status is not OrderStatus.NEEDS_APPROVAL:
                raise _status_conflict(order)
            parse_names(order.names[0], order.names[1:], method)  # wildcard + http-token -> 400
            dcv = order.dcv
            if method in TOKEN_METHODS and (dcv is None or not dcv.valid_at(now)):
                dcv = self._new_dcv(now)
            self._orders[order.id] = dataclasses.replace(order, dcv_method=method, dcv=dcv)
            return dcv if method in TOKEN_METHODS else None

    def begin_check(self, order_id: str | int, names: Any = None, *, trigger: str = "check-dcv") -> DcvCheck:
        """Plan a `PUT .../check-dcv` (reference §1 step 4). `names` is the optional `dns_names_validations`.

        A manual check restarts DigiCert's 10-day automatic polling (reference §4).
        """
        with self._lock:
            now = self.now()
            self._advance(now)
            order = self._get(order_id)
            if order.status is OrderStatus.ISSUED or order.status is OrderStatus.EXPIRED:
                checked = order.names
                return DcvCheck(order.id, order.request_id, None, (), checked, trigger)
            if order.status not in DCV_STATUSES:
                raise _status_conflict(order)
            if order.dcv_method is DcvMethod.EMAIL:
                raise ApiError(400, "invalid_dns_method", "The order uses email validation.")
            if order.dcv_method is not DcvMethod.HTTP_TOKEN:
                # No DNS in the simulator: DNS token methods never validate.
                raise ApiError(400, "invalid_dns_txt", "Could not find the random value in DNS.")
            checked = self._select_names(order, names)
            approved = dict(zip(order.names, order.name_status))
            fetch = tuple(n for n in checked if approved[n] is not NameStatus.APPROVED)
            value = order.dcv.value if order.dcv is not None and order.dcv.valid_at(now) else None
            if trigger == "check-dcv":
                self._orders[order.id] = dataclasses.replace(order, poll_anchor=now, last_poll_at=None)
            # An expired value cannot match any file (reference §4): nothing to fetch, every unapproved name fails.
            return DcvCheck(order.id, order.request_id, value, fetch if value is not None else (), checked, trigger)

    @staticmethod
    def _select_names(order: Order, names: Any) -> tuple[str, ...]:
        if names is None:
            return order.names
        if not isinstance(names, Sequence) or isinstance(names, str) or not names:
            raise ApiError.invalid_value("dns_names_validations", "dns_names_validations must be a non-empty list.")
        picked: list[str] = []
        for item in names:
            raw = item.get("dns_name") if isinstance(item, Mapping) else item
            try:
                name = normalise_name(raw)
            except ValueError:
                raise ApiError.invalid_value("dns_names_validations", f"Invalid DNS name {raw!r}.") from None
            if name not in order.names:
                raise ApiError.invalid_value("dns_names_validations", f"{name} is not on the order.")
            if name not in picked:
                picked.append(name)
        return tuple(picked)

    def finish_check(self, check: DcvCheck, results: Mapping[str, FetchFailure | None]) -> CheckOutcome:
        """Apply fetch results: approve each FQDN that served the value; issue (or schedule issuance) once every
        FQDN of the order is approved. Results for a value that expired or was replaced meanwhile do not count."""
        with self._lock:
            now = self.now()
            self._advance(now)
            order = self._orders[check.order_id]
            still_current = (order.request_id == check.request_id and order.status in DCV_STATUSES
                             and check.value is not None and order.dcv is not None
                             and order.dcv.value == check.value and order.dcv.valid_at(now))
            if still_current:
                status = list(order.name_status)
                for i, name in enumerate(order.names):
                    if name in results and results[name] is None:
                        status[i] = NameStatus.APPROVED
                order = dataclasses.replace(order, name_status=tuple(status))
                self._orders[order.id] = order
                if order.all_validated() and order.issue_at is None:
                    order = self._complete_dcv(order, now)
            by_name = dict(zip(order.names, order.name_status))
            if order.status is OrderStatus.ISSUED or order.status is OrderStatus.EXPIRED:
                by_name = {n: NameStatus.APPROVED for n in order.names}
            validations = tuple((n, by_name[n]) for n in check.checked)
            return CheckOutcome(order.id, all(s is NameStatus.APPROVED for _, s in validations), order.status,
                                order.certificate_id, validations)

    def _complete_dcv(self, order: Order, now: dt.datetime) -> Order:
        if order.doomed:
            return self._transition(order, OrderStatus.REJECTED, now)
        if self.config.issuance_delay_s <= 0:
            return self._issue(order, now)
        when = now + dt.timedelta(seconds=self.config.issuance_delay_s)
        order = dataclasses.replace(order, issue_at=when)
        self._orders[order.id] = order
        heapq.heappush(self._timers, (when, order.id, _ISSUE))
        return order

    def due_polls(self) -> list[DcvCheck]:
        """Claim the automatic DCV checks that are due now (reference §4 tiers, on the simulated clock)."""
        if not self.config.auto_poll:
            return []
        with self._lock:
            now = self.now()
            self._advance(now)
            due: list[DcvCheck] = []
            for order in self._orders.values():
                if (order.status not in DCV_STATUSES or order.dcv_method is not DcvMethod.HTTP_TOKEN
                        or order.poll_anchor is None or order.issue_at is not None or order.dcv is None
                        or not order.dcv.valid_at(now)):
                    continue
                nxt = next_poll_at(order.poll_anchor, order.last_poll_at)
                if nxt is None or nxt > now:
                    continue
                self._orders[order.id] = dataclasses.replace(order, last_poll_at=now)
                fetch = tuple(n for n, s in zip(order.names, order.name_status) if s is not NameStatus.APPROVED)
                due.append(DcvCheck(order.id, order.request_id, order.dcv.value, fetch, order.names, "poll"))
            return due

    def record_fetch(self, record: FetchRecord) -> None:
        with self._lock:
            self._fetches.append(record)

    def fetches(self) -> list[FetchRecord]:
        with self._lock:
            return list(self._fetches)

    # ------------------------------------------------------------------ other transitions

    def update_status(self, order_id: str | int, body: Any) -> None:
        """`PUT .../status` `{"status":"canceled","note":...}` -> 204 (reference §2 transition 3)."""
        with self._lock:
            now = self.now()
            self._advance(now)
            order = self._get(order_id)
            if not isinstance(body, Mapping):
                raise ApiError.bad_request_format("The request body must be a JSON object.")
            if body.get("status") != "canceled":
                raise ApiError.invalid_value("status", "Only status \"canceled\" can be set.")
            note = body.get("note")
            if not isinstance(note, str) or not note.strip():
                raise ApiError.invalid_value("note", "A note is required to cancel an order.")
            if order.status not in (OrderStatus.PENDING, OrderStatus.WAITING_PICKUP, OrderStatus.NEEDS_APPROVAL):
                raise _status_conflict(order)
            order = dataclasses.replace(order, cancel_note=note)
            self._transition(order, OrderStatus.CANCELED, now)

    def reissue(self, order_id: str | int, body: Any) -> dict[str, Any]:
        """`POST .../reissue` -> 201 (reference §6): reissue_pending with a new random value and fresh DCV."""
        with self._lock:
            now = self.now()
            self._advance(now)
            order = self._get(order_id)
            if order.status is not OrderStatus.ISSUED:
                raise _status_conflict(order)
            req = parse_reissue_request(body, order.dcv_method)
            names = req.names or order.names
            old_cert = self._certs[order.certificate_id]
            cert_id = self._alloc_cert_id()
            self._certs[cert_id] = CertRecord(
                id=cert_id, order_id=order.id, common_name=names[0], dns_names=names, csr_pem=req.csr_pem,
                signature_hash=req.signature_hash or old_cert.signature_hash, days=old_cert.days,
            )
            order = dataclasses.replace(
                order, names=names, name_status=tuple(NameStatus.PENDING for _ in names), certificate_id=cert_id,
                certificate_ids=order.certificate_ids + (cert_id,), request_id=self._alloc_request_id(),
                dcv=self._new_dcv(now) if order.dcv_method in TOKEN_METHODS else None,  # DV never reuses DCV
                poll_anchor=now, last_poll_at=None, issue_at=None,
            )
            order = self._transition(order, OrderStatus.REISSUE_PENDING, now)
            reply: dict[str, Any] = {"id": order.id, "certificate_id": cert_id,
                                     "requests": [{"id": order.request_id, "status": "approved"}]}
            if order.dcv is not None:
                reply["dcv_random_value"] = order.dcv.value
            return reply

    def revoke(self, *, order_id: str | int | None = None, cert_ref: str | int | None = None, body: Any,
               api_key: ApiKey) -> RevokeRequest | None:
        """Revoke an order's certificates, or one certificate (reference §6). An admin key with skip_approval
        revokes at once (None -> 204); otherwise a pending revoke request is recorded (-> 201)."""
        with self._lock:
            now = self.now()
            self._advance(now)
            if body is None:
                body = {}
            if not isinstance(body, Mapping):
                raise ApiError.bad_request_format("The request body must be a JSON object.")
            cert: CertRecord | None = None
            if cert_ref is not None:
                cert = self.certificate(cert_ref)
                order = self._orders[cert.order_id]
                if not cert.issued or cert.revoked_at is not None:
                    raise ApiError(400, "certificate_not_revocable", "The certificate is not issued or already revoked.")
            else:
                assert order_id is not None
                order = self._get(order_id)
                if order.status not in (OrderStatus.ISSUED, OrderStatus.REISSUE_PENDING):
                    raise _status_conflict(order)
            if order.status is OrderStatus.REISSUE_PENDING:
                raise ApiError(400, "reissue_pending", "A certificate with a pending reissue cannot be revoked.")
            comments = body.get("comments") if isinstance(body.get("comments"), str) else ""
            reason = body.get("revocation_reason") if isinstance(body.get("revocation_reason"), str) else None
            if api_key.permission is Permission.ADMIN and body.get("skip_approval") is True:
                targets = [cert] if cert is not None else [self._certs[c] for c in order.certificate_ids]
                for target in targets:
                    if target.issued and target.revoked_at is None:
                        self._certs[target.id] = dataclasses.replace(target, revoked_at=now)
                if cert is None:
                    self._transition(order, OrderStatus.REVOKED, now)
                # Revoking one certificate leaves the order active (reissuable) by default (reference §6).
                return None
            request = RevokeRequest(id=self._alloc_request_id(), order_id=order.id,
                                    certificate_id=cert.id if cert else None, date=now, requester=api_key.name,
                                    comments=comments or "", reason=reason)
            self._revoke_requests.append(request)
            return request

    def revoke_requests(self) -> list[RevokeRequest]:
        with self._lock:
            return list(self._revoke_requests)

    # ------------------------------------------------------------------ admin / fault injection

    def approve(self, order_id: int) -> Order:
        """An administrator approves a needs_approval request: it becomes a pending order (reference §2)."""
        with self._lock:
            now = self.now()
            self._advance(now)
            order = self._get(order_id)
            if order.status is not OrderStatus.NEEDS_APPROVAL:
                raise _status_conflict(order)
            order = dataclasses.replace(order, poll_anchor=now, last_poll_at=None)
            return self._transition(order, OrderStatus.PENDING, now)

    def reject(self, order_id: int) -> Order:
        """DigiCert rejects the order (reference §2 transition 3)."""
        with self._lock:
            now = self.now()
            self._advance(now)
            order = self._get(order_id)
            if order.status not in (OrderStatus.PENDING, OrderStatus.NEEDS_APPROVAL, OrderStatus.REISSUE_PENDING):
                raise _status_conflict(order)
            return self._transition(order, OrderStatus.REJECTED, now)

    def reject_next_orders(self, count: int) -> None:
        """The next `count` orders placed are rejected at the moment they would have been issued."""
        with self._lock:
            self._doom_next += count

    def clear_pending_rejections(self) -> None:
        """Forget `reject_next_orders` counts not used yet (orders already doomed stay doomed)."""
        with self._lock:
            self._doom_next = 0

    def expire_random_value(self, order_id: int) -> None:
        """Force the order's random value to be expired now; the next dcv-random-value call makes a new one."""
        with self._lock:
            now = self.now()
            order = self._get(order_id)
            if order.dcv is None:
                raise ApiError(400, "invalid_dcv_method", "The order has no random value.")
            expired = dataclasses.replace(order.dcv, expires_at=min(order.dcv.expires_at, now))
            self._orders[order.id] = dataclasses.replace(order, dcv=expired)

    def set_resolve(self, mapping: Mapping[str, str | Sequence[str]]) -> None:
        """Replace the name -> address map used by the fetcher. Keys are "name" or "name:port" (the latter wins
        for that URL port), "*.suffix" (any name below suffix, the longest suffix wins) or "*" (any other name: a
        stack whose every domain points at the same edge nodes); values are "ip[:port]" or a list of them, one
        picked at random per connection."""
        table: dict[str, tuple[str, ...]] = {}
        for key, value in mapping.items():
            addrs = (value,) if isinstance(value, str) else tuple(value)
            if not addrs or not all(isinstance(a, str) and a for a in addrs):
                raise ValueError(f"resolve[{key!r}]: need one or more addresses")
            table[key.lower().removesuffix(".")] = addrs
        with self._lock:
            self._resolve = table

    def resolve_map(self) -> dict[str, tuple[str, ...]]:
        with self._lock:
            return dict(self._resolve)

    def pick_address(self, host: str, port: int) -> tuple[str, int] | None:
        """One address for host:port from the resolve map (random when several), or None when unmapped."""
        host = host.lower().removesuffix(".")
        with self._lock:
            addrs = self._resolve.get(f"{host}:{port}") or self._resolve.get(host) or self._wildcard(host)
            if not addrs:
                return None
            addr = self._rng.choice(addrs)
        ip, sep, p = addr.rpartition(":")
        if sep and p.isdigit() and ip and (ip.count(":") == 0 or ip.startswith("[")):
            return ip.strip("[]"), int(p)
        return addr.strip("[]"), port

    # ------------------------------------------------------------------ internals

    def _wildcard(self, host: str) -> tuple[str, ...] | None:
        """The "*.suffix" entry for the longest suffix of `host`, else "*" (caller holds the lock)."""
        labels = host.split(".")
        for i in range(1, len(labels)):
            addrs = self._resolve.get("*." + ".".join(labels[i:]))
            if addrs:
                return addrs
        return self._resolve.get("*")

    def _transition(self, order: Order, status: OrderStatus, at: dt.datetime) -> Order:
        order = dataclasses.replace(order, status=status, status_updated_at=at)
        self._orders[order.id] = order
        self._log.append(StatusChange(order.id, order.certificate_id, status, at))
        return order

    def _issue(self, order: Order, at: dt.datetime) -> Order:
        cert = self._certs[order.certificate_id]
        signed = self.ca.sign(cert.csr_pem, cert.dns_names, now=at, days=cert.days,
                              serial=self._rng.getrandbits(120) | (1 << 120), signature_hash=cert.signature_hash)
        cert = dataclasses.replace(cert, pem=signed.pem, serial_number=signed.serial_number,
                                   thumbprint=signed.thumbprint, not_before=signed.not_before,
                                   not_after=signed.not_after, key_size=signed.key_size)
        self._certs[cert.id] = cert
        self._by_serial[signed.serial_number] = order.id
        self._by_thumbprint[signed.thumbprint] = order.id
        order = dataclasses.replace(order, issue_at=None, name_status=tuple(NameStatus.APPROVED for _ in order.names))
        heapq.heappush(self._timers, (signed.not_after, order.id, _EXPIRE))
        return self._transition(order, OrderStatus.ISSUED, at)

    def _advance(self, now: dt.datetime) -> None:
        """Apply the time-based transitions due by `now`, each stamped with the time it was due."""
        while self._timers and self._timers[0][0] <= now:
            when, order_id, kind = heapq.heappop(self._timers)
            order = self._orders[order_id]
            if kind == _ISSUE and order.issue_at == when and order.status in DCV_STATUSES:
                self._issue(order, when)
            elif kind == _EXPIRE and order.status is OrderStatus.ISSUED:
                cert = self._certs[order.certificate_id]
                if cert.not_after == when:
                    self._transition(order, OrderStatus.EXPIRED, when)


def _status_conflict(order: Order) -> ApiError:
    # Simulator's choice: the reference names no code for "not allowed in this status".
    return ApiError(400, "invalid_order_status", f"Not allowed while the order is {order.status}.")

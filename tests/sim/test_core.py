"""The state machine with a fake clock and no IO: transitions, expiry, issuance, polls, lists, revocation."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from cryptography import x509

from certcentral_sim import (
    ApiError,
    ApiKey,
    CertCentral,
    FakeClock,
    NameStatus,
    OrderStatus,
    Permission,
    SimConfig,
)
from certcentral_sim.rules import FetchFailure

from .conftest import Csr, dv_order_body

ADMIN = ApiKey("admin-key")
ORDERS_ONLY = ApiKey("orders-key", Permission.ORDERS, name="ops")


@pytest.fixture(scope="module")
def shared_ca() -> object:
    from certcentral_sim import TestCa
    return TestCa.create(now=dt.datetime(2026, 2, 1, tzinfo=dt.UTC))


def make_core(ca: object, **cfg: object) -> tuple[CertCentral, FakeClock]:
    clock = FakeClock()
    config = SimConfig(api_keys=(ADMIN, ORDERS_ONLY), **cfg)  # type: ignore[arg-type]
    return CertCentral(config, clock=clock, rng=random.Random(3), ca=ca), clock  # type: ignore[arg-type]


def place(core: CertCentral, csr: Csr, name: str = "shop.example.test", **kw: object) -> int:
    return int(core.create_order("ssl_dv_geotrust", dv_order_body(csr.pem, name, **kw), api_key=ADMIN)["id"])


def validate(core: CertCentral, order_id: int, ok: bool = True) -> object:
    check = core.begin_check(order_id)
    return core.finish_check(check, {n: None if ok else FetchFailure.MISMATCH for n in check.fetch})


def test_create_pending_with_value_and_ids(shared_ca: object, csr: Csr) -> None:
    core, clock = make_core(shared_ca)
    reply = core.create_order("ssl_dv_geotrust", dv_order_body(csr.pem), api_key=ADMIN)
    assert set(reply) == {"id", "certificate_id", "requests", "dcv_random_value"}
    assert reply["requests"][0]["status"] == "approved"
    order = core.order(reply["id"])
    assert order.status is OrderStatus.PENDING and order.dcv is not None
    assert order.dcv.value == reply["dcv_random_value"] and len(order.dcv.value) == 32
    assert order.dcv.expires_at - clock.now() == dt.timedelta(days=30)
    assert core.certificate(reply["certificate_id"]).pem is None  # id allocated, no material yet


def test_successful_check_issues_with_requested_lifetime(shared_ca: object, csr: Csr) -> None:
    core, _ = make_core(shared_ca)
    order_id = int(core.create_order("ssl_dv_geotrust", {**dv_order_body(csr.pem), "certificate": {
        "common_name": "shop.example.test", "csr": csr.pem, "cert_validity": {"days": 90}}},
        api_key=ADMIN)["id"])
    failed = validate(core, order_id, ok=False)
    assert not failed.all_ok and failed.order_status is OrderStatus.PENDING  # type: ignore[attr-defined]
    outcome = validate(core, order_id)
    assert outcome.all_ok and outcome.order_status is OrderStatus.ISSUED  # type: ignore[attr-defined]
    order = core.order(order_id)
    cert = core.certificate(order.certificate_id)
    leaf = x509.load_pem_x509_certificate(cert.pem.encode())  # type: ignore[union-attr]
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(days=90)
    assert leaf.public_key() == csr.key.public_key()
    assert core.order(cert.serial_number) == order  # order info also by serial / thumbprint
    assert core.order(cert.thumbprint.lower()) == order  # type: ignore[union-attr]


def test_default_lifetime_is_capped_at_199_days(shared_ca: object, csr: Csr) -> None:
    core, _ = make_core(shared_ca)
    order_id = place(core, csr)
    validate(core, order_id)
    assert core.certificate(core.order(order_id).certificate_id).days == 199


def test_multi_name_needs_every_name(shared_ca: object, csr: Csr) -> None:
    core, _ = make_core(shared_ca)
    order_id = place(core, csr, dns_names=["www.example.test", "shop.example.test"])
    assert core.order(order_id).names == ("shop.example.test", "www.example.test")
    check = core.begin_check(order_id)
    out = core.finish_check(check, {"shop.example.test": None, "www.example.test": FetchFailure.STATUS})
    assert not out.all_ok and out.order_status is OrderStatus.PENDING
    assert dict(out.validations) == {"shop.example.test": NameStatus.APPROVED, "www.example.test": NameStatus.PENDING}
    check = core.begin_check(order_id)
    assert check.fetch == ("www.example.test",)  # approved names are not fetched again
    assert core.finish_check(check, {"www.example.test": None}).order_status is OrderStatus.ISSUED


def test_issuance_delay(shared_ca: object, csr: Csr) -> None:
    core, clock = make_core(shared_ca, issuance_delay_s=30.0)
    order_id = place(core, csr)
    out = validate(core, order_id)
    assert out.all_ok and out.order_status is OrderStatus.PENDING  # type: ignore[attr-defined]
    clock.advance(29)
    assert core.order(order_id).status is OrderStatus.PENDING
    clock.advance(2)
    assert core.order(order_id).status is OrderStatus.ISSUED
    issued_at = core.change_log()[-1].at
    assert issued_at == core.order(order_id).date_created + dt.timedelta(seconds=30)  # stamped when due


def test_random_value_expiry_and_regeneration(shared_ca: object, csr: Csr) -> None:
    core, clock = make_core(shared_ca)
    order_id = place(core, csr)
    first = core.random_value(order_id)
    clock.advance(86400 * 29)
    assert core.random_value(order_id) == first  # still valid: same value
    clock.advance(86400 + 1)
    check = core.begin_check(order_id)
    assert check.value is None and check.fetch == ()  # expired: nothing can match
    assert not core.finish_check(check, {}).all_ok
    assert core.order(order_id).status is OrderStatus.PENDING  # expiry does not fail the order
    second = core.random_value(order_id)
    assert second.value != first.value and second.created_at == clock.now()
    assert validate(core, order_id).all_ok  # type: ignore[attr-defined]


def test_forced_expiry_and_stale_results_do_not_count(shared_ca: object, csr: Csr) -> None:
    core, _ = make_core(shared_ca)
    order_id = place(core, csr)
    check = core.begin_check(order_id)
    core.expire_random_value(order_id)
    new = core.random_value(order_id)
    assert new.value != check.value
    out = core.finish_check(check, {"shop.example.test": None})  # fetched the old value: does not count
    assert not out.all_ok and core.order(order_id).status is OrderStatus.PENDING


def test_doomed_and_rejected(shared_ca: object, csr: Csr) -> None:
    core, _ = make_core(shared_ca)
    core.reject_next_orders(1)
    doomed, fine = place(core, csr), place(core, csr)
    assert core.order(doomed).status is OrderStatus.PENDING
    assert validate(core, doomed).order_status is OrderStatus.REJECTED  # type: ignore[attr-defined]
    assert validate(core, fine).order_status is OrderStatus.ISSUED  # type: ignore[attr-defined]
    third = place(core, csr)
    core.reject(third)
    with pytest.raises(ApiError) as err:
        core.begin_check(third)
    assert err.value.code == "invalid_order_status"


def test_cancel_requires_note_and_pending(shared_ca: object, csr: Csr) -> None:
    core, _ = make_core(shared_ca)
    order_id = place(core, csr)
    with pytest.raises(ApiError, match="invalid_value:note"):
        core.update_status(order_id, {"status": "canceled"})
    with pytest.raises(ApiError, match="invalid_value:status"):
        core.update_status(order_id, {"status": "issued", "note": "x"})
    core.update_status(order_id, {"status": "canceled", "note": "abandoned"})
    assert core.order(order_id).status is OrderStatus.CANCELED
    with pytest.raises(ApiError, match="invalid_order_status"):
        core.update_status(order_id, {"status": "canceled", "note": "again"})


def test_needs_approval(shared_ca: object, csr: Csr) -> None:
    core, _ = make_core(shared_ca, require_approval=True)
    body = dv_order_body(csr.pem)
    body["skip_approval"] = False
    reply = core.create_order("ssl_dv_geotrust", body, api_key=ADMIN)
    assert reply["requests"][0]["status"] == "pending"
    assert core.order(reply["id"]).status is OrderStatus.NEEDS_APPROVAL
    assert core.due_polls() == []
    core.approve(reply["id"])
    assert core.order(reply["id"]).status is OrderStatus.PENDING
    skipping = place(core, csr)  # skip_approval: true
    assert core.order(skipping).status is OrderStatus.PENDING


def test_reissue_needs_fresh_dcv_and_keeps_old_cert(shared_ca: object, csr: Csr) -> None:
    from .conftest import make_csr
    core, _ = make_core(shared_ca)
    order_id = place(core, csr)
    validate(core, order_id)
    first = core.order(order_id)
    new_csr = make_csr()
    reply = core.reissue(order_id, {"certificate": {"csr": new_csr.pem}})
    order = core.order(order_id)
    assert order.status is OrderStatus.REISSUE_PENDING and reply["certificate_id"] != first.certificate_id
    assert order.dcv is not None and order.dcv.value == reply["dcv_random_value"] != first.dcv.value  # type: ignore
    assert core.active_certificate(order_id).id == first.certificate_id  # the old one stays downloadable
    with pytest.raises(ApiError, match="reissue_pending"):
        core.revoke(order_id=order_id, body={"skip_approval": True}, api_key=ADMIN)
    assert validate(core, order_id).order_status is OrderStatus.ISSUED  # type: ignore[attr-defined]
    cert = core.active_certificate(order_id)
    assert cert.id == reply["certificate_id"]
    leaf = x509.load_pem_x509_certificate(cert.pem.encode())  # type: ignore[union-attr]
    assert leaf.public_key() == new_csr.key.public_key()


def test_revoke_admin_immediate_else_request(shared_ca: object, csr: Csr) -> None:
    core, _ = make_core(shared_ca)
    order_id = place(core, csr)
    validate(core, order_id)
    req = core.revoke(order_id=order_id, body={"skip_approval": True}, api_key=ORDERS_ONLY)
    assert req is not None and req.status == "pending" and core.order(order_id).status is OrderStatus.ISSUED
    assert core.revoke(order_id=order_id, body={"skip_approval": True, "comments": "key compromise"},
                       api_key=ADMIN) is None
    assert core.order(order_id).status is OrderStatus.REVOKED
    assert core.certificate(core.order(order_id).certificate_id).revoked_at is not None


def test_certificate_expiry_makes_order_expired(shared_ca: object, csr: Csr) -> None:
    core, clock = make_core(shared_ca, max_cert_days=10)
    order_id = place(core, csr)
    validate(core, order_id)
    clock.advance(86400 * 10 + 1)
    assert core.order(order_id).status is OrderStatus.EXPIRED
    orders, _ = core.list_orders(status="issued")  # the issued filter also matches expired orders
    assert [o.id for o in orders] == [order_id]


def test_list_filters_sort_and_paging(shared_ca: object, csr: Csr) -> None:
    core, clock = make_core(shared_ca)
    ids = [place(core, csr, f"n{i}.example.test") for i in range(5)]
    clock.advance(1)
    validate(core, ids[0])
    core.update_status(ids[1], {"status": "canceled", "note": "x"})
    pending, total = core.list_orders(status="pending")
    assert total == 3 and [o.id for o in pending] == ids[2:]
    found, _ = core.list_orders(common_name="N3.Example.Test", status="pending")
    assert [o.id for o in found] == [ids[3]]
    page, total = core.list_orders(sort="-id", offset=1, limit=2)
    assert total == 5 and [o.id for o in page] == [ids[3], ids[2]]
    with pytest.raises(ApiError, match="invalid_value:limit"):
        core.list_orders(limit=0)


def test_status_changes_window(shared_ca: object, csr: Csr) -> None:
    core, clock = make_core(shared_ca)
    a = place(core, csr)
    clock.advance(600)
    b = place(core, csr)
    validate(core, a)
    now = clock.now()
    recent = core.status_changes(now - dt.timedelta(minutes=5), now)
    assert [(c.order_id, c.status) for c in recent] == [(b, OrderStatus.PENDING), (a, OrderStatus.ISSUED)]
    everything = core.status_changes(now - dt.timedelta(hours=1), now)
    assert {c.order_id for c in everything} == {a, b}  # one entry per order: its latest change


def test_due_polls_follow_the_schedule(shared_ca: object, csr: Csr) -> None:
    core, clock = make_core(shared_ca)
    order_id = place(core, csr)
    assert core.due_polls() == []
    clock.advance(60)
    due = core.due_polls()
    assert [c.order_id for c in due] == [order_id] and due[0].trigger == "poll"
    assert core.due_polls() == []  # claimed
    clock.advance(59)
    assert core.due_polls() == []
    clock.advance(1)
    assert len(core.due_polls()) == 1
    core.begin_check(order_id)  # a manual check restarts the schedule
    clock.advance(59)
    assert core.due_polls() == []
    clock.advance(86400 * 11)
    assert len(core.due_polls()) == 1  # one late poll...
    clock.advance(3600)
    assert core.due_polls() == []  # ...and then the 10-day schedule is over


def test_validation_errors(shared_ca: object, csr: Csr) -> None:
    core, _ = make_core(shared_ca)

    def code(product: str, body: object) -> str:
        with pytest.raises(ApiError) as err:
            core.create_order(product, body, api_key=ADMIN)
        return err.value.code

    good = dv_order_body(csr.pem)
    assert code("ssl_nope", good) == "not_found|product"
    assert code("ssl_dv_geotrust", dv_order_body(csr.pem, "*.example.test")) == "invalid_wildcard_dcv_method"
    assert code("ssl_dv_geotrust", dv_order_body(csr.pem, dns_names=["*.example.test"])) == \
        "invalid_wildcard_dcv_method"
    assert code("ssl_dv_geotrust", dv_order_body("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n"
                                                 "-----END CERTIFICATE REQUEST-----")) == "csr_invalid_cannot_parse"
    assert code("ssl_dv_geotrust", {**good, "order_validity": {"years": 4}}) == "invalid_value:years"
    assert code("ssl_dv_geotrust", {**good, "order_validity": None}) == "invalid_value:order_validity"
    assert code("ssl_dv_geotrust", {**good, "dcv_method": "http-token-dynamic"}) == "invalid_dcv_method"
    assert code("ssl_dv_geotrust", [1]) == "bad_request_format"
    body = dv_order_body(csr.pem)
    body["certificate"] = {**body["certificate"], "cert_validity": {"days": 400}}  # type: ignore[dict-item]
    assert code("ssl_dv_geotrust", body) == "cert_validity_exceeds_order_validity"
    legacy = {k: v for k, v in good.items() if k != "order_validity"} | {"validity_years": 1}
    assert core.create_order("ssl_dv_geotrust", legacy, api_key=ADMIN)["id"]
    # a wildcard is fine for a non-file method
    assert core.create_order("wildcard_dv_geotrust", dv_order_body(csr.pem, "*.example.test",
                                                                   dcv_method="dns-txt-token"), api_key=ADMIN)


def test_check_dcv_method_errors(shared_ca: object, csr: Csr) -> None:
    core, _ = make_core(shared_ca)
    email = place(core, csr, dcv_method="email")
    assert core.order(email).dcv is None
    with pytest.raises(ApiError, match="invalid_dns_method"):
        core.begin_check(email)
    with pytest.raises(ApiError, match="invalid_dcv_method"):
        core.random_value(email)
    value = core.change_dcv_method(email, {"dcv_method": "http-token"})
    assert value is not None and core.random_value(email) == value
    with pytest.raises(ApiError, match="invalid_value:dns_names_validations"):
        core.begin_check(email, ["other.example.test"])


def test_resolve_wildcards_exact_names_win_then_the_longest_suffix_then_star(shared_ca: object) -> None:
    core, _ = make_core(shared_ca)
    core.set_resolve({"shop.example.test": "127.0.0.9:81", "*.example.test": "127.0.0.8:82",
                      "*.deep.example.test": "127.0.0.7", "*": ["127.0.0.2:8080"]})
    assert core.pick_address("shop.example.test", 80) == ("127.0.0.9", 81)
    assert core.pick_address("other.example.test", 80) == ("127.0.0.8", 82)
    assert core.pick_address("a.b.deep.example.test", 80) == ("127.0.0.7", 80)
    assert core.pick_address("example.test", 80) == ("127.0.0.2", 8080)  # "*.example.test" is only below it
    assert core.pick_address("Anything.Else.", 80) == ("127.0.0.2", 8080)
    core.set_resolve({"*.example.test": "127.0.0.8"})
    assert core.pick_address("unmapped.test", 80) is None

"""The HTTP API against a running simulator (httpx): auth, error shapes, lifecycle, rate limits, faults."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from certcentral_sim import ApiKey, FakeClock, Permission, SimConfig, SimulatorThread

from .conftest import Csr, dv_order_body


def client(sim: SimulatorThread, key: str | None = None, timeout: float = 5.0) -> httpx.Client:
    headers = {"Content-Type": "application/json"}
    headers["X-DC-DEVKEY"] = key if key is not None else sim.api_key
    return httpx.Client(base_url=sim.url, headers=headers, timeout=timeout)


def assert_error(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"errors"} and isinstance(body["errors"], list) and len(body["errors"]) == 1
    assert body["errors"][0]["code"] == code and body["errors"][0]["message"]


@pytest.fixture
def api(sim: SimulatorThread) -> Iterator[httpx.Client]:
    with client(sim) as c:
        yield c


def test_auth(sim: SimulatorThread) -> None:
    with httpx.Client(base_url=sim.url, timeout=5) as anon:
        assert_error(anon.get("/order/certificate"), 401, "invalid_api_key")
    with client(sim, "wrong") as bad:
        assert_error(bad.get("/order/certificate"), 401, "invalid_api_key")
        assert_error(bad.get("/no/such/route"), 401, "invalid_api_key")  # auth before routing


def test_view_only_key_is_get_only(csr: Csr) -> None:
    config = SimConfig(api_keys=(ApiKey("admin"), ApiKey("viewer", Permission.VIEW_ONLY)))
    with SimulatorThread(config=config) as sim, client(sim, "viewer") as viewer:
        assert viewer.get("/order/certificate").status_code == 200
        assert_error(viewer.post("/order/certificate/ssl_dv_geotrust", json=dv_order_body(csr.pem)), 403,
                     "access_denied|missing_permission")


def test_validation_errors_in_reference_shape(api: httpx.Client, csr: Csr) -> None:
    assert_error(api.post("/order/certificate/ssl_dv_geotrust", content=b"{nope"), 400, "bad_request_format")
    assert_error(api.post("/order/certificate/ssl_unknown", json=dv_order_body(csr.pem)), 404, "not_found|product")
    assert_error(api.post("/order/certificate/wildcard_dv_geotrust", json=dv_order_body(csr.pem, "*.example.test")),
                 400, "invalid_wildcard_dcv_method")
    assert_error(api.post("/order/certificate/ssl_dv_geotrust", json=dv_order_body("garbage")), 400,
                 "csr_invalid_cannot_parse")
    body = dv_order_body(csr.pem)
    body["order_validity"] = {"years": 5}
    assert_error(api.post("/order/certificate/ssl_dv_geotrust", json=body), 400, "invalid_value:years")
    assert_error(api.get("/order/certificate/999"), 404, "not_found|order")
    assert_error(api.get("/order/certificate/999/bogus"), 404, "not_found|route")
    assert_error(api.delete("/order/certificate/999"), 404, "not_found|route")
    assert_error(api.get("/order/certificate/status-changes"), 400, "bad_request_format")
    assert_error(api.get("/order/certificate/status-changes", params={"minutes": 10081}), 400,
                 "time_frame_too_long")
    assert_error(api.get("/order/certificate", params={"limit": "x"}), 400, "invalid_value:limit")


def test_order_lifecycle_until_cancel(api: httpx.Client, sim: SimulatorThread, csr: Csr) -> None:
    created = api.post("/order/certificate/ssl_dv_geotrust", json=dv_order_body(csr.pem))
    assert created.status_code == 201
    reply = created.json()
    order_id, value = reply["id"], reply["dcv_random_value"]
    assert reply["certificate_id"] and reply["requests"][0]["id"]

    info = api.get(f"/order/certificate/{order_id}").json()
    assert info["status"] == "pending" and info["dcv_method"] == "http-token"
    assert info["certificate"]["id"] == reply["certificate_id"]
    assert info["certificate"]["common_name"] == "shop.example.test"
    assert info["product"]["name_id"] == "ssl_dv_geotrust"

    rv = api.put(f"/order/certificate/{order_id}/dcv-random-value")
    assert rv.status_code == 200 and rv.json()["dcv_random_value"] == value
    assert rv.json()["expiration_date"].endswith("+00:00")
    sim.expire_random_value(order_id)
    fresh = api.put(f"/order/certificate/{order_id}/dcv-random-value").json()["dcv_random_value"]
    assert fresh != value and sim.random_value(order_id) == fresh

    listed = api.get("/order/certificate", params={"filters[common_name]": "shop.example.test",
                                                   "filters[status]": "pending"}).json()
    assert [o["id"] for o in listed["orders"]] == [order_id]
    assert listed["page"] == {"total": 1, "limit": 1000, "offset": 0}

    changes = api.get("/order/certificate/status-changes", params={"minutes": 5}).json()
    assert changes == {"orders": [{"order_id": order_id, "certificate_id": reply["certificate_id"],
                                   "status": "pending"}]}

    assert_error(api.get(f"/certificate/{reply['certificate_id']}/download/format/pem_all"), 400,
                 "certificate_not_issued")
    assert_error(api.put(f"/order/certificate/{order_id}/status", json={"status": "canceled"}), 400,
                 "invalid_value:note")
    assert api.put(f"/order/certificate/{order_id}/status",
                   json={"status": "canceled", "note": "abandoned"}).status_code == 204
    assert api.get(f"/order/certificate/{order_id}").json()["status"] == "canceled"
    assert [o.status for o in sim.orders()] == ["canceled"]


def test_dcv_method_change(api: httpx.Client, csr: Csr) -> None:
    order_id = api.post("/order/certificate/ssl_dv_geotrust",
                        json=dv_order_body(csr.pem, dcv_method="email")).json()["id"]
    assert_error(api.put(f"/order/certificate/{order_id}/check-dcv"), 400, "invalid_dns_method")
    resp = api.put(f"/order/certificate/{order_id}/dcv-method", json={"dcv_method": "http-token"})
    assert resp.status_code == 200 and len(resp.json()["dcv_random_value"]) == 32
    assert api.put(f"/order/certificate/{order_id}/dcv-method", json={"dcv_method": "email"}).status_code == 204


def test_rate_limit_per_key(csr: Csr) -> None:
    clock = FakeClock()
    config = SimConfig(api_keys=(ApiKey("a"), ApiKey("b")), rate_limits=((5, 5.0), (8, 180.0)))
    with SimulatorThread(config=config, clock=clock) as sim, client(sim, "a") as a, client(sim, "b") as b:
        assert [a.get("/order/certificate").status_code for _ in range(5)] == [200] * 5
        assert_error(a.get("/order/certificate"), 429, "request_limit_exceeded")
        assert a.get("/order/certificate").json()["errors"][0]["message"] == \
            "Service unavailable, please limit request volume"
        assert b.get("/order/certificate").status_code == 200  # per key
        clock.advance(5)
        assert [a.get("/order/certificate").status_code for _ in range(4)] == [200, 200, 200, 429]  # 1000/180 s
        clock.advance(180)
        assert a.get("/order/certificate").status_code == 200


def test_injected_statuses_and_errors_object(api: httpx.Client, sim: SimulatorThread) -> None:
    sim.fail_next(2, status=500)
    assert [api.get("/order/certificate").status_code for _ in range(3)] == [500, 500, 200]
    sim.rate_limit_next(1)
    assert_error(api.get("/order/certificate"), 429, "request_limit_exceeded")
    sim.fail_next(1, status=503, method="POST")
    assert api.get("/order/certificate").status_code == 200  # GET does not match
    assert api.post("/order/certificate/ssl_nope", json={}).status_code == 503
    sim.errors_as_object_next(1)
    body = api.get("/order/certificate/424242").json()
    assert body == {"errors": {"code": "not_found|order", "message": "The requested order was not found."}}
    assert isinstance(api.get("/order/certificate/424242").json()["errors"], list)


def test_unknown_outcome_create_then_find(api: httpx.Client, sim: SimulatorThread, csr: Csr) -> None:
    """The order is created but the answer is lost: the client finds it by searching (reference §3)."""
    sim.hang_next(1, seconds=3.0, method="POST", path="/order/certificate/*", after=True)
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        api.post("/order/certificate/ssl_dv_geotrust", json=dv_order_body(csr.pem), timeout=0.5)
    assert time.monotonic() - started < 2.0
    found = api.get("/order/certificate", params={"filters[common_name]": "shop.example.test",
                                                  "filters[status]": "pending"}).json()["orders"]
    assert len(found) == 1
    order_id = found[0]["id"]
    value = api.put(f"/order/certificate/{order_id}/dcv-random-value").json()["dcv_random_value"]
    assert value == sim.random_value(order_id)
    sim.fail_next(1, status=500, method="POST", after=True)
    assert api.post("/order/certificate/ssl_dv_geotrust", json=dv_order_body(csr.pem)).status_code == 500
    assert len(sim.orders()) == 2


def test_hang_before_processing_creates_nothing(sim: SimulatorThread, csr: Csr) -> None:
    sim.hang_next(1, seconds=3.0)
    with client(sim, timeout=0.3) as c, pytest.raises(httpx.ReadTimeout):
        c.post("/order/certificate/ssl_dv_geotrust", json=dv_order_body(csr.pem))
    assert sim.orders() == []


def test_admin_api(sim: SimulatorThread, csr: Csr) -> None:
    with httpx.Client(base_url=sim.origin, timeout=5) as admin, client(sim) as api:
        assert admin.get("/_sim/root.pem").text == sim.root_pem
        assert admin.put("/_sim/resolve", json={"shop.example.test": ["127.0.0.1:1", "127.0.0.1:2"]}).json() == \
            {"shop.example.test": ["127.0.0.1:1", "127.0.0.1:2"]}
        assert admin.post("/_sim/faults", json={"kind": "status", "status": 502, "count": 1}).status_code == 201
        assert api.get("/order/certificate").status_code == 502
        order_id = api.post("/order/certificate/ssl_dv_geotrust", json=dv_order_body(csr.pem)).json()["id"]
        orders = admin.get("/_sim/orders").json()["orders"]
        assert orders[0]["id"] == order_id and orders[0]["dcv_random_value"] == sim.random_value(order_id)
        assert admin.post(f"/_sim/orders/{order_id}/reject").json()["status"] == "rejected"
        assert api.get(f"/order/certificate/{order_id}").json()["status"] == "rejected"
        assert admin.post("/_sim/clock", json={"seconds": 5}).status_code == 400  # not a fake clock

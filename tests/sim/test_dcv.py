"""Real http-token validation: the simulator fetches fileauth.txt from loopback web servers (reference §4)."""

from __future__ import annotations

import datetime as dt
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from certcentral_sim import FakeClock, SimConfig, SimulatorThread
from lockstep.pki import issue, make_ca

from .conftest import FILEAUTH, Csr, FileServer, closed_port, dv_order_body, make_csr

NAME = "shop.example.test"


@pytest.fixture
def api(sim: SimulatorThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, headers={"X-DC-DEVKEY": sim.api_key}, timeout=15) as c:
        yield c


def place(api: httpx.Client, csr: Csr, name: str = NAME, **kw: object) -> tuple[int, str]:
    resp = api.post("/order/certificate/ssl_dv_geotrust", json=dv_order_body(csr.pem, name, **kw))
    assert resp.status_code == 201, resp.text
    return resp.json()["id"], resp.json()["dcv_random_value"]


def check(api: httpx.Client, order_id: int, body: object = None) -> httpx.Response:
    return api.put(f"/order/certificate/{order_id}/check-dcv", json=body) if body is not None else \
        api.put(f"/order/certificate/{order_id}/check-dcv")


def assert_not_found(resp: httpx.Response) -> None:
    assert resp.status_code == 400, resp.text
    assert resp.json() == {"errors": [{"code": "file_random_value_not_found", "message": (
        "Could not find the random value at the expected file location for one or more domains.")}]}


def verify_chain(pem_all: str, root_pem: str, name: str, *, at: dt.datetime) -> list[x509.Certificate]:
    certs = x509.load_pem_x509_certificates(pem_all.encode())
    root = x509.load_pem_x509_certificate(root_pem.encode())
    verifier = PolicyBuilder().store(Store([root])).time(at).build_server_verifier(x509.DNSName(name))
    chain = verifier.verify(certs[0], certs[1:])
    assert [c.subject for c in chain] == [c.subject for c in certs]  # leaf -> intermediate -> root
    certs[0].verify_directly_issued_by(certs[1])
    certs[1].verify_directly_issued_by(root)
    return certs


def test_issue_after_real_fetch(api: httpx.Client, sim: SimulatorThread, web: FileServer) -> None:
    csr = make_csr(NAME)
    sim.set_resolve({NAME: web.addr})
    order_id, value = place(api, csr)
    web.serve(NAME, value + "\n")
    resp = check(api, order_id)
    assert resp.status_code == 200, resp.text
    cert_id = api.get(f"/order/certificate/{order_id}").json()["certificate"]["id"]
    assert resp.json() == {"order_status": "issued", "certificate_id": cert_id, "dcv_status": "valid",
                           "dns_name_validations": [{"dns_name": NAME, "status": "approved"}]}
    assert web.requests == [(NAME, FILEAUTH)]  # Host: <fqdn>, exact path
    fetch = sim.fetches()[-1]
    assert fetch.ok and fetch.peers == (web.addr,) and fetch.trigger == "check-dcv"

    info = api.get(f"/order/certificate/{order_id}").json()
    assert info["status"] == "issued" and info["certificate"]["serial_number"]
    dl = api.get(f"/certificate/{cert_id}/download/format/pem_all")
    assert dl.status_code == 200 and dl.headers["content-type"].startswith("application/x-pem-file")
    certs = verify_chain(dl.text, sim.root_pem, NAME, at=dt.datetime.now(dt.UTC))
    leaf = certs[0]
    assert leaf.public_key() == csr.key.public_key()
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == [NAME]
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(days=199)
    assert f"{leaf.serial_number:X}" == info["certificate"]["serial_number"]

    by_order = api.get(f"/certificate/download/order/{order_id}/format/pem_noroot")
    assert len(x509.load_pem_x509_certificates(by_order.content)) == 2
    assert len(x509.load_pem_x509_certificates(
        api.get(f"/certificate/{cert_id}/download/format/pem_nointermediate").content)) == 2
    p7b = api.get(f"/certificate/{cert_id}/download/format/p7b")
    assert p7b.headers["content-type"].startswith("application/x-pkcs7-certificates")
    assert p7b.text.startswith("-----BEGIN PKCS7-----")
    assert api.get(f"/certificate/{cert_id}/download/format/apache").status_code == 400
    assert sim.chain_pem(order_id) == dl.text

    # revoke: admin key + skip_approval -> 204
    assert api.put(f"/order/certificate/{order_id}/revoke", json={"skip_approval": True}).status_code == 204
    assert api.get(f"/order/certificate/{order_id}").json()["status"] == "revoked"


@pytest.mark.parametrize("setup", [
    pytest.param(lambda web, value: web.serve(NAME, "wrong-token"), id="wrong-token"),
    pytest.param(lambda web, value: None, id="404"),
    pytest.param(lambda web, value: web.serve(NAME, value, status=500), id="500-with-value"),
    pytest.param(lambda web, value: web.serve(NAME, ""), id="empty"),
    pytest.param(lambda web, value: web.serve(NAME, value.upper()), id="case"),
    pytest.param(lambda web, value: web.serve(NAME, value, path=FILEAUTH.upper()), id="path-is-case-sensitive"),
    pytest.param(lambda web, value: web.serve(NAME, "x" * 6000 + value), id="beyond-5000-bytes"),
    pytest.param(lambda web, value: web.serve("example.test", value), id="parent-domain-only"),
])
def test_negative_fetches(api: httpx.Client, sim: SimulatorThread, web: FileServer, csr: Csr,
                          setup: Callable[[FileServer, str], None]) -> None:
    sim.set_resolve({NAME: web.addr, "example.test": web.addr})
    order_id, value = place(api, csr)
    setup(web, value)
    assert_not_found(check(api, order_id))
    assert api.get(f"/order/certificate/{order_id}").json()["status"] == "pending"
    web.serve(NAME, f"  {value}\r\n")  # then the right file: whitespace around it is fine
    assert check(api, order_id).json()["order_status"] == "issued"


def test_one_redirect_within_base_domain_is_followed(api: httpx.Client, sim: SimulatorThread, web: FileServer,
                                                     csr: Csr) -> None:
    target = "http://files.example.test/validation/fileauth.txt"
    sim.set_resolve({NAME: web.addr, "files.example.test": web.addr})
    order_id, value = place(api, csr)
    web.redirect(NAME, target, status=302)
    web.serve("files.example.test", value, path="/validation/fileauth.txt")
    assert check(api, order_id).status_code == 200
    assert web.requests == [(NAME, FILEAUTH), ("files.example.test", "/validation/fileauth.txt")]
    assert sim.fetches()[-1].urls == (f"http://{NAME}{FILEAUTH}", target)


@pytest.mark.parametrize("status,location,resolve_extra", [
    (301, "http://files.example.net/f.txt", "files.example.net"),  # other base domain
    (301, "http://files.example.test:8080/f.txt", "files.example.test"),  # port other than 80/443
    (303, "http://files.example.test/f.txt", "files.example.test"),  # redirect kind not followed
    (301, "http://hop.example.test/f.txt", "hop.example.test"),  # two redirects
])
def test_redirect_rules(api: httpx.Client, sim: SimulatorThread, web: FileServer, csr: Csr, status: int,
                        location: str, resolve_extra: str) -> None:
    sim.set_resolve({NAME: web.addr, resolve_extra: web.addr, "files.example.test": web.addr})
    order_id, value = place(api, csr)
    web.redirect(NAME, location, status=status)
    web.serve(resolve_extra, value, path="/f.txt")
    if resolve_extra == "hop.example.test":
        web.redirect("hop.example.test", "http://files.example.test/f.txt", path="/f.txt")
        web.serve("files.example.test", value, path="/f.txt")
    assert_not_found(check(api, order_id))
    hops = 2 if resolve_extra == "hop.example.test" else 1
    assert len(web.requests) == hops  # the refused target is never fetched


def test_redirect_to_https_on_443(api: httpx.Client, sim: SimulatorThread, web: FileServer, csr: Csr) -> None:
    now = dt.datetime.now(dt.UTC)
    site_cert = issue(make_ca("site CA", now=now), [NAME], now=now)  # any certificate is accepted
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "site.pem").write_text(site_cert.cert_pem + site_cert.key_pem)
        ctx.load_cert_chain(Path(tmp) / "site.pem")
    tls = FileServer(tls=ctx).start()
    try:
        sim.set_resolve({NAME: web.addr, f"{NAME}:443": tls.addr})
        order_id, value = place(api, csr)
        web.redirect(NAME, f"https://{NAME}{FILEAUTH}")
        tls.serve(NAME, value)
        assert check(api, order_id).status_code == 200
        assert tls.requests == [(NAME, FILEAUTH)]
        assert sim.fetches()[-1].peers == (web.addr, tls.addr)
    finally:
        tls.stop()


def test_unreachable_and_unmapped(api: httpx.Client, sim: SimulatorThread, csr: Csr) -> None:
    order_id, _ = place(api, csr)
    assert_not_found(check(api, order_id))  # not in the resolve map at all
    assert sim.fetches()[-1].reason == "name_not_resolvable"
    sim.set_resolve({NAME: f"127.0.0.1:{closed_port()}"})
    assert_not_found(check(api, order_id))
    assert sim.fetches()[-1].reason == "connection_failed"


def test_random_address_per_fetch(api: httpx.Client, sim: SimulatorThread, csr: Csr) -> None:
    """Two edge nodes behind one name, picked at random per fetch: the one without the file fails the check."""
    good, stale = FileServer().start(), FileServer().start()
    try:
        sim.set_resolve({NAME: [good.addr, stale.addr]})
        order_id, value = place(api, csr)
        good.serve(NAME, value)
        attempts = 0
        while (status := check(api, order_id).status_code) != 200:
            assert status == 400
            attempts += 1
            assert attempts < 40
        assert len(good.requests) == 1 and len(stale.requests) == attempts
        assert [f.peers for f in sim.fetches()] == [(stale.addr,)] * attempts + [(good.addr,)]
        other, _ = place(api, csr)  # nobody serves this value: every check fails, on either node
        for _ in range(20):
            assert_not_found(check(api, other))
        assert {f.peers[0] for f in sim.fetches()[attempts + 1:]} == {good.addr, stale.addr}
    finally:
        good.stop()
        stale.stop()


def test_expired_value_no_longer_validates(api: httpx.Client, sim: SimulatorThread, web: FileServer,
                                           csr: Csr) -> None:
    sim.set_resolve({NAME: web.addr})
    order_id, old = place(api, csr)
    web.serve(NAME, old)
    sim.expire_random_value(order_id)
    assert_not_found(check(api, order_id))  # the old file no longer validates
    assert web.requests == []  # nothing could match, nothing fetched
    new = api.put(f"/order/certificate/{order_id}/dcv-random-value").json()["dcv_random_value"]
    assert new != old
    assert_not_found(check(api, order_id))  # still the old file
    web.serve(NAME, new)
    assert check(api, order_id).status_code == 200


def test_multi_name_and_subset_check(api: httpx.Client, sim: SimulatorThread, web: FileServer, csr: Csr) -> None:
    www = "www.example.test"
    sim.set_resolve({NAME: web.addr, www: web.addr})
    order_id, value = place(api, csr, dns_names=[www])
    web.serve(NAME, value)
    resp = check(api, order_id, {"dns_names_validations": [{"dns_name": NAME}]})
    assert resp.status_code == 200  # the checked name passed...
    assert resp.json()["order_status"] == "pending"  # ...but the order needs every name
    assert resp.json()["dns_name_validations"] == [{"dns_name": NAME, "status": "approved"}]
    assert_not_found(check(api, order_id))
    web.serve(www, value)
    resp = check(api, order_id)
    assert resp.json()["order_status"] == "issued"
    leaf = x509.load_pem_x509_certificates(sim.chain_pem(order_id).encode())[0]
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == [NAME, www]


def test_delayed_issuance_and_rejection(csr: Csr, web: FileServer) -> None:
    with SimulatorThread(config=SimConfig(issuance_delay_s=0.3, auto_poll=False)) as sim, \
            httpx.Client(base_url=sim.url, headers={"X-DC-DEVKEY": sim.api_key}, timeout=10) as api:
        sim.set_resolve({NAME: web.addr})
        order_id, value = place(api, csr)
        web.serve(NAME, value)
        resp = check(api, order_id)
        assert resp.status_code == 200 and resp.json()["order_status"] == "pending"
        assert resp.json()["dcv_status"] == "valid"
        time.sleep(0.4)
        assert api.get(f"/order/certificate/{order_id}").json()["status"] == "issued"

        sim.reject_next_orders(1)
        doomed, value = place(api, csr)
        web.serve(NAME, value)
        assert check(api, doomed).json()["order_status"] == "rejected"
        changes = api.get("/order/certificate/status-changes", params={"seconds": 60}).json()["orders"]
        assert {(c["order_id"], c["status"]) for c in changes} == {(order_id, "issued"), (doomed, "rejected")}


def test_automatic_polling_on_fake_clock(csr: Csr, web: FileServer) -> None:
    clock = FakeClock(dt.datetime.now(dt.UTC))
    with SimulatorThread(config=SimConfig(poll_tick_s=0.02), clock=clock) as sim, \
            httpx.Client(base_url=sim.url, headers={"X-DC-DEVKEY": sim.api_key}, timeout=10) as api:
        sim.set_resolve({NAME: web.addr})
        order_id, value = place(api, csr)
        sim.advance_clock(61)  # first poll is due: the file is not there yet
        _wait(lambda: len(sim.fetches()) == 1)
        assert sim.fetches()[0].trigger == "poll" and not sim.fetches()[0].ok
        web.serve(NAME, value)  # no check-dcv: DigiCert's own polling finds it
        time.sleep(0.1)
        assert len(sim.fetches()) == 1  # nothing due before the next minute
        sim.advance_clock(60)
        _wait(lambda: sim.order(order_id).status == "issued")
        verify_chain(sim.chain_pem(order_id), sim.root_pem, NAME, at=clock.now())


def _wait(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_fetch_timeout_is_a_failed_check(csr: Csr) -> None:
    """A web server that accepts the connection but never answers: the read timeout fails the fetch."""
    import socket
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever reads or writes
        addr = f"127.0.0.1:{silent.getsockname()[1]}"
        config = SimConfig(fetch_connect_timeout_s=0.3, fetch_read_timeout_s=0.3, auto_poll=False)
        with SimulatorThread(config=config, resolve={NAME: addr}) as sim, \
                httpx.Client(base_url=sim.url, headers={"X-DC-DEVKEY": sim.api_key}, timeout=10) as api:
            order_id, _ = place(api, csr)
            started = time.monotonic()
            assert_not_found(check(api, order_id))
            assert time.monotonic() - started < 2.0
            assert sim.fetches()[-1].reason == "timeout"


def test_reissue_and_revocations_over_http(api: httpx.Client, sim: SimulatorThread, web: FileServer) -> None:
    sim.set_resolve({NAME: web.addr})
    order_id, value = place(api, make_csr(NAME))
    web.serve(NAME, value)
    assert check(api, order_id).status_code == 200
    first_cert = api.get(f"/order/certificate/{order_id}").json()["certificate"]

    new_csr = make_csr(NAME)
    reissued = api.post(f"/order/certificate/{order_id}/reissue", json={"certificate": {"csr": new_csr.pem}})
    assert reissued.status_code == 201, reissued.text
    new_value = reissued.json()["dcv_random_value"]
    assert new_value != value and api.get(f"/order/certificate/{order_id}").json()["status"] == "reissue_pending"
    assert_not_found(check(api, order_id))  # DV never reuses DCV: the old file is not enough
    web.serve(NAME, new_value)
    assert check(api, order_id).json()["order_status"] == "issued"
    info = api.get(f"/order/certificate/{order_id}").json()
    assert info["certificate"]["id"] == reissued.json()["certificate_id"] != first_cert["id"]
    leaf = x509.load_pem_x509_certificates(
        api.get(f"/certificate/download/order/{order_id}/format/pem_all").content)[0]
    assert leaf.public_key() == new_csr.key.public_key()
    old = api.get(f"/certificate/{first_cert['id']}/download/format/pem_all")  # the old cert stays downloadable
    assert x509.load_pem_x509_certificates(old.content)[0].serial_number == int(first_cert["serial_number"], 16)

    # without skip_approval: a pending revoke request (201); by serial with skip_approval: revoked at once (204)
    pending = api.put(f"/certificate/{first_cert['id']}/revoke", json={"comments": "superseded"})
    assert pending.status_code == 201 and pending.json()["type"] == "revoke" and pending.json()["status"] == "pending"
    assert api.put(f"/certificate/{first_cert['serial_number']}/revoke",
                   json={"skip_approval": True, "revocation_reason": "superseded"}).status_code == 204
    assert api.get(f"/order/certificate/{order_id}").json()["status"] == "issued"  # the order stays active
    assert sim.certificates()[first_cert["id"]].revoked_at is not None

    today = dt.datetime.now(dt.timezone.utc).date()
    span = f"{today - dt.timedelta(days=1)}...{today + dt.timedelta(days=1)}"
    changes = api.get("/order/certificate/status-changes", params={"filters[status_last_updated]": span})
    assert changes.json()["orders"] == [{"order_id": order_id, "certificate_id": info["certificate"]["id"],
                                         "status": "issued"}]
    too_long = f"{today - dt.timedelta(days=8)}...{today}"
    assert api.get("/order/certificate/status-changes",
                   params={"filters[status_last_updated]": too_long}).json()["errors"][0]["code"] == \
        "time_frame_too_long"

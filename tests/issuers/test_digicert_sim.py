"""`DigiCertIssuer` against the CertCentral simulator on 127.0.0.1, with real fileauth.txt fetches.

Flow: place an order -> publish its token on a loopback web server the simulator resolves the name to -> check-dcv ->
issued -> download -> the chain verifies up to the simulator's root and carries the CSR's key and the name.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store

from controlplane.issuers import (
    FILEAUTH_PATH,
    CaAuthError,
    DigiCertIssuer,
    OrderNotFound,
    OrderRejected,
    OrderStatus,
    RevocationStatus,
    TokenBucket,
    UnknownOutcome,
    ValidationNotFound,
)

from .conftest import FileauthServer, make_csr

sim_mod = pytest.importorskip("certcentral_sim")

_names = itertools.count(1)


def fresh_domain() -> str:
    return f"shop{next(_names)}.example.test"


@pytest.fixture(scope="module")
def sim() -> Iterator[Any]:
    thread = sim_mod.SimulatorThread(config=sim_mod.SimConfig(auto_poll=False, hang_s=3.0), seed=11)
    thread.start()
    try:
        yield thread
    finally:
        thread.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def make(sim: Any, http: httpx.AsyncClient, **kw: Any) -> DigiCertIssuer:
    opts: dict[str, Any] = {"api_key": sim.api_key, "base_url": sim.url, "request_timeout_s": 10.0,
                            "bucket": TokenBucket(rate_per_s=500, burst=50)}
    opts.update(kw)
    return DigiCertIssuer(http, **opts)


def verify_chain(pem: str, *, root_pem: str, domain: str, key_spki: bytes) -> None:
    certs = x509.load_pem_x509_certificates(pem.encode())
    leaf, intermediates = certs[0], certs[1:]
    assert leaf.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo) == key_spki
    root = x509.load_pem_x509_certificate(root_pem.encode())
    verifier = (PolicyBuilder().store(Store([root])).time(dt.datetime.now(dt.UTC))
                .build_server_verifier(x509.DNSName(domain)))
    verifier.verify(leaf, intermediates)


async def test_order_validate_issue_download(sim: Any, http: httpx.AsyncClient, fileauth: FileauthServer) -> None:
    domain = fresh_domain()
    csr = make_csr(domain)
    sim.set_resolve({domain: f"127.0.0.1:{fileauth.port}"})
    issuer = make(sim, http)

    order = await issuer.place_order(domain, csr.pem, validity_days=90)
    assert order.status is OrderStatus.PENDING and order.certificate_id
    (token,) = order.tokens
    assert (token.host, token.path) == (domain, FILEAUTH_PATH)
    assert token.value == sim.random_value(int(order.order_id))

    with pytest.raises(ValidationNotFound):  # nothing published yet
        await issuer.request_validation(order)

    fileauth.files[domain] = token.value
    validated = await issuer.request_validation(order)
    assert validated.status in (OrderStatus.PROCESSING, OrderStatus.ISSUED)
    assert domain in fileauth.hits

    current = await issuer.get_order(order.order_id, domain)
    assert current.status is OrderStatus.ISSUED and current.tokens == ()
    pem = await issuer.download(current)
    verify_chain(pem, root_pem=sim.root_pem, domain=domain, key_spki=csr.spki())
    assert sim.root_pem.strip() not in pem  # pem_noroot: what a TLS server sends

    assert await issuer.revoke(current) is RevocationStatus.REVOKED
    assert (await issuer.get_order(order.order_id, domain)).status is OrderStatus.REVOKED
    assert await issuer.revoke(current) is RevocationStatus.REVOKED  # twice is fine


@pytest.mark.parametrize("fault", ["status-500-after", "hang-after"])
async def test_unknown_outcome_then_find_order(sim: Any, http: httpx.AsyncClient, fileauth: FileauthServer,
                                               fault: str) -> None:
    domain = fresh_domain()
    csr = make_csr(domain)
    sim.set_resolve({domain: f"127.0.0.1:{fileauth.port}"})
    issuer = make(sim, http, request_timeout_s=0.3)
    before = {o.id for o in sim.orders()}
    hang_s, started = 1.0, time.monotonic()
    if fault == "hang-after":
        sim.hang_next(seconds=hang_s, method="POST", path="/order/certificate/*", after=True)
    else:
        sim.fail_next(status=500, method="POST", path="/order/certificate/*", after=True)

    with pytest.raises(UnknownOutcome):
        await issuer.place_order(domain, csr.pem, validity_days=90)
    created = [o for o in sim.orders() if o.id not in before]
    assert len(created) == 1  # the CA did act, exactly once: no blind retry

    assert await issuer.find_order(domain, csr_pem=make_csr(domain).pem) is None  # someone else's key
    found = await issuer.find_order(domain, csr_pem=csr.pem)
    assert found is not None and found.order_id == str(created[0].id)
    fileauth.files[domain] = found.tokens[0].value
    assert (await issuer.request_validation(found)).status in (OrderStatus.PROCESSING, OrderStatus.ISSUED)
    verify_chain(await issuer.download(found), root_pem=sim.root_pem, domain=domain, key_spki=csr.spki())
    assert len([o for o in sim.orders() if o.id not in before]) == 1
    # let the simulator's hung handler finish, so stopping the simulator leaves no pending task behind
    await asyncio.sleep(max(0.0, hang_s + 0.2 - (time.monotonic() - started)) if fault == "hang-after" else 0)


async def test_expired_random_value_is_replaced(sim: Any, http: httpx.AsyncClient, fileauth: FileauthServer) -> None:
    domain = fresh_domain()
    csr = make_csr(domain)
    sim.set_resolve({domain: f"127.0.0.1:{fileauth.port}"})
    issuer = make(sim, http)
    order = await issuer.place_order(domain, csr.pem, validity_days=30)
    same = await issuer.refresh_tokens(order)
    assert same.tokens[0].value == order.tokens[0].value  # kept while valid
    assert same.tokens[0].expires_at <= order.tokens[0].expires_at + dt.timedelta(seconds=5)

    fileauth.files[domain] = order.tokens[0].value
    sim.expire_random_value(int(order.order_id))
    with pytest.raises(ValidationNotFound):  # the old file no longer validates
        await issuer.request_validation(order)
    fresh = await issuer.refresh_tokens(order)
    assert fresh.tokens[0].value != order.tokens[0].value
    fileauth.files[domain] = fresh.tokens[0].value
    assert (await issuer.request_validation(fresh)).status in (OrderStatus.PROCESSING, OrderStatus.ISSUED)


async def test_cancel_pending_order(sim: Any, http: httpx.AsyncClient) -> None:
    domain = fresh_domain()
    issuer = make(sim, http)
    order = await issuer.place_order(domain, make_csr(domain).pem, validity_days=90)
    assert (await issuer.find_order(domain)) is not None
    await issuer.cancel(order)
    await issuer.cancel(order)  # idempotent
    assert (await issuer.get_order(order.order_id, domain)).status is OrderStatus.CANCELED
    assert await issuer.find_order(domain) is None


async def test_rate_limit_and_server_errors_are_retried(sim: Any, http: httpx.AsyncClient) -> None:
    slept: list[float] = []

    async def no_sleep(seconds: float) -> None:
        slept.append(seconds)

    domain = fresh_domain()
    issuer = make(sim, http, sleep=no_sleep)
    sim.rate_limit_next(1, method="POST")
    order = await issuer.place_order(domain, make_csr(domain).pem, validity_days=90)  # 429: safe to retry a POST
    sim.fail_next(2, status=503, method="GET")
    assert (await issuer.get_order(order.order_id, domain)).status is OrderStatus.PENDING
    # two backoff waits (>= 5 s each) for the 503s plus one for the 429; the bucket, penalised by the 429, adds
    # its own waits (the no-op sleep does not move the real clock the bucket runs on)
    assert sum(s >= 5.0 for s in slept) >= 3
    assert len([o for o in sim.orders() if o.common_name == domain]) == 1


async def test_error_mapping_against_the_simulator(sim: Any, http: httpx.AsyncClient) -> None:
    domain = fresh_domain()
    with pytest.raises(CaAuthError):
        await make(sim, http, api_key="wrong-key").get_order("1", domain)
    issuer = make(sim, http)
    with pytest.raises(OrderNotFound):
        await issuer.get_order("999999999", domain)
    with pytest.raises(OrderRejected) as info:
        await issuer.place_order(f"*.{domain}", make_csr(f"*.{domain}").pem, validity_days=90)
    assert info.value.code == "invalid_wildcard_dcv_method"
    sim.errors_as_object_next(1)
    order = await issuer.place_order(domain, make_csr(domain).pem, validity_days=90)
    sim.set_resolve({})
    with pytest.raises(ValidationNotFound):
        await issuer.request_validation(order)

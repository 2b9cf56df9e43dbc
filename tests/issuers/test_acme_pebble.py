"""`AcmeIssuer` against a real ACME CA: Debian's Pebble 2.4.0 with pebble-challtestsrv as its DNS
(tests/harness/pebble.py). Every name resolves to 127.0.0.1, and Pebble validates HTTP-01 on the port of the small
token server below, which serves the key authorizations the issuer hands out (as the edge nodes would)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import http.server
import os
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from controlplane.issuers.acme import AcmeIssuer, new_account_key_pem
from controlplane.issuers.base import Order, OrderStatus, RevocationStatus
from controlplane.issuers.errors import (
    CaAuthError,
    OrderNotFound,
    OrderRejected,
    ValidationNotFound,
)
from controlplane.provision import check_chain, make_key_and_csr
from tests.harness.pebble import PebbleServer, PebbleUnavailable

pytestmark = pytest.mark.timeout(60)

EAB_KID = "kid-1"
EAB_KEY = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


# ---------------------------------------------------------------------------------------------- token server

class TokenServer:
    """Serves `files[(host, path)]` on 127.0.0.1:0, like an edge node's ACME challenge route."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, str], str] = {}
        self.hits: list[tuple[str, str]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host = self.headers.get("Host", "").rsplit(":", 1)[0].lower()
                owner.hits.append((host, self.path))
                value = owner.files.get((host, self.path))
                if value is None:
                    self.send_error(404)
                    return
                body = value.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), name="acme-tokens",
                                        daemon=True)
        self._thread.start()

    def publish(self, order: Order) -> None:
        for t in order.tokens:
            self.files[(t.host, t.path)] = t.value

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@pytest.fixture(scope="module")
def tokens() -> Iterator[TokenServer]:
    server = TokenServer()
    yield server
    server.stop()


def _start(tokens: TokenServer, **kw: Any) -> Iterator[PebbleServer]:
    root = Path(tempfile.mkdtemp(prefix="pebble-", dir="/tmp"))
    try:
        server = PebbleServer(root, http_port=tokens.port, **kw).start()
    except PebbleUnavailable as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(str(exc))
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pebble(tokens: TokenServer) -> Iterator[PebbleServer]:
    yield from _start(tokens)


@pytest.fixture(scope="module")
def pebble_eab(tokens: TokenServer) -> Iterator[PebbleServer]:
    yield from _start(tokens, eab_required=True, eab_keys={EAB_KID: EAB_KEY})


@pytest.fixture(scope="module")
def pebble_nonces(tokens: TokenServer) -> Iterator[PebbleServer]:
    """Pebble rejecting half of the good nonces (its default is 5 %; the other instances use 0)."""
    yield from _start(tokens, nonce_reject=50)


@dataclasses.dataclass
class Issuers:
    pebble: PebbleServer
    made: list[AcmeIssuer]

    def __call__(self, **kw: Any) -> AcmeIssuer:
        opts: dict[str, Any] = {"directory_url": self.pebble.directory_url, "ca_bundle": self.pebble.ca_bundle,
                                "account_key_pem": new_account_key_pem(), "name": "pebble",
                                "validation_wait_s": 10.0, "poll_interval_s": 0.05, "request_timeout_s": 10.0,
                                "call_timeout_s": 15.0}
        opts.update(kw)
        issuer = AcmeIssuer(**opts)
        self.made.append(issuer)
        return issuer


@pytest.fixture
async def make_issuer(pebble: PebbleServer) -> AsyncIterator[Issuers]:
    made = Issuers(pebble, [])
    yield made
    for issuer in made.made:
        await issuer.aclose()


_counter = iter(range(1_000_000))


def new_name(prefix: str = "shop") -> str:
    return f"{prefix}-{next(_counter)}-{os.urandom(3).hex()}.example.test"


async def until_issued(issuer: AcmeIssuer, order: Order, *, timeout_s: float = 15.0) -> Order:
    async with asyncio.timeout(timeout_s):
        while True:
            order = await issuer.get_order(order.order_id, order.domain)
            if order.status is OrderStatus.ISSUED or order.status.is_terminal:
                return order
            await asyncio.sleep(0.05)


def verify_chain(chain_pem: str, root_pem: str, key_pem: str, domain: str) -> x509.Certificate:
    """Leaf first, for our key and name, each certificate signed by the next, the last one by Pebble's root."""
    leaf = check_chain(chain_pem, key_pem, domain, now=dt.datetime.now(dt.UTC))
    certs = x509.load_pem_x509_certificates(chain_pem.encode())
    root = x509.load_pem_x509_certificate(root_pem.encode())
    assert certs[-1].issuer == root.subject
    pub = root.public_key()
    last = certs[-1]
    if isinstance(pub, rsa.RSAPublicKey):
        pub.verify(last.signature, last.tbs_certificate_bytes, padding.PKCS1v15(),
                   last.signature_hash_algorithm)  # type: ignore[arg-type]
    else:
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        pub.verify(last.signature, last.tbs_certificate_bytes,
                   ec.ECDSA(last.signature_hash_algorithm))  # type: ignore[arg-type]
    return leaf


async def issue(issuer: AcmeIssuer, tokens: TokenServer, pebble: PebbleServer,
                domain: str | None = None) -> tuple[Order, str, str]:
    """place -> publish -> request_validation -> get_order until ISSUED -> download; (order, chain, key)."""
    domain = domain or new_name()
    key_pem, csr_pem = make_key_and_csr(domain, "ec")
    order = await issuer.place_order(domain, csr_pem, validity_days=90)
    tokens.publish(order)
    validated = await issuer.request_validation(order)
    assert validated.status in (OrderStatus.PROCESSING, OrderStatus.ISSUED), validated
    issued = await until_issued(issuer, validated)
    assert issued.status is OrderStatus.ISSUED, issued
    chain = await issuer.download(issued)
    verify_chain(chain, pebble.root_pem(), key_pem, domain)
    return issued, chain, key_pem


# ---------------------------------------------------------------------------------------------- the happy path


async def test_issue_download_verify_revoke(make_issuer: Issuers, tokens: TokenServer,
                                            pebble: PebbleServer) -> None:
    issuer = make_issuer()
    domain = new_name()
    key_pem, csr_pem = make_key_and_csr(domain, "ec")
    order = await issuer.place_order(domain, csr_pem, validity_days=90)
    assert order.issuer == "pebble" and order.domain == domain
    assert order.order_id.startswith(pebble.directory_url.removesuffix("/dir"))
    assert order.status is OrderStatus.PENDING
    (token,) = order.tokens
    assert token.host == domain
    assert token.path.startswith("/.well-known/acme-challenge/")
    assert token.value.startswith(token.path.rsplit("/", 1)[1] + ".")  # key authorization: token.thumbprint
    assert token.expires_at > dt.datetime.now(dt.UTC)
    assert issuer.account_url is not None

    assert await issuer.refresh_tokens(order) == order  # ACME key authorizations do not expire on their own
    tokens.publish(order)
    validated = await issuer.request_validation(order)
    assert validated.status in (OrderStatus.PROCESSING, OrderStatus.ISSUED)
    assert (domain, token.path) in tokens.hits  # Pebble fetched it from us, by name, on the httpPort

    issued = await until_issued(issuer, validated)
    assert issued.status is OrderStatus.ISSUED
    assert issued.certificate_id and issued.ca_status == "valid"
    chain = await issuer.download(issued)
    assert chain.count("BEGIN CERTIFICATE") >= 2  # leaf + Pebble's intermediate, leaf first
    leaf = verify_chain(chain, pebble.root_pem(), key_pem, domain)
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert leaf.public_key().public_bytes(*der) == csr.public_key().public_bytes(*der)

    assert pebble.cert_status(leaf.serial_number)["Status"] == "Valid"
    assert await issuer.revoke(issued) is RevocationStatus.REVOKED
    status = pebble.cert_status(leaf.serial_number)
    assert status["Status"] == "Revoked" and status["Reason"] == 4  # superseded
    assert await issuer.revoke(issued) is RevocationStatus.REVOKED  # alreadyRevoked counts as done


async def test_request_validation_is_safe_to_repeat(make_issuer: Issuers, tokens: TokenServer) -> None:
    issuer = make_issuer()
    domain = new_name()
    _, csr_pem = make_key_and_csr(domain, "ec")
    order = await issuer.place_order(domain, csr_pem, validity_days=90)
    tokens.publish(order)
    first = await issuer.request_validation(order)
    again = await issuer.request_validation(first)  # the pipeline calls it until the order is issued
    assert again.status in (OrderStatus.PROCESSING, OrderStatus.ISSUED)
    issued = await until_issued(issuer, again)
    assert issued.status is OrderStatus.ISSUED
    assert (await issuer.request_validation(issued)).status is OrderStatus.ISSUED


async def test_concurrent_orders_share_the_pool(make_issuer: Issuers, tokens: TokenServer,
                                                pebble: PebbleServer) -> None:
    issuer = make_issuer(max_connections=3)
    results = await asyncio.gather(*(issue(issuer, tokens, pebble) for _ in range(6)))
    assert len({order.order_id for order, _, _ in results}) == 6


# ---------------------------------------------------------------------------------------------- failures


@pytest.mark.parametrize("served", [None, "wrong-key-authorization"], ids=["nothing-served", "wrong-value"])
async def test_failed_validation(make_issuer: Issuers, tokens: TokenServer, served: str | None) -> None:
    issuer = make_issuer()
    domain = new_name("bad")
    _, csr_pem = make_key_and_csr(domain, "ec")
    order = await issuer.place_order(domain, csr_pem, validity_days=90)
    if served is not None:
        tokens.files[(domain, order.tokens[0].path)] = served
    with pytest.raises(ValidationNotFound) as info:
        await issuer.request_validation(order)
    assert info.value.order_id == order.order_id
    assert info.value.code in ("unauthorized", "incorrectResponse", "connection")
    assert domain in str(info.value)
    if served is None:
        assert "404" in str(info.value)
    # ACME validation is one-shot: the order is now invalid for good, and says why.
    after = await issuer.get_order(order.order_id, domain)
    assert after.status is OrderStatus.REJECTED and after.tokens == ()
    assert after.ca_status is not None and after.ca_status.startswith("invalid: ")
    with pytest.raises(ValidationNotFound):
        await issuer.request_validation(after)


async def test_identifier_the_ca_refuses(make_issuer: Issuers) -> None:
    # Pebble refuses a DNS identifier holding an IP address (type `malformed`): a refusal of the order.
    issuer = make_issuer()
    key = ec.generate_private_key(ec.SECP256R1())
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "10.1.2.3")]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("10.1.2.3")]), critical=False)
           .sign(key, hashes.SHA256()))
    with pytest.raises(OrderRejected, match="IP address") as info:
        await issuer.place_order("10.1.2.3", csr.public_bytes(serialization.Encoding.PEM).decode(),
                                 validity_days=90)
    assert info.value.kind == "rejected"


async def test_unknown_order_and_wrong_domain(make_issuer: Issuers) -> None:
    issuer = make_issuer()
    domain = new_name()
    _, csr_pem = make_key_and_csr(domain, "ec")
    order = await issuer.place_order(domain, csr_pem, validity_days=90)
    with pytest.raises(OrderNotFound):
        await issuer.get_order(order.order_id + "x", domain)
    with pytest.raises(ValueError, match="not"):
        await issuer.get_order(order.order_id, "other.example.test")


async def test_cancel_deactivates_the_order(make_issuer: Issuers) -> None:
    issuer = make_issuer()
    domain = new_name()
    _, csr_pem = make_key_and_csr(domain, "ec")
    order = await issuer.place_order(domain, csr_pem, validity_days=90)
    await issuer.cancel(order)
    after = await issuer.get_order(order.order_id, domain)
    assert after.status is OrderStatus.CANCELED and after.status.is_terminal
    await issuer.cancel(after)  # no-op


# ---------------------------------------------------------------------------------------------- restart


async def test_after_a_restart_orders_work_from_their_url(make_issuer: Issuers, tokens: TokenServer,
                                                          pebble: PebbleServer) -> None:
    account_key = new_account_key_pem()
    before = make_issuer(account_key_pem=account_key)
    domain = new_name()
    key_pem, csr_pem = make_key_and_csr(domain, "ec")
    placed = await before.place_order(domain, csr_pem, validity_days=90)
    tokens.publish(placed)

    # A new process: same account key, nothing in memory. The account is found again (onlyReturnExisting).
    after = make_issuer(account_key_pem=account_key)
    order = await after.get_order(placed.order_id, domain)
    assert after.account_url == before.account_url
    assert order.status is OrderStatus.PENDING and order.tokens == placed.tokens
    # It can validate, but not finalize without the CSR: the order stays PENDING and says why.
    waiting = await after.request_validation(order)
    assert waiting.status is OrderStatus.PENDING
    assert waiting.ca_status is not None and "CSR is unknown" in waiting.ca_status
    assert (await after.get_order(placed.order_id, domain)).status is OrderStatus.PENDING

    # With csr_lookup (the pipeline's stored CSR) it finalizes.
    lookups: list[tuple[str, str]] = []

    async def csr_lookup(url: str, name: str) -> str | None:
        lookups.append((url, name))
        return csr_pem if url == placed.order_id else None

    restarted = make_issuer(account_key_pem=account_key, csr_lookup=csr_lookup)
    issued = await until_issued(restarted, order)
    assert issued.status is OrderStatus.ISSUED and lookups == [(placed.order_id, domain)]
    verify_chain(await restarted.download(issued), pebble.root_pem(), key_pem, domain)
    assert await restarted.revoke(issued, reason="cessationOfOperation") is RevocationStatus.REVOKED


async def test_no_renewal_info_in_pebble_2_4(make_issuer: Issuers, tokens: TokenServer,
                                             pebble: PebbleServer) -> None:
    issuer = make_issuer()
    _, chain, _ = await issue(issuer, tokens, pebble)
    assert await issuer.renewal_window(chain) is None


# ---------------------------------------------------------------------------------------------- EAB, nonces


async def test_eab_account_registration(pebble_eab: PebbleServer, tokens: TokenServer) -> None:
    common: dict[str, Any] = {"directory_url": pebble_eab.directory_url, "ca_bundle": pebble_eab.ca_bundle,
                              "name": "pebble-eab"}
    domain = new_name()
    _, csr_pem = make_key_and_csr(domain, "ec")

    without = AcmeIssuer(account_key_pem=new_account_key_pem(), **common)
    with pytest.raises(CaAuthError, match="externalAccountRequired") as info:
        await without.place_order(domain, csr_pem, validity_days=90)
    assert "eab_kid" in str(info.value) and info.value.kind == "rejected"

    wrong = AcmeIssuer(account_key_pem=new_account_key_pem(), eab_kid=EAB_KID,
                       eab_hmac_key=base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("="), **common)
    with pytest.raises(CaAuthError, match="unauthorized"):
        await wrong.place_order(domain, csr_pem, validity_days=90)

    key = new_account_key_pem()
    bound = AcmeIssuer(account_key_pem=key, eab_kid=EAB_KID, eab_hmac_key=EAB_KEY, contact="mailto:ops@example.test",
                       **common)
    issued, _, _ = await issue(bound, tokens, pebble_eab, domain)
    assert issued.issuer == "pebble-eab"
    # A restart finds the account by key, without EAB credentials (they are not spent again).
    again = AcmeIssuer(account_key_pem=key, **common)
    assert (await again.get_order(issued.order_id, domain)).status is OrderStatus.ISSUED
    assert again.account_url == bound.account_url
    for issuer in (without, wrong, bound, again):
        await issuer.aclose()


async def test_bad_nonces_are_retried(pebble_nonces: PebbleServer, tokens: TokenServer) -> None:
    issuer = AcmeIssuer(directory_url=pebble_nonces.directory_url, ca_bundle=pebble_nonces.ca_bundle,
                        account_key_pem=new_account_key_pem(), bad_nonce_retries=8, poll_interval_s=0.05)
    for _ in range(2):
        await issue(issuer, tokens, pebble_nonces)
    assert "Configured to reject 50% of good nonces" in pebble_nonces.log()
    await issuer.aclose()

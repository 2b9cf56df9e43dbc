"""`AcmeIssuer` without a CA: the error mapping (pure), the ARI certificate id, keys and arguments, the status
mapping, and ACME Renewal Information against a stub directory on 127.0.0.1 (Debian's Pebble 2.4.0 has no ARI)."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import urllib3.exceptions
from acme import client as acme_client
from acme import errors as acme_errors
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from josepy.errors import DeserializationError

from controlplane.issuers import acme as acme_mod
from controlplane.issuers.acme import (
    REVOCATION_REASONS,
    AcmeIssuer,
    AcmeOp,
    ari_cert_id,
    error_for,
    new_account_key_pem,
    problem_code,
    validation_error,
)
from controlplane.issuers.base import OrderStatus
from controlplane.issuers.errors import (
    CaAuthError,
    CaError,
    CaProtocolError,
    CaRequestError,
    CaUnavailable,
    OrderNotFound,
    OrderRejected,
    RateLimited,
    UnknownOutcome,
    ValidationNotFound,
)

from .conftest import make_csr

PREFIX = "urn:ietf:params:acme:error:"
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def problem(code: str, detail: str = "detail", *, status: int | None = None, retry_after_s: float | None = None,
            subproblems: list[dict[str, Any]] | None = None) -> messages.Error:
    body: dict[str, Any] = {"type": PREFIX + code, "detail": detail}
    if subproblems:
        body["subproblems"] = subproblems
    err: messages.Error = messages.Error.from_json(body)
    if status is not None:
        err.http_status = status
        err.retry_after_s = retry_after_s
    return err


def response(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> requests.Response:
    resp = requests.Response()
    resp.status_code = status
    resp._content = body
    resp.headers.update(headers or {})
    resp.url = "https://ca.test/x"
    return resp


def refused() -> requests.exceptions.ConnectionError:
    reason = urllib3.exceptions.NewConnectionError(None, "Connection refused")  # type: ignore[arg-type]
    return requests.exceptions.ConnectionError(urllib3.exceptions.MaxRetryError(None, "/x", reason))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------- error mapping

CASES: list[tuple[str, BaseException, AcmeOp, bool, type[CaError]]] = [
    ("rateLimited", problem("rateLimited", status=429, retry_after_s=30), AcmeOp.NEW_ORDER, True, RateLimited),
    ("429 any type", problem("malformed", status=429), AcmeOp.ORDER, False, RateLimited),
    ("serverInternal", problem("serverInternal", status=500), AcmeOp.ORDER, False, CaUnavailable),
    ("serverInternal on newOrder", problem("serverInternal", status=500), AcmeOp.NEW_ORDER, True, UnknownOutcome),
    ("503 problem", problem("malformed", status=503), AcmeOp.FINALIZE, False, CaUnavailable),
    ("badNonce", problem("badNonce", status=400), AcmeOp.ORDER, False, CaUnavailable),
    ("badNonce on newOrder: nothing created", problem("badNonce", status=400), AcmeOp.NEW_ORDER, True,
     CaUnavailable),
    ("rejectedIdentifier", problem("rejectedIdentifier", status=400), AcmeOp.NEW_ORDER, True, OrderRejected),
    ("caa", problem("caa", status=403), AcmeOp.NEW_ORDER, True, OrderRejected),
    ("badCSR on finalize", problem("badCSR", status=400), AcmeOp.FINALIZE, False, OrderRejected),
    ("malformed on newOrder", problem("malformed", status=400), AcmeOp.NEW_ORDER, True, OrderRejected),
    ("malformed elsewhere", problem("malformed", status=400), AcmeOp.CHALLENGE, False, CaRequestError),
    ("unauthorized", problem("unauthorized", status=403), AcmeOp.ORDER, False, CaAuthError),
    ("unauthorized on newOrder", problem("unauthorized", status=403), AcmeOp.NEW_ORDER, True, CaAuthError),
    ("accountDoesNotExist", problem("accountDoesNotExist", status=400), AcmeOp.ORDER, False, CaAuthError),
    ("externalAccountRequired", problem("externalAccountRequired", status=403), AcmeOp.ACCOUNT, False,
     CaAuthError),
    ("404 order", problem("malformed", status=404), AcmeOp.ORDER, False, OrderNotFound),
    ("404 not an order", problem("malformed", status=404), AcmeOp.RENEWAL_INFO, False, CaRequestError),
    ("status unknown", problem("serverInternal"), AcmeOp.ORDER, False, CaUnavailable),
    ("non-JSON 502", acme_errors.ClientError(response(502, b"<html>")), AcmeOp.ORDER, False, CaUnavailable),
    ("non-JSON 502 on newOrder", acme_errors.ClientError(response(502, b"<html>")), AcmeOp.NEW_ORDER, True,
     UnknownOutcome),
    ("non-JSON 404", acme_errors.ClientError(response(404)), AcmeOp.CERTIFICATE, False, OrderNotFound),
    ("non-JSON 403", acme_errors.ClientError(response(403)), AcmeOp.ORDER, False, CaAuthError),
    ("non-JSON 400", acme_errors.ClientError(response(400)), AcmeOp.ORDER, False, CaRequestError),
    ("non-JSON 429", acme_errors.ClientError(response(429, headers={"Retry-After": "7"})), AcmeOp.ORDER, False,
     RateLimited),
    ("unreadable error", acme_errors.ClientError((response(400, b"{}"), ValueError("x"))), AcmeOp.ORDER, False,
     CaRequestError),
    ("missing up link", acme_errors.ClientError('"up" Link header missing'), AcmeOp.CHALLENGE, False,
     CaProtocolError),
    ("connection refused", refused(), AcmeOp.ORDER, False, CaUnavailable),
    ("connection refused on newOrder: not sent", refused(), AcmeOp.NEW_ORDER, True, CaUnavailable),
    ("connect timeout on newOrder", requests.exceptions.ConnectTimeout("t"), AcmeOp.NEW_ORDER, True,
     CaUnavailable),
    ("TLS failure on newOrder", requests.exceptions.SSLError("bad cert"), AcmeOp.NEW_ORDER, True, CaUnavailable),
    ("read timeout", requests.exceptions.ReadTimeout("t"), AcmeOp.ORDER, False, CaUnavailable),
    ("read timeout on newOrder", requests.exceptions.ReadTimeout("t"), AcmeOp.NEW_ORDER, True, UnknownOutcome),
    ("reset after sending", requests.exceptions.ConnectionError("reset"), AcmeOp.NEW_ORDER, True, UnknownOutcome),
    ("socket timeout", TimeoutError("timed out"), AcmeOp.ORDER, False, CaUnavailable),
    ("unparsable body", DeserializationError("bad"), AcmeOp.ORDER, False, CaProtocolError),
    ("unparsable newOrder answer", DeserializationError("bad"), AcmeOp.NEW_ORDER, True, UnknownOutcome),
    ("missing nonce", acme_errors.MissingNonce(response(200)), AcmeOp.ORDER, False, CaProtocolError),
]


@pytest.mark.parametrize(("exc", "op", "creating", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error_mapping(exc: BaseException, op: AcmeOp, creating: bool, expected: type[CaError]) -> None:
    error = error_for(exc, op=op, creating=creating, domain="shop.example.test", order_id="https://ca.test/o/1")
    assert type(error) is expected
    assert str(op) in str(error)
    if isinstance(error, UnknownOutcome):
        assert error.domain == "shop.example.test"


def test_error_kinds_follow_the_tree() -> None:
    assert error_for(problem("rateLimited", status=429), op=AcmeOp.ORDER).kind == "rate_limited"
    assert error_for(problem("caa", status=403), op=AcmeOp.NEW_ORDER).kind == "rejected"
    assert error_for(problem("serverInternal", status=500), op=AcmeOp.ORDER).kind == "unavailable"
    assert validation_error(problem("connection"), domain="a.test", order_id="o").kind == "validation_failed"


def test_rate_limit_keeps_retry_after() -> None:
    error = error_for(problem("rateLimited", "too many new orders", status=429, retry_after_s=3600),
                      op=AcmeOp.NEW_ORDER, creating=True)
    assert isinstance(error, RateLimited)
    assert error.retry_after_s == 3600
    assert "too many new orders" in str(error)


def test_problem_details_and_subproblems_are_kept() -> None:
    exc = problem("rejectedIdentifier", "Error creating new order", status=400, subproblems=[
        {"type": PREFIX + "caa", "detail": "CAA forbids issuance",
         "identifier": {"type": "dns", "value": "shop.example.test"}}])
    error = error_for(exc, op=AcmeOp.NEW_ORDER, creating=True)
    assert isinstance(error, OrderRejected)
    assert error.status == 400
    assert error.code == "rejectedIdentifier"
    assert [e.code for e in error.errors] == ["rejectedIdentifier", "caa"]
    assert error.errors[1].message == "shop.example.test: CAA forbids issuance"
    assert "CAA forbids issuance" in str(error)


def test_eab_required_says_what_to_configure() -> None:
    error = error_for(problem("externalAccountRequired", "newAccount requires externalAccountBinding", status=403),
                      op=AcmeOp.ACCOUNT)
    assert isinstance(error, CaAuthError)
    assert "eab_kid" in str(error) and "externalAccountRequired" in str(error)


def test_tls_error_names_the_ca_bundle() -> None:
    error = error_for(requests.exceptions.SSLError("certificate verify failed"), op=AcmeOp.DIRECTORY)
    assert isinstance(error, CaUnavailable)
    assert "ca_bundle" in str(error)


def test_problem_code() -> None:
    assert problem_code(problem("badNonce")) == "badNonce"
    assert problem_code(messages.Error.from_json({"type": "about:blank", "detail": "x"})) == "about:blank"
    assert problem_code(messages.Error.from_json({"type": PREFIX + "userActionRequired"})) == "userActionRequired"


@pytest.mark.parametrize(("code", "expected"), [
    ("connection", ValidationNotFound), ("unauthorized", ValidationNotFound),
    ("incorrectResponse", ValidationNotFound), ("dns", ValidationNotFound), ("tls", ValidationNotFound),
    ("caa", OrderRejected), ("rejectedIdentifier", OrderRejected),
])
def test_validation_problems(code: str, expected: type[CaError]) -> None:
    error = validation_error(problem(code, "Fetching http://a.test/.well-known/acme-challenge/x: Connection refused"),
                             domain="a.test", order_id="https://ca.test/o/1")
    assert type(error) is expected
    assert "Connection refused" in str(error) and "a.test" in str(error)
    if isinstance(error, ValidationNotFound):
        assert error.code == code
        assert error.order_id == "https://ca.test/o/1"


def test_validation_without_a_problem() -> None:
    error = validation_error(None, domain="a.test", order_id="o")
    assert isinstance(error, ValidationNotFound) and error.code == "invalid"


def test_network_records_status_and_retry_after_on_problems() -> None:
    body = json.dumps({"type": PREFIX + "rateLimited", "detail": "slow down"}).encode()
    resp = response(429, body, {"Content-Type": "application/problem+json", "Retry-After": "120"})
    with pytest.raises(messages.Error) as info:
        acme_mod._Network._check_response(resp)
    assert info.value.http_status == 429
    assert info.value.retry_after_s == 120
    mapped = error_for(info.value, op=AcmeOp.NEW_ORDER, creating=True)
    assert isinstance(mapped, RateLimited) and mapped.retry_after_s == 120


def test_network_reads_http_date_retry_after() -> None:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=90)
    resp = response(503, json.dumps({"type": PREFIX + "serverInternal"}).encode(),
                    {"Retry-After": when.strftime("%a, %d %b %Y %H:%M:%S GMT")})
    with pytest.raises(messages.Error) as info:
        acme_mod._Network._check_response(resp)
    assert 80 <= info.value.retry_after_s <= 91


# ------------------------------------------------------------------------------------------------- ARI id


def _cert_with(serial: int, key_id: bytes | None) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a.test")])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(serial).not_valid_before(NOW).not_valid_after(NOW + dt.timedelta(days=90)))
    if key_id is not None:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier(key_id, None, None), critical=False)
    return builder.sign(key, hashes.SHA256())


def test_ari_cert_id_matches_rfc9773_example() -> None:
    # RFC 9773 §4.1: keyIdentifier 69:88:5B:...:C8:D4 and serial 0x87654321 (DER 00 87 65 43 21).
    cert = _cert_with(0x87654321, bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4"))
    assert ari_cert_id(cert) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
    assert ari_cert_id(cert) == acme_client._renewal_info_path_component(cert)


def test_ari_cert_id_serial_without_sign_padding() -> None:
    assert ari_cert_id(_cert_with(0x7F, b"\x01\x02")).endswith(".fw")


def test_ari_cert_id_needs_an_aki() -> None:
    with pytest.raises(ValueError, match="Authority Key Identifier"):
        ari_cert_id(_cert_with(5, None))


# ------------------------------------------------------------------------------------------------- keys, arguments


def _issuer(**kw: Any) -> AcmeIssuer:
    opts: dict[str, Any] = {"directory_url": "https://ca.test/dir", "account_key_pem": new_account_key_pem()}
    opts.update(kw)
    return AcmeIssuer(**opts)


def test_new_account_key_is_p256_pkcs8() -> None:
    pem = new_account_key_pem()
    assert pem.startswith("-----BEGIN PRIVATE KEY-----")
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert new_account_key_pem() != pem


def _pem(key: Any) -> str:
    return str(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode())


def test_account_key_types() -> None:
    _issuer(account_key_pem=_pem(ec.generate_private_key(ec.SECP384R1())))
    _issuer(account_key_pem=_pem(rsa.generate_private_key(65537, 2048)).encode())
    with pytest.raises(ValueError, match="curve"):
        _issuer(account_key_pem=_pem(ec.generate_private_key(ec.SECP521R1())))
    with pytest.raises(ValueError, match="2048"):
        _issuer(account_key_pem=_pem(rsa.generate_private_key(65537, 1024)))
    with pytest.raises(ValueError, match="PEM"):
        _issuer(account_key_pem="not a key")


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="eab"):
        _issuer(eab_kid="kid-1")
    with pytest.raises(ValueError, match="base64url"):
        _issuer(eab_kid="kid-1", eab_hmac_key="not base64 !!")
    with pytest.raises(ValueError, match="URL"):
        _issuer(directory_url="ca.test/dir")
    with pytest.raises(ValueError):
        _issuer(max_connections=0)


def test_repr_hides_the_key() -> None:
    pem = new_account_key_pem()
    text = repr(_issuer(account_key_pem=pem, name="pebble"))
    assert "redacted" in text and "pebble" in text and pem.splitlines()[1][:20] not in text


def test_revocation_reasons() -> None:
    assert REVOCATION_REASONS["superseded"] == 4
    assert REVOCATION_REASONS["keyCompromise"] == 1


async def test_find_order_is_always_none() -> None:
    assert await _issuer().find_order("shop.example.test", csr_pem=make_csr().pem) is None


async def test_place_order_checks_arguments_before_any_request() -> None:
    issuer = _issuer()
    with pytest.raises(ValueError, match="exactly"):
        await issuer.place_order("other.example.test", make_csr("shop.example.test").pem, validity_days=90)
    with pytest.raises(ValueError, match="validity_days"):
        await issuer.place_order("shop.example.test", make_csr("shop.example.test").pem, validity_days=0)
    with pytest.raises(ValueError, match="certificate request"):
        await issuer.place_order("shop.example.test", "garbage", validity_days=90)


async def test_revoke_rejects_an_unknown_reason() -> None:
    from controlplane.issuers.base import Order

    order = Order(issuer="acme", order_id="https://ca.test/o/1", domain="a.test", tokens=(),
                  status=OrderStatus.ISSUED)
    with pytest.raises(ValueError, match="reason"):
        await _issuer().revoke(order, reason="bored")


# ------------------------------------------------------------------------------------------------- status mapping

AUTHZ = {"identifier": {"type": "dns", "value": "a.test"}, "status": "pending",
         "expires": "2026-03-08T12:00:00Z",
         "challenges": [{"type": "http-01", "url": "https://ca.test/chall/1", "status": "pending",
                         "token": "tok_" + "A" * 39},
                        {"type": "dns-01", "url": "https://ca.test/chall/2", "status": "pending",
                         "token": "B" * 43}]}


def _order(status: str, **extra: Any) -> messages.Order:
    return acme_mod._parse(messages.Order, {"status": status, "identifiers": [{"type": "dns", "value": "a.test"}],
                                     "authorizations": ["https://ca.test/authz/1"],
                                     "finalize": "https://ca.test/fin/1", **extra})


def _authz(**extra: Any) -> messages.Authorization:
    return acme_mod._parse(messages.Authorization, {**AUTHZ, **extra})


def test_pending_order_carries_the_http01_token() -> None:
    issuer = _issuer()
    order = issuer._to_order("https://ca.test/o/1", "a.test", _order("pending"), [_authz()])
    assert order.status is OrderStatus.PENDING and order.ca_status == "pending"
    (token,) = order.tokens
    assert token.host == "a.test"
    assert token.path == "/.well-known/acme-challenge/tok_" + "A" * 39
    assert token.value.startswith("tok_" + "A" * 39 + ".")  # token "." base64url(JWK thumbprint)
    assert token.expires_at == dt.datetime(2026, 3, 8, 12, 0, tzinfo=dt.UTC)


def test_token_expiry_defaults_to_seven_days() -> None:
    issuer = _issuer(wall_clock=lambda: NOW)
    body = {k: v for k, v in AUTHZ.items() if k != "expires"}
    order = issuer._to_order("o", "a.test", _order("pending"), [messages.Authorization.from_json(body)])
    assert order.tokens[0].expires_at == NOW + dt.timedelta(days=7)


@pytest.mark.parametrize(("acme_status", "extra", "authz", "expected"), [
    ("ready", {}, {"status": "valid"}, OrderStatus.PROCESSING),
    ("processing", {}, {"status": "valid"}, OrderStatus.PROCESSING),
    ("valid", {"certificate": "https://ca.test/cert/1"}, {"status": "valid"}, OrderStatus.ISSUED),
    ("invalid", {"error": {"type": PREFIX + "unauthorized", "detail": "404"}}, {"status": "invalid"},
     OrderStatus.REJECTED),
    ("invalid", {}, {"status": "deactivated"}, OrderStatus.CANCELED),
    ("deactivated", {}, {"status": "deactivated"}, OrderStatus.CANCELED),
    ("invalid", {"expires": "2026-02-01T00:00:00Z"}, {"status": "pending"}, OrderStatus.EXPIRED),
    ("invalid", {}, {"status": "expired"}, OrderStatus.EXPIRED),
    ("somethingNew", {}, {"status": "pending"}, OrderStatus.UNKNOWN),
])
def test_status_mapping(acme_status: str, extra: dict[str, Any], authz: dict[str, Any],
                        expected: OrderStatus) -> None:
    issuer = _issuer(wall_clock=lambda: NOW)
    order = issuer._to_order("o", "a.test", _order(acme_status, **extra), [_authz(**authz)])
    assert order.status is expected
    if expected is OrderStatus.ISSUED:
        assert order.certificate_id == "https://ca.test/cert/1"
    if expected is OrderStatus.REJECTED:
        assert order.ca_status == "invalid: 404 (unauthorized)"


def test_ready_with_unknown_csr_is_reported_pending() -> None:
    order = _issuer()._to_order("o", "a.test", _order("ready"), [_authz(status="valid")], finalizable=False)
    assert order.status is OrderStatus.PENDING
    assert order.ca_status is not None and "CSR is unknown" in order.ca_status


def test_invalid_order_reason_comes_from_the_challenge() -> None:
    authz = _authz(status="invalid", challenges=[
        {**AUTHZ["challenges"][0], "status": "invalid",  # type: ignore[index]
         "error": {"type": PREFIX + "connection", "detail": "Connection refused"}}])
    order = _issuer()._to_order("o", "a.test", _order("invalid"), [authz])
    assert order.status is OrderStatus.REJECTED
    assert order.ca_status == "invalid: Connection refused (connection)"
    assert order.tokens == ()


# ------------------------------------------------------------------------------------------------- ARI (stub CA)


class StubCa:
    """A plain-HTTP stub of the ACME directory and renewalInfo on 127.0.0.1:0."""

    def __init__(self, *, ari: bool, window: dict[str, str] | None = None, delay_s: float = 0.0) -> None:
        self.requests: list[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests.append(self.path)
                if delay_s:
                    time.sleep(delay_s)
                base = f"http://127.0.0.1:{owner.port}"
                if self.path == "/dir":
                    body: dict[str, Any] = {"newNonce": base + "/nonce", "newAccount": base + "/acct",
                                            "newOrder": base + "/order", "revokeCert": base + "/revoke"}
                    if ari:
                        body["renewalInfo"] = base + "/ari/"
                    self._json(200, body)
                elif self.path.startswith("/ari/") and window is not None:
                    self._json(200, {"suggestedWindow": window}, {"Retry-After": "21600"})
                else:
                    self._json(404, {"type": PREFIX + "malformed", "detail": "no such certificate"},
                               {"Content-Type": "application/problem+json"})

            def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                headers = {"Content-Type": "application/json", **(headers or {})}
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/dir"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@pytest.fixture
def stub_ca() -> Iterator[Any]:
    made: list[StubCa] = []

    def make(**kw: Any) -> StubCa:
        made.append(StubCa(**kw))
        return made[-1]

    yield make
    for s in made:
        s.stop()


def _leaf_pem() -> str:
    cert = _cert_with(0x87654321, bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4"))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


async def test_renewal_window_from_renewal_info(stub_ca: Any) -> None:
    ca = stub_ca(ari=True, window={"start": "2026-05-01T00:00:00Z", "end": "2026-05-03T00:00:00Z"})
    issuer = _issuer(directory_url=ca.url)
    start, end = await issuer.renewal_window(_leaf_pem())  # type: ignore[misc]
    assert (start, end) == (dt.datetime(2026, 5, 1, tzinfo=dt.UTC), dt.datetime(2026, 5, 3, tzinfo=dt.UTC))
    assert ca.requests == ["/dir", "/ari/aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"]  # no account needed
    await issuer.aclose()


async def test_renewal_window_none_without_renewal_info(stub_ca: Any) -> None:
    ca = stub_ca(ari=False)
    issuer = _issuer(directory_url=ca.url)
    assert await issuer.renewal_window(_leaf_pem()) is None
    assert ca.requests == ["/dir"]


async def test_renewal_window_errors_are_ca_errors(stub_ca: Any) -> None:
    issuer = _issuer(directory_url=stub_ca(ari=True, window=None).url)
    with pytest.raises(CaRequestError, match="no such certificate"):
        await issuer.renewal_window(_leaf_pem())
    bad = _issuer(directory_url=stub_ca(ari=True, window={"start": "2026-05-03T00:00:00Z",
                                                          "end": "2026-05-01T00:00:00Z"}).url)
    with pytest.raises(CaProtocolError, match="ends before"):
        await bad.renewal_window(_leaf_pem())


async def test_a_call_is_bounded_by_call_timeout(stub_ca: Any) -> None:
    issuer = _issuer(directory_url=stub_ca(ari=True, delay_s=0.5).url, call_timeout_s=0.1)
    started = time.monotonic()
    with pytest.raises(CaUnavailable, match="no answer within 0.1 s"):
        await issuer.renewal_window(_leaf_pem())
    assert time.monotonic() - started < 0.4


async def test_unreachable_ca_is_unavailable() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    issuer = _issuer(directory_url=f"http://127.0.0.1:{port}/dir", request_timeout_s=2)
    with pytest.raises(CaUnavailable, match=AcmeOp.DIRECTORY.value):
        await issuer.place_order("shop.example.test", make_csr("shop.example.test").pem, validity_days=90)

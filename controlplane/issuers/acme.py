"""`AcmeIssuer`: the `Issuer` over an RFC 8555 ACME CA (Let's Encrypt, ZeroSSL, Pebble...) with HTTP-01 validation.

Built on certbot's `acme` package (`ClientV2`, `ClientNetwork`, `messages`, `challenges`): it signs every request
(JWS), handles nonces (retrying one `badNonce` itself) and parses the RFC 8555 resources; this module adds what the
`Issuer` contract needs on top, and makes no decisions about *when* to order, validate or give up (the provisioning
pipeline's job):

* **IO in threads.** `acme` is synchronous (requests). Each ACME request runs in a worker thread
  (`asyncio.to_thread`) on a connection taken from a small pool (`max_connections`): each pooled `ClientNetwork` has
  its own HTTP session and nonce pool, so no two threads ever share one. Every request is bounded by
  `request_timeout_s` (connect and each read) and `call_timeout_s` (the whole exchange, nonce included). A thread
  whose call timed out keeps its connection until it finishes; it is never reused concurrently.
* **One request per call.** Operations are sequences of single ACME requests (newOrder, then a POST-as-GET per
  authorization...), never `ClientV2` helpers that sleep or loop (`poll_and_finalize`), so a retry repeats one request
  and waiting happens in the event loop. `badNonce` is retried `bad_nonce_retries` more times (it means the CA did
  nothing); other failures go to the caller as `CaError`s (`error_for`), whose pipeline has the retry policy.
* **Account.** `account_key_pem` is the account: the control plane keeps it sealed in its store
  (`new_account_key_pem()` makes one). On first use the issuer asks the CA for the key's existing account
  (`onlyReturnExisting`) and registers one (terms of service agreed, `contact`, External Account Binding when
  `eab_kid`/`eab_hmac_key` are given) only when there is none, so a restart never spends an EAB credential again.
* **Order ids are order URLs.** `get_order`, `request_validation`, `download`, `cancel` and `revoke` work from the URL
  alone (after a control-plane restart): they re-fetch the order and its authorizations. The one thing a URL cannot
  give back is the CSR, needed to finalize: `place_order` keeps it in memory, keyed by URL; after a restart
  `csr_lookup(order_url, domain)` (optional: the pipeline's stored CSR for the domain) supplies it. Without either, a `ready`
  order is reported PENDING (`ca_status` says why) and stays so until the CA expires it; the pipeline then orders
  again.
* **No order search.** `find_order` returns None. RFC 8555 §7.1.2.1 has an account `orders` list, but it is optional
  and Let's Encrypt (Boulder) does not serve it (Pebble 2.4.0 does), and none is needed: an order whose creation had
  an unknown outcome is at worst an abandoned pending order, which costs nothing and expires by itself (no charge,
  no rate limit beyond the pending-authorization cap). So `place_order` raises `UnknownOutcome` as the contract
  requires, and the pipeline's `find_order` -> None -> `place_order` simply orders again.
* **Validation is one-shot.** Answering an HTTP-01 challenge makes the CA fetch the token once; a failure
  invalidates the authorization and the order for good (unlike DigiCert's check-dcv, which can be repeated).
  `request_validation` therefore answers the challenge only while it is `pending`, waits up to `validation_wait_s`
  for the result, raises `ValidationNotFound` with the CA's problem when it failed (the next `get_order` reports the
  order REJECTED, and the pipeline orders again), and finalizes once every authorization is valid. It is safe to
  call again while the CA is still validating or issuing.
* **Validity.** ACME lets the CA choose the lifetime (Let's Encrypt rejects `notAfter`), so `validity_days` is
  checked but not sent.

ACME Renewal Information (RFC 9773): `renewal_window(cert_pem)` returns the CA's suggested window, or None when the
directory has no `renewalInfo` (Debian's Pebble 2.4.0 has none).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import datetime as dt
import email.utils
import enum
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar, final

import requests
import urllib3.exceptions
from acme import challenges, messages
from acme import errors as acme_errors
from acme.client import ClientNetwork, ClientV2
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID, NameOID
from josepy import b64 as jose_b64
from josepy.errors import DeserializationError
from josepy.interfaces import JSONDeSerializable
from josepy.jwa import ES256, ES384, RS256, JWASignature
from josepy.jwk import JWK, JWKEC, JWKRSA

from .base import Order, OrderStatus, RevocationStatus, ValidationToken
from .errors import (
    ApiErrorItem,
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

__all__ = [
    "REVOCATION_REASONS",
    "AcmeIssuer",
    "AcmeOp",
    "ari_cert_id",
    "error_for",
    "new_account_key_pem",
    "problem_code",
    "validation_error",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: RFC 5280 CRLReason codes ACME accepts (RFC 8555 §7.6); Let's Encrypt takes 0, 1, 3, 4, 5.
REVOCATION_REASONS: Final[Mapping[str, int]] = {
    "unspecified": 0,
    "keyCompromise": 1,
    "affiliationChanged": 3,
    "superseded": 4,
    "cessationOfOperation": 5,
}

#: Token expiry when the CA's authorization carries no `expires` (RFC 8555 makes it optional for pending ones).
DEFAULT_TOKEN_TTL = dt.timedelta(days=7)

_ERROR_PREFIX = "urn:ietf:params:acme:error:"

#: Problem types that refuse the identifier or the CSR: permanent for this name (or request) with this CA.
_REJECTING = frozenset({"rejectedIdentifier", "unsupportedIdentifier", "caa", "badCSR"})
#: Problem types about the account or its key.
_AUTH = frozenset({"unauthorized", "accountDoesNotExist", "externalAccountRequired", "badPublicKey",
                   "badSignatureAlgorithm", "userActionRequired"})
_EAB_HINT = "the CA requires External Account Binding: configure eab_kid and eab_hmac_key"


class AcmeOp(enum.StrEnum):
    """The ACME requests this client sends (for error messages and logs)."""

    DIRECTORY = "directory"
    ACCOUNT = "account"
    NEW_ORDER = "newOrder"
    ORDER = "order"
    AUTHORIZATION = "authorization"
    CHALLENGE = "challenge"
    FINALIZE = "finalize"
    CERTIFICATE = "certificate"
    DEACTIVATE = "deactivate authorization"
    REVOKE = "revokeCert"
    RENEWAL_INFO = "renewalInfo"


#: Requests addressed to one order (or its authorizations): a 404 there means the CA does not know the order.
_ORDER_OPS = frozenset({AcmeOp.ORDER, AcmeOp.AUTHORIZATION, AcmeOp.CHALLENGE, AcmeOp.FINALIZE, AcmeOp.CERTIFICATE,
                        AcmeOp.DEACTIVATE})


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# ------------------------------------------------------------------------------------------------- keys and ids


def new_account_key_pem() -> str:
    """A new ACME account key: ECDSA P-256 (ES256), as unencrypted PKCS#8 PEM (seal it before storing it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _load_account_key(pem: str | bytes) -> tuple[JWK, JWASignature]:
    """The josepy key and JWS algorithm for an account key PEM: EC P-256/P-384 or RSA >= 2048."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"account_key_pem is not an unencrypted PEM private key: {exc}") from None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        alg = {"secp256r1": ES256, "secp384r1": ES384}.get(key.curve.name)
        if alg is None:
            raise ValueError(f"unsupported account key curve {key.curve.name} (use P-256 or P-384)")
        return JWKEC(key=key), alg
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise ValueError("RSA account keys must have at least 2048 bits")
        return JWKRSA(key=key), RS256
    raise ValueError("unsupported account key type (use ECDSA P-256)")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def ari_cert_id(cert: x509.Certificate) -> str:
    """The RFC 9773 §4.1 certificate identifier: base64url(AKI keyIdentifier) "." base64url(serial DER bytes).

    The serial's bytes are its DER INTEGER content: big-endian two's complement, minimal, so a serial whose top bit
    is set gets a leading zero byte (0x87654321 -> 00 87 65 43 21 -> "AIdlQyE").

    Raises:
        ValueError: the certificate has no Authority Key Identifier with a keyIdentifier.
    """
    try:
        aki = cert.extensions.get_extension_for_oid(ExtensionOID.AUTHORITY_KEY_IDENTIFIER).value
    except x509.ExtensionNotFound:
        raise ValueError("the certificate has no Authority Key Identifier") from None
    key_id = getattr(aki, "key_identifier", None)
    if not key_id:
        raise ValueError("the certificate's Authority Key Identifier has no keyIdentifier")
    serial = cert.serial_number
    serial_bytes = serial.to_bytes((serial.bit_length() + 8) // 8, "big", signed=True)
    return f"{_b64url(key_id)}.{_b64url(serial_bytes)}"


def _normalise_domain(domain: str) -> str:
    name = domain.strip().lower().removesuffix(".")
    if not name or any(c.isspace() or c in "/?#@:" for c in name):
        raise ValueError(f"not a domain name: {domain!r}")
    return name


def _csr_names(csr_pem: str) -> set[str]:
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError as exc:
        raise ValueError(f"csr_pem is not a PEM certificate request: {exc}") from None
    names = {str(a.value).lower() for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)}
    try:
        names |= {n.lower() for n in csr.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)}
    except x509.ExtensionNotFound:
        pass
    return names


#: RFC 8555 §7.1.6 defines "expired" for authorizations; `acme.messages.Status` does not know it, and refuses to
#: parse an unknown status. Creating the constant registers it (that is how `acme` defines its own).
STATUS_EXPIRED: Final = messages.Status("expired")

R = TypeVar("R", messages.Order, messages.Authorization)


def _parse(kind: type[R], raw: Any) -> R:
    """`kind.from_json(raw)`, with any status `acme` does not know (a CA's extension) read as "unknown"."""
    def known(obj: Any) -> Any:
        if isinstance(obj, dict) and isinstance(obj.get("status"), str) \
                and obj["status"] not in messages.Status.POSSIBLE_NAMES:
            obj = {**obj, "status": "unknown"}
        return obj

    raw = known(raw)
    if isinstance(raw, dict) and isinstance(raw.get("challenges"), list):
        raw = {**raw, "challenges": [known(c) for c in raw["challenges"]]}
    parsed: R = kind.from_json(raw)
    return parsed


_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL)


def _split_chain(text: str) -> list[str]:
    return [m.group(0).replace("\r\n", "\n") + "\n" for m in _PEM_CERT.finditer(text)]


# ------------------------------------------------------------------------------------------------- errors


def problem_code(problem: messages.Error) -> str:
    """The problem's type without the ACME URN prefix (`urn:ietf:params:acme:error:rateLimited` -> `rateLimited`);
    other types (e.g. `about:blank`) as they are."""
    typ = str(problem.typ or "")
    return typ.removeprefix(_ERROR_PREFIX)


def _problem_items(problem: messages.Error) -> tuple[ApiErrorItem, ...]:
    items = [ApiErrorItem(problem_code(problem), (problem.detail or problem.title or "").strip())]
    for sub in problem.subproblems or ():
        ident = f"{sub.identifier.value}: " if sub.identifier is not None else ""
        items.append(ApiErrorItem(problem_code(sub), ident + (sub.detail or "").strip()))
    return tuple(items)


def _problem_text(problem: messages.Error) -> str:
    detail = (problem.detail or problem.title or "no detail").strip()
    subs = "; ".join(f"{s.identifier.value + ': ' if s.identifier is not None else ''}{(s.detail or '').strip()} "
                     f"({problem_code(s)})" for s in problem.subproblems or ())
    return f"{detail} ({problem_code(problem)})" + (f" [{subs}]" if subs else "")


def _retry_after_s(value: str | None, *, now: dt.datetime) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - now).total_seconds())


def _describe(exc: BaseException) -> str:
    """`str(exc)`, which some `acme` errors compute from fields that may be missing."""
    try:
        return str(exc) or type(exc).__name__
    except Exception:  # noqa: BLE001 - a broken __str__ must not hide the original error
        return type(exc).__name__


def _response_of(exc: acme_errors.ClientError) -> requests.Response | None:
    for arg in exc.args:
        if isinstance(arg, requests.Response):
            return arg
        if isinstance(arg, tuple) and arg and isinstance(arg[0], requests.Response):
            return arg[0]
    return None


def _not_sent(exc: requests.RequestException) -> bool:
    """The request certainly never reached the CA: connect failure, connect timeout or TLS handshake failure."""
    if isinstance(exc, (requests.exceptions.ConnectTimeout, requests.exceptions.SSLError)):
        return True
    if isinstance(exc, requests.exceptions.ConnectionError):
        reason = exc.args[0] if exc.args else None
        reason = getattr(reason, "reason", reason)
        return isinstance(reason, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError))
    return False


def error_for(exc: BaseException, *, op: AcmeOp, creating: bool = False, domain: str = "",
              order_id: str | None = None) -> CaError:
    """Map an `acme`/`requests`/`josepy` exception from one ACME request onto the `CaError` tree.

    Problem documents (RFC 8555 §6.7) by type, refined by the HTTP status when known (this module's network layer
    records it on the problem): `rateLimited`/429 -> RateLimited; `serverInternal`/5xx/408 and transport errors ->
    CaUnavailable; `badNonce` (after the retries) -> CaUnavailable; `rejectedIdentifier`, `unsupportedIdentifier`,
    `caa`, `badCSR`, and any other 4xx problem on newOrder -> OrderRejected; account problems (`unauthorized`, `accountDoesNotExist`,
    `externalAccountRequired`...) and 401/403 -> CaAuthError; 404 on an order's URLs -> OrderNotFound; any other
    problem -> CaRequestError. Answers this client cannot read -> CaProtocolError.

    With `creating` (newOrder), every "unavailable" outcome after the request may have reached the CA becomes
    UnknownOutcome; rate limits, refusals and failures to connect do not (nothing was created).
    """
    def unavailable(message: str, *, sent: bool = True, retry_after_s: float | None = None,
                    status: int | None = None, protocol: bool = False) -> CaError:
        if creating and sent:
            return UnknownOutcome(message, domain=domain, retry_after_s=retry_after_s, status=status)
        if protocol:
            return CaProtocolError(message, status=status)
        return CaUnavailable(message, retry_after_s=retry_after_s, status=status)

    if isinstance(exc, messages.Error):
        code = problem_code(exc)
        status: int | None = getattr(exc, "http_status", None)
        retry_after = getattr(exc, "retry_after_s", None)
        text = f"{op}: {_problem_text(exc)}"
        items = _problem_items(exc)
        if code == "rateLimited" or status == 429:
            return RateLimited(text, retry_after_s=retry_after)
        if code == "serverInternal" or (status is not None and (status >= 500 or status == 408)):
            return unavailable(text, retry_after_s=retry_after, status=status)
        if code == "badNonce":
            # The CA refused the request before acting on it: nothing was created even on newOrder.
            return CaUnavailable(f"{op}: the CA kept rejecting our nonces: {_problem_text(exc)}", status=status)
        if code in _REJECTING:
            return OrderRejected(text, status=status or 403, errors=items)
        if code == "externalAccountRequired":
            return CaAuthError(f"{text}: {_EAB_HINT}", status=status or 403, errors=items)
        if code in _AUTH or status in (401, 403):
            return CaAuthError(text, status=status or 403, errors=items)
        if status == 404 and op in _ORDER_OPS:
            return OrderNotFound(f"{text}: order {order_id}", status=404, errors=items)
        if op is AcmeOp.NEW_ORDER:  # e.g. Pebble's `malformed` for an identifier it will not take
            return OrderRejected(text, status=status or 400, errors=items)
        return CaRequestError(text, status=status or 400, errors=items)
    if isinstance(exc, acme_errors.ConflictError):
        return CaRequestError(f"{op}: conflict with {exc.location}", status=409)
    if isinstance(exc, acme_errors.ClientError):
        resp = _response_of(exc)
        if resp is None:  # UnexpectedUpdate, missing "up" link, missing or bad nonce header...
            return unavailable(f"{op}: unexpected answer: {type(exc).__name__}: {_describe(exc)}", protocol=True)
        code_text = f"{op}: HTTP {resp.status_code} without a problem document"
        if resp.status_code == 429:
            return RateLimited(code_text, retry_after_s=_retry_after_s(resp.headers.get("Retry-After"),
                                                                       now=_utcnow()))
        if resp.status_code >= 500 or resp.status_code == 408 or resp.status_code < 400:
            return unavailable(code_text, status=resp.status_code,
                               retry_after_s=_retry_after_s(resp.headers.get("Retry-After"), now=_utcnow()))
        if resp.status_code == 404 and op in _ORDER_OPS:
            return OrderNotFound(f"{code_text}: order {order_id}", status=404)
        if resp.status_code in (401, 403):
            return CaAuthError(code_text, status=resp.status_code)
        return CaRequestError(code_text, status=resp.status_code)
    if isinstance(exc, requests.RequestException):
        what = "TLS error (is ca_bundle the CA of the ACME server's certificate?)" \
            if isinstance(exc, requests.exceptions.SSLError) else type(exc).__name__
        return unavailable(f"{op}: {what}: {_describe(exc)}", sent=not _not_sent(exc))
    if isinstance(exc, OSError):
        return unavailable(f"{op}: {type(exc).__name__}: {_describe(exc)}")
    if isinstance(exc, (DeserializationError, ValueError, KeyError, TypeError)):
        return unavailable(f"{op}: unreadable answer: {type(exc).__name__}: {_describe(exc)}", protocol=True)
    return unavailable(f"{op}: {type(exc).__name__}: {_describe(exc)}", protocol=True)


def validation_error(problem: messages.Error | None, *, domain: str, order_id: str) -> CaError:
    """The error for an authorization the CA marked invalid: `caa`/`rejectedIdentifier` refuse the name
    (OrderRejected); anything else (`connection`, `unauthorized`, `incorrectResponse`, `dns`, `tls`...) means the
    CA did not get the key authorization from http://<domain>/.well-known/acme-challenge/<token> (ValidationNotFound).
    """
    if problem is None:
        return ValidationNotFound(f"{domain}: the CA marked the authorization invalid without a reason",
                                  order_id=order_id, code="invalid")
    code = problem_code(problem)
    if code in ("caa", "rejectedIdentifier"):
        return OrderRejected(f"{domain}: {_problem_text(problem)}", status=403, errors=_problem_items(problem))
    return ValidationNotFound(f"{domain}: {_problem_text(problem)}", order_id=order_id, code=code)


def _is_bad_nonce(exc: BaseException) -> bool:
    return isinstance(exc, messages.Error) and problem_code(exc) == "badNonce"


# ------------------------------------------------------------------------------------------------- network


class _Network(ClientNetwork):
    """`ClientNetwork` that records the HTTP status and Retry-After on the problem documents it raises (the library
    drops the response) so `error_for` can tell a 429 or 503 from a 400."""

    @classmethod
    def _check_response(cls, response: requests.Response, content_type: str | None = None) -> requests.Response:
        try:
            return super()._check_response(response, content_type=content_type)
        except messages.Error as exc:
            exc.http_status = response.status_code
            exc.retry_after_s = _retry_after_s(response.headers.get("Retry-After"), now=_utcnow())
            raise


@final
class _Conn:
    """One pooled connection: a network (session, nonces) and the client over it. Used by one thread at a time."""

    def __init__(self, net: _Network) -> None:
        self.net = net
        self.client: ClientV2 | None = None

    def bind(self, directory: messages.Directory | None, account: messages.RegistrationResource | None) -> ClientV2:
        if directory is None:
            raise RuntimeError("the ACME directory is not loaded")
        if self.client is None or self.client.directory is not directory:
            self.client = ClientV2(directory, self.net)
        self.net.account = account
        return self.client

    @property
    def acme(self) -> ClientV2:
        """The client, bound to the directory and account by `AcmeIssuer._in_thread`."""
        assert self.client is not None
        return self.client

    def post(self, url: str, obj: JSONDeSerializable | None) -> requests.Response:
        """A signed POST (POST-as-GET when `obj` is None) with the account's kid."""
        return self.net.post(url, obj, new_nonce_url=self.acme.directory["newNonce"])


class _CallTimeout(Exception):
    pass


# ------------------------------------------------------------------------------------------------- the issuer


@final
class AcmeIssuer:
    """An ACME CA as an `Issuer`, with HTTP-01. One instance per account; safe to use from many coroutines at once.

    Args:
        directory_url: the CA's directory, e.g. https://acme-v02.api.letsencrypt.org/directory.
        account_key_pem: the account's private key (PEM; `new_account_key_pem()` makes one).
        contact: account contact URIs ("mailto:ops@example.com"); used only when the account is created.
        eab_kid, eab_hmac_key: External Account Binding credentials from the CA (the HMAC key base64url, as CAs
            hand it out); used only when the account is created. Give both or neither.
        ca_bundle: PEM file of the CA(s) to trust for the ACME server's TLS; None: the system store.
        name: the `Issuer.name` stamped on orders ("acme", "letsencrypt", "pebble"...).
        request_timeout_s: bound on connecting and on each read of one HTTP request.
        call_timeout_s: bound on one ACME request as a whole (nonce fetch included).
        validation_wait_s: how long `request_validation` (and `download`) waits for the CA's result in one call.
        poll_interval_s: pause between polls of an authorization or order within one call.
        max_connections: pooled connections, i.e. ACME requests in flight at once.
        bad_nonce_retries: extra attempts of a request the CA rejected with `badNonce` (after the library's own).
        csr_lookup: `await csr_lookup(order_url, domain)` -> the CSR PEM the order was placed with, or None; used to
            finalize an order this process did not place (after a restart). It must return the CSR of *that* order
            (e.g. the pipeline's stored CSR while the domain's `ca_order_id` is `order_url`): CAs refuse a CSR whose
            names differ, but not one with another key.
        user_agent: the User-Agent header (RFC 8555 §6.1 asks clients to send one).
        sleep, wall_clock: injected for tests.
    """

    def __init__(
        self,
        *,
        directory_url: str,
        account_key_pem: str | bytes,
        contact: Sequence[str] | str = (),
        eab_kid: str | None = None,
        eab_hmac_key: str | None = None,
        ca_bundle: str | Path | None = None,
        name: str = "acme",
        request_timeout_s: float = 30.0,
        call_timeout_s: float = 60.0,
        validation_wait_s: float = 10.0,
        poll_interval_s: float = 0.5,
        max_connections: int = 4,
        bad_nonce_retries: int = 4,
        csr_lookup: Callable[[str, str], Awaitable[str | None]] | None = None,
        user_agent: str = "lockstep-controlplane/0.1",
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wall_clock: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        if not directory_url.startswith(("https://", "http://")):
            raise ValueError("directory_url must be an http(s) URL")
        if (eab_kid is None) != (eab_hmac_key is None):
            raise ValueError("give both eab_kid and eab_hmac_key, or neither")
        if eab_hmac_key is not None:
            try:
                jose_b64.b64decode(eab_hmac_key)
            except (ValueError, TypeError):
                raise ValueError("eab_hmac_key is not base64url") from None
        if request_timeout_s <= 0 or call_timeout_s <= 0 or validation_wait_s < 0 or poll_interval_s <= 0:
            raise ValueError("timeouts and intervals must be positive")
        if max_connections < 1 or bad_nonce_retries < 0:
            raise ValueError("max_connections must be at least 1 and bad_nonce_retries not negative")
        self.name = name
        self._directory_url = directory_url
        self._jwk, self._alg = _load_account_key(account_key_pem)
        self._contact = (contact,) if isinstance(contact, str) else tuple(contact)
        self._eab_kid = eab_kid
        self._eab_hmac_key = eab_hmac_key
        self._verify: bool | str = str(ca_bundle) if ca_bundle is not None else True
        self._request_timeout_s = request_timeout_s
        self._call_timeout_s = call_timeout_s
        self._validation_wait_s = validation_wait_s
        self._poll_interval_s = poll_interval_s
        self._bad_nonce_retries = bad_nonce_retries
        self._csr_lookup = csr_lookup
        self._user_agent = user_agent
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._directory: messages.Directory | None = None
        self._account: messages.RegistrationResource | None = None
        self._setup_lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Conn] = []
        self._csrs: collections.OrderedDict[str, str] = collections.OrderedDict()  # order URL -> CSR PEM
        self._csrs_max = 10_000
        self._revoked: collections.deque[str] = collections.deque(maxlen=1000)  # certificate URLs

    def __repr__(self) -> str:
        return f"AcmeIssuer(name={self.name!r}, directory_url={self._directory_url!r}, account_key=<redacted>)"

    @property
    def account_url(self) -> str | None:
        """The account's URL at the CA, once the account was fetched or registered."""
        return None if self._account is None else str(self._account.uri)

    async def aclose(self) -> None:
        """Close the pooled HTTP sessions (connections in use are closed when their thread returns them)."""
        for conn in self._idle:
            conn.net.session.close()
        self._idle.clear()

    # ------------------------------------------------------------------ Issuer

    async def place_order(self, domain: str, csr_pem: str, *, validity_days: int) -> Order:
        """newOrder for the CSR's one name, then its authorization; returns the order with its HTTP-01 token.

        The order id is the order URL. If the order was created but its authorization could not be read, the order
        comes back PENDING without tokens (`refresh_tokens`/`get_order` fetch them).

        Raises:
            ValueError: the CSR does not name exactly `domain`, or `validity_days` < 1.
            UnknownOutcome: newOrder may have created an order (harmless in ACME, see the module docstring).
            OrderRejected: `rejectedIdentifier`, `caa`, `badCSR`..., or the CA offers no HTTP-01 challenge.
            RateLimited, CaUnavailable, CaAuthError, CaRequestError: see `error_for`.
        """
        domain = _normalise_domain(domain)
        if validity_days < 1:
            raise ValueError("validity_days must be positive")
        names = _csr_names(csr_pem)
        if names != {domain}:
            raise ValueError(f"the CSR names {sorted(names)}, not exactly {domain!r}")
        await self._ensure_account()
        new_order = messages.NewOrder(identifiers=[messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=domain)])
        assert self._directory is not None
        new_order_url = str(self._directory["newOrder"])

        def send(conn: _Conn) -> tuple[Any, str | None]:
            resp = conn.post(new_order_url, new_order)
            return resp.json(), resp.headers.get("Location")

        raw, url = await self._call(AcmeOp.NEW_ORDER, send, creating=True, domain=domain)
        try:
            body = _parse(messages.Order, raw)
        except DeserializationError as exc:
            raise UnknownOutcome(f"{AcmeOp.NEW_ORDER}: unreadable order: {exc}", domain=domain) from exc
        if not url:
            raise UnknownOutcome(f"{AcmeOp.NEW_ORDER}: the CA sent no order URL (Location)", domain=domain)
        self._remember_csr(url, csr_pem)
        logger.info("acme: order %s placed for %s (%s)", url, domain, _name(body.status),
                    extra={"order_id": url, "domain": domain, "issuer": self.name})
        try:
            authzs = await self._authorizations(url, body)
        except (CaUnavailable, RateLimited) as exc:
            logger.warning("acme: order %s: reading its authorization failed (%s); tokens follow later", url, exc,
                           extra={"order_id": url, "domain": domain, "issuer": self.name})
            return Order(issuer=self.name, order_id=url, domain=domain, tokens=(), status=OrderStatus.PENDING,
                         ca_status=_name(body.status))
        order = self._to_order(url, domain, body, authzs)
        if order.status is OrderStatus.PENDING and not order.tokens:
            await self._deactivate(url, authzs, urls=list(body.authorizations or ()), domain=domain)
            raise OrderRejected(f"{AcmeOp.NEW_ORDER}: the CA offers no http-01 challenge for {domain}", status=400,
                                errors=(ApiErrorItem("noHttp01Challenge", domain),))
        return order

    async def find_order(self, domain: str, *, csr_pem: str | None = None) -> Order | None:
        """Always None: Let's Encrypt serves no order list (the account `orders` URL is optional), and an order left
        behind by an unknown outcome is harmless (a pending order costs nothing and expires), so the pipeline simply
        places a new one."""
        _normalise_domain(domain)
        return None

    async def get_order(self, order_id: str, domain: str, *, with_tokens: bool = True) -> Order:
        """The order at URL `order_id`, re-fetched: pending -> PENDING (with its tokens when `with_tokens`),
        ready/processing -> PROCESSING, valid -> ISSUED (`certificate_id` = the certificate URL), invalid -> REJECTED
        (CANCELED when we deactivated it, EXPIRED when it ran out), with the CA's problem in `ca_status`.

        A `ready` order is finalized here when its CSR is known (kept since `place_order`, or from `csr_lookup`);
        otherwise it is reported PENDING.

        Raises:
            ValueError: the order is not for `domain`.
            OrderNotFound: the CA does not know the URL.
        """
        domain = _normalise_domain(domain)
        await self._ensure_account()
        body = await self._fetch_order(order_id, domain)
        body, finalized = await self._finalize_if_ready(order_id, domain, body)
        authzs: list[messages.Authorization] | None = None
        if (with_tokens and body.status == messages.STATUS_PENDING) or not finalized \
                or (body.status == messages.STATUS_INVALID and body.error is None):
            authzs = await self._authorizations(order_id, body)
        return self._to_order(order_id, domain, body, authzs, finalizable=finalized)

    async def refresh_tokens(self, order: Order) -> Order:
        """The order unchanged: ACME key authorizations do not expire on their own (the authorization does, and with
        it the order). An order without tokens gets them from `get_order`."""
        if order.tokens:
            return order
        return await self.get_order(order.order_id, order.domain, with_tokens=True)

    async def request_validation(self, order: Order) -> Order:
        """Answer the HTTP-01 challenge of every pending authorization (once: only while the challenge is pending),
        wait up to `validation_wait_s` for the CA's verdict, and finalize once all are valid.

        Returns the order PENDING (the CA is still validating: call again later), PROCESSING (validated, issuing) or
        ISSUED; or REJECTED/CANCELED/EXPIRED when the order had already ended for another reason.

        Raises:
            ValidationNotFound: an authorization turned invalid; the CA's problem (e.g. `connection`: connection
                refused, `unauthorized`: 404 or wrong content) is the message, its type the `code`. The order is now
                invalid: place a new one.
            OrderRejected: the validation failed on CAA or a rejected identifier.
        """
        domain, url = order.domain, order.order_id
        await self._ensure_account()
        body = await self._fetch_order(url, domain)
        if body.status != messages.STATUS_PENDING:
            if body.status == messages.STATUS_INVALID:
                authzs = await self._authorizations(url, body)
                failed = self._failed_challenge(authzs)
                if failed is not None:
                    raise validation_error(failed, domain=domain, order_id=url)
                return self._to_order(url, domain, body, authzs)
            body, finalized = await self._finalize_if_ready(url, domain, body)
            return self._to_order(url, domain, body, None, finalizable=finalized, tokens=order.tokens)
        authzs = await self._authorizations(url, body)
        for authz_url, authz in zip(body.authorizations, authzs):
            if authz.status != messages.STATUS_PENDING:
                continue
            challb = self._http01(authz)
            if challb is None:
                raise OrderRejected(f"{AcmeOp.CHALLENGE}: the CA offers no http-01 challenge for "
                                    f"{authz.identifier.value}", status=400,
                                    errors=(ApiErrorItem("noHttp01Challenge", authz.identifier.value),))
            if challb.status == messages.STATUS_PENDING:
                await self._answer(url, challb)
                logger.info("acme: order %s: answered the http-01 challenge for %s", url, authz.identifier.value,
                            extra={"order_id": url, "domain": domain, "issuer": self.name})
        polls = self._polls()
        while True:
            authzs = [a if a.status == messages.STATUS_VALID else await self._authorization(url, a_url)
                      for a_url, a in zip(body.authorizations, authzs)]
            for authz in authzs:
                if authz.status == messages.STATUS_INVALID:
                    raise validation_error(self._failed_challenge([authz]), domain=str(authz.identifier.value),
                                           order_id=url)
                if authz.status not in (messages.STATUS_PENDING, messages.STATUS_VALID):  # deactivated, expired
                    body = await self._fetch_order(url, domain)
                    return self._to_order(url, domain, body, authzs)
            if all(a.status == messages.STATUS_VALID for a in authzs):
                break
            if polls <= 0:
                return self._to_order(url, domain, body, authzs)
            polls -= 1
            await self._sleep(self._poll_interval_s)
        body = await self._fetch_order(url, domain)
        body, finalized = await self._finalize_if_ready(url, domain, body)
        return self._to_order(url, domain, body, authzs, finalizable=finalized)

    async def download(self, order: Order) -> str:
        """The certificate chain PEM, leaf first, from the order's certificate URL (finalizing a `ready` order and
        waiting up to `validation_wait_s` for a `processing` one). Not validated here.

        Raises:
            CaUnavailable: the CA is still issuing; try again later.
            CaRequestError: the order has no certificate (`orderNotReady`: pending or invalid, or ready with an
                unknown CSR).
        """
        url, domain = order.order_id, order.domain
        await self._ensure_account()
        body = await self._fetch_order(url, domain)
        body, _ = await self._finalize_if_ready(url, domain, body)
        polls = self._polls()
        while body.status == messages.STATUS_PROCESSING and polls > 0:
            polls -= 1
            await self._sleep(self._poll_interval_s)
            body = await self._fetch_order(url, domain)
        if body.status == messages.STATUS_PROCESSING:
            raise CaUnavailable(f"{AcmeOp.CERTIFICATE}: order {url} is still processing")
        if body.status != messages.STATUS_VALID or not body.certificate:
            raise CaRequestError(f"{AcmeOp.CERTIFICATE}: order {url} is {_name(body.status)}, it has no certificate",
                                 status=403, errors=(ApiErrorItem("orderNotReady", _name(body.status)),))
        chain = await self._certificate(url, str(body.certificate))
        self._forget_csr(url)
        return "".join(chain)

    async def cancel(self, order: Order) -> None:
        """Deactivate the order's pending authorizations (best effort), which ends the order; forget its CSR so it
        is never finalized. A no-op for an order that is already valid or invalid.

        Raises:
            CaUnavailable, RateLimited: a deactivation could not be sent (refusals are logged and ignored).
        """
        url = order.order_id
        self._forget_csr(url)
        await self._ensure_account()
        body = await self._fetch_order(url, order.domain)
        if body.status in (messages.STATUS_VALID, messages.STATUS_INVALID):
            return
        authzs = await self._authorizations(url, body)
        await self._deactivate(url, authzs, urls=list(body.authorizations or ()), domain=order.domain)

    async def revoke(self, order: Order, *, reason: str = "superseded") -> RevocationStatus:
        """Revoke the order's certificate with the account key (revokeCert, RFC 8555 §7.6), `reason` one of
        `REVOCATION_REASONS` (superseded = 4). Already revoked (`alreadyRevoked`, or revoked earlier by this process)
        counts as success.

        Raises:
            ValueError: unknown reason.
            CaRequestError: the order has no certificate.
            OrderNotFound: the certificate URL is gone (Pebble drops a certificate's URL once it is revoked; Let's
                Encrypt keeps it), e.g. when another process revoked it.
        """
        if reason not in REVOCATION_REASONS:
            raise ValueError(f"unknown revocation reason {reason!r} (one of {sorted(REVOCATION_REASONS)})")
        url = order.order_id
        await self._ensure_account()
        cert_url = order.certificate_id
        if not cert_url:
            body = await self._fetch_order(url, order.domain)
            if body.status != messages.STATUS_VALID or not body.certificate:
                raise CaRequestError(f"{AcmeOp.REVOKE}: order {url} is {_name(body.status)}, it has no certificate",
                                     status=403, errors=(ApiErrorItem("orderNotReady", _name(body.status)),))
            cert_url = str(body.certificate)
        if cert_url in self._revoked:
            return RevocationStatus.REVOKED
        chain = await self._certificate(url, cert_url)
        leaf = x509.load_pem_x509_certificate(chain[0].encode())
        rsn = REVOCATION_REASONS[reason]
        try:
            await self._call(AcmeOp.REVOKE, lambda c: c.acme.revoke(leaf, rsn),
                             order_id=url)
        except CaRequestError as exc:
            if exc.code != "alreadyRevoked":
                raise
        self._revoked.append(cert_url)
        logger.info("acme: order %s: certificate %x revoked (%s)", url, leaf.serial_number, reason,
                    extra={"order_id": url, "domain": order.domain, "issuer": self.name})
        return RevocationStatus.REVOKED

    # ------------------------------------------------------------------ ARI

    async def renewal_window(self, cert_pem: str) -> tuple[dt.datetime, dt.datetime] | None:
        """The CA's suggested renewal window (start, end; aware UTC) for the certificate, from ACME Renewal
        Information (RFC 9773: GET <renewalInfo>/<ari_cert_id>); None when the directory offers no `renewalInfo`.

        Raises:
            ValueError: `cert_pem` is not a certificate with an Authority Key Identifier.
            CaError: the renewalInfo request failed.
        """
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        cert_id = ari_cert_id(cert)
        await self._ensure_directory()
        assert self._directory is not None
        try:
            base = str(self._directory["renewalInfo"])
        except KeyError:
            return None
        url = base.rstrip("/") + "/" + cert_id

        def fetch(conn: _Conn) -> Any:
            return conn.net.get(url, content_type=ClientNetwork.JSON_CONTENT_TYPE).json()

        raw = await self._call(AcmeOp.RENEWAL_INFO, fetch, account=False)
        try:
            info = messages.RenewalInfo.from_json(raw)
            start, end = info.suggested_window.start, info.suggested_window.end
        except (DeserializationError, AttributeError) as exc:
            raise CaProtocolError(f"{AcmeOp.RENEWAL_INFO}: unreadable renewal info: {exc}") from exc
        if start is None or end is None:
            raise CaProtocolError(f"{AcmeOp.RENEWAL_INFO}: the suggested window has no start or end")
        start, end = (t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC) for t in (start, end))
        if end < start:
            raise CaProtocolError(f"{AcmeOp.RENEWAL_INFO}: the suggested window ends before it starts")
        return start, end

    def _polls(self) -> int:
        """Polls that fit in `validation_wait_s` (counted, not timed, so an injected sleep stays deterministic)."""
        return int(self._validation_wait_s / self._poll_interval_s)

    # ------------------------------------------------------------------ account and directory

    async def _ensure_directory(self) -> None:
        if self._directory is not None:
            return
        async with self._setup_lock:
            if self._directory is None:
                raw = await self._call(AcmeOp.DIRECTORY,
                                       lambda c: c.net.get(self._directory_url).json(), account=False, bind=False)
                try:
                    self._directory = messages.Directory.from_json(raw)
                except (DeserializationError, AttributeError, TypeError) as exc:
                    raise CaProtocolError(f"{AcmeOp.DIRECTORY}: unreadable directory: {exc}") from exc

    async def _ensure_account(self) -> None:
        """Fetch the key's account (onlyReturnExisting); register one only when the CA knows none."""
        if self._account is not None:
            return
        await self._ensure_directory()
        async with self._setup_lock:
            if self._account is not None:
                return
            regr = await self._call(AcmeOp.ACCOUNT, self._fetch_account, account=False)
            created = regr is None
            if regr is None:
                regr = await self._call(AcmeOp.ACCOUNT, self._register, account=False)
            status = regr.body.status
            if status is not None and _name(status) != "valid":
                raise CaAuthError(f"{AcmeOp.ACCOUNT}: the account {regr.uri} is {status}", status=403)
            self._account = regr
            logger.info("acme: %s account %s at %s", "registered" if created else "using", regr.uri,
                        self._directory_url, extra={"issuer": self.name})

    def _fetch_account(self, conn: _Conn) -> messages.RegistrationResource | None:
        try:
            return conn.acme.query_registration(messages.RegistrationResource(body=messages.Registration()))
        except messages.Error as exc:
            if problem_code(exc) == "accountDoesNotExist":
                return None
            raise

    def _register(self, conn: _Conn) -> messages.RegistrationResource:
        client = conn.acme
        eab = None
        if self._eab_kid is not None and self._eab_hmac_key is not None:
            eab = messages.ExternalAccountBinding.from_data(account_public_key=self._jwk.public_key(),
                                                            kid=self._eab_kid, hmac_key=self._eab_hmac_key,
                                                            directory=client.directory)
        registration = messages.NewRegistration.from_data(contact=self._contact, terms_of_service_agreed=True,
                                                          external_account_binding=eab)
        try:
            return client.new_account(registration)
        except acme_errors.ConflictError as exc:  # registered meanwhile (another control plane): fetch it
            return client.query_registration(messages.RegistrationResource(body=messages.Registration(),
                                                                           uri=exc.location))

    # ------------------------------------------------------------------ requests

    def _new_conn(self) -> _Conn:
        net = _Network(self._jwk, alg=self._alg, verify_ssl=self._verify,  # type: ignore[arg-type]
                       user_agent=self._user_agent, timeout=self._request_timeout_s)  # type: ignore[arg-type]
        return _Conn(net)

    async def _in_thread(self, fn: Callable[[_Conn], T], *, account: bool, bind: bool) -> T:
        await self._slots.acquire()
        conn = self._idle.pop() if self._idle else self._new_conn()

        def run() -> T:
            if bind:
                conn.bind(self._directory, self._account if account else None)
            return fn(conn)

        fut = asyncio.ensure_future(asyncio.to_thread(run))

        def release(done: asyncio.Future[T] | None = None) -> None:
            if done is not None and not done.cancelled():
                done.exception()  # retrieved: a late failure is not "never retrieved"
            self._idle.append(conn)
            self._slots.release()

        try:
            async with asyncio.timeout(self._call_timeout_s):
                return await asyncio.shield(fut)
        except TimeoutError:
            if fut.done():
                raise
            raise _CallTimeout() from None
        finally:
            if fut.done():
                release()
            else:  # the thread still uses the connection: return it only when it is done
                fut.add_done_callback(release)

    async def _call(self, op: AcmeOp, fn: Callable[[_Conn], T], *, creating: bool = False, domain: str = "",
                    order_id: str | None = None, account: bool = True, bind: bool = True) -> T:
        """Run one ACME request in a worker thread; retry `badNonce`; map failures with `error_for`."""
        attempt = 0
        while True:
            try:
                return await self._in_thread(fn, account=account, bind=bind)
            except _CallTimeout:
                message = f"{op}: no answer within {self._call_timeout_s:g} s"
                if creating:
                    raise UnknownOutcome(message, domain=domain) from None
                raise CaUnavailable(message) from None
            except Exception as exc:
                if _is_bad_nonce(exc) and attempt < self._bad_nonce_retries:
                    attempt += 1
                    logger.debug("acme: %s: badNonce, retrying (%d)", op, attempt)
                    continue
                error = error_for(exc, op=op, creating=creating, domain=domain, order_id=order_id)
                raise error from exc

    async def _fetch_order(self, url: str, domain: str) -> messages.Order:
        raw = await self._call(AcmeOp.ORDER, lambda c: c.post(url, None).json(), order_id=url)
        try:
            body = _parse(messages.Order, raw)
        except DeserializationError as exc:
            raise CaProtocolError(f"{AcmeOp.ORDER}: unreadable order {url}: {exc}") from exc
        names = {str(i.value).lower() for i in body.identifiers or ()}
        if domain not in names:
            raise ValueError(f"order {url} is for {sorted(names)}, not {domain!r}")
        return body

    async def _authorization(self, order_url: str, authz_url: str) -> messages.Authorization:
        raw = await self._call(AcmeOp.AUTHORIZATION, lambda c: c.post(authz_url, None).json(), order_id=order_url)
        try:
            return _parse(messages.Authorization, raw)
        except DeserializationError as exc:
            raise CaProtocolError(f"{AcmeOp.AUTHORIZATION}: unreadable authorization {authz_url}: {exc}") from exc

    async def _authorizations(self, order_url: str, body: messages.Order) -> list[messages.Authorization]:
        return [await self._authorization(order_url, str(u)) for u in body.authorizations or ()]

    async def _answer(self, order_url: str, challb: messages.ChallengeBody) -> None:
        response = challb.response(self._jwk)
        await self._call(AcmeOp.CHALLENGE,
                         lambda c: c.acme.answer_challenge(challb, response),
                         order_id=order_url)

    async def _certificate(self, order_url: str, cert_url: str) -> list[str]:
        text = await self._call(AcmeOp.CERTIFICATE, lambda c: c.post(cert_url, None).text, order_id=order_url)
        chain = _split_chain(text)
        if not chain:
            raise CaProtocolError(f"{AcmeOp.CERTIFICATE}: no CERTIFICATE block at {cert_url}")
        return chain

    async def _csr_for(self, url: str, domain: str) -> str | None:
        csr_pem = self._csrs.get(url)
        if csr_pem is not None:
            return csr_pem
        if self._csr_lookup is not None:
            return await self._csr_lookup(url, domain)
        return None

    async def _finalize_if_ready(self, url: str, domain: str, body: messages.Order) -> tuple[messages.Order, bool]:
        """Finalize a `ready` order when its CSR is known: (new body, True). (body, False): ready, CSR unknown.
        Other statuses pass through as (body, True)."""
        if body.status != messages.STATUS_READY:
            return body, True
        csr_pem = await self._csr_for(url, domain)
        if csr_pem is None:
            logger.warning("acme: order %s is ready but its CSR is unknown here: cannot finalize", url,
                           extra={"order_id": url, "issuer": self.name})
            return body, False
        request = messages.CertificateRequest(csr=x509.load_pem_x509_csr(csr_pem.encode()))
        finalize_url = str(body.finalize)

        def finalize(conn: _Conn) -> messages.Order:
            return _parse(messages.Order, conn.post(finalize_url, request).json())

        try:
            new_body = await self._call(AcmeOp.FINALIZE, finalize, order_id=url)
        except CaRequestError as exc:
            if exc.code != "orderNotReady":  # e.g. finalized meanwhile by a concurrent call: read the order again
                raise
            new_body = await self._fetch_order(url, domain)
        logger.info("acme: order %s finalized (%s)", url, _name(new_body.status), extra={"order_id": url,
                                                                                  "issuer": self.name})
        return new_body, True

    async def _deactivate(self, url: str, authzs: Sequence[messages.Authorization], *, urls: Sequence[str],
                          domain: str) -> None:
        for authz_url, authz in zip(urls, authzs):
            if authz.status != messages.STATUS_PENDING:
                continue
            authzr = messages.AuthorizationResource(body=authz, uri=str(authz_url))

            def deactivate(conn: _Conn, authzr: messages.AuthorizationResource = authzr) -> None:
                conn.acme.deactivate_authorization(authzr)

            try:
                await self._call(AcmeOp.DEACTIVATE, deactivate, order_id=url)
            except CaRequestError as exc:  # best effort: e.g. it turned invalid meanwhile
                logger.warning("acme: order %s: deactivating %s: %s", url, authz_url, exc,
                               extra={"order_id": url, "domain": domain, "issuer": self.name})

    # ------------------------------------------------------------------ mapping

    @staticmethod
    def _http01(authz: messages.Authorization) -> messages.ChallengeBody | None:
        for challb in authz.challenges or ():
            if isinstance(challb.chall, challenges.HTTP01):
                return challb
        return None

    @staticmethod
    def _failed_challenge(authzs: Sequence[messages.Authorization]) -> messages.Error | None:
        for authz in authzs:
            if authz.status != messages.STATUS_INVALID:
                continue
            for challb in authz.challenges or ():
                if challb.error is not None:
                    return challb.error
        return None

    def _tokens(self, authzs: Sequence[messages.Authorization]) -> tuple[ValidationToken, ...]:
        tokens = []
        for authz in authzs:
            challb = self._http01(authz)
            if challb is None or authz.status not in (messages.STATUS_PENDING, messages.STATUS_VALID):
                continue
            chall = challb.chall
            assert isinstance(chall, challenges.HTTP01)
            expires = authz.expires
            if expires is None:
                expires = self._wall_clock() + DEFAULT_TOKEN_TTL
            elif expires.tzinfo is None:
                expires = expires.replace(tzinfo=dt.UTC)
            tokens.append(ValidationToken(host=str(authz.identifier.value), path=chall.path,
                                          value=chall.validation(self._jwk), expires_at=expires))
        return tuple(tokens)

    def _to_order(self, url: str, domain: str, body: messages.Order, authzs: Sequence[messages.Authorization] | None,
                  *, finalizable: bool = True, tokens: tuple[ValidationToken, ...] = ()) -> Order:
        ca_status = _name(body.status)
        certificate_id: str | None = None
        if authzs is not None:
            tokens = self._tokens(authzs)
        if body.status == messages.STATUS_PENDING:
            status = OrderStatus.PENDING
        elif body.status == messages.STATUS_READY:
            status = OrderStatus.PROCESSING
            if not finalizable:
                status = OrderStatus.PENDING
                ca_status = "ready (validated; not finalized: the CSR is unknown to this process)"
        elif body.status == messages.STATUS_PROCESSING:
            status = OrderStatus.PROCESSING
        elif body.status == messages.STATUS_VALID:
            status = OrderStatus.ISSUED
            certificate_id = str(body.certificate) if body.certificate else None
        elif body.status == messages.STATUS_INVALID:
            status = OrderStatus.REJECTED
            problem = body.error or self._failed_challenge(authzs or ())
            statuses = {_name(a.status) for a in authzs or ()}
            if problem is None and "deactivated" in statuses:
                status = OrderStatus.CANCELED
            elif problem is None and ("expired" in statuses or (
                    body.expires is not None and _aware(body.expires) <= self._wall_clock())):
                status = OrderStatus.EXPIRED
            if problem is not None:
                ca_status = f"invalid: {_problem_text(problem)}"
            tokens = ()
        elif ca_status == "deactivated":  # Pebble's order status once we deactivated its authorization
            status = OrderStatus.CANCELED
            tokens = ()
        else:
            status = OrderStatus.UNKNOWN
        return Order(issuer=self.name, order_id=url, domain=domain, tokens=tokens, status=status,
                     certificate_id=certificate_id, ca_status=ca_status)

    # ------------------------------------------------------------------ CSRs of orders placed here

    def _remember_csr(self, url: str, csr_pem: str) -> None:
        self._csrs[url] = csr_pem
        self._csrs.move_to_end(url)
        while len(self._csrs) > self._csrs_max:
            self._csrs.popitem(last=False)

    def _forget_csr(self, url: str) -> None:
        self._csrs.pop(url, None)


def _name(status: object) -> str:
    """An ACME status as its wire string (`messages.Status` reprs as "Status(valid)"; some fields are plain str)."""
    return str(getattr(status, "name", status))


def _aware(t: dt.datetime) -> dt.datetime:
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t

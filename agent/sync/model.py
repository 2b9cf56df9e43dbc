"""Wire models of the sync protocol on the agent side, and their strict parsers.

Pure. Everything from the network passes through `parse_*`, which either returns frozen values or raises
ProtocolViolation naming the offending field; unknown fields are ignored (docs/sync-protocol.md, Versioning).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any, Literal

from agent.tokens import InvalidHost, Token, is_validation_path, normalize_host

from .errors import FingerprintNotCurrent, NotFound, ProtocolViolation, SyncError

__all__ = ["CertRef", "Change", "ChangeBatch", "Snapshot", "parse_changes", "parse_material",
           "parse_material_batch", "parse_snapshot"]

PROTOCOL = 1
MAX_TOKEN_VALUE = 1024


@dataclasses.dataclass(frozen=True, slots=True)
class CertRef:
    name: str
    fingerprint: str
    not_after: dt.datetime
    domains: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    revision: int
    op: Literal["put", "delete"]
    kind: Literal["token", "certificate"]
    key: str
    token: Token | None = None
    certificate: CertRef | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    revision: int
    tokens: tuple[Token, ...]
    certificates: tuple[CertRef, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class ChangeBatch:
    revision: int
    changes: tuple[Change, ...]


def _field(obj: Any, name: str, kind: type, where: str) -> Any:
    if not isinstance(obj, dict):
        raise ProtocolViolation(f"{where}: expected an object")
    value = obj.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolViolation(f"{where}.{name}: expected {kind.__name__}")
    return value


def _time(obj: Any, name: str, where: str) -> dt.datetime:
    raw = _field(obj, name, str, where)
    try:
        value = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ProtocolViolation(f"{where}.{name}: not an RFC 3339 time") from None
    if value.tzinfo is None:
        raise ProtocolViolation(f"{where}.{name}: time without an offset")
    return value


def _protocol(body: Any) -> None:
    if _field(body, "protocol", int, "body") != PROTOCOL:
        raise ProtocolViolation(f"unsupported protocol {body.get('protocol')!r}")


def parse_token(obj: Any, where: str = "token") -> Token:
    host = _field(obj, "host", str, where)
    path = _field(obj, "path", str, where)
    value = _field(obj, "value", str, where)
    try:
        if normalize_host(host) != host:
            raise ProtocolViolation(f"{where}.host: not normalised: {host!r}")
    except InvalidHost as exc:
        raise ProtocolViolation(f"{where}.host: {exc}") from None
    if not is_validation_path(path):
        raise ProtocolViolation(f"{where}.path: not a validation path")
    if len(value) > MAX_TOKEN_VALUE or not value.isprintable() or not value.isascii():
        raise ProtocolViolation(f"{where}.value: must be at most {MAX_TOKEN_VALUE} printable ASCII characters")
    return Token(host=host, path=path, value=value, expires_at=_time(obj, "expires_at", where))


def parse_certref(obj: Any, where: str = "certificate") -> CertRef:
    domains = _field(obj, "domains", list, where)
    if not all(isinstance(d, str) for d in domains):
        raise ProtocolViolation(f"{where}.domains: expected strings")
    fingerprint = _field(obj, "fingerprint", str, where)
    if not fingerprint.startswith("sha256:") or len(fingerprint) != 7 + 64:
        raise ProtocolViolation(f"{where}.fingerprint: expected sha256:<64 hex>")
    return CertRef(
        name=_field(obj, "name", str, where),
        fingerprint=fingerprint,
        not_after=_time(obj, "not_after", where),
        domains=tuple(domains),
    )


def parse_snapshot(body: Any) -> Snapshot:
    _protocol(body)
    revision = _field(body, "revision", int, "body")
    tokens = _field(body, "tokens", list, "body")
    certs = _field(body, "certificates", list, "body")
    return Snapshot(
        revision=revision,
        tokens=tuple(parse_token(t, f"tokens[{i}]") for i, t in enumerate(tokens)),
        certificates=tuple(parse_certref(c, f"certificates[{i}]") for i, c in enumerate(certs)),
    )


def parse_changes(body: Any, *, since: int) -> ChangeBatch:
    _protocol(body)
    revision = _field(body, "revision", int, "body")
    raw = _field(body, "changes", list, "body")
    changes: list[Change] = []
    last = since
    for i, item in enumerate(raw):
        where = f"changes[{i}]"
        rev = _field(item, "revision", int, where)
        if rev <= last:
            raise ProtocolViolation(f"{where}.revision: {rev} not after {last}")
        last = rev
        op = _field(item, "op", str, where)
        kind = _field(item, "kind", str, where)
        key = _field(item, "key", str, where)
        if op not in ("put", "delete") or kind not in ("token", "certificate"):
            raise ProtocolViolation(f"{where}: unknown op/kind {op!r}/{kind!r}")
        token = certificate = None
        if op == "put" and kind == "token":
            token = parse_token(item.get("token"), f"{where}.token")
            if token.key != key:
                raise ProtocolViolation(f"{where}.key: does not match the token")
        elif op == "put":
            certificate = parse_certref(item.get("certificate"), f"{where}.certificate")
            if certificate.name != key:
                raise ProtocolViolation(f"{where}.key: does not match the certificate")
        changes.append(Change(rev, op, kind, key, token, certificate))  # type: ignore[arg-type]
    if revision < last or (not changes and revision != since):
        raise ProtocolViolation(f"body.revision {revision} inconsistent with changes")
    return ChangeBatch(revision=revision, changes=tuple(changes))


def parse_material(body: Any, *, name: str, fingerprint: str) -> str:
    _protocol(body)
    if _field(body, "name", str, "body") != name or _field(body, "fingerprint", str, "body") != fingerprint:
        raise ProtocolViolation("material for another name or fingerprint")
    return str(_field(body, "pem", str, "body"))


def parse_material_batch(body: Any, wanted: Sequence[tuple[str, str]]) -> dict[str, str | SyncError]:
    """The batch answer, item by item in request order: PEM, or NotFound / FingerprintNotCurrent."""
    _protocol(body)
    items = _field(body, "certificates", list, "body")
    if len(items) != len(wanted):
        raise ProtocolViolation(f"asked for {len(wanted)} certificates, got {len(items)} answers")
    out: dict[str, str | SyncError] = {}
    for i, ((name, fingerprint), item) in enumerate(zip(wanted, items, strict=True)):
        where = f"certificates[{i}]"
        if _field(item, "name", str, where) != name:
            raise ProtocolViolation(f"{where}.name: answers out of order")
        error = item.get("error")
        if error == "not_found":
            out[name] = NotFound(name)
        elif error == "fingerprint_not_current":
            out[name] = FingerprintNotCurrent(name)
        elif error is not None:
            raise ProtocolViolation(f"{where}.error: unknown {error!r}")
        else:
            if _field(item, "fingerprint", str, where) != fingerprint:
                raise ProtocolViolation(f"{where}: material for another fingerprint")
            out[name] = str(_field(item, "pem", str, where))
    return out

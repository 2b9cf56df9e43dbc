from __future__ import annotations

import copy
from typing import Any

import pytest

from agent.sync.errors import ProtocolViolation
from agent.sync.model import parse_changes, parse_material, parse_snapshot

FP = "sha256:" + "ab" * 32
TOKEN = {"host": "shop.example.test", "path": "/.well-known/pki-validation/fileauth.txt", "value": "abc123",
         "expires_at": "2026-11-24T09:00:00Z"}
CERT = {"name": "shop.example.test", "fingerprint": FP, "not_after": "2027-02-22T08:00:00Z",
        "domains": ["shop.example.test"]}
SNAPSHOT = {"protocol": 1, "revision": 3, "tokens": [TOKEN], "certificates": [CERT]}
CHANGES = {"protocol": 1, "revision": 5, "changes": [
    {"revision": 4, "op": "put", "kind": "token", "key": TOKEN["host"] + TOKEN["path"], "token": TOKEN},
    {"revision": 5, "op": "delete", "kind": "certificate", "key": "shop.example.test"},
]}


def test_parse_snapshot_and_changes() -> None:
    snap = parse_snapshot(SNAPSHOT)
    assert snap.revision == 3 and snap.tokens[0].value == "abc123" and snap.certificates[0].fingerprint == FP
    batch = parse_changes(CHANGES, since=3)
    assert batch.revision == 5
    assert [c.op for c in batch.changes] == ["put", "delete"]
    assert parse_changes({"protocol": 1, "revision": 3, "changes": [], "extra": True}, since=3).changes == ()


def _mutate(body: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(body)
    target = out
    for p in path[:-1]:
        target = target[p]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return out


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (["protocol"], 2),
        (["revision"], "3"),
        (["revision"], True),
        (["tokens"], None),
        (["tokens", 0, "host"], "Shop.Example.Test"),  # not normalised
        (["tokens", 0, "host"], "bad host"),
        (["tokens", 0, "path"], "/etc/passwd"),
        (["tokens", 0, "value"], "line\nbreak"),
        (["tokens", 0, "value"], "x" * 1025),
        (["tokens", 0, "expires_at"], "tomorrow"),
        (["tokens", 0, "expires_at"], "2026-11-24T09:00:00"),  # no offset
        (["certificates", 0, "fingerprint"], "md5:00"),
        (["certificates", 0, "domains"], [1]),
        (["certificates", 0, "name"], KeyError),
    ],
)
def test_snapshot_violations(path: list[Any], value: Any) -> None:
    with pytest.raises(ProtocolViolation):
        parse_snapshot(_mutate(SNAPSHOT, path, value))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (["changes", 1, "revision"], 4),  # not increasing
        (["changes", 0, "revision"], 3),  # not after since
        (["changes", 0, "op"], "upsert"),
        (["changes", 0, "key"], "other"),
        (["revision"], 4),  # below the last change
        (["changes", 0, "token"], KeyError),
    ],
)
def test_changes_violations(path: list[Any], value: Any) -> None:
    with pytest.raises(ProtocolViolation):
        parse_changes(_mutate(CHANGES, path, value), since=3)


def test_empty_changes_must_keep_revision() -> None:
    with pytest.raises(ProtocolViolation):
        parse_changes({"protocol": 1, "revision": 9, "changes": []}, since=3)


def test_material_must_match_the_request() -> None:
    body = {"protocol": 1, "name": "a.test", "fingerprint": FP, "pem": "PEM"}
    assert parse_material(body, name="a.test", fingerprint=FP) == "PEM"
    with pytest.raises(ProtocolViolation):
        parse_material(body, name="b.test", fingerprint=FP)

"""agent.certs.state: the state value and its pure updates, the persistent map under it, and the state file."""

from __future__ import annotations

import datetime as dt
import json
import logging
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.certs.errors import StateError
from agent.certs.state import (
    STATE_VERSION,
    AgentState,
    AppliedCert,
    AppliedMap,
    LoadedState,
    dump_state,
    load_state,
    parse_state,
    read_state,
    save_state,
)

NOW = dt.datetime(2026, 11, 24, 9, 0, tzinfo=dt.UTC)
EXPIRY = dt.datetime(2027, 2, 22, 8, 0, tzinfo=dt.UTC)
STAMP = "20261124T090000Z"


def cert(name: str, n: int = 0, *, not_after: dt.datetime = EXPIRY) -> AppliedCert:
    file = ("_wildcard." + name[2:] if name.startswith("*.") else name) + ".pem"
    return AppliedCert(name=name, fingerprint=f"sha256:{n:064x}", sha1_hex=f"{n:040X}", not_after=not_after,
                       revision=n, file=file)


def entry(c: AppliedCert) -> dict[str, Any]:
    return {"fingerprint": c.fingerprint, "sha1_hex": c.sha1_hex, "not_after": "2027-02-22T08:00:00Z",
            "revision": c.revision, "file": c.file}


# --- values ----------------------------------------------------------------------------------------------------


def test_pure_helpers() -> None:
    empty = AgentState(None)
    a, b = cert("a.example.test", 1), cert("*.example.test", 2)
    one = empty.with_applied(a)
    two = one.with_applied(b)
    renewed = two.with_applied(cert("a.example.test", 3))
    gone = renewed.without("a.example.test")
    assert dict(empty.certificates) == {}
    assert dict(one.certificates) == {"a.example.test": a}
    assert dict(two.certificates) == {"a.example.test": a, "*.example.test": b}
    assert renewed.certificates["a.example.test"].revision == 3
    assert dict(gone.certificates) == {"*.example.test": b}
    assert gone.without("nope") is gone
    assert two.with_revision(7) == AgentState(7, {"a.example.test": a, "*.example.test": b})
    # every earlier value is unchanged
    assert dict(one.certificates) == {"a.example.test": a} and two.certificates["a.example.test"] is a
    assert empty.revision is None and len(empty.certificates) == 0


def test_state_accepts_plain_mappings_and_checks_them() -> None:
    a = cert("a.example.test")
    assert AgentState(1, {"a.example.test": a}) == AgentState(1, AppliedMap({"a.example.test": a}))
    assert AgentState(1, {"a.example.test": a}).certificates == {"a.example.test": a}
    with pytest.raises(ValueError, match="AppliedCert named"):
        AgentState(1, {"b.example.test": a})
    with pytest.raises(TypeError):
        AgentState(1).with_applied("a.example.test")  # type: ignore[arg-type]


def test_applied_map_copies_and_pickles() -> None:
    import copy
    import pickle

    amap = AppliedMap({"a": 1}).set("b", 2)
    assert copy.copy(amap) is amap and copy.deepcopy(amap) is amap
    restored = pickle.loads(pickle.dumps(amap))
    assert restored == {"a": 1, "b": 2} and isinstance(restored, AppliedMap)
    assert amap.get("a") == 1 and amap.get("z") is None and amap.get("z", 0) == 0


def test_updating_while_iterating_is_safe() -> None:
    state = AgentState(None, {f"h{i}.example.test": cert(f"h{i}.example.test", i) for i in range(10)})
    for name, applied in state.certificates.items():
        if applied.revision % 2:
            state = state.without(name)
    for name in state.certificates:
        state = state.with_applied(cert("new-" + name, 1))
    assert len(state.certificates) == 10


_keys = st.sampled_from([f"k{i}" for i in range(6)])
_ops = st.lists(st.tuples(st.integers(0, 50), st.sampled_from(["set", "delete", "read"]), _keys, st.integers(0, 3)),
                max_size=60)


@settings(max_examples=300)
@given(_ops, st.randoms(use_true_random=False))
def test_applied_map_behaves_like_copied_dicts(ops: list[tuple[int, str, str, int]], rnd: Any) -> None:
    """Model test: updates and reads on arbitrary (old or new) versions match independent dict copies."""
    versions: list[tuple[AppliedMap[str, int], dict[str, int]]] = [(AppliedMap({"k0": 0}), {"k0": 0})]
    for index, op, key, value in ops:
        amap, model = versions[index % len(versions)]
        if op == "set":
            versions.append((amap.set(key, value), {**model, key: value}))
        elif op == "delete":
            versions.append((amap.delete(key), {k: v for k, v in model.items() if k != key}))
        else:
            assert amap.get(key) == model.get(key) and (key in amap) == (key in model)
    order = list(range(len(versions)))
    rnd.shuffle(order)
    for i in order:
        amap, model = versions[i]
        assert len(amap) == len(model) and dict(amap.items()) == model and set(amap) == set(model)
        assert amap == model and sorted(amap.values()) == sorted(model.values())


def test_applied_map_threads() -> None:
    """Readers of old versions and a writer of new ones, in threads: every version stays what it was."""
    base: AppliedMap[int, int] = AppliedMap({i: i for i in range(100)})
    versions = [base]
    errors: list[BaseException] = []

    def reader(v: AppliedMap[int, int], n: int) -> None:
        try:
            for _ in range(200):
                assert len(v) == n and v[0] == 0
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    current = base
    for i in range(100, 150):
        current = current.set(i, i)
        versions.append(current)
    threads = [threading.Thread(target=reader, args=(v, 100 + i)) for i, v in enumerate(versions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# --- file format -----------------------------------------------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    east = dt.timezone(dt.timedelta(hours=5, minutes=30))
    state = AgentState(42, {
        "a.example.test": cert("a.example.test", 1),
        "*.example.test": cert("*.example.test", 2, not_after=dt.datetime(2027, 2, 22, 13, 30, tzinfo=east)),
        "xn--bcher-kva.example": cert("xn--bcher-kva.example", 3, not_after=EXPIRY.replace(microsecond=5)),
    })
    save_state(path, state)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_state(path, now=NOW)
    assert loaded == state
    doc = json.loads(path.read_bytes())
    assert doc["version"] == STATE_VERSION == 1 and doc["revision"] == 42
    assert doc["certificates"]["*.example.test"] == {
        "fingerprint": "sha256:" + "0" * 63 + "2", "sha1_hex": "0" * 39 + "2", "not_after": "2027-02-22T08:00:00Z",
        "revision": 2, "file": "_wildcard.example.test.pem"}
    assert doc["certificates"]["xn--bcher-kva.example"]["not_after"] == "2027-02-22T08:00:00.000005Z"
    assert list(doc["certificates"]) == sorted(doc["certificates"])
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_empty_and_unknown_fields() -> None:
    assert parse_state(dump_state(AgentState(None))) == AgentState(None)
    doc = {"version": 1, "revision": None, "future": True,
           "certificates": {"a.example.test": {**entry(cert("a.example.test")), "extra": [1]}}}
    assert parse_state(json.dumps(doc).encode()).certificates == {"a.example.test": cert("a.example.test")}


def test_missing_file_is_empty(tmp_path: Path) -> None:
    assert read_state(tmp_path / "state.json", now=NOW) == LoadedState(AgentState(None))
    assert not (tmp_path / "state.json").exists()


def _doc(**certs: Any) -> bytes:
    return json.dumps({"version": 1, "revision": 3, "certificates": certs}).encode()


GOOD = entry(cert("a.example.test"))
CORRUPT: dict[str, bytes] = {
    "empty": b"",
    "truncated": _doc(**{"a.example.test": GOOD})[:-20],
    "not utf-8": b"\xff\xfe{}",
    "not an object": b"[]",
    "no version": b'{"revision": 1, "certificates": {}}',
    "string version": b'{"version": "1", "revision": 1, "certificates": {}}',
    "bool version": b'{"version": true, "revision": 1, "certificates": {}}',
    "version 0": b'{"version": 0, "revision": 1, "certificates": {}}',
    "negative revision": b'{"version": 1, "revision": -1, "certificates": {}}',
    "no certificates": b'{"version": 1, "revision": 1}',
    "certificates list": b'{"version": 1, "revision": 1, "certificates": []}',
    "entry not object": _doc(**{"a.example.test": "x"}),
    "bad fingerprint": _doc(**{"a.example.test": {**GOOD, "fingerprint": "sha1:00"}}),
    "bad sha1": _doc(**{"a.example.test": {**GOOD, "sha1_hex": "abc"}}),
    "bad time": _doc(**{"a.example.test": {**GOOD, "not_after": "tomorrow"}}),
    "naive time": _doc(**{"a.example.test": {**GOOD, "not_after": "2027-02-22T08:00:00"}}),
    "bool revision": _doc(**{"a.example.test": {**GOOD, "revision": True}}),
    "file elsewhere": _doc(**{"a.example.test": {**GOOD, "file": "../../etc/passwd"}}),
    "file of another name": _doc(**{"a.example.test": {**GOOD, "file": "b.example.test.pem"}}),
    "bad name": _doc(**{"../a.example.test": {**GOOD, "file": "../a.example.test.pem"}}),
    "deeply nested": b"[" * 100000 + b"]" * 100000,
}


@pytest.mark.parametrize("data", CORRUPT.values(), ids=CORRUPT.keys())
def test_corrupt_file_is_moved_aside(tmp_path: Path, data: bytes, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="agent.certs.state"):
        state = load_state(path, now=NOW)
    assert state == AgentState(None)
    moved = tmp_path / f"state.json.corrupt-{STAMP}"
    assert moved.read_bytes() == data and not path.exists()
    assert "corrupt" in caplog.text and str(moved) in caplog.text
    with pytest.raises(ValueError):
        parse_state(data)


def test_corrupt_twice_keeps_both_copies(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"first")
    first = read_state(path, now=NOW)
    path.write_bytes(b"second")
    second = read_state(path, now=NOW)
    assert first.recovered and second.recovered and first.problem and "JSON" in first.problem
    assert first.corrupt_moved_to == tmp_path / f"state.json.corrupt-{STAMP}"
    assert second.corrupt_moved_to == tmp_path / f"state.json.corrupt-{STAMP}-1"
    assert first.corrupt_moved_to.read_bytes() == b"first" and second.corrupt_moved_to.read_bytes() == b"second"


def test_timestamp_is_utc(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"{")
    local = NOW.astimezone(dt.timezone(dt.timedelta(hours=-7)))
    assert read_state(path, now=local).corrupt_moved_to == tmp_path / f"state.json.corrupt-{STAMP}"


def test_newer_version_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    data = json.dumps({"version": 2, "revision": 9, "certificates": {"x": {"anything": "new"}}}).encode()
    path.write_bytes(data)
    with pytest.raises(StateError) as info:
        load_state(path, now=NOW)
    assert info.value.version == 2 and info.value.path == path and "newer" in str(info.value)
    assert path.read_bytes() == data and [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_unreadable_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state.json").mkdir()
    with pytest.raises(StateError, match="cannot be read"):
        load_state(tmp_path / "state.json", now=NOW)


# --- size ------------------------------------------------------------------------------------------------------


def test_100k_entries_timing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Measured, not asserted (the machine varies); run with -s to see the numbers."""
    n = 100_000
    names = [f"host-{i}.customer-{i % 997}.example.com" for i in range(n)]
    t0 = time.perf_counter()
    state = AgentState(None)
    for i, name in enumerate(names):
        state = state.with_applied(cert(name, i))
    t1 = time.perf_counter()
    path = tmp_path / "state.json"
    save_state(path, state.with_revision(n))
    t2 = time.perf_counter()
    loaded = load_state(path, now=NOW)
    t3 = time.perf_counter()
    for name in names[::2]:
        loaded = loaded.without(name)
    t4 = time.perf_counter()
    assert len(loaded.certificates) == n // 2 and loaded.revision == n
    assert state.certificates[names[-1]] == cert(names[-1], n - 1)
    size = path.stat().st_size
    with capsys.disabled():
        print(f"\n100k state entries: with_applied x{n} {t1 - t0:.3f}s, save {t2 - t1:.3f}s "
              f"({size / 1e6:.1f} MB), load {t3 - t2:.3f}s, without x{n // 2} {t4 - t3:.3f}s")

"""plan() / observe() / suspects(): the pure core of certificate reconciliation, table by table."""

from __future__ import annotations

import datetime as dt

import pytest

from agent.certs.plan import DiskEntry, Have, Install, Record, Remove, have_from_state, observe, plan, suspects
from agent.certs.state import AppliedCert
from agent.sync.model import CertRef

EXP = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
A, B = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def ref(name: str, fp: str) -> CertRef:
    return CertRef(name, fp, EXP, (name,))


def applied(name: str, fp: str, sha1: str = "S") -> AppliedCert:
    return AppliedCert(name=name, fingerprint=fp, sha1_hex=sha1, not_after=EXP, revision=1, file=f"{name}.pem")


def test_steady_state_plan() -> None:
    state = {"keep": applied("keep", A), "renew": applied("renew", A), "gone": applied("gone", A)}
    desired = {"keep": ref("keep", A), "renew": ref("renew", B), "new": ref("new", A)}
    actions = plan(desired, have_from_state(state), recorded=state)
    assert actions == [Install("new", desired["new"], replace=False), Install("renew", desired["renew"], replace=True),
                       Remove("gone")]


def test_skip_holds_back_failed_names_including_removals() -> None:
    state = {"gone": applied("gone", A)}
    assert plan({"x": ref("x", A)}, have_from_state(state), skip={"x", "gone"}, recorded=state) == []


def test_plan_is_idempotent_once_applied() -> None:
    desired = {"a": ref("a", A)}
    state = {"a": applied("a", A)}
    assert plan(desired, have_from_state(state), recorded=state) == []


@pytest.mark.parametrize(
    ("case", "state", "disk", "memory", "memory_sha1", "desired_fp", "expected"),
    [
        # state, disk and memory agree: nothing to do, and HAProxy is not even asked for a fingerprint
        ("all agree", {"a": applied("a", A)}, {"a": DiskEntry(A, "S")}, {"a"}, {}, A, []),
        # killed after the commit, before the state write: record only, never re-push
        ("state lags", {}, {"a": DiskEntry(A, "S")}, {"a"}, {"a": "S"}, A, ["record"]),
        ("state has old", {"a": applied("a", B, "T")}, {"a": DiskEntry(A, "S")}, {"a"}, {"a": "S"}, A, ["record"]),
        # killed after the file write, before the commit: HAProxy still has the old one -> push
        ("file ahead of memory", {"a": applied("a", B, "T")}, {"a": DiskEntry(A, "S")}, {"a"}, {"a": "T"}, A,
         ["install-replace"]),
        # a file HAProxy does not have (killed between write and new/commit)
        ("file only", {}, {"a": DiskEntry(A, "S")}, set(), {}, A, ["install-new"]),
        # in memory with no file: write the file and re-push to be sure memory equals the file
        ("memory only", {}, {}, {"a"}, {"a": "S"}, A, ["install-replace"]),
        # garbage on disk
        ("garbage file", {"a": applied("a", A)}, {"a": DiskEntry(None, None)}, {"a"}, {"a": "S"}, A,
         ["install-replace"]),
        # not desired any more, wherever it is
        ("stray file", {}, {"a": DiskEntry(A, "S")}, set(), {}, None, ["remove"]),
        ("stray memory", {}, {}, {"a"}, {"a": "S"}, None, ["remove"]),
        ("stale state only", {"a": applied("a", A)}, {}, set(), {}, None, []),
    ],
)
def test_startup_observation(case: str, state: dict[str, AppliedCert], disk: dict[str, DiskEntry], memory: set[str],
                             memory_sha1: dict[str, str], desired_fp: str | None, expected: list[str]) -> None:
    assert suspects(state, disk, memory) == set(memory_sha1), case
    have = observe(state, disk, memory, memory_sha1)
    desired = {"a": ref("a", desired_fp)} if desired_fp else {}
    kinds = []
    for action in plan(desired, have, recorded=state):
        if isinstance(action, Install):
            kinds.append("install-replace" if action.replace else "install-new")
        else:
            kinds.append(type(action).__name__.lower())
    assert kinds == expected, case


def test_record_carries_the_scanned_sha1() -> None:
    have = observe({}, {"a": DiskEntry(A, "S")}, {"a"}, {"a": "S"})
    assert plan({"a": ref("a", A)}, have, recorded={}) == [Record("a", ref("a", A), "S")]


def test_have_from_state() -> None:
    assert have_from_state({"a": applied("a", A)}) == {"a": Have(A, on_disk=True, in_memory=True)}

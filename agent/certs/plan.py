"""Certificate reconciliation as pure functions: what is there, what should be, and the actions in between.

Three sources describe what a node serves: the agent's state file (what it last recorded as applied), the files in
the certificate directory (what a restarted HAProxy loads), and HAProxy's memory (`show ssl cert`). After a crash
they can disagree; `suspects()` names the certificates whose HAProxy copy must be fingerprinted, `observe()` merges
the three into one `Have` per name, and `plan()` turns desired vs. have into idempotent actions. In steady state
`have_from_state()` is the view, because the agent itself wrote every entry after a verified commit.

No IO, no clock: the reconciler (agent/certs/reconciler.py) does the fetching and applying.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

from agent.sync.model import CertRef

from .state import AppliedCert

__all__ = ["DiskEntry", "Have", "Install", "Record", "Remove", "Action", "have_from_state", "observe", "plan",
           "suspects"]


@dataclasses.dataclass(frozen=True, slots=True)
class DiskEntry:
    fingerprint: str | None  # sha256 of the file's leaf; None = unreadable or garbage
    sha1_hex: str | None  # the same leaf as HAProxy prints it ("SHA1 FingerPrint"), to compare with memory


@dataclasses.dataclass(frozen=True, slots=True)
class Have:
    """What one name verifiably looks like on this node."""

    fingerprint: str | None  # None: something is there, but not a certificate we can vouch for
    on_disk: bool
    in_memory: bool
    sha1_hex: str | None = None  # of the file on disk, when known (the scan computed it)


@dataclasses.dataclass(frozen=True, slots=True)
class Install:
    """Fetch, check, write and inject `ref` (new name, renewal, or repair of a broken copy)."""

    name: str
    ref: CertRef
    replace: bool  # HAProxy already has a store of that name


@dataclasses.dataclass(frozen=True, slots=True)
class Record:
    """Disk and HAProxy already serve `ref`; only the state file lags (agent killed after the commit)."""

    name: str
    ref: CertRef
    sha1_hex: str = ""  # the served leaf's SHA-1 as HAProxy prints it, from the directory scan


@dataclasses.dataclass(frozen=True, slots=True)
class Remove:
    name: str


Action = Install | Record | Remove


def have_from_state(applied: Mapping[str, AppliedCert]) -> dict[str, Have]:
    return {name: Have(a.fingerprint, on_disk=True, in_memory=True) for name, a in applied.items()}


def suspects(applied: Mapping[str, AppliedCert], disk: Mapping[str, DiskEntry], memory: Iterable[str]) -> set[str]:
    """Names whose HAProxy copy cannot be vouched for without asking HAProxy for its fingerprint.

    A name is trusted when the state file and the file on disk agree and HAProxy has a store of that name: the state
    entry is written only after a successful commit of that very file, and a restarted HAProxy loads that file.
    Everything else present in memory is a suspect.
    """
    out = set()
    for name in memory:
        entry = applied.get(name)
        on_disk = disk.get(name)
        if entry is None or on_disk is None or on_disk.fingerprint != entry.fingerprint:
            out.add(name)
    return out


def observe(
    applied: Mapping[str, AppliedCert],
    disk: Mapping[str, DiskEntry],
    memory: Iterable[str],
    memory_sha1: Mapping[str, str | None],
) -> dict[str, Have]:
    """Merge the three sources into one verified view per name.

    Args:
        applied: the state file's entries.
        disk: the agent-owned files in the certificate directory.
        memory: names HAProxy has a store for (inside the certificate directory).
        memory_sha1: HAProxy's SHA-1 of the leaf for the `suspects()` (None: the store is empty or unreadable).
    """
    in_memory = set(memory)
    have: dict[str, Have] = {}
    for name in in_memory | set(disk) | set(applied):
        entry = applied.get(name)
        on_disk = disk.get(name)
        present = name in in_memory
        if name in memory_sha1:
            sha1 = memory_sha1[name]
            # HAProxy's copy is vouched for when it is the file's leaf; then the file's fingerprint is the truth.
            trusted = on_disk is not None and sha1 is not None and on_disk.sha1_hex == sha1
            fingerprint = on_disk.fingerprint if trusted and on_disk is not None else None
        elif present and entry is not None and on_disk is not None and on_disk.fingerprint == entry.fingerprint:
            fingerprint = entry.fingerprint
        else:
            fingerprint = None  # e.g. on disk but not in memory: HAProxy must be told, or the file removed
        if on_disk is None and not present:
            continue  # only a stale state entry: nothing is served, nothing to clean up
        have[name] = Have(fingerprint, on_disk=on_disk is not None, in_memory=present,
                          sha1_hex=on_disk.sha1_hex if on_disk is not None else None)
    return have


def plan(desired: Mapping[str, CertRef], have: Mapping[str, Have], *, skip: Iterable[str] = (),
         recorded: Mapping[str, AppliedCert] | None = None) -> list[Action]:
    """Actions that take `have` to `desired`, sorted by name: installs and records first, then removals.

    Args:
        skip: names not to act on now (waiting for a retry, or material rejected for this fingerprint).
        recorded: the state file's entries, to tell a lagging state file (Record) from a correct one (nothing).
    """
    skipped = set(skip)
    recorded = recorded or {}
    out: list[Action] = []
    for name in sorted(desired):
        if name in skipped:
            continue
        ref = desired[name]
        h = have.get(name)
        if h is not None and h.fingerprint == ref.fingerprint and h.on_disk and h.in_memory:
            entry = recorded.get(name)
            if entry is None or entry.fingerprint != ref.fingerprint:
                out.append(Record(name, ref, h.sha1_hex or ""))
            continue
        out.append(Install(name, ref, replace=h is not None and h.in_memory))
    out.extend(Remove(name) for name in sorted(set(have) - set(desired)) if name not in skipped)
    return out


def count(actions: Sequence[Action]) -> dict[str, int]:
    kinds = {"install": 0, "record": 0, "remove": 0}
    for a in actions:
        kinds[type(a).__name__.lower()] += 1
    return kinds

"""The agent's local record of the certificates it applied: values, pure updates, and the versioned JSON file.

Owns `AppliedCert`, `AgentState` and the file format. Must not decide what to apply (that is plan/reconciler),
and must never hold key material: only names, fingerprints and dates are recorded.

The file is a cache, not the truth: start-up reconciliation rebuilds what is served from the certificate
directory and HAProxy's memory, so a lost or corrupt file costs a re-check, never a certificate. Hence:
missing -> empty state; corrupt -> moved aside to `<path>.corrupt-<UTC timestamp>` and empty state; written by a
newer agent -> `StateError` (refuse, and do not overwrite what a newer version may need after a rollback).

Format (version 1), times RFC 3339 UTC, one object per certificate keyed by name, unknown fields ignored:

    {"version": 1, "revision": 42, "certificates": {"shop.example.test": {"fingerprint": "sha256:...",
     "sha1_hex": "3F11...", "not_after": "2027-02-22T08:00:00Z", "revision": 41, "file": "shop.example.test.pem"}}}

`AgentState.with_applied`/`without` return new states in O(1) (amortised): the certificate map is a persistent
map (Baker's "rerooting" trick, see `AppliedMap`), so recording 100k certificates one at a time during a
start-up apply costs no more than building one dict, while every state stays an immutable value.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import re
import threading
from collections.abc import ItemsView, Iterable, Iterator, KeysView, Mapping, ValuesView
from pathlib import Path
from typing import Any, Final, Generic, TypeVar, final, overload

from .errors import MaterialRejected, StateError
from .files import fsync_dir, write_atomic
from .material import cert_file_name

__all__ = ["STATE_VERSION", "AppliedCert", "AppliedMap", "AgentState", "LoadedState", "read_state", "load_state",
           "save_state", "dump_state", "parse_state"]

logger = logging.getLogger(__name__)

STATE_VERSION: Final = 1
STATE_MODE: Final = 0o600
_FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")
_SHA1 = re.compile(r"(?:[0-9A-F]{40})?")  # empty: the reconciler recorded a certificate whose SHA-1 it could not read

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class AppliedCert:
    """A certificate this agent wrote, injected and committed.

    Attributes:
        name: the certificate name (domain or `*.` + domain).
        fingerprint: `sha256:<hex>` of the leaf's DER.
        sha1_hex: upper-case SHA-1 of the leaf, as HAProxy's `show ssl cert <name>` prints it ("" if unknown).
        not_after: the leaf's expiry (aware).
        revision: the sync revision at which it was applied.
        file: its file name inside the certificate directory.
    """

    name: str
    fingerprint: str
    sha1_hex: str
    not_after: dt.datetime
    revision: int
    file: str


# --- persistent map --------------------------------------------------------------------------------------------

_ABSENT: Final = object()


class _Node:
    """One version of a map family. The root holds the dict; any other node is "`next` with `key` set to `value`"
    (`_ABSENT` meaning deleted). Reading a non-root version first makes it the root by replaying the diffs."""

    __slots__ = ("data", "key", "value", "next", "lock")

    def __init__(self, data: dict[Any, Any] | None, lock: threading.Lock) -> None:
        self.data = data
        self.key: Any = None
        self.value: Any = None
        self.next: _Node | None = None
        self.lock = lock


def _reroot(node: _Node) -> dict[Any, Any]:
    """Make `node` the root of its family and return its dict. Call with `node.lock` held. Iterative: the chain
    can be as long as the number of updates since this version was current."""
    if node.data is not None:
        return node.data
    path: list[_Node] = []
    current: _Node | None = node
    while current is not None and current.data is None:
        path.append(current)
        current = current.next
    assert current is not None and current.data is not None
    data = current.data
    for step in reversed(path):
        parent = step.next
        assert parent is not None
        key, value = step.key, step.value
        old = data.get(key, _ABSENT)
        if value is _ABSENT:
            data.pop(key, None)
        else:
            data[key] = value
        # The former root now records how to get back to itself from `step`.
        parent.data, parent.key, parent.value, parent.next = None, key, old, step
        step.data, step.key, step.value, step.next = data, None, None, None
    return data


@final
class AppliedMap(Mapping[K, V], Generic[K, V]):
    """An immutable mapping with O(1) `set`/`delete` that return new mappings (persistent, by rerooting).

    Every version behaves as an independent frozen dict. The current (latest-used) version is a plain dict
    lookup; reading an older version costs O(number of updates between them) once. Thread-safe (one lock per
    family of versions). Iteration works on a snapshot, so updating while iterating is safe.
    """

    __slots__ = ("_node",)

    def __init__(self, items: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        self._node = _Node(dict(items), threading.Lock())

    @classmethod
    def _of(cls, node: _Node) -> AppliedMap[K, V]:
        obj = cls.__new__(cls)
        obj._node = node
        return obj

    def __getitem__(self, key: K) -> V:
        with self._node.lock:
            value: V = _reroot(self._node)[key]
            return value

    @overload
    def get(self, key: K, /) -> V | None: ...
    @overload
    def get(self, key: K, /, default: V | T) -> V | T: ...

    def get(self, key: K, /, default: object = None) -> object:
        with self._node.lock:
            return _reroot(self._node).get(key, default)

    def __contains__(self, key: object) -> bool:
        with self._node.lock:
            return key in _reroot(self._node)

    def __len__(self) -> int:
        with self._node.lock:
            return len(_reroot(self._node))

    def __iter__(self) -> Iterator[K]:
        with self._node.lock:
            return iter(list(_reroot(self._node)))

    def snapshot(self) -> dict[K, V]:
        """A plain dict copy of this version."""
        with self._node.lock:
            return dict(_reroot(self._node))

    def keys(self) -> KeysView[K]:
        return self.snapshot().keys()

    def items(self) -> ItemsView[K, V]:
        return self.snapshot().items()

    def values(self) -> ValuesView[V]:
        return self.snapshot().values()

    def _update(self, key: K, value: object) -> AppliedMap[K, V]:
        node = self._node
        with node.lock:
            data = _reroot(node)
            old = data.get(key, _ABSENT)
            if value is _ABSENT:
                data.pop(key, None)
            else:
                data[key] = value
            new = _Node(data, node.lock)
            node.data, node.key, node.value, node.next = None, key, old, new
        return AppliedMap._of(new)

    def set(self, key: K, value: V) -> AppliedMap[K, V]:
        """A new map with `key` set to `value`; this one is unchanged."""
        return self._update(key, value)

    def delete(self, key: K) -> AppliedMap[K, V]:
        """A new map without `key` (an equal map if it was absent); this one is unchanged."""
        return self._update(key, _ABSENT) if key in self else self

    def __repr__(self) -> str:
        return f"AppliedMap({self.snapshot()!r})"

    # Immutable: copies are the same value; pickling carries the content, not the version family.
    def __copy__(self) -> AppliedMap[K, V]:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> AppliedMap[K, V]:
        return self

    def __reduce__(self) -> tuple[type[AppliedMap[K, V]], tuple[dict[K, V]]]:
        return (AppliedMap, (self.snapshot(),))


# --- the state value -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class AgentState:
    """What this agent has applied, and the sync revision it had reached.

    `certificates` may be passed as any mapping (name -> AppliedCert, keyed by `AppliedCert.name`); it is held
    as an `AppliedMap`. Updates return new states.
    """

    revision: int | None
    certificates: Mapping[str, AppliedCert] = dataclasses.field(default_factory=lambda: AppliedMap[str, AppliedCert]())

    def __post_init__(self) -> None:
        if not isinstance(self.certificates, AppliedMap):
            for name, cert in self.certificates.items():
                if not isinstance(cert, AppliedCert) or cert.name != name:
                    raise ValueError(f"certificates[{name!r}] must be an AppliedCert named {name!r}")
            object.__setattr__(self, "certificates", AppliedMap(self.certificates))

    def _map(self) -> AppliedMap[str, AppliedCert]:
        certs = self.certificates
        assert isinstance(certs, AppliedMap)
        return certs

    def with_applied(self, cert: AppliedCert) -> AgentState:
        """This state with `cert` recorded (replacing any entry of the same name)."""
        if not isinstance(cert, AppliedCert):
            raise TypeError(f"expected AppliedCert, got {type(cert).__name__}")
        return AgentState(self.revision, self._map().set(cert.name, cert))

    def without(self, name: str) -> AgentState:
        """This state without `name` (the same state if it was not recorded)."""
        if name not in self.certificates:
            return self
        return AgentState(self.revision, self._map().delete(name))

    def with_revision(self, revision: int | None) -> AgentState:
        return AgentState(revision, self.certificates)


@dataclasses.dataclass(frozen=True, slots=True)
class LoadedState:
    """The result of reading the state file.

    Attributes:
        state: the state (empty if the file was missing or corrupt).
        corrupt_moved_to: where a corrupt file was moved, or None.
        problem: why the file was considered corrupt, or None.
    """

    state: AgentState
    corrupt_moved_to: Path | None = None
    problem: str | None = None

    @property
    def recovered(self) -> bool:
        return self.corrupt_moved_to is not None


# --- format ----------------------------------------------------------------------------------------------------


class _Corrupt(Exception):
    """Internal: the file's content is not a valid state document."""


def _format_time(value: dt.datetime) -> str:
    """RFC 3339 in UTC with a "Z" (fractional seconds only when present)."""
    if value.tzinfo is not dt.UTC:  # cryptography and fromisoformat("...Z") both give the dt.UTC singleton
        value = value.astimezone(dt.UTC)
    return value.isoformat()[:-6] + "Z"  # drop "+00:00"


def dump_state(state: AgentState) -> bytes:
    """The file content for `state` (compact JSON, names sorted, ending in a newline). Pure."""
    certs = state.certificates.items()
    doc = {
        "version": STATE_VERSION,
        "revision": state.revision,
        "certificates": {
            name: {
                "fingerprint": cert.fingerprint,
                "sha1_hex": cert.sha1_hex,
                "not_after": _format_time(cert.not_after),
                "revision": cert.revision,
                "file": cert.file,
            }
            for name, cert in sorted(certs)
        },
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\n"


def _int(value: object, what: str, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _Corrupt(f"{what}: expected a non-negative integer")
    return value


def _entry(name: str, raw: object) -> AppliedCert:
    if not isinstance(raw, dict):
        raise _Corrupt(f"certificates[{name!r}]: expected an object")
    fingerprint, sha1_hex, not_after, file = raw.get("fingerprint"), raw.get("sha1_hex"), raw.get("not_after"), \
        raw.get("file")
    if not isinstance(fingerprint, str) or not _FINGERPRINT.fullmatch(fingerprint):
        raise _Corrupt(f"certificates[{name!r}].fingerprint: expected sha256:<64 hex digits>")
    if not isinstance(sha1_hex, str) or not _SHA1.fullmatch(sha1_hex):
        raise _Corrupt(f"certificates[{name!r}].sha1_hex: expected 40 upper-case hex digits")
    if not isinstance(not_after, str):
        raise _Corrupt(f"certificates[{name!r}].not_after: expected an RFC 3339 time")
    try:
        expiry = dt.datetime.fromisoformat(not_after)
    except ValueError:
        raise _Corrupt(f"certificates[{name!r}].not_after: expected an RFC 3339 time") from None
    if expiry.tzinfo is None:
        raise _Corrupt(f"certificates[{name!r}].not_after: time without an offset")
    revision = _int(raw.get("revision"), f"certificates[{name!r}].revision")
    assert revision is not None
    try:
        expected_file = cert_file_name(name)
    except MaterialRejected:
        raise _Corrupt(f"certificates: {name!r} is not a certificate name") from None
    if file != expected_file:  # the reconciler deletes `file`: it must be this name's file and nothing else
        raise _Corrupt(f"certificates[{name!r}].file: expected {expected_file!r}")
    return AppliedCert(name, fingerprint, sha1_hex, expiry, revision, expected_file)


def parse_state(data: bytes) -> AgentState:
    """The state in a file's content. Pure.

    Raises:
        StateError: (with `version`, and a placeholder path) the file is from a newer version.
        ValueError: the content is not a valid version-1 state document (the message says where).
    """
    try:
        return _parse(data)
    except _Corrupt as exc:
        raise ValueError(str(exc)) from None


def _parse(data: bytes) -> AgentState:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _Corrupt(f"not JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise _Corrupt("expected a JSON object")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _Corrupt("missing or invalid version")
    if version > STATE_VERSION:
        raise StateError(Path("-"), f"written by a newer agent (format version {version}, this agent reads "
                                    f"{STATE_VERSION}); refusing to use or overwrite it", version=version)
    revision = _int(doc.get("revision"), "revision", optional=True)
    raw_certs = doc.get("certificates")
    if not isinstance(raw_certs, dict):
        raise _Corrupt("certificates: expected an object")
    certs = {name: _entry(name, raw) for name, raw in raw_certs.items()}
    return AgentState(revision, AppliedMap(certs))


# --- file ------------------------------------------------------------------------------------------------------


def _move_aside(path: Path, now: dt.datetime) -> Path:
    stamp = now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    base = path.with_name(f"{path.name}.corrupt-{stamp}")
    target, n = base, 0
    while target.exists() or target.is_symlink():  # keep every earlier corrupt copy
        n += 1
        target = base.with_name(f"{base.name}-{n}")
    try:
        os.rename(path, target)
    except OSError as exc:
        raise StateError(path, f"corrupt, and cannot be moved aside to {target.name}: {exc.strerror}") from exc
    fsync_dir(path.parent)
    return target


def read_state(path: Path, *, now: dt.datetime) -> LoadedState:
    """Read the state file.

    Args:
        path: the state file.
        now: the current time (aware), used to name a corrupt file moved aside.

    Returns:
        the state; empty when the file is missing, or corrupt (then moved to `<path>.corrupt-<timestamp>`, with
        `corrupt_moved_to` and `problem` set).

    Raises:
        StateError: the file was written by a newer version (`version` set), cannot be read (permissions, a
            directory), or is corrupt and cannot be moved aside.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return LoadedState(AgentState(None))
    except OSError as exc:
        raise StateError(path, f"cannot be read: {exc.strerror or exc}") from exc
    try:
        return LoadedState(_parse(data))
    except StateError as exc:
        raise StateError(path, exc.detail, version=exc.version) from None
    except _Corrupt as exc:
        problem = str(exc)
    moved = _move_aside(path, now)
    return LoadedState(AgentState(None), corrupt_moved_to=moved, problem=problem)


def load_state(path: Path, *, now: dt.datetime) -> AgentState:
    """`read_state(...).state`, logging a warning when a corrupt file was moved aside.

    Raises:
        StateError: as `read_state`.
    """
    loaded = read_state(path, now=now)
    if loaded.corrupt_moved_to is not None:
        logger.warning("state file %s was corrupt (%s); moved to %s, starting empty (start-up reconciliation "
                       "rebuilds it from the certificate directory and HAProxy)", path, loaded.problem,
                       loaded.corrupt_moved_to)
    return loaded.state


def save_state(path: Path, state: AgentState) -> None:
    """Write `state` atomically (mode 0600).

    Raises:
        CertFileError: the write failed; the previous file is intact.
    """
    write_atomic(path, dump_state(state), mode=STATE_MODE)

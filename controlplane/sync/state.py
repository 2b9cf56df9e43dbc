"""Desired state with a revision log: the data behind the sync API.

`DesiredState` is pure (no IO, no clock, no await): puts and deletes bump the revision and append to a bounded
history that answers "what changed since revision N". `MemorySyncBackend` wraps it for the asyncio server with a
change notification for long-polls; the SQL store provides the same interface over its tables.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
from collections.abc import Iterable
from typing import Any, Literal

__all__ = ["CertRef", "Change", "DesiredState", "MemorySyncBackend", "ResyncRequired", "Token"]

Kind = Literal["token", "certificate"]
Op = Literal["put", "delete"]


def _rfc3339(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass(frozen=True, slots=True)
class Token:
    host: str
    path: str
    value: str
    expires_at: dt.datetime

    @property
    def key(self) -> str:
        return self.host + self.path

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "path": self.path, "value": self.value, "expires_at": _rfc3339(self.expires_at)}


@dataclasses.dataclass(frozen=True, slots=True)
class CertRef:
    name: str
    fingerprint: str
    not_after: dt.datetime
    domains: tuple[str, ...]

    @property
    def key(self) -> str:
        return self.name

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "not_after": _rfc3339(self.not_after),
            "domains": list(self.domains),
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    revision: int
    op: Op
    kind: Kind
    key: str
    obj: Token | CertRef | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"revision": self.revision, "op": self.op, "kind": self.kind, "key": self.key}
        if self.obj is not None:
            out[self.kind] = self.obj.to_json()
        return out


class ResyncRequired(Exception):
    """The asked revision is outside the retained history; the client must take a snapshot."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"resync required (current revision {revision})")
        self.revision = revision


class DesiredState:
    """One scope's tokens and certificate references, with the last `retain` changes kept for deltas."""

    def __init__(self, *, retain: int = 100_000) -> None:
        self.revision = 0
        self.tokens: dict[str, Token] = {}
        self.certificates: dict[str, CertRef] = {}
        self._history: collections.deque[Change] = collections.deque(maxlen=retain)

    def _record(self, op: Op, kind: Kind, key: str, obj: Token | CertRef | None) -> Change:
        self.revision += 1
        change = Change(self.revision, op, kind, key, obj)
        self._history.append(change)
        return change

    def put_token(self, token: Token) -> Change:
        self.tokens[token.key] = token
        return self._record("put", "token", token.key, token)

    def delete_token(self, key: str) -> Change | None:
        if self.tokens.pop(key, None) is None:
            return None
        return self._record("delete", "token", key, None)

    def put_certificate(self, ref: CertRef) -> Change:
        self.certificates[ref.key] = ref
        return self._record("put", "certificate", ref.key, ref)

    def delete_certificate(self, name: str) -> Change | None:
        if self.certificates.pop(name, None) is None:
            return None
        return self._record("delete", "certificate", name, None)

    def changes_since(self, since: int) -> list[Change]:
        """Changes with revision > since, oldest first.

        Raises:
            ResyncRequired: `since` is in the future, or older than the retained history.
        """
        if since > self.revision:
            raise ResyncRequired(self.revision)
        if since == self.revision:
            return []
        oldest = self._history[0].revision if self._history else self.revision + 1
        if since < oldest - 1:
            raise ResyncRequired(self.revision)
        return [c for c in self._history if c.revision > since]

    def snapshot(self) -> tuple[int, list[Token], list[CertRef]]:
        return self.revision, sorted(self.tokens.values(), key=lambda t: t.key), sorted(
            self.certificates.values(), key=lambda c: c.key
        )


class MemorySyncBackend:
    """An in-memory sync backend: every node shares one scope. Used by the demo and by tests of the agent.

    `changed` wakes long-polls; material is kept per (name, fingerprint).
    """

    def __init__(self, *, retain: int = 100_000) -> None:
        self.state = DesiredState(retain=retain)
        self._material: dict[str, tuple[str, str]] = {}
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- writers (the control plane's pipeline, tests, the demo)
    def publish_token(self, token: Token) -> int:
        self.state.put_token(token)
        self._notify()
        return self.state.revision

    def withdraw_token(self, key: str) -> int:
        if self.state.delete_token(key):
            self._notify()
        return self.state.revision

    def publish_certificate(self, ref: CertRef, pem: str) -> int:
        self._material[ref.name] = (ref.fingerprint, pem)
        self.state.put_certificate(ref)
        self._notify()
        return self.state.revision

    def publish_many(self, tokens: Iterable[Token] = (), certificates: Iterable[tuple[CertRef, str]] = (),
                     withdraw_certificates: Iterable[str] = ()) -> int:
        for name in withdraw_certificates:
            if self.state.delete_certificate(name):
                self._material.pop(name, None)
        for token in tokens:
            self.state.put_token(token)
        for ref, pem in certificates:
            self._material[ref.name] = (ref.fingerprint, pem)
            self.state.put_certificate(ref)
        self._notify()
        return self.state.revision

    def withdraw_certificate(self, name: str) -> int:
        if self.state.delete_certificate(name):
            self._material.pop(name, None)
            self._notify()
        return self.state.revision

    # -- readers (the sync API)
    async def snapshot(self, node: str) -> tuple[int, list[Token], list[CertRef]]:
        return self.state.snapshot()

    async def changes_since(self, node: str, since: int) -> list[Change]:
        return self.state.changes_since(since)

    async def wait_for_change(self, node: str, since: int, timeout_s: float) -> None:
        """Returns when the revision passes `since` or after `timeout_s`, whichever is first."""
        if self.state.revision != since:
            return
        try:
            await asyncio.wait_for(self._changed.wait(), timeout_s)
        except TimeoutError:
            pass

    async def material_many(self, node: str, names: Iterable[str]) -> dict[str, tuple[str, str]]:
        return {n: self._material[n] for n in names if n in self._material}

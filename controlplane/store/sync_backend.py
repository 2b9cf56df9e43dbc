"""`StoreSyncBackend`: the sync API's backend (controlplane/sync/api.py) served from a `Store`.

Every node shares one scope, as with `MemorySyncBackend`; the node argument is where per-node scoping would go.
The methods are coroutines: `SyncBackend` in api.py is synchronous today (its in-memory backend needs no IO), so
wiring the store in means awaiting `snapshot`, `changes_since` and `material` there.
"""

from __future__ import annotations

from typing import final

from controlplane.sync.state import CertRef, Change, Token

from .base import Store

__all__ = ["StoreSyncBackend"]


@final
class StoreSyncBackend:
    def __init__(self, store: Store, *, max_changes: int | None = 10_000) -> None:
        """Args:
            max_changes: at most this many changes per `changes_since` answer (the agent asks again from the last
                revision it got); None for all.
        """
        self._store = store
        self._max_changes = max_changes

    async def snapshot(self, node: str) -> tuple[int, list[Token], list[CertRef]]:
        return await self._store.snapshot()

    async def changes_since(self, node: str, since: int) -> list[Change]:
        return await self._store.changes_since(since, limit=self._max_changes)

    async def wait_for_change(self, node: str, since: int, timeout_s: float) -> None:
        await self._store.wait_for_change(since, timeout_s)

    async def material(self, node: str, name: str) -> tuple[str, str] | None:
        return await self._store.material(name)

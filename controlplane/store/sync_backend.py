"""`StoreSyncBackend`: the sync API's backend (controlplane/sync/api.py) served from a `Store`.

Every node shares one scope, as with `MemorySyncBackend`; the node argument is where per-node scoping would go.
"""

from __future__ import annotations

from collections.abc import Iterable
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

    async def material_many(self, node: str, names: Iterable[str]) -> dict[str, tuple[str, str]]:
        return await self._store.material_many(names)

"""The sync loop: snapshot, then long-poll deltas, with a periodic full anti-entropy snapshot and backoff.

Clock, sleep and jitter are injected so tests drive it without real time. What the loop learns goes to a
`DesiredStateSink`; the loop itself holds only the revision and its health figures.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Protocol

from .errors import ResyncRequired, SyncError
from .model import ChangeBatch, Snapshot

__all__ = ["DesiredStateSink", "SyncLoop", "SyncSettings"]

logger = logging.getLogger(__name__)


class DesiredStateSink(Protocol):
    def on_snapshot(self, snapshot: Snapshot) -> None: ...
    def on_changes(self, batch: ChangeBatch) -> None: ...


class Source(Protocol):
    async def snapshot(self) -> Snapshot: ...
    async def changes(self, since: int, *, wait_s: float) -> ChangeBatch: ...


@dataclasses.dataclass(frozen=True, slots=True)
class SyncSettings:
    wait_s: float = 25.0  # long-poll hold; the server caps it at 60 s
    anti_entropy_s: float = 300.0  # full snapshot at least this often, so a lost change heals
    backoff_s: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # then the last value forever
    jitter: float = 0.2  # ±20% on backoff and anti-entropy, so nodes do not retry in lockstep


class SyncLoop:
    def __init__(
        self,
        source: Source,
        sink: DesiredStateSink,
        *,
        settings: SyncSettings = SyncSettings(),
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        initial_revision: int | None = None,
    ) -> None:
        self._source = source
        self._sink = sink
        self._settings = settings
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.revision = initial_revision
        self.failures = 0  # consecutive
        self.failures_total = 0
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.last_exception: SyncError | None = None
        self.synced = asyncio.Event()  # set after the first successful exchange
        self._next_full: float | None = None if initial_revision is None else clock() + self._jittered(
            settings.anti_entropy_s)

    def _jittered(self, seconds: float) -> float:
        j = self._settings.jitter
        return seconds * self._rng.uniform(1 - j, 1 + j)

    def backoff_delay(self) -> float:
        table = self._settings.backoff_s
        return self._jittered(table[min(self.failures - 1, len(table) - 1)])

    async def step(self) -> None:
        """One exchange with the control plane; raises nothing but CancelledError."""
        try:
            now = self._clock()
            if self.revision is None or self._next_full is None or now >= self._next_full:
                snapshot = await self._source.snapshot()
                self._sink.on_snapshot(snapshot)
                self.revision = snapshot.revision
                self._next_full = self._clock() + self._jittered(self._settings.anti_entropy_s)
            else:
                wait_s = max(0.0, min(self._settings.wait_s, self._next_full - now))
                batch = await self._source.changes(self.revision, wait_s=wait_s)
                if batch.changes:
                    self._sink.on_changes(batch)
                self.revision = batch.revision
        except ResyncRequired:
            logger.info("sync: control plane asked for a resync from revision %s", self.revision)
            self.revision = None
            return
        except SyncError as exc:
            self.failures += 1
            self.failures_total += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.last_exception = exc
            delay = self.backoff_delay()
            logger.warning("sync failed (%s consecutive), retry in %.1f s: %s", self.failures, delay, self.last_error)
            await self._sleep(delay)
            return
        self.failures = 0
        self.last_error = None
        self.last_exception = None
        self.last_success = self._clock()
        self.synced.set()

    async def run(self) -> None:
        while True:
            await self.step()

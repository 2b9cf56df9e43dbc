"""`SimulatorThread`: the simulator on 127.0.0.1 in a background thread, for sync tests and tools.

Owns one event loop thread and the aiohttp runner in it. The state (`CertCentral`) and the fault plan are
thread-safe, so the Python methods below act on them directly from the caller's thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from .app import API_PREFIX, make_app
from .clock import Clock, FakeClock, SystemClock
from .core import CertCentral
from .faults import Fault, FaultKind, FaultPlan
from .model import (
    ApiKey,
    CertRecord,
    FetchRecord,
    Order,
    RevokeRequest,
    SimConfig,
    StatusChange,
)

__all__ = ["SimulatorThread"]


class SimulatorThread:
    """Serves the CertCentral simulator on http://127.0.0.1:<port>/services/v2.

    Args:
        config: simulator settings (API keys, rate limits, delays...); defaults follow the reference.
        resolve: initial name -> address map for DCV fetches (see `set_resolve`).
        clock: simulated time; pass a `FakeClock` to drive expiry and the automatic poll schedule.
        seed: seeds the simulator's randomness (random values, serials, address picks).
    """

    def __init__(self, *, config: SimConfig | None = None, resolve: Mapping[str, str | Sequence[str]] | None = None,
                 clock: Clock | None = None, seed: int | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or SimConfig()
        self.clock: Clock = clock or SystemClock()
        self.core = CertCentral(self.config, clock=self.clock, rng=random.Random(seed))
        self.faults = FaultPlan()
        if resolve:
            self.core.set_resolve(resolve)
        self._host = host
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="certcentral-sim", daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> SimulatorThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _start(self) -> None:
        app = make_app(self.core, faults=self.faults, clock=self.clock)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def start(self) -> SimulatorThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            except (concurrent.futures.TimeoutError, RuntimeError):
                pass
            self._runner = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._loop.is_closed():
            self._loop.close()

    # ------------------------------------------------------------------ addresses and credentials

    @property
    def origin(self) -> str:
        """http://127.0.0.1:<port> (the admin API is under /_sim)."""
        return f"http://{self._host}:{self.port}"

    @property
    def url(self) -> str:
        """The API base URL, the simulator's counterpart of https://www.digicert.com/services/v2."""
        return self.origin + API_PREFIX

    @property
    def api_key(self) -> str:
        """The first configured API key (an admin key by default)."""
        return self.config.api_keys[0].key

    @property
    def api_keys(self) -> tuple[ApiKey, ...]:
        return self.config.api_keys

    @property
    def root_pem(self) -> str:
        """The test CA root: trust anchor for verifying issued chains."""
        return self.core.ca.root_pem

    @property
    def intermediate_pem(self) -> str:
        return self.core.ca.intermediate_pem

    # ------------------------------------------------------------------ DCV name resolution

    def set_resolve(self, mapping: Mapping[str, str | Sequence[str]]) -> None:
        """Replace the name -> address map: {"shop.example.test": "127.0.0.1:8080"} or a list of addresses (one
        picked at random per fetch). A "name:443" key overrides the map for https redirects to that name."""
        self.core.set_resolve(mapping)

    # ------------------------------------------------------------------ fault injection

    def add_fault(self, fault: Fault) -> None:
        self.faults.add(fault)

    def fail_next(self, count: int = 1, *, status: int = 500, method: str | None = None, path: str | None = None,
                  after: bool = False) -> None:
        """The next `count` matching API requests answer `status` (429 with the request_limit_exceeded body).
        `after=True`: the request is processed first and only its answer is replaced (unknown outcome)."""
        self.faults.add(Fault(FaultKind.STATUS, count, status=status, method=method, path=path, after=after))

    def rate_limit_next(self, count: int = 1, *, method: str | None = None, path: str | None = None) -> None:
        self.fail_next(count, status=429, method=method, path=path)

    def hang_next(self, count: int = 1, *, seconds: float | None = None, method: str | None = None,
                  path: str | None = None, after: bool = False) -> None:
        """The next `count` matching requests hang `seconds` (default `config.hang_s`), then get a 504."""
        self.faults.add(Fault(FaultKind.HANG, count, method=method, path=path, after=after, seconds=seconds))

    def errors_as_object_next(self, count: int = 1) -> None:
        """The next `count` error bodies carry `errors` as an object instead of an array [C5]."""
        self.faults.add(Fault(FaultKind.ERRORS_OBJECT, count))

    def reject_next_orders(self, count: int = 1) -> None:
        """The next `count` orders placed are rejected when they would have been issued."""
        self.core.reject_next_orders(count)

    def clear_faults(self) -> None:
        """Drop every pending fault, including unused `reject_next_orders` counts."""
        self.faults.clear()
        self.core.clear_pending_rejections()

    def reject_order(self, order_id: int) -> Order:
        return self.core.reject(order_id)

    def approve_order(self, order_id: int) -> Order:
        return self.core.approve(order_id)

    def expire_random_value(self, order_id: int) -> None:
        self.core.expire_random_value(order_id)

    def advance_clock(self, seconds: float) -> None:
        """Move a `FakeClock` forward (the poll loop notices within `config.poll_tick_s`)."""
        if not isinstance(self.clock, FakeClock):
            raise TypeError("advance_clock needs the simulator to run on a FakeClock")
        self.clock.advance(seconds)

    # ------------------------------------------------------------------ inspection

    def orders(self) -> list[Order]:
        orders, _ = self.core.snapshot()
        return orders

    def order(self, order_id: int) -> Order:
        return self.core.order(order_id)

    def certificates(self) -> dict[int, CertRecord]:
        _, certs = self.core.snapshot()
        return certs

    def chain_pem(self, order_id: int) -> str:
        """Leaf + intermediate + root of the order's newest issued certificate (pem_all)."""
        cert = self.core.active_certificate(order_id)
        assert cert.pem is not None
        return self.core.ca.render(cert.pem, "pem_all")[1]

    def random_value(self, order_id: int) -> str | None:
        order = self.core.order(order_id)
        return order.dcv.value if order.dcv else None

    def fetches(self) -> list[FetchRecord]:
        return self.core.fetches()

    def status_log(self) -> list[StatusChange]:
        return self.core.change_log()

    def revoke_requests(self) -> list[RevokeRequest]:
        return self.core.revoke_requests()

    def stats(self) -> dict[str, Any]:
        orders = self.orders()
        by_status: dict[str, int] = {}
        for o in orders:
            by_status[str(o.status)] = by_status.get(str(o.status), 0) + 1
        return {"orders": len(orders), "by_status": by_status, "fetches": len(self.fetches())}

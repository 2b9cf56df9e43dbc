"""A DigiCert CertCentral Services API v2 simulator for what Lockstep uses (http-token DCV, DV orders).

Kept apart from production code. Layers: `rules` (pure DCV rules), `ratelimit` (pure), `bodies` (pure request
validation), `ca` (test CA), `core` (thread-safe state machine, no IO), `fetcher` (real fileauth.txt fetches and the
poll loop), `app` (aiohttp routes), `thread` (`SimulatorThread`), `__main__` (standalone server).
See /work/shared/reference/digicert-certcentral.md for the behaviour modelled.
"""

from __future__ import annotations

from .app import API_PREFIX, make_app
from .ca import TestCa
from .clock import Clock, FakeClock, SystemClock
from .core import CertCentral, CheckOutcome, DcvCheck
from .errors import ApiError, ConfigError, SimError
from .faults import Fault, FaultKind, FaultPlan
from .model import (
    ApiKey,
    CertRecord,
    FetchRecord,
    NameStatus,
    Order,
    OrderStatus,
    Permission,
    SimConfig,
)
from .ratelimit import RollingLimiter
from .thread import SimulatorThread

__all__ = [
    "API_PREFIX",
    "ApiError",
    "ApiKey",
    "CertCentral",
    "CertRecord",
    "CheckOutcome",
    "Clock",
    "ConfigError",
    "DcvCheck",
    "FakeClock",
    "Fault",
    "FaultKind",
    "FaultPlan",
    "FetchRecord",
    "NameStatus",
    "Order",
    "OrderStatus",
    "Permission",
    "RollingLimiter",
    "SimConfig",
    "SimError",
    "SimulatorThread",
    "SystemClock",
    "TestCa",
    "make_app",
]

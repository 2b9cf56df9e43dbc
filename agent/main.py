"""Wires the sidecar into one process: the SPOE server, the sync loop, and a clean shutdown.

The only module of the agent that knows about signals, the event loop and real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import signal
import ssl
import time

import httpx

import spoa

from .config import AgentConfig, ControlPlaneConfig
from .desired import DesiredState
from .sync.client import ControlPlaneClient
from .sync.loop import SyncLoop, SyncSettings
from .tokens import TokenStore
from .validation import ValidationHandler

__all__ = ["control_plane_http_client", "run_agent"]

logger = logging.getLogger(__name__)


def control_plane_http_client(cfg: ControlPlaneConfig) -> httpx.AsyncClient:
    """An httpx client for the control plane: its CA, this node's client certificate, or the bearer token."""
    verify: ssl.SSLContext | bool = True
    if cfg.url.startswith("https://"):
        ctx = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
        if cfg.client_cert:
            ctx.load_cert_chain(str(cfg.client_cert), str(cfg.client_key) if cfg.client_key else None)
        verify = ctx
    headers = {"Authorization": f"Bearer {cfg.bearer_token}"} if cfg.bearer_token else {}
    return httpx.AsyncClient(base_url=cfg.url, verify=verify, headers=headers, timeout=cfg.request_timeout_s)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


async def run_agent(cfg: AgentConfig, *, stop: asyncio.Event | None = None) -> None:
    """Runs until `stop` is set (or SIGTERM/SIGINT when no event is given)."""
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    tokens = TokenStore()
    desired = DesiredState(tokens)
    handler = ValidationHandler(tokens, now=_utcnow)
    server = await spoa.serve(
        handler,
        host=cfg.spoe.host,
        port=cfg.spoe.port,
        max_frame_size=cfg.spoe.max_frame_size,
        max_in_flight=cfg.spoe.max_in_flight,
        handler_timeout_s=cfg.spoe.handler_timeout_s,
    )
    logger.info("agent %s: SPOE agent listening on %s:%s", cfg.node, cfg.spoe.host, server.port)
    try:
        async with control_plane_http_client(cfg.control_plane) as http:
            sync = SyncLoop(
                ControlPlaneClient(http, request_timeout_s=cfg.control_plane.request_timeout_s),
                desired,
                settings=SyncSettings(wait_s=cfg.control_plane.wait_s, anti_entropy_s=cfg.control_plane.anti_entropy_s),
                clock=time.monotonic,
            )
            sync_task = asyncio.create_task(sync.run(), name="sync-loop")
            try:
                await stop.wait()
            finally:
                sync_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sync_task
    finally:
        await server.aclose()
        logger.info("agent %s: stopped", cfg.node)

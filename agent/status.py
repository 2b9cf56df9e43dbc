"""The agent's operator endpoint: /healthz (JSON: ready, sync, certificates) and /metrics (Prometheus)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .metrics import AgentMetrics

__all__ = ["start_status_server"]


async def start_status_server(
    host: str, port: int, *, metrics: AgentMetrics, health: Callable[[], tuple[bool, dict[str, Any]]],
    refresh: Callable[[], None],
) -> web.AppRunner:
    async def healthz(request: web.Request) -> web.Response:
        ready, body = health()
        return web.json_response({"ready": ready, "time": time.time(), **body}, status=200 if ready else 503)

    async def metrics_handler(request: web.Request) -> web.Response:
        refresh()
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner

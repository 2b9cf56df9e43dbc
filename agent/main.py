"""Wires the sidecar into one process: the SPOE server, the sync loop, and a clean shutdown.

The only module of the agent that knows about signals, the event loop and real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import signal
import ssl
import time

import httpx

import spoa

from .certs.reconciler import CertReconciler, CertSettings
from .config import AgentConfig, ControlPlaneConfig
from .desired import DesiredState
from .edge_pki import EdgeFiles, EdgePkiKeeper
from .identity import (
    access_denied,
    edge_client_identity,
    edge_pki_health,
    fetch_ca_bundle,
    identity_health,
    node_identity,
    update_identity_metrics,
    wire_http_slot,
)
from .metrics import AgentMetrics
from .runtime import RuntimeClient
from .status import start_status_server
from .sync.client import ControlPlaneClient, HttpClientSlot
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
    metrics = AgentMetrics()
    tokens = TokenStore()
    reconciler: CertReconciler | None = None
    desired = DesiredState(tokens, on_certificates_changed=lambda: reconciler.wake() if reconciler else None)
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
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(server.aclose)
        identity = node_identity(cfg, now=_utcnow, rand=random.Random())
        slot = HttpClientSlot()
        stack.push_async_callback(slot.aclose)
        if identity is None:
            slot.replace(control_plane_http_client(cfg.control_plane))
        else:
            wire_http_slot(identity, cfg.control_plane, slot)
        cp = ControlPlaneClient(slot, request_timeout_s=cfg.control_plane.request_timeout_s)
        sync = SyncLoop(
            cp,
            desired,
            settings=SyncSettings(wait_s=cfg.control_plane.wait_s, anti_entropy_s=cfg.control_plane.anti_entropy_s),
            clock=time.monotonic,
        )
        tasks: list[asyncio.Task[None]] = []
        if cfg.haproxy is not None:
            cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            runtime = await stack.enter_async_context(
                RuntimeClient(cfg.haproxy.admin_socket, cert_dir=cfg.haproxy.cert_dir))
            reconciler = CertReconciler(
                settings=CertSettings(
                    cert_dir=cfg.haproxy.cert_dir,
                    admin_socket=cfg.haproxy.admin_socket,
                    state_file=cfg.state_dir / "state.json",
                    https_addr=cfg.haproxy.https_addr if cfg.haproxy.verify else None,
                ),
                desired=lambda: desired.certificates,
                revision=lambda: desired.revision,
                source=cp,
                runtime=runtime,
                metrics=metrics,
                now=_utcnow,
                monotonic=time.monotonic,
            )
            stack.push_async_callback(reconciler.aclose)
        edge_keeper: EdgePkiKeeper | None = None
        edge_identity = None
        if cfg.haproxy is not None and cfg.haproxy.backend_client_cert is not None:
            assert cfg.haproxy.backend_ca is not None  # config: both or neither
            if identity is None:
                logger.critical("agent %s: haproxy.backend_client_cert needs the internal PKI (bootstrap_token and "
                                "ca_file or ca_sha256 in control_plane)", cfg.node)
                raise SystemExit(2)
            node = identity
            edge_identity = edge_client_identity(cfg, node, now=_utcnow, rand=random.Random())
            edge_keeper = EdgePkiKeeper(
                EdgeFiles(client_cert=cfg.haproxy.backend_client_cert, ca_file=cfg.haproxy.backend_ca),
                client_bundle=lambda: edge_identity.cert_file.read_text() if edge_identity.current else None,
                ca_bundle=lambda: fetch_ca_bundle(node, cfg.control_plane),
                runtime=lambda: runtime, now=_utcnow)
            edge_identity.add_listener(lambda _: edge_keeper.wake())

        def refresh() -> None:
            metrics.tokens.set(len(tokens))
            metrics.sync_revision.set(sync.revision or 0)
            metrics.sync_failures.set(sync.failures)
            metrics.sync_failures_total.set(sync.failures_total)
            metrics.access_denied.set(1 if access_denied(identity, sync.last_exception) else 0)
            if identity is not None:
                update_identity_metrics(identity, metrics)
            if edge_keeper is not None and (not_after := edge_keeper.not_after) is not None:
                metrics.edge_client_not_after.set(not_after.timestamp())
            if sync.last_success is not None:
                metrics.sync_lag.set(time.monotonic() - sync.last_success)
                metrics.sync_last_success.set(time.time() - (time.monotonic() - sync.last_success))
            stats = server.stats()
            metrics.spoe_notifies.set(stats.notifies)
            metrics.spoe_hits.set(handler.hits)

        def health() -> tuple[bool, dict[str, object]]:
            body: dict[str, object] = {
                "node": cfg.node,
                "sync": {"revision": sync.revision, "synced": sync.synced.is_set(), "failures": sync.failures,
                         "last_error": sync.last_error},
                "tokens": len(tokens),
                # The control plane refuses this node (removed): what it has keeps being served, nothing is wiped.
                "access_denied": access_denied(identity, sync.last_exception),
            }
            if identity is not None:
                body["identity"] = identity_health(identity)
            if edge_keeper is not None and edge_identity is not None:
                body["edge_pki"] = edge_pki_health(edge_keeper, edge_identity)
            if reconciler is not None:
                body["certificates"] = {"desired": len(desired.certificates), "applied": len(reconciler.applied),
                                        "failed": {n: r for n, (_, r) in reconciler.failures.items()},
                                        "ready": reconciler.ready.is_set()}
            # Ready once the first desired state is in effect: tokens answer, and certificates (when this agent
            # manages them) are reconciled against it.
            return (reconciler.ready.is_set() if reconciler is not None else sync.synced.is_set()), body

        if cfg.status.port:
            runner = await start_status_server(cfg.status.host, cfg.status.port, metrics=metrics, health=health,
                                               refresh=refresh)
            stack.push_async_callback(runner.cleanup)
        # The reconciler's start-up pass works from the state file, the directory and HAProxy: it does not wait for
        # the control plane, so a node whose control plane is down still repairs itself.
        async def run_sync() -> None:
            if identity is not None:
                await identity.ready.wait()  # enrolled (or loaded from disk): the slot has a client now
            await sync.run()

        if identity is not None:
            tasks.append(asyncio.create_task(identity.run(), name="node-identity"))
        if edge_keeper is not None and edge_identity is not None:
            edge_manager = edge_identity

            async def run_edge_identity() -> None:
                await node.ready.wait()  # it authenticates with the node's certificate and trusts the node's CA
                await edge_manager.run()

            tasks.append(asyncio.create_task(run_edge_identity(), name="edge-client-identity"))
            keeper = edge_keeper

            async def run_edge_pki() -> None:
                await node.ready.wait()  # the CA bundle is fetched with the node's trust anchor and certificate
                await keeper.run(stop)

            tasks.append(asyncio.create_task(run_edge_pki(), name="edge-pki"))
        tasks.append(asyncio.create_task(run_sync(), name="sync-loop"))
        if reconciler is not None:
            tasks.append(asyncio.create_task(reconciler.run(), name="cert-reconciler"))
        stop_wait = asyncio.create_task(stop.wait(), name="stop")
        try:
            done, _ = await asyncio.wait([stop_wait, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop_wait and not task.cancelled() and task.exception() is not None:
                    # A dead sync loop or reconciler must not leave a process that looks healthy: exit, and let
                    # the supervisor restart us (start-up reconciliation repairs whatever was half done).
                    logger.critical("agent %s: %s crashed", cfg.node, task.get_name(), exc_info=task.exception())
                    raise SystemExit(70)
        finally:
            stop_wait.cancel()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    logger.info("agent %s: stopped", cfg.node)

"""The node's identity from the control plane's internal PKI, wired into the agent: when it is used, the manager
(lockstep/enroll.py) that obtains and renews it, the sync client it swaps on each renewal, and what /healthz and
/metrics say about it.

With the internal PKI the agent authenticates with a certificate whose key it generated itself
(state_dir/identity/identity.pem, 0600); enrollment uses the one-time bootstrap token, renewal the current
certificate. Each new certificate gets a new httpx client (new connections present it); requests in flight finish
on the old one (agent/sync/client.py `HttpClientSlot`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from lockstep.enroll import IdentityCertificate, IdentityManager

from .config import AgentConfig, ControlPlaneConfig
from .edge_pki import EdgePkiKeeper
from .metrics import AgentMetrics
from .sync.client import HttpClientSlot
from .sync.errors import SyncError, Unauthorized

__all__ = ["EDGE_CLIENT_DIR", "IDENTITY_DIR", "edge_client_identity", "edge_pki_health", "fetch_ca_bundle",
           "identity_health", "node_identity",
           "update_identity_metrics", "uses_internal_pki", "wire_http_slot"]

IDENTITY_DIR = "identity"
EDGE_CLIENT_DIR = "edge-client"


def uses_internal_pki(cfg: AgentConfig) -> bool:
    """The internal PKI is used when a bootstrap token or a CA pin is configured, or when the node enrolled
    before (the token can be dropped from the configuration after that) and no other credential is given."""
    cp = cfg.control_plane
    if cp.bearer_token is not None or cp.client_cert is not None:
        return False
    return (cp.bootstrap_token is not None or cp.bootstrap_token_file is not None or cp.ca_sha256 is not None
            or (cfg.state_dir / IDENTITY_DIR / "identity.pem").exists())


def _token_reader(cp: ControlPlaneConfig) -> str | Callable[[], str | None] | None:
    if cp.bootstrap_token is not None:
        return cp.bootstrap_token
    path = cp.bootstrap_token_file
    if path is None:
        return None

    def read() -> str | None:
        try:
            return Path(path).read_text().strip() or None
        except OSError:
            return None  # removed after enrollment, or not there yet: the manager says "no token"

    return read


def node_identity(cfg: AgentConfig, *, now: Callable[[], dt.datetime], rand: random.Random,
                  sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> IdentityManager | None:
    """The manager of this node's certificate, or None when the agent uses a bearer token or a configured client
    certificate."""
    if not uses_internal_pki(cfg):
        return None
    cp = cfg.control_plane
    return IdentityManager(url=cp.url, directory=cfg.state_dir / IDENTITY_DIR, ca_file=cp.ca_file,
                           ca_sha256=cp.ca_sha256, token=_token_reader(cp), name="identity", now=now, rand=rand,
                           sleep=sleep, request_timeout_s=cp.request_timeout_s)


def edge_client_identity(cfg: AgentConfig, node: IdentityManager, *, now: Callable[[], dt.datetime],
                         rand: random.Random,
                         sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> IdentityManager:
    """HAProxy's client certificate towards backends (profile edge-client), obtained and renewed with the node's
    own certificate: state_dir/edge-client/edge-client.pem (leaf + key, HAProxy's `crt`), CA in `ca_file`."""
    cp = cfg.control_plane
    return IdentityManager(url=cp.url, directory=cfg.state_dir / EDGE_CLIENT_DIR, ca_file=node.ca_file,
                           name="edge-client", issue_path="/v1/pki/edge-client", renew_path="/v1/pki/edge-client",
                           authenticate_with=node, now=now, rand=rand, sleep=sleep,
                           request_timeout_s=cp.request_timeout_s)


async def fetch_ca_bundle(node: IdentityManager, cp: ControlPlaneConfig) -> str:
    """The internal CA bundle (`/v1/pki/ca.pem`), fetched over TLS verified with the trust anchor the node already
    has; during a CA rollover it holds the old and the new CA."""
    async with httpx.AsyncClient(base_url=cp.url, verify=node.client_ssl_context(),
                                 timeout=cp.request_timeout_s) as http:
        resp = await http.get("/v1/pki/ca.pem")
    if resp.status_code != 200:
        raise SyncError(f"/v1/pki/ca.pem: HTTP {resp.status_code}")
    return resp.text


def edge_pki_health(keeper: EdgePkiKeeper, manager: IdentityManager) -> dict[str, Any]:
    """HAProxy's backend-facing material: the client certificate it has, and how its renewals go."""
    return {
        "client_cert_not_after": _iso(keeper.not_after),
        "published": keeper.published,
        "reload_required": keeper.reload_required,
        "errors": keeper.errors,
        "last_error": keeper.last_error,
        "identity": identity_health(manager),
    }


def wire_http_slot(identity: IdentityManager, cp: ControlPlaneConfig, slot: HttpClientSlot) -> None:
    """From now on every certificate the manager obtains goes into a new client in `slot`."""

    def swap(_: IdentityCertificate) -> None:
        slot.replace(httpx.AsyncClient(base_url=cp.url, verify=identity.client_ssl_context(),
                                       timeout=cp.request_timeout_s))

    identity.add_listener(swap)
    if identity.current is not None:
        swap(identity.current)


def _iso(t: dt.datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def access_denied(identity: IdentityManager | None, sync_error: SyncError | None) -> bool:
    """The control plane refuses this node (403: it was removed). The agent keeps serving what it has."""
    return bool((identity is not None and identity.removed)
                or (isinstance(sync_error, Unauthorized) and sync_error.status == 403))


def identity_health(identity: IdentityManager) -> dict[str, Any]:
    cur = identity.current
    return {
        "enrolled": cur is not None,
        "id": cur.id if cur else None,
        "fingerprint": cur.fingerprint if cur else None,
        "not_after": _iso(cur.not_after) if cur else None,
        "renew_after": _iso(cur.renew_after) if cur else None,
        "last_renewal": _iso(identity.last_renewal),
        "renewals": identity.renewals,
        "failures": identity.failures,
        "last_error": identity.last_error,
        "removed": identity.removed,
    }


def update_identity_metrics(identity: IdentityManager, metrics: AgentMetrics) -> None:
    cur = identity.current
    if cur is not None:
        metrics.identity_not_after.set(cur.not_after.timestamp())
        metrics.identity_renew_at.set(cur.renew_after.timestamp())
    if identity.last_renewal is not None:
        metrics.identity_last_renewal.set(identity.last_renewal.timestamp())
    metrics.identity_renewals.set(identity.renewals)
    metrics.identity_failures.set(identity.failures)

"""`lockstep controlplane serve`: configuration, and the process that runs the API, the sync API and the pipeline.

The only module of the control plane that reads files named in the configuration and knows about signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import signal
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from controlplane import pki
from controlplane.app import make_app
from controlplane.pki_api import InternalPki
from controlplane.policy import IssuerPolicy
from controlplane.probe import EdgeNode, EdgeProbe
from controlplane.provision import PipelineSettings, Provisioner
from controlplane.store import (
    AlreadyExists,
    IdentityRemoved,
    KeyEncryptionKey,
    Store,
    load_kek,
    load_kek_file,
    open_store,
)

__all__ = ["BackendConfig", "ControlPlaneConfig", "ConfigError", "IssuerConfig", "NodeConfig", "PkiConfig",
           "ServingCertificate", "load_config", "parse_config", "serve"]

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """The control plane's configuration is missing or wrong; the message names the key."""


@dataclasses.dataclass(frozen=True, slots=True)
class IssuerConfig:
    kind: str  # "digicert" | "acme"
    url: str  # CertCentral base URL, or the ACME directory URL
    name: str = "digicert"  # what the domain's status shows
    api_key: str | None = dataclasses.field(default=None, repr=False)  # digicert
    product_id: str = "ssl_dv_geotrust"  # digicert
    ca_bundle: Path | None = None  # acme: trust for the ACME server's own TLS certificate
    eab_kid: str | None = None  # acme: External Account Binding
    eab_hmac_key: str | None = dataclasses.field(default=None, repr=False)
    contact: tuple[str, ...] = ()
    caa_identities: tuple[str, ...] = ()  # CAA issuer domains that allow this CA (preflight)
    requests_per_s: float = 10.0  # token bucket per API key (CertCentral: 1000 per 5 min, bursts of 100 per 5 s)
    burst: int = 20
    request_timeout_s: float = 15.0
    orders_per_window: int | None = None  # new orders budget (e.g. Let's Encrypt: 300 per 3 h); None = unpaced
    window_s: float = 10_800.0


@dataclasses.dataclass(frozen=True, slots=True)
class NodeConfig:
    """A node from the configuration. With neither `bearer_token` nor `client_cert_fingerprint` it is a node of the
    internal PKI: it enrolls with `bootstrap_token` (pre-registered here, so a compose stack needs no operator step)
    or with a token an operator creates (`lockstep nodes token`)."""

    node_id: str
    http: str
    https: str
    bearer_token: str | None = dataclasses.field(default=None, repr=False)
    client_cert_fingerprint: str | None = None
    bootstrap_token: str | None = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class BackendConfig:
    """A backend that gets its server certificate (for `names`) from the internal PKI."""

    backend_id: str
    names: tuple[str, ...]
    bootstrap_token: str | None = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class PkiConfig:
    """The internal PKI's lifetimes, and how long a bootstrap token from this file stays redeemable (counted from
    the first start that registers it; a used or expired one is never registered again)."""

    validity: pki.Validity = pki.Validity()
    config_token_ttl_s: float = 86_400.0


@dataclasses.dataclass(frozen=True, slots=True)
class ControlPlaneConfig:
    listen: str
    store_url: str
    api_token: str = dataclasses.field(repr=False)
    issuers: tuple[IssuerConfig, ...]  # in order of preference
    nodes: tuple[NodeConfig, ...]
    kek_file: Path | None = None
    tls_cert: Path | None = None  # serve HTTPS; with tls_client_ca, agents authenticate with client certificates
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    tls_internal: bool = False  # `tls: internal`: serve HTTPS with a certificate of the internal CA for tls_names
    tls_names: tuple[str, ...] = ("localhost", "127.0.0.1")
    pki: PkiConfig = PkiConfig()
    backends: tuple[BackendConfig, ...] = ()
    pipeline: PipelineSettings = PipelineSettings()
    concurrency: int = 16
    preflight: dict[str, Any] | None = None  # edge_cname_targets, edge_addresses, resolver, token_wait_s
    max_names_per_apex: int | None = None


def _req(raw: dict[str, Any], key: str, where: str, kind: type = str) -> Any:
    if key not in raw:
        raise ConfigError(f"{where}{key}: required")
    value = raw[key]
    if not isinstance(value, kind):
        raise ConfigError(f"{where}{key}: expected {kind.__name__}")
    return value


def _secret(raw: dict[str, Any], key: str, where: str, base: Path) -> str:
    """A secret given inline (`key`) or in a file (`key_file`, relative to the config file)."""
    if f"{key}_file" in raw:
        path = base / str(raw[f"{key}_file"])
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{where}{key}_file: cannot read {path}: {exc.strerror}") from None
    return str(_req(raw, key, where))


def parse_config(raw: Any, *, base: Path = Path(".")) -> ControlPlaneConfig:
    if not isinstance(raw, dict):
        raise ConfigError("the configuration must be a mapping")
    raw_issuers = raw.get("issuers") or ([raw["issuer"]] if "issuer" in raw else None)
    if not isinstance(raw_issuers, list) or not raw_issuers:
        raise ConfigError("issuers: required (a list, in order of preference)")
    issuers = []
    for i, item in enumerate(raw_issuers):
        where = f"issuers[{i}]."
        if not isinstance(item, dict):
            raise ConfigError(f"issuers[{i}]: expected a mapping")
        kind = str(item.get("kind", "digicert"))
        if kind not in ("digicert", "acme"):
            raise ConfigError(f"{where}kind: digicert or acme")
        issuers.append(IssuerConfig(
            kind=kind, name=str(item.get("name", kind)),
            url=str(_req(item, "base_url" if kind == "digicert" else "directory_url", where)),
            api_key=_secret(item, "api_key", where, base) if kind == "digicert" else None,
            product_id=str(item.get("product_id", "ssl_dv_geotrust")),
            ca_bundle=base / str(item["ca_bundle"]) if item.get("ca_bundle") else None,
            eab_kid=item.get("eab_kid"),
            eab_hmac_key=_secret(item, "eab_hmac_key", where, base)
            if ("eab_hmac_key" in item or "eab_hmac_key_file" in item) else None,
            contact=tuple(item.get("contact", ())),
            caa_identities=tuple(item.get("caa_identities", ())),
            requests_per_s=float(item.get("requests_per_s", 10.0)), burst=int(item.get("burst", 20)),
            request_timeout_s=float(item.get("request_timeout_s", 15.0)),
            orders_per_window=int(item["orders_per_window"]) if item.get("orders_per_window") else None,
            window_s=float(item.get("window_s", 10_800.0)),
        ))
    if len({i.name for i in issuers}) != len(issuers):
        raise ConfigError("issuers: names must be unique")
    nodes = []
    for i, n in enumerate(raw.get("nodes", [])):
        where = f"nodes[{i}]."
        if not isinstance(n, dict):
            raise ConfigError(f"nodes[{i}]: expected a mapping")
        bootstrap = _optional_secret(n, "bootstrap_token", where, base)
        node = NodeConfig(node_id=str(_req(n, "id", where)), http=str(_req(n, "http", where)),
                          https=str(_req(n, "https", where)),
                          bearer_token=_optional_secret(n, "bearer_token", where, base),
                          client_cert_fingerprint=n.get("client_cert_fingerprint"), bootstrap_token=bootstrap)
        if node.bearer_token and node.client_cert_fingerprint:
            raise ConfigError(f"{where}bearer_token: give one of bearer_token and client_cert_fingerprint")
        if bootstrap is not None or not (node.bearer_token or node.client_cert_fingerprint):
            _pki_id(node.node_id, f"{where}id")
        nodes.append(node)
    backends = []
    for i, b in enumerate(raw.get("backends", None) or []):
        where = f"backends[{i}]."
        if not isinstance(b, dict):
            raise ConfigError(f"backends[{i}]: expected a mapping")
        try:
            names = pki.check_names(b.get("names"))
        except pki.BadName as exc:
            raise ConfigError(f"{where}names: {exc}") from None
        backends.append(BackendConfig(backend_id=_pki_id(_req(b, "id", where), f"{where}id"), names=names,
                                      bootstrap_token=_optional_secret(b, "bootstrap_token", where, base)))
    tls_mode = raw.get("tls")
    if tls_mode not in (None, "internal"):
        raise ConfigError("tls: the only mode is `internal` (or give tls_cert/tls_key files)")
    if tls_mode == "internal" and raw.get("tls_cert"):
        raise ConfigError("tls_cert: not with `tls: internal` (the internal CA issues the serving certificate)")
    try:
        tls_names = pki.check_names(raw.get("tls_names", ["localhost", "127.0.0.1"]))
    except pki.BadName as exc:
        raise ConfigError(f"tls_names: {exc}") from None
    pki_config = _pki_section(raw.get("pki"))
    pipe = raw.get("pipeline", {}) or {}
    pipeline = PipelineSettings(
        key_type=str(pipe.get("key_type", "ec")),
        validity_days=int(pipe.get("validity_days", 90)),
        renew_fraction=float(pipe.get("renew_fraction", 2 / 3)),
        poll_s=float(pipe.get("poll_s", 2.0)),
        poll_first_s=float(pipe.get("poll_first_s", 0.25)),
        node_first_wait_s=float(pipe.get("node_first_wait_s", 0.05)),
        node_wait_s=float(pipe.get("node_wait_s", 1.0)),
        retry_s=tuple(float(x) for x in pipe.get("retry_s", PipelineSettings().retry_s)),
    )
    if pipeline.key_type not in ("ec", "rsa"):
        raise ConfigError("pipeline.key_type: ec or rsa")
    if not 0 < pipeline.renew_fraction < 1:
        raise ConfigError("pipeline.renew_fraction: between 0 and 1")

    def path(key: str) -> Path | None:
        return base / str(raw[key]) if raw.get(key) else None

    return ControlPlaneConfig(
        listen=str(_req(raw, "listen", "")),
        store_url=str(_req(raw, "store_url", "")),
        api_token=_secret(raw, "api_token", "", base),
        issuers=tuple(issuers),
        nodes=tuple(nodes),
        kek_file=path("kek_file"),
        tls_cert=path("tls_cert"), tls_key=path("tls_key"), tls_client_ca=path("tls_client_ca"),
        tls_internal=tls_mode == "internal", tls_names=tls_names, pki=pki_config, backends=tuple(backends),
        pipeline=pipeline,
        concurrency=int(raw.get("concurrency", 16)),
        preflight=_preflight_section(raw.get("preflight")),
        max_names_per_apex=int(raw["max_names_per_apex"]) if raw.get("max_names_per_apex") else None,
    )


def _optional_secret(raw: dict[str, Any], key: str, where: str, base: Path) -> str | None:
    return _secret(raw, key, where, base) if (key in raw or f"{key}_file" in raw) else None


def _pki_id(value: object, where: str) -> str:
    try:
        return pki.check_identity_id(value)
    except pki.BadName as exc:
        raise ConfigError(f"{where}: {exc} (it goes into certificates of the internal PKI)") from None


_PKI_KEYS = {"node_validity_s": "node_s", "edge_client_validity_s": "edge_client_s",
             "backend_validity_s": "backend_s", "control_plane_validity_s": "control_plane_s"}


def _pki_section(raw: Any) -> PkiConfig:
    if raw is None:
        return PkiConfig()
    if not isinstance(raw, dict):
        raise ConfigError("pki: expected a mapping")
    unknown = set(raw) - set(_PKI_KEYS) - {"config_token_ttl_s"}
    if unknown:
        raise ConfigError(f"pki.{sorted(unknown)[0]}: unknown key")
    try:
        validity = pki.Validity(**{field: raw[key] for key, field in _PKI_KEYS.items() if key in raw})
    except ValueError as exc:
        raise ConfigError(f"pki: {exc}") from None
    ttl = raw.get("config_token_ttl_s", 86_400.0)
    if not isinstance(ttl, int | float) or isinstance(ttl, bool) or ttl <= 0:
        raise ConfigError("pki.config_token_ttl_s: a positive number of seconds")
    return PkiConfig(validity=validity, config_token_ttl_s=float(ttl))


def _preflight_section(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError("preflight: expected a mapping")
    known = {"edge_cname_targets", "edge_addresses", "resolver", "timeout_s", "token_wait_s"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"preflight.{sorted(unknown)[0]}: unknown key")
    return dict(raw)


GRANT_LAG_S = 1.0


def build_budget(cfg: ControlPlaneConfig) -> Any:
    """Order pacing per CA, for the issuers that declare an order budget (all of them are paced, the others at
    a rate they cannot reach)."""
    if not any(i.orders_per_window for i in cfg.issuers):
        return None
    from controlplane.budget import CaBudget, WindowLimit

    # A slot is spent when the budget grants it, but the granted domain sends its order up to ~one driver pass later
    # (it is woken, then stepped); widening the window by that lag keeps the CA's own count within the limit.
    lag_s = GRANT_LAG_S
    return CaBudget({i.name: WindowLimit(i.orders_per_window or 1_000_000, i.window_s + lag_s) for i in cfg.issuers})


def build_preflight(cfg: ControlPlaneConfig, probe: EdgeProbe) -> Any:
    if cfg.preflight is None:
        return None
    from controlplane.preflight import DEFAULT_CAA_IDENTITIES, Preflight, PreflightSettings

    identities = {i.name: i.caa_identities or tuple(DEFAULT_CAA_IDENTITIES.get(i.kind, ())) for i in cfg.issuers}
    missing = [name for name, ids in identities.items() if not ids]
    if missing:
        raise ConfigError(f"issuers: caa_identities required for {', '.join(missing)} when preflight is on")
    p = cfg.preflight
    try:
        settings = PreflightSettings(
            edge_cname_targets=tuple(p.get("edge_cname_targets", ())),
            edge_addresses=tuple(p.get("edge_addresses", ())),
            resolver_address=p.get("resolver"),
            timeout_s=float(p.get("timeout_s", 5.0)),
            caa_identities=identities,
            token_wait_s=float(p.get("token_wait_s", 10.0)),
        )
    except ValueError as exc:
        raise ConfigError(f"preflight: {exc}") from None
    return Preflight(settings, probe=probe)


def load_config(path: Path) -> ControlPlaneConfig:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(raw, base=path.parent)


def load_kek_from(cfg: ControlPlaneConfig, env_value: str | None) -> KeyEncryptionKey:
    """The KEK from `kek_file`, else from the LOCKSTEP_KEK value the CLI read from the environment."""
    if cfg.kek_file is not None:
        return load_kek_file(cfg.kek_file)
    if env_value:
        return load_kek(env_value)
    raise ConfigError("kek_file (or the LOCKSTEP_KEK environment variable) is required")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


async def build_issuer(cfg: IssuerConfig, http: httpx.AsyncClient, store: Any) -> Any:
    """The issuer for one configured CA. An ACME account key is created once and kept sealed in the store."""
    if cfg.kind == "acme":
        from controlplane.issuers.acme import AcmeIssuer, new_account_key_pem

        secret_name = f"acme-account:{cfg.name}"
        account_key = await store.get_system_secret(secret_name)
        if account_key is None:
            account_key = new_account_key_pem().encode()
            await store.put_system_secret(secret_name, account_key)
        return AcmeIssuer(directory_url=cfg.url, account_key_pem=account_key, contact=cfg.contact,
                          eab_kid=cfg.eab_kid, eab_hmac_key=cfg.eab_hmac_key, ca_bundle=cfg.ca_bundle,
                          name=cfg.name, request_timeout_s=cfg.request_timeout_s)
    from controlplane.issuers.digicert import DigiCertIssuer
    from controlplane.issuers.ratelimit import TokenBucket

    assert cfg.api_key is not None
    return DigiCertIssuer(http, api_key=cfg.api_key, product_id=cfg.product_id, base_url=cfg.url, name=cfg.name,
                          bucket=TokenBucket(rate_per_s=cfg.requests_per_s, burst=cfg.burst),
                          request_timeout_s=cfg.request_timeout_s, retry_deadline_s=4 * cfg.request_timeout_s)


class ServingCertificate:
    """The control plane's HTTPS certificate in `tls: internal` mode: issued by the internal CA for `names` at start,
    and re-issued at its renew_after into the live SSLContext (`load_cert_chain` on a context in use changes what
    new handshakes present; established connections keep theirs). The key is made here and only ever kept in
    memory and, for the moment `load_cert_chain` needs a file, in a private temporary directory."""

    RETRY_S = (1.0, 5.0, 30.0, 120.0)

    def __init__(self, internal_pki: InternalPki, names: tuple[str, ...], ctx: ssl.SSLContext, *,
                 now: Callable[[], dt.datetime], sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._pki = internal_pki
        self._names = names
        self._ctx = ctx
        self._now = now
        self._sleep = sleep
        self.current: pki.IssuedCertificate | None = None
        self.renewals = 0

    async def load(self) -> pki.IssuedCertificate:
        key = ec.generate_private_key(ec.SECP256R1())
        issued = await self._pki.serving_certificate(self._names, key.public_key())
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        with tempfile.TemporaryDirectory(prefix="lockstep-cp-tls-") as tmp:  # 0700
            chain = Path(tmp) / "chain.pem"
            chain.write_text(issued.pem)
            key_file = Path(tmp) / "key.pem"
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(key_pem)
            self._ctx.load_cert_chain(str(chain), str(key_file))
        self.current = issued
        logger.info("internal PKI: serving certificate %s for %s until %s", issued.fingerprint,
                    ", ".join(self._names), issued.not_after.isoformat())
        return issued

    async def run(self) -> None:
        """Renew forever (until cancelled); a failure is retried on RETRY_S, the current certificate keeps serving."""
        failures = 0
        while True:
            assert self.current is not None, "load() first"
            if failures:
                delay = self.RETRY_S[min(failures - 1, len(self.RETRY_S) - 1)]
            else:
                delay = (self.current.renew_after - self._now()).total_seconds()
            await self._sleep(max(delay, 0.0))
            try:
                await self.load()
            except Exception:  # a store outage must not end the server: the certificate in use is still valid
                failures += 1
                logger.exception("internal PKI: renewing the serving certificate failed (%d in a row)", failures)
                continue
            failures = 0
            self.renewals += 1


async def _register_identities(cfg: ControlPlaneConfig, store: Store) -> None:
    """Nodes and backends of the configuration, and their bootstrap tokens (each registered once, ever)."""
    expires = _utcnow() + dt.timedelta(seconds=cfg.pki.config_token_ttl_s)
    for node in cfg.nodes:
        if await store.get_node(node.node_id) is None:
            with contextlib.suppress(AlreadyExists):
                if node.bearer_token or node.client_cert_fingerprint:
                    await store.add_node(node.node_id, bearer_token=node.bearer_token,
                                         client_cert_fingerprint=node.client_cert_fingerprint)
                else:
                    await store.add_node(node.node_id, pki=True)
        if node.bootstrap_token is not None:
            with contextlib.suppress(AlreadyExists, IdentityRemoved):
                await store.add_bootstrap_token(node.bootstrap_token, kind="node", identity_id=node.node_id,
                                                expires_at=expires)
    for backend in cfg.backends:
        existing = await store.get_backend(backend.backend_id)
        if existing is None:
            with contextlib.suppress(AlreadyExists):
                await store.add_backend(backend.backend_id, backend.names)
        elif existing.names != backend.names:
            logger.warning("backend %s: the store has names %s, the configuration %s; the store's are used "
                           "(remove the backend and register it again to change them)", backend.backend_id,
                           ", ".join(existing.names), ", ".join(backend.names))
        if backend.bootstrap_token is not None:
            with contextlib.suppress(AlreadyExists, IdentityRemoved):
                await store.add_bootstrap_token(backend.bootstrap_token, kind="backend",
                                                identity_id=backend.backend_id, expires_at=expires)


async def serve(cfg: ControlPlaneConfig, kek: KeyEncryptionKey, *, stop: asyncio.Event | None = None,
                ready: asyncio.Event | None = None) -> None:
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    store = await open_store(cfg.store_url, kek=kek)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(store.aclose)
        await _register_identities(cfg, store)
        internal_pki = InternalPki(store, validity=cfg.pki.validity, now=_utcnow)
        ca = await internal_pki.ca()  # created on the first start, so the CA certificate can be handed out at once
        logger.info("internal PKI: CA %s", ca.fingerprint)
        http = await stack.enter_async_context(
            httpx.AsyncClient(timeout=max(i.request_timeout_s for i in cfg.issuers)))
        issuers = {i.name: await build_issuer(i, http, store) for i in cfg.issuers}
        async def removed_nodes() -> set[str]:
            return {n.node_id for n in await store.list_nodes() if n.removed}

        probe = EdgeProbe([EdgeNode(n.node_id, n.http, n.https) for n in cfg.nodes], removed=removed_nodes)
        provisioner = Provisioner(
            store=store, issuers=issuers, policy=IssuerPolicy(order=tuple(issuers)),
            preflight=build_preflight(cfg, probe), probe=probe, budget=build_budget(cfg),
            settings=cfg.pipeline, now=_utcnow)
        app = make_app(store=store, api_token=cfg.api_token, now=_utcnow, max_names_per_apex=cfg.max_names_per_apex,
                       internal_pki=internal_pki, on_domains_changed=provisioner.wake)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        ssl_ctx = None
        serving: ServingCertificate | None = None
        if cfg.tls_internal or cfg.tls_cert is not None:
            # Only our CAs are trusted for client certificates (not the system's: a publicly issued certificate
            # must not even complete the handshake). Optional, because operators and bootstrapping agents have none.
            ssl_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ssl_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if cfg.tls_internal:
                serving = ServingCertificate(internal_pki, cfg.tls_names, ssl_ctx, now=_utcnow)
                await serving.load()
            else:
                ssl_ctx.load_cert_chain(str(cfg.tls_cert), str(cfg.tls_key) if cfg.tls_key else None)
            ssl_ctx.load_verify_locations(cadata=await internal_pki.ca_bundle_pem())
            if cfg.tls_client_ca is not None:
                ssl_ctx.load_verify_locations(str(cfg.tls_client_ca))
            ssl_ctx.verify_mode = ssl.CERT_OPTIONAL
        host, _, port = cfg.listen.rpartition(":")
        await web.TCPSite(runner, host, int(port), ssl_context=ssl_ctx).start()
        logger.info("control plane listening on %s (%s, store %s)", cfg.listen,
                    "https, internal CA" if cfg.tls_internal else "https" if ssl_ctx else "http", store.backend)
        pipeline_task = asyncio.create_task(provisioner.run(stop, concurrency=cfg.concurrency), name="pipeline")
        background = [asyncio.create_task(serving.run(), name="serving-certificate")] if serving else []
        if ready is not None:
            ready.set()
        try:
            await stop.wait()
        finally:
            stop.set()
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            with contextlib.suppress(asyncio.CancelledError):
                await pipeline_task

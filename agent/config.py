"""The agent's configuration: frozen dataclasses loaded once from YAML; errors name the key path."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

__all__ = ["AgentConfig", "ConfigError", "ControlPlaneConfig", "HAProxyConfig", "SpoeConfig", "StatusConfig",
           "load_config", "parse_config"]


class ConfigError(ValueError):
    """The configuration file is missing, unreadable, or has a wrong key; the message names the key path."""


@dataclasses.dataclass(frozen=True, slots=True)
class SpoeConfig:
    host: str = "127.0.0.1"
    port: int = 12345
    max_frame_size: int = 16380  # HAProxy 2.x default (tune.bufsize - 4)
    max_in_flight: int = 64  # NOTIFYs handled at once per HAProxy connection
    handler_timeout_s: float = 0.25  # below HAProxy's "timeout processing" (500 ms) so HAProxy gets an ACK


@dataclasses.dataclass(frozen=True, slots=True)
class ControlPlaneConfig:
    url: str
    bearer_token: str | None = dataclasses.field(default=None, repr=False)
    ca_file: Path | None = None  # verifies the control plane's certificate (the internal CA with the internal PKI)
    client_cert: Path | None = None  # mTLS: this node's certificate (PEM, key in client_key or the same file)
    client_key: Path | None = None
    # The internal PKI (docs/agent.md): a one-time token to enroll with, inline or in a file (read at each attempt),
    # and, instead of ca_file, the SHA-256 of the internal CA certificate to fetch it from the control plane.
    bootstrap_token: str | None = dataclasses.field(default=None, repr=False)
    bootstrap_token_file: Path | None = None
    ca_sha256: str | None = None
    request_timeout_s: float = 10.0
    wait_s: float = 25.0
    anti_entropy_s: float = 300.0


@dataclasses.dataclass(frozen=True, slots=True)
class HAProxyConfig:
    """The node's HAProxy, for certificate sync. Without this section the agent only answers validation tokens."""

    admin_socket: str  # the runtime API: unix socket path (or host:port)
    cert_dir: Path  # the directory haproxy.cfg loads with `crt` (LOCKSTEP_CERT_DIR); the agent owns its files
    https_addr: str | None = None  # where to handshake after each commit to verify what is served
    verify: bool = True
    # HAProxy's backend-facing files (LOCKSTEP_BACKEND_CLIENT_CERT, LOCKSTEP_BACKEND_CA): with the internal PKI the
    # agent obtains, renews and publishes them live (agent/edge_pki.py). Both or neither.
    backend_client_cert: Path | None = None
    backend_ca: Path | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class StatusConfig:
    host: str = "127.0.0.1"
    port: int = 0  # /healthz and /metrics; 0 = off


@dataclasses.dataclass(frozen=True, slots=True)
class AgentConfig:
    node: str
    control_plane: ControlPlaneConfig
    spoe: SpoeConfig = SpoeConfig()
    haproxy: HAProxyConfig | None = None
    status: StatusConfig = StatusConfig()
    state_dir: Path = Path("var/agent")


def _section(raw: Any, path: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping")
    return raw


def _build(cls: type, raw: dict[str, Any], path: str, **nested: Any) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(raw) - set(fields)
    if unknown:
        raise ConfigError(f"{path}.{sorted(unknown)[0]}: unknown key")
    kwargs: dict[str, Any] = dict(nested)
    for name, value in raw.items():
        if name in nested:
            continue
        default = fields[name].default
        where = f"{path}.{name}"
        kind = fields[name].type
        if "Path" in str(kind):
            if not isinstance(value, str):
                raise ConfigError(f"{where}: expected a path")
            value = Path(value)
        elif "bool" in str(kind):
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: expected true or false")
        elif "float" in str(kind):
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{where}: expected a non-negative number")
            value = float(value)
        elif "int" in str(kind):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{where}: expected a non-negative integer")
        elif not isinstance(value, str) and not (value is None and default is None):
            raise ConfigError(f"{where}: expected a string")
        kwargs[name] = value
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{path}.{missing[0]}: required")
    return cls(**kwargs)


def parse_config(raw: Any) -> AgentConfig:
    top = _section(raw, "agent")
    spoe = _build(SpoeConfig, _section(top.get("spoe"), "spoe"), "spoe")
    if not 256 <= spoe.max_frame_size <= 16380 * 64:
        raise ConfigError("spoe.max_frame_size: must be at least 256")
    if "control_plane" not in top:
        raise ConfigError("control_plane: required")
    cp = _build(ControlPlaneConfig, _section(top["control_plane"], "control_plane"), "control_plane")
    if not cp.url.startswith(("http://", "https://")):
        raise ConfigError("control_plane.url: must be an http(s) URL")
    if cp.bootstrap_token is not None and cp.bootstrap_token_file is not None:
        raise ConfigError("control_plane.bootstrap_token_file: give bootstrap_token or bootstrap_token_file, not both")
    if cp.ca_sha256 is not None and cp.ca_file is not None:
        raise ConfigError("control_plane.ca_sha256: give ca_file or ca_sha256, not both")
    if haproxy_raw := top.get("haproxy"):
        edge_files = [k for k in ("backend_client_cert", "backend_ca") if _section(haproxy_raw, "haproxy").get(k)]
        if len(edge_files) == 1:
            raise ConfigError(f"haproxy.{edge_files[0]}: give backend_client_cert and backend_ca together")
        if edge_files and (cp.bearer_token is not None or cp.client_cert is not None):
            raise ConfigError("haproxy.backend_client_cert: HAProxy's client certificate comes from the internal PKI; "
                              "the agent must enroll (bootstrap_token / ca_file or ca_sha256), not use "
                              "bearer_token or client_cert")
    if cp.bootstrap_token is not None or cp.bootstrap_token_file is not None or cp.ca_sha256 is not None:
        if cp.bearer_token is not None or cp.client_cert is not None:
            raise ConfigError("control_plane.bootstrap_token: the internal PKI replaces bearer_token and client_cert; "
                              "give one way to authenticate")
        if not cp.url.startswith("https://"):
            raise ConfigError("control_plane.url: the internal PKI needs https://")
        if cp.ca_file is None and cp.ca_sha256 is None:
            raise ConfigError("control_plane.ca_file: the internal PKI needs ca_file or ca_sha256 to trust the "
                              "control plane")
        if cp.ca_sha256 is not None:
            value = cp.ca_sha256.strip().lower().removeprefix("sha256:").replace(":", "")
            if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
                raise ConfigError("control_plane.ca_sha256: the SHA-256 of the CA certificate, 64 hex digits")
    haproxy = None
    if top.get("haproxy") is not None:
        haproxy = _build(HAProxyConfig, _section(top["haproxy"], "haproxy"), "haproxy")
        if not haproxy.cert_dir.is_absolute():
            raise ConfigError("haproxy.cert_dir: must be absolute (HAProxy names certificates by path)")
    status = _build(StatusConfig, _section(top.get("status"), "status"), "status")
    rest = {k: v for k, v in top.items() if k not in ("spoe", "control_plane", "haproxy", "status")}
    return _build(  # type: ignore[no-any-return]
        AgentConfig, rest, "agent", spoe=spoe, control_plane=cp, haproxy=haproxy, status=status)


def load_config(path: Path) -> AgentConfig:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(raw)

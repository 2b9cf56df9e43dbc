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
    bearer_token: str | None = None
    ca_file: Path | None = None  # verifies the control plane's certificate
    client_cert: Path | None = None  # mTLS: this node's certificate (PEM, key in client_key or the same file)
    client_key: Path | None = None
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

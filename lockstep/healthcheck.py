"""`python -m lockstep.healthcheck agent|controlplane --config FILE`: the role images' HEALTHCHECK.

Asks the service's own /healthz, at the address its configuration file gives (the same file the service reads, so
the check follows the configuration instead of repeating it), and exits 0 (healthy) or 1 (unhealthy) with one line
saying why: Docker keeps the last lines in `docker inspect` (State.Health.Log).

* agent (docker/agent.Dockerfile): http://<status.host>:<status.port>/healthz. Healthy when it answers 200 with
  `ready` (enrolled, first desired state in effect) and the control plane does not refuse the node
  (`access_denied`: a removed node keeps serving what it has, but gets nothing new and renews nothing).
  `status.port: 0` (no status endpoint) is unhealthy, and says so.
* control plane (docker/controlplane.Dockerfile): /healthz on `listen`. With `tls: internal`, over HTTPS verified
  against the internal CA the control plane publishes (/v1/pki/ca.pem) for a name of `tls_names`: an expired or
  misnamed serving certificate (a renewal that failed) is unhealthy, not only a dead process. The CA is fetched
  from the same address without verification, so this checks the certificate, not who answers: it is a probe of
  the local process, not a client's trust decision. With `tls_cert`, the certificates of that file are the trust
  anchors (the served certificate must be one of them or chain to one, and be current; its names are not checked:
  the configuration does not say which one clients use).

Wildcard listen addresses (0.0.0.0, ::) are dialled on the loopback address. The planning half (`agent_probe`,
`controlplane_probe`, `agent_verdict`, `controlplane_verdict`) is pure; `run_probe` does the two requests.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import socket
import ssl
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

__all__ = ["HealthcheckError", "Probe", "agent_probe", "agent_verdict", "controlplane_probe", "controlplane_verdict",
           "main", "run_probe"]

TIMEOUT_S = 3.0  # per connection and read; the images' HEALTHCHECK --timeout is 5 s
MAX_BODY = 64 * 1024
CA_PATH = "/v1/pki/ca.pem"  # public, as /healthz (controlplane/app.py)
_WILDCARD = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


class HealthcheckError(Exception):
    """Unhealthy, or the check could not be made (unreadable configuration, connection refused, bad certificate)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Probe:
    host: str  # the address dialled
    port: int
    tls: Literal["none", "internal", "files"]
    server_hostname: str | None = None  # tls == "internal": the name the served certificate must carry
    trust_file: Path | None = None  # tls == "files": its certificates are the trust anchors

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'http' if self.tls == 'none' else 'https'}://{host}:{self.port}/healthz"


def _split_addr(addr: str, where: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise HealthcheckError(f"{where}: expected host:port, got {addr!r}")
    host = host.removeprefix("[").removesuffix("]")
    return _WILDCARD.get(host, host), int(port)


def agent_probe(cfg: Any) -> Probe:
    """The probe of an agent with configuration `cfg` (agent.config.AgentConfig).

    Raises:
        HealthcheckError: the status endpoint is off.
    """
    if not cfg.status.port:
        raise HealthcheckError("status.port is 0: the agent has no /healthz to check (set status: {host, port})")
    return Probe(host=_WILDCARD.get(cfg.status.host, cfg.status.host), port=int(cfg.status.port), tls="none")


def _pem_certificates(text: str) -> str:
    """Only the CERTIFICATE blocks (a tls_cert file may hold the key too)."""
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    blocks, rest = [], text
    while begin in rest:
        start = rest.index(begin)
        stop = rest.find(end, start)
        if stop < 0:
            break
        blocks.append(rest[start:stop + len(end)])
        rest = rest[stop + len(end):]
    return "\n".join(blocks) + ("\n" if blocks else "")


def controlplane_probe(raw: Mapping[str, Any], *, base: Path) -> Probe:
    """The probe of a control plane whose configuration file (parsed YAML) is `raw`, found in directory `base`.

    Only `listen`, `tls`, `tls_names` and `tls_cert` are read, and not through controlplane.serve.load_config:
    importing the control plane costs about a second of CPU on every probe. The service refuses a configuration
    whose other keys are wrong; this only has to find it.

    Raises:
        HealthcheckError: `listen` is missing or malformed.
    """
    if not isinstance(raw, Mapping) or not isinstance(raw.get("listen"), str):
        raise HealthcheckError("listen: required (host:port)")
    host, port = _split_addr(raw["listen"], "listen")
    if raw.get("tls") == "internal":
        names = raw.get("tls_names") or ["localhost", "127.0.0.1"]  # controlplane.serve's default
        names = [str(n) for n in names]
        return Probe(host=host, port=port, tls="internal", server_hostname=host if host in names else names[0])
    if raw.get("tls_cert"):  # relative to the configuration file, as controlplane.serve reads it
        return Probe(host=host, port=port, tls="files", trust_file=base / str(raw["tls_cert"]))
    return Probe(host=host, port=port, tls="none")


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _section(health: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = health.get(key)
    return value if isinstance(value, dict) else {}


def agent_verdict(status: int, body: bytes) -> tuple[bool, str]:
    """(healthy, one line) for an agent's /healthz answer."""
    health = _json(body)
    node = health.get("node", "?")
    sync, identity, certs = _section(health, "sync"), _section(health, "identity"), _section(health, "certificates")
    if health.get("access_denied") is True:
        return False, (f"{node}: the control plane refuses this node (access_denied; last error: "
                       f"{sync.get('last_error')})")
    if status == 200 and health.get("ready") is True:
        return True, (f"{node}: ready, revision {sync.get('revision')}, {health.get('tokens', 0)} token(s)"
                      + (f", {certs.get('applied', 0)} certificate(s)" if certs else ""))
    if not health:
        return False, f"HTTP {status}, not the agent's /healthz answer: {body[:200]!r}"
    why = ("not enrolled yet" if identity and not identity.get("enrolled")
           else "no desired state yet" if not sync.get("synced") else "certificates not reconciled yet")
    return False, (f"{node}: not ready ({why}; sync failures {sync.get('failures')}, last error "
                   f"{sync.get('last_error')})")


def controlplane_verdict(status: int, body: bytes) -> tuple[bool, str]:
    """(healthy, one line) for the control plane's /healthz answer."""
    health = _json(body)
    if status == 200 and health.get("ready") is True:
        return True, f"ready, revision {health.get('revision')}, domains {health.get('domains')}"
    return False, f"HTTP {status}: {body[:200]!r}"


def _get(probe: Probe, path: str, ctx: ssl.SSLContext | None, *, timeout_s: float) -> tuple[int, bytes]:
    """One GET; the TLS name to verify is the probe's, whatever address is dialled."""
    sock = socket.create_connection((probe.host, probe.port), timeout=timeout_s)
    try:
        if ctx is not None:
            sock = ctx.wrap_socket(sock, server_hostname=probe.server_hostname)
        conn = http.client.HTTPConnection(probe.host, probe.port, timeout=timeout_s)
        conn.sock = sock  # already connected (and wrapped): http.client uses it as is
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read(MAX_BODY)
    finally:
        sock.close()


def run_probe(probe: Probe, *, timeout_s: float = TIMEOUT_S) -> tuple[int, bytes]:
    """GET /healthz as `probe` says: (status, body).

    Raises:
        HealthcheckError: no connection, a certificate that does not verify, or no CA published.
    """
    try:
        ctx: ssl.SSLContext | None = None
        if probe.tls == "internal":
            unverified = ssl.create_default_context()
            unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
            status, ca_pem = _get(probe, CA_PATH, unverified, timeout_s=timeout_s)
            if status != 200 or b"BEGIN CERTIFICATE" not in ca_pem:
                raise HealthcheckError(f"{CA_PATH}: HTTP {status}, no internal CA certificate")
            ctx = ssl.create_default_context(cadata=ca_pem.decode("ascii", errors="replace"))
        elif probe.tls == "files":
            assert probe.trust_file is not None
            try:
                anchors = _pem_certificates(probe.trust_file.read_text())
            except (OSError, ValueError) as exc:
                raise HealthcheckError(f"tls_cert: cannot read {probe.trust_file}: {exc}") from None
            if not anchors:
                raise HealthcheckError(f"tls_cert: no certificate in {probe.trust_file}")
            ctx = ssl.create_default_context(cadata=anchors)
            ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the served leaf itself may be the anchor
            ctx.check_hostname = False  # which name clients use is not in the configuration
        return _get(probe, "/healthz", ctx, timeout_s=timeout_s)
    except ssl.SSLCertVerificationError as exc:
        raise HealthcheckError(f"{probe.url}: the served certificate does not verify: {exc.verify_message}") from None
    except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
        raise HealthcheckError(f"{probe.url}: {exc or type(exc).__name__}") from None


def _check(role: str, config: Path) -> tuple[bool, str]:
    if role == "agent":
        from agent.config import ConfigError, load_config

        try:
            cfg = load_config(config)
        except ConfigError as exc:
            raise HealthcheckError(f"bad configuration: {exc}") from None
        probe = agent_probe(cfg)
        return agent_verdict(*run_probe(probe))
    try:
        raw = yaml.safe_load(config.read_text())
    except OSError as exc:
        raise HealthcheckError(f"{config}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise HealthcheckError(f"{config}: not valid YAML: {exc}") from None
    probe = controlplane_probe(raw, base=config.parent)
    return controlplane_verdict(*run_probe(probe))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lockstep.healthcheck", description=__doc__.split("\n")[0])
    parser.add_argument("role", choices=["agent", "controlplane"])
    parser.add_argument("--config", type=Path, required=True, help="the configuration file the service runs with")
    args = parser.parse_args(argv)
    try:
        healthy, line = _check(args.role, args.config)
    except HealthcheckError as exc:
        healthy, line = False, str(exc)
    print(f"{'healthy' if healthy else 'unhealthy'}: {line}")
    return 0 if healthy else 1  # Docker: 0 healthy, 1 unhealthy (2 is reserved)


if __name__ == "__main__":
    sys.exit(main())

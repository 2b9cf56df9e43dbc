"""`python -m lockstep.stack init --root DIR`: the one-shot setup of the compose stack (docker/compose.yaml).

Owns what the stack's services read and nobody else writes: the internal PKI (CA, HAProxy's default and client
certificates, the demo backends' server certificate), the control plane's secrets (key-encryption key, operator API
token, one bearer token per node) and configuration, and each node's agent configuration. It writes them into the
named volumes the `init` service mounts under DIR, one directory per volume (`VOLUMES`); the other services mount
the same volumes at the paths below, which is what the configuration files name.

A second run keeps every secret and every certificate that is still good (it reissues a leaf that is missing, no
longer matches the CA or the configured names, or expires within `RENEW_WITHIN`) and rewrites the configuration
from the current environment; after changing a setting, `docker-compose up -d --force-recreate` runs it and
restarts every service on the new files (a plain `up` restarts only the services whose own definition changed).
Files are written atomically, 0600, directories 0700, all owned by the services' uid:gid (`--owner`, default
10001:10001 as in docker/python.Dockerfile); run as root, it chowns them, otherwise the owner must be the current
user.

Authentication between the agents and the control plane is configured in one place per side: `agent_config`
(the agent's `control_plane:` section) and `controlplane_config` (its `nodes:` list). Bearer tokens for now.

Settings come from LOCKSTEP_* environment variables (`settings_from_env` documents each); nothing else reads the
environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import ipaddress
import os
import secrets
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .pki import Issued, issue, make_ca

__all__ = ["StackError", "StackSettings", "agent_config", "controlplane_config", "init_stack", "main",
           "settings_from_env"]

# Where the services mount the volumes (docker/compose.yaml mounts them exactly here).
CONTROLPLANE_DIR = PurePosixPath("/var/lib/lockstep/controlplane")  # control plane: config, secrets, store.db
NODE_DIR = PurePosixPath("/var/lib/lockstep/node")  # HAProxy AND agent of one node: certs/, run/, state/
EDGE_PKI_DIR = PurePosixPath("/etc/lockstep/pki")  # HAProxy, read-only
BACKEND_PKI_DIR = PurePosixPath("/etc/lockstep/backend")  # demo backends, read-only
# The init service's own mounts: DIR/<volume>. "ca" holds the internal CA's key and is mounted nowhere else.
VOLUMES = ("ca", "controlplane", "edge-pki", "backend-pki")  # plus node1..nodeN

DEFAULT_OWNER = (10001, 10001)
RENEW_WITHIN = dt.timedelta(days=30)
CA_DAYS, LEAF_DAYS = 3650, 365
DEFAULT_CERT_NAME = "default.edge.lockstep.invalid"  # served when no SNI matches
EDGE_CLIENT_NAME = "edge.internal.lockstep.test"  # HAProxy's client certificate towards the backends


class StackError(Exception):
    """A setting is missing or malformed (the message names the variable), or a volume cannot be written."""


@dataclasses.dataclass(frozen=True, slots=True)
class StackSettings:
    node_ips: tuple[str, ...]  # one node per address: node1, node2, ...
    node_http_port: int
    node_https_port: int
    node_spoe_port: int  # each agent's SPOE listener, on its node's address
    node_status_port: int  # each agent's /healthz and /metrics, on its node's address
    controlplane_addr: str  # host:port the control plane listens on
    issuer_url: str  # CertCentral API base URL (the simulator's /services/v2)
    issuer_api_key: str = dataclasses.field(repr=False)
    backend_name: str  # the name on the demo backends' certificate, checked by HAProxy (verifyhost)
    api_token: str | None = dataclasses.field(default=None, repr=False)  # None: keep or generate

    def node_ids(self) -> list[str]:
        return [f"node{i}" for i in range(1, len(self.node_ips) + 1)]


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "") or str(default)
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise StackError(f"{name}: expected a TCP port, got {raw!r}")
    return int(raw)


def _ip(value: str, name: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise StackError(f"{name}: expected an IPv4 address, got {value!r}") from None


def _addr(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name, "") or default
    host, sep, port = raw.rpartition(":")
    if not sep:
        raise StackError(f"{name}: expected host:port, got {raw!r}")
    _ip(host, name)
    _port({name: port}, name, 1)
    return raw


def _token(value: str, name: str) -> str:
    if len(value) < 16 or any(c.isspace() for c in value):
        raise StackError(f"{name}: at least 16 characters, no whitespace")
    return value


def settings_from_env(env: Mapping[str, str]) -> StackSettings:
    """The stack's settings from these variables (defaults in brackets; docker/compose.yaml passes them all):

    LOCKSTEP_NODE_IPS [127.0.0.2,127.0.0.3,127.0.0.4], LOCKSTEP_NODE_HTTP_PORT [8080], LOCKSTEP_NODE_HTTPS_PORT
    [8443], LOCKSTEP_NODE_SPOE_PORT [12345], LOCKSTEP_NODE_STATUS_PORT [9100], LOCKSTEP_CONTROLPLANE_ADDR
    [127.0.0.1:8000], LOCKSTEP_ISSUER_URL [http://127.0.0.1:8099/services/v2], LOCKSTEP_ISSUER_API_KEY
    [sim-api-key], LOCKSTEP_BACKEND_NAME [app.internal.lockstep.test], LOCKSTEP_API_TOKEN [kept or generated].

    Raises:
        StackError: naming the variable.
    """
    ips = [p.strip() for p in (env.get("LOCKSTEP_NODE_IPS") or "127.0.0.2,127.0.0.3,127.0.0.4").split(",")]
    if not ips or not all(ips):
        raise StackError("LOCKSTEP_NODE_IPS: a comma-separated list of IPv4 addresses")
    node_ips = tuple(_ip(ip, "LOCKSTEP_NODE_IPS") for ip in ips)
    if len(set(node_ips)) != len(node_ips):
        raise StackError("LOCKSTEP_NODE_IPS: each node needs its own address (they share the ports)")
    issuer_url = env.get("LOCKSTEP_ISSUER_URL") or "http://127.0.0.1:8099/services/v2"
    if not issuer_url.startswith(("http://", "https://")):
        raise StackError(f"LOCKSTEP_ISSUER_URL: expected an http(s) URL, got {issuer_url!r}")
    backend_name = env.get("LOCKSTEP_BACKEND_NAME") or "app.internal.lockstep.test"
    if not backend_name.replace("-", "").replace(".", "").isalnum():
        raise StackError(f"LOCKSTEP_BACKEND_NAME: expected a DNS name, got {backend_name!r}")
    api_token = env.get("LOCKSTEP_API_TOKEN") or None
    return StackSettings(
        node_ips=node_ips,
        node_http_port=_port(env, "LOCKSTEP_NODE_HTTP_PORT", 8080),
        node_https_port=_port(env, "LOCKSTEP_NODE_HTTPS_PORT", 8443),
        node_spoe_port=_port(env, "LOCKSTEP_NODE_SPOE_PORT", 12345),
        node_status_port=_port(env, "LOCKSTEP_NODE_STATUS_PORT", 9100),
        controlplane_addr=_addr(env, "LOCKSTEP_CONTROLPLANE_ADDR", "127.0.0.1:8000"),
        issuer_url=issuer_url,
        issuer_api_key=env.get("LOCKSTEP_ISSUER_API_KEY") or "sim-api-key",
        backend_name=backend_name,
        api_token=_token(api_token, "LOCKSTEP_API_TOKEN") if api_token else None,
    )


# -- configuration files (pure) -----------------------------------------------------------------------------------


def controlplane_config(s: StackSettings) -> dict[str, Any]:
    """controlplane.yaml; secrets are files next to it (`*_file` keys are relative to the config file)."""
    return {
        "listen": s.controlplane_addr,
        "store_url": f"sqlite://{CONTROLPLANE_DIR}/store.db",
        "kek_file": "kek",
        "api_token_file": "api-token",
        "issuers": [{"name": "digicert", "kind": "digicert", "base_url": s.issuer_url, "api_key": s.issuer_api_key}],
        # Node authentication: one bearer token per node (agent_config sends it).
        "nodes": [{"id": node, "http": f"{ip}:{s.node_http_port}", "https": f"{ip}:{s.node_https_port}",
                   "bearer_token_file": f"node-tokens/{node}"}
                  for node, ip in zip(s.node_ids(), s.node_ips)],
        "pipeline": {"poll_s": 1.0, "node_wait_s": 0.5},
    }


def agent_config(s: StackSettings, index: int, *, bearer_token: str) -> dict[str, Any]:
    """agent.yaml of node `index` (0-based). Its HAProxy mounts the same volume at the same path (NODE_DIR), so the
    certificate file names the agent sends over the admin socket mean the same files on both sides."""
    ip = s.node_ips[index]
    return {
        "node": s.node_ids()[index],
        "state_dir": str(NODE_DIR / "state"),
        "spoe": {"host": ip, "port": s.node_spoe_port},
        # Authentication to the control plane: this node's bearer token (controlplane_config's `nodes:`).
        "control_plane": {"url": f"http://{s.controlplane_addr}", "bearer_token": bearer_token},
        "haproxy": {"admin_socket": str(NODE_DIR / "run" / "admin.sock"), "cert_dir": str(NODE_DIR / "certs"),
                    "https_addr": f"{ip}:{s.node_https_port}"},
        "status": {"host": ip, "port": s.node_status_port},
    }


# -- files ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Files:
    """Writes under `root` with the stack's ownership and modes; records what it changed."""

    root: Path
    owner: tuple[int, int]
    changed: list[str] = dataclasses.field(default_factory=list)

    def _own(self, fd_or_path: int | Path) -> None:
        if os.geteuid() == 0:
            if isinstance(fd_or_path, int):
                os.fchown(fd_or_path, *self.owner)
            else:
                os.chown(fd_or_path, *self.owner)

    def directory(self, rel: str) -> Path:
        path = self.root / rel
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
        self._own(path)
        return path

    def read(self, rel: str) -> bytes | None:
        try:
            return (self.root / rel).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, rel: str, data: bytes) -> None:
        """Atomic: a private temporary file in the same directory, fsync, rename, fsync the directory."""
        path = self.root / rel
        if self.read(rel) == data:
            self._own(path)
            os.chmod(path, 0o600)
            return
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            self._own(fd)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.changed.append(rel)

    def secret(self, rel: str, given: str | None = None) -> str:
        """`given` if set (and written), else the stored value, else a new random token."""
        stored = self.read(rel)
        value = given or (stored.decode().strip() if stored else "") or secrets.token_urlsafe(32)
        self.write(rel, value.encode() + b"\n")
        return value


# -- PKI ------------------------------------------------------------------------------------------------------------


def _load_issued(pem: bytes | None) -> Issued | None:
    """Certificate (first in the file) and key from a bundle; None if missing or unreadable."""
    if not pem:
        return None
    try:
        certs = x509.load_pem_x509_certificates(pem)
        key = serialization.load_pem_private_key(pem[pem.index(b"-----BEGIN PRIVATE KEY-----"):], password=None)
    except ValueError:
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        return None
    return Issued(certs[0], key, tuple(certs[1:]))


def _still_good(leaf: Issued | None, ca: Issued, names: Sequence[str], now: dt.datetime) -> bool:
    if leaf is None or leaf.cert.issuer != ca.cert.subject or leaf.cert.not_valid_after_utc - RENEW_WITHIN < now:
        return False
    try:
        leaf.cert.verify_directly_issued_by(ca.cert)
        sans = leaf.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return sorted(sans.get_values_for_type(x509.DNSName)) == sorted(names)


def _ca(files: _Files, now: dt.datetime) -> Issued:
    ca = _load_issued(files.read("ca/ca.pem"))
    if ca is None or ca.cert.not_valid_after_utc - RENEW_WITHIN < now:
        ca = make_ca("Lockstep Stack Internal CA", now=now, days=CA_DAYS)
        files.write("ca/ca.pem", (ca.cert_pem + ca.key_pem).encode())
    return ca


def _leaf(files: _Files, rel: str, ca: Issued, names: Sequence[str], now: dt.datetime, *,
          client: bool = False, server: bool = True) -> None:
    if not _still_good(_load_issued(files.read(rel)), ca, names, now):
        leaf = issue(ca, list(names), now=now, days=LEAF_DAYS, client=client, server=server)
        files.write(rel, leaf.bundle_pem.encode())


# -- the whole setup ------------------------------------------------------------------------------------------------


def init_stack(root: Path, s: StackSettings, *, now: dt.datetime,
               owner: tuple[int, int] = DEFAULT_OWNER) -> list[str]:
    """Brings the volumes under `root` up to date with `s`; returns the files it wrote (relative to `root`).

    Raises:
        StackError: a volume is not mounted (not a directory) or cannot be written.
    """
    if os.geteuid() != 0 and owner != (os.getuid(), os.getgid()):
        raise StackError(f"owner {owner[0]}:{owner[1]} needs root (running as {os.getuid()}:{os.getgid()})")
    for volume in (*VOLUMES, *s.node_ids()):
        if not (root / volume).is_dir():
            raise StackError(f"{root / volume}: not a directory (is the {volume} volume mounted?)")
    files = _Files(root, owner)
    try:
        for volume in (*VOLUMES, *s.node_ids()):
            files.directory(volume)
        files.directory("controlplane/node-tokens")
        ca = _ca(files, now)
        for pki in ("edge-pki", "backend-pki"):
            files.write(f"{pki}/internal-ca.pem", ca.cert_pem.encode())
        _leaf(files, "edge-pki/default.pem", ca, [DEFAULT_CERT_NAME], now)
        _leaf(files, "edge-pki/edge-client.pem", ca, [EDGE_CLIENT_NAME], now, client=True, server=False)
        _leaf(files, "backend-pki/backend.pem", ca, [s.backend_name], now)

        files.secret("controlplane/kek", _kek_if_missing(files))
        files.secret("controlplane/api-token", s.api_token)
        tokens = [files.secret(f"controlplane/node-tokens/{node}") for node in s.node_ids()]
        files.write("controlplane/controlplane.yaml", _yaml(controlplane_config(s)))
        for i, node in enumerate(s.node_ids()):
            for sub in ("certs", "run", "state"):  # run/ holds HAProxy's admin socket: 0700, the services' uid
                files.directory(f"{node}/{sub}")
            files.write(f"{node}/agent.yaml", _yaml(agent_config(s, i, bearer_token=tokens[i])))
    except OSError as exc:
        raise StackError(f"cannot write {exc.filename or root}: {exc.strerror}") from exc
    return files.changed


def _kek_if_missing(files: _Files) -> str | None:
    """A new KEK only when none is stored: regenerating it would make every stored key unreadable."""
    if files.read("controlplane/kek"):
        return None
    from controlplane.store import generate_kek

    return generate_kek()


def _yaml(data: dict[str, Any]) -> bytes:
    return ("# Written by `python -m lockstep.stack init` (the compose stack's init service); edits are replaced.\n"
            + str(yaml.safe_dump(data, sort_keys=False))).encode()


def _owner(text: str) -> tuple[int, int]:
    uid, _, gid = text.partition(":")
    if not uid.isdigit() or not (gid or uid).isdigit():
        raise argparse.ArgumentTypeError(f"--owner {text!r}: use UID:GID")
    return int(uid), int(gid or uid)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lockstep.stack", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    p_init = sub.add_parser("init", help="write the stack's PKI, secrets and configuration into its volumes")
    p_init.add_argument("--root", type=Path, required=True, help="where the volumes are mounted, one per directory")
    p_init.add_argument("--owner", type=_owner, default=DEFAULT_OWNER, help="UID:GID of the services (10001:10001)")
    args = parser.parse_args(argv)
    try:
        settings = settings_from_env(os.environ if env is None else env)
        changed = init_stack(args.root, settings, now=dt.datetime.now(dt.timezone.utc), owner=args.owner)
    except StackError as exc:
        print(f"lockstep stack init: {exc}", file=sys.stderr)
        return 2
    # File names only: the values are secrets.
    print(f"lockstep stack init: {len(changed)} file(s) written" + (f": {', '.join(changed)}" if changed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m lockstep.stack init --root DIR`: the one-shot setup of the compose stack (docker/compose.yaml).

Owns what the stack's services read and nobody else writes: the control plane's secrets (key-encryption key,
operator API token) and configuration, one one-time bootstrap token per node and per demo backend, each node's agent
configuration, and HAProxy's default certificate. It writes them into the named volumes the `init` service mounts
under DIR, one directory per volume (`VOLUMES`); the other services mount the same volumes at the paths below, which
is what the configuration files name.

The internal PKI is the control plane's (docs/controlplane.md, "Internal PKI and node identity"): init only creates
its CA in the control plane's store (sealed under the KEK, exactly what `lockstep controlplane ca` does) to learn the
CA's SHA-256 pin, and hands each agent and backend its pin and its bootstrap token. Each agent then enrolls (its
node certificate), obtains HAProxy's client certificate and the CA bundle and writes them to its node volume, where
HAProxy loads them; each backend enrolls for its server certificate. Everything is renewed by its owner from then
on. The default certificate on HAProxy's bind is not part of it (it is only served for unknown SNI).

A second run keeps every secret (a bootstrap token already redeemed stays spent: the control plane never registers
a used token again) and a default certificate that is still good, and rewrites the configuration from the current
environment; after changing a setting, `docker-compose up -d --force-recreate` runs it and restarts every service
on the new files (a plain `up` restarts only the services whose own definition changed). Files are written
atomically, 0600, directories 0700, all owned by the services' uid:gid (`--owner`, default 10001:10001 as in
docker/python.Dockerfile); run as root, it chowns them, otherwise the owner must be the current user.

How nodes and backends authenticate is configured in one place per side: `agent_config` (the agent's
`control_plane:` section), `backend_command_files` (the backends' token and pin), and `controlplane_config` (its
`nodes:` and `backends:` lists).

Settings come from LOCKSTEP_* environment variables (`settings_from_env` documents each); nothing else reads the
environment.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import ipaddress
import os
import secrets
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .pki import Issued, issue, make_ca

__all__ = ["StackError", "StackSettings", "agent_config", "backend_command_files", "controlplane_config", "init_stack",
           "internal_ca_pin", "main", "settings_from_env"]

# Where the services mount the volumes (docker/compose.yaml mounts them exactly here).
CONTROLPLANE_DIR = PurePosixPath("/var/lib/lockstep/controlplane")  # control plane: config, secrets, store.db
NODE_DIR = PurePosixPath("/var/lib/lockstep/node")  # HAProxy AND agent of one node: certs/, pki/, run/, state/
EDGE_DEFAULT_DIR = PurePosixPath("/etc/lockstep/default")  # HAProxy, read-only: the default certificate
BACKEND_DIR = PurePosixPath("/var/lib/lockstep/backend")  # one demo backend: its token, pin and identity/
BACKEND_IDS = ("backend1", "backend2")  # the compose services, one volume each
# The init service's own mounts: DIR/<volume>.
VOLUMES = ("controlplane", "edge-default", *BACKEND_IDS)  # plus node1..nodeN

DEFAULT_OWNER = (10001, 10001)
RENEW_WITHIN = dt.timedelta(days=30)
DEFAULT_CERT_DAYS = 365
DEFAULT_CERT_NAME = "default.edge.lockstep.invalid"  # served when no SNI matches
# Files the agent of a node writes for its HAProxy (both mount the node volume at NODE_DIR): HAProxy's client
# certificate towards the backends (profile edge-client) and the internal CA bundle it verifies them with.
EDGE_CLIENT_CERT = NODE_DIR / "pki" / "edge-client.pem"
EDGE_CA = NODE_DIR / "pki" / "internal-ca.pem"
DAY_S = 86_400


class StackError(Exception):
    """A setting is missing or malformed (the message names the variable), or a volume cannot be written."""


@dataclasses.dataclass(frozen=True, slots=True)
class StackSettings:
    node_ips: tuple[str, ...]  # one node per address: node1, node2, ...
    node_http_port: int
    node_https_port: int
    node_spoe_port: int  # each agent's SPOE listener, on its node's address
    node_status_port: int  # each agent's /healthz and /metrics, on its node's address
    controlplane_addr: str  # host:port the control plane listens on (HTTPS, certificate of its internal CA)
    issuer_url: str  # CertCentral API base URL (the simulator's /services/v2)
    issuer_api_key: str = dataclasses.field(repr=False)
    backend_name: str  # the name on the demo backends' certificates, checked by HAProxy (verifyhost)
    api_token: str | None = dataclasses.field(default=None, repr=False)  # None: keep or generate
    # Internal PKI lifetimes (seconds). Each certificate is renewed by its holder after two thirds of it.
    node_validity_s: int = DAY_S
    edge_client_validity_s: int = DAY_S
    backend_validity_s: int = 7 * DAY_S

    def node_ids(self) -> list[str]:
        return [f"node{i}" for i in range(1, len(self.node_ips) + 1)]

    @property
    def controlplane_url(self) -> str:
        return f"https://{self.controlplane_addr}"


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


def _lifetime(env: Mapping[str, str], name: str, default: int) -> int:
    # At least 10 s: below that, renewal (after two thirds) competes with the round trip that issues it.
    raw = env.get(name, "") or str(default)
    if not raw.isdigit() or not 10 <= int(raw) <= 3650 * DAY_S:
        raise StackError(f"{name}: expected whole seconds between 10 and 10 years, got {raw!r}")
    return int(raw)


def settings_from_env(env: Mapping[str, str]) -> StackSettings:
    """The stack's settings from these variables (defaults in brackets; docker/compose.yaml passes them all):

    LOCKSTEP_NODE_IPS [127.0.0.2,127.0.0.3,127.0.0.4], LOCKSTEP_NODE_HTTP_PORT [8080], LOCKSTEP_NODE_HTTPS_PORT
    [8443], LOCKSTEP_NODE_SPOE_PORT [12345], LOCKSTEP_NODE_STATUS_PORT [9100], LOCKSTEP_CONTROLPLANE_ADDR
    [127.0.0.1:8000], LOCKSTEP_ISSUER_URL [http://127.0.0.1:8099/services/v2], LOCKSTEP_ISSUER_API_KEY
    [sim-api-key], LOCKSTEP_BACKEND_NAME [app.internal.lockstep.test], LOCKSTEP_API_TOKEN [kept or generated];
    internal PKI lifetimes in seconds: LOCKSTEP_PKI_NODE_VALIDITY_S [86400], LOCKSTEP_PKI_EDGE_CLIENT_VALIDITY_S
    [86400], LOCKSTEP_PKI_BACKEND_VALIDITY_S [604800].

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
        node_validity_s=_lifetime(env, "LOCKSTEP_PKI_NODE_VALIDITY_S", DAY_S),
        edge_client_validity_s=_lifetime(env, "LOCKSTEP_PKI_EDGE_CLIENT_VALIDITY_S", DAY_S),
        backend_validity_s=_lifetime(env, "LOCKSTEP_PKI_BACKEND_VALIDITY_S", 7 * DAY_S),
    )


# -- configuration files (pure) -----------------------------------------------------------------------------------


def controlplane_config(s: StackSettings) -> dict[str, Any]:
    """controlplane.yaml; secrets are files next to it (`*_file` keys are relative to the config file)."""
    host = s.controlplane_addr.rpartition(":")[0]
    return {
        "listen": s.controlplane_addr,
        "store_url": f"sqlite://{CONTROLPLANE_DIR}/store.db",
        "kek_file": "kek",
        "api_token_file": "api-token",
        # HTTPS with a certificate of its own internal CA, for the address the agents and backends dial.
        "tls": "internal",
        "tls_names": list(dict.fromkeys([host, "localhost"])),
        "pki": {"node_validity_s": s.node_validity_s, "edge_client_validity_s": s.edge_client_validity_s,
                "backend_validity_s": s.backend_validity_s},
        "issuers": [{"name": "digicert", "kind": "digicert", "base_url": s.issuer_url, "api_key": s.issuer_api_key}],
        # Node and backend authentication: registered here with a one-time bootstrap token each (agent_config and
        # the backends' token files hold the same tokens); they enroll with it and use certificates from then on.
        "nodes": [{"id": node, "http": f"{ip}:{s.node_http_port}", "https": f"{ip}:{s.node_https_port}",
                   "bootstrap_token_file": f"bootstrap-tokens/{node}"}
                  for node, ip in zip(s.node_ids(), s.node_ips)],
        "backends": [{"id": backend, "names": [s.backend_name], "bootstrap_token_file": f"bootstrap-tokens/{backend}"}
                     for backend in BACKEND_IDS],
        "pipeline": {"poll_s": 1.0, "node_wait_s": 0.5},
    }


def agent_config(s: StackSettings, index: int, *, ca_sha256: str) -> dict[str, Any]:
    """agent.yaml of node `index` (0-based). Its HAProxy mounts the same volume at the same path (NODE_DIR), so the
    certificate file names the agent sends over the admin socket, and the two edge files it writes, mean the same
    files on both sides."""
    ip = s.node_ips[index]
    return {
        "node": s.node_ids()[index],
        "state_dir": str(NODE_DIR / "state"),
        "spoe": {"host": ip, "port": s.node_spoe_port},
        # Authentication to the control plane: enroll once with this node's bootstrap token (controlplane_config's
        # `nodes:`), trusting only the internal CA with this pin; the node certificate from then on.
        "control_plane": {"url": s.controlplane_url, "bootstrap_token_file": str(NODE_DIR / "bootstrap-token"),
                          "ca_sha256": ca_sha256},
        "haproxy": {"admin_socket": str(NODE_DIR / "run" / "admin.sock"), "cert_dir": str(NODE_DIR / "certs"),
                    "https_addr": f"{ip}:{s.node_https_port}",
                    "backend_client_cert": str(EDGE_CLIENT_CERT), "backend_ca": str(EDGE_CA)},
        "status": {"host": ip, "port": s.node_status_port},
    }


def backend_command_files(ca_sha256: str, token: str) -> dict[str, bytes]:
    """What a demo backend's command reads from its volume (BACKEND_DIR): `lockstep demo-backend --enroll URL
    --token-file BACKEND_DIR/bootstrap-token --ca-sha256 "$(cat BACKEND_DIR/ca-sha256)" --state-dir
    BACKEND_DIR/identity` (docker/compose.yaml)."""
    return {"bootstrap-token": token.encode() + b"\n", "ca-sha256": ca_sha256.encode() + b"\n"}


# -- files ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Files:
    """Writes under `root` with the stack's ownership and modes; records what it changed."""

    root: Path
    owner: tuple[int, int]
    changed: list[str] = dataclasses.field(default_factory=list)

    def own(self, fd_or_path: int | Path) -> None:
        if os.geteuid() == 0:
            if isinstance(fd_or_path, int):
                os.fchown(fd_or_path, *self.owner)
            else:
                os.chown(fd_or_path, *self.owner)

    def directory(self, rel: str) -> Path:
        path = self.root / rel
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
        self.own(path)
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
            self.own(path)
            os.chmod(path, 0o600)
            return
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            self.own(fd)
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

    def secret(self, rel: str, given: str | None = None, *,
               new: Callable[[], str] = lambda: secrets.token_urlsafe(32)) -> str:
        """`given` if set (and written), else the stored value, else `new()`."""
        stored = self.read(rel)
        value = given or (stored.decode().strip() if stored else "") or new()
        self.write(rel, value.encode() + b"\n")
        return value


# -- HAProxy's default certificate ----------------------------------------------------------------------------------


def _default_cert_good(pem: bytes | None, now: dt.datetime) -> bool:
    """The stored default certificate parses, has its key, names DEFAULT_CERT_NAME and is not about to expire."""
    if not pem:
        return False
    try:
        cert = x509.load_pem_x509_certificates(pem)[0]
        key = serialization.load_pem_private_key(pem[pem.index(b"-----BEGIN PRIVATE KEY-----"):], password=None)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, x509.ExtensionNotFound):
        return False
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        return False
    return (key.public_key() == cert.public_key() and sans.get_values_for_type(x509.DNSName) == [DEFAULT_CERT_NAME]
            and cert.not_valid_after_utc - RENEW_WITHIN > now)


def _default_cert(now: dt.datetime) -> Issued:
    """Served only when no SNI matches, so nobody is meant to trust it: its one-off CA's key is thrown away."""
    throwaway = make_ca("Lockstep Stack Default Certificate", now=now, days=DEFAULT_CERT_DAYS + 1)
    return issue(throwaway, [DEFAULT_CERT_NAME], now=now, days=DEFAULT_CERT_DAYS)


# -- the internal CA's pin --------------------------------------------------------------------------------------------


def internal_ca_pin(store_db: Path, kek_file: Path, *, now: dt.datetime) -> str:
    """The SHA-256 pin of the control plane's internal CA in the SQLite store `store_db`, creating the store and
    the CA (its key sealed under the KEK) if they do not exist yet: `lockstep controlplane ca --pin`, on the store
    as init mounts it (the configuration's store_url is the control plane container's path)."""
    from cryptography.hazmat.primitives import hashes

    from controlplane.pki_api import InternalPki
    from controlplane.store import load_kek_file, open_store

    async def pin() -> str:
        async with await open_store(f"sqlite://{store_db}", kek=load_kek_file(kek_file)) as store:
            ca = await InternalPki(store, now=lambda: now).ca()
        return "sha256:" + ca.cert.fingerprint(hashes.SHA256()).hex()

    return asyncio.run(pin())


# -- the whole setup ------------------------------------------------------------------------------------------------


def init_stack(root: Path, s: StackSettings, *, now: dt.datetime,
               owner: tuple[int, int] = DEFAULT_OWNER) -> list[str]:
    """Brings the volumes under `root` up to date with `s`; returns the files it wrote (relative to `root`).

    Raises:
        StackError: a volume is not mounted (not a directory) or cannot be written, or the control plane's store
            cannot be opened (another KEK, say).
    """
    from controlplane.pki_api import new_bootstrap_token
    from controlplane.store import StoreError

    if os.geteuid() != 0 and owner != (os.getuid(), os.getgid()):
        raise StackError(f"owner {owner[0]}:{owner[1]} needs root (running as {os.getuid()}:{os.getgid()})")
    for volume in (*VOLUMES, *s.node_ids()):
        if not (root / volume).is_dir():
            raise StackError(f"{root / volume}: not a directory (is the {volume} volume mounted?)")
    files = _Files(root, owner)
    try:
        for volume in (*VOLUMES, *s.node_ids()):
            files.directory(volume)
        files.directory("controlplane/bootstrap-tokens")
        if not _default_cert_good(files.read("edge-default/default.pem"), now):
            files.write("edge-default/default.pem", _default_cert(now).bundle_pem.encode())

        files.secret("controlplane/kek", _kek_if_missing(files))
        files.secret("controlplane/api-token", s.api_token)
        # The bootstrap tokens: the control plane's copy is the reference, the node's or backend's is the same value.
        tokens = {who: files.secret(f"controlplane/bootstrap-tokens/{who}", new=new_bootstrap_token)
                  for who in (*s.node_ids(), *BACKEND_IDS)}
        files.write("controlplane/controlplane.yaml", _yaml(controlplane_config(s)))
        store_db = root / "controlplane" / "store.db"
        existed = store_db.exists()
        try:
            pin = internal_ca_pin(store_db, root / "controlplane" / "kek", now=now)
        except StoreError as exc:
            raise StackError(f"the control plane's store {store_db}: {exc}") from exc
        for path in store_db.parent.glob("store.db*"):  # made by us as root: the control plane runs as `owner`
            files.own(path)
        if not existed:
            files.changed.append("controlplane/store.db")
        for i, node in enumerate(s.node_ids()):
            for sub in ("certs", "pki", "run", "state"):  # run/ holds HAProxy's admin socket: 0700, the services' uid
                files.directory(f"{node}/{sub}")
            files.write(f"{node}/bootstrap-token", tokens[node].encode() + b"\n")
            files.write(f"{node}/agent.yaml", _yaml(agent_config(s, i, ca_sha256=pin)))
        for backend in BACKEND_IDS:
            for name, data in backend_command_files(pin, tokens[backend]).items():
                files.write(f"{backend}/{name}", data)
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
    p_init = sub.add_parser("init", help="write the stack's secrets, bootstrap tokens and configuration into its "
                                         "volumes")
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

"""The internal PKI against a real control-plane process serving HTTPS with its own CA (`tls: internal`):
enrollment with one-time bootstrap tokens, mTLS on the sync API, refusals (no certificate, foreign CA, self-signed
certificate with the node's name, HAProxy's certificate), removal, the CA pin, backends and HAProxy's client
certificate, and rotation of the node and the control-plane certificates under a running long-poll loop."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import shutil
import socket
import ssl
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.config import parse_config as parse_agent_config
from agent.identity import edge_client_identity, node_identity
from agent.sync.client import ControlPlaneClient, HttpClientSlot
from agent.sync.errors import Unauthorized
from agent.sync.loop import SyncLoop, SyncSettings
from agent.sync.model import ChangeBatch, Snapshot
from controlplane import pki
from controlplane.store import load_kek_file, open_store
from controlplane.sync.state import Token
from lockstep.enroll import IdentityManager, Removed, TrustError
from tests.harness.cpproc import API_TOKEN, ControlPlaneProcess
from tests.harness.net import free_port

FILEAUTH = "/.well-known/pki-validation/fileauth.txt"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _control_plane(root: Path, **extra: object) -> ControlPlaneProcess:
    # No domain is ever added here, so the issuer is never called.
    return ControlPlaneProcess(root, issuer_url=f"http://127.0.0.1:{free_port()}", issuer_api_key="unused", nodes=[],
                               tls_internal=True, extra=dict(extra))


@pytest.fixture(scope="module")
def cp(short_tmp: Path) -> Iterator[ControlPlaneProcess]:
    root = Path(tempfile.mkdtemp(prefix="pki-", dir=short_tmp))
    proc = _control_plane(root / "cp").start()
    yield proc
    proc.stop()


def _add_node(cp: ControlPlaneProcess, node_id: str, ttl_s: float = 600) -> str:
    status, body = cp.api("POST", "/v1/nodes", {"id": node_id, "token_ttl_s": ttl_s})
    assert status == 201, body
    return str(body["bootstrap_token"])


def _manager(cp: ControlPlaneProcess, directory: Path, token: str | None, **kw: object) -> IdentityManager:
    args: dict[str, object] = {"ca_file": cp.ca_file, **kw}
    if "ca_sha256" in kw:
        args.pop("ca_file")
    return IdentityManager(url=cp.url, directory=directory, token=token, now=_utcnow, rand=random.Random(7),
                           **args)  # type: ignore[arg-type]


def _csr(key: ec.EllipticCurvePrivateKey) -> str:
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "whoever")]))
            .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())


def _ctx(cp: ControlPlaneProcess, client_cert: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cp.ca_file))
    if client_cert is not None:
        ctx.load_cert_chain(str(client_cert))
    return ctx


def _http(cp: ControlPlaneProcess, client_cert: Path | None = None, **kw: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=cp.url, verify=_ctx(cp, client_cert), timeout=10, **kw)  # type: ignore[arg-type]


def _node_record(cp: ControlPlaneProcess, node_id: str) -> dict[str, object]:
    status, body = cp.api("GET", "/v1/nodes")
    assert status == 200
    return next(n for n in body["nodes"] if n["id"] == node_id)


def _bundle(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path


async def test_enroll_then_sync_over_mtls(cp: ControlPlaneProcess, tmp_path: Path) -> None:
    token = _add_node(cp, "edge-1")
    assert _node_record(cp, "edge-1")["pending_tokens"] == 1
    identity = _manager(cp, tmp_path / "identity", token)
    got = await identity.start()
    assert (got.kind, got.id) == ("node", "edge-1") and identity.renewals == 1
    cert = x509.load_pem_x509_certificate(identity.cert_file.read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "edge-1"
    assert [str(n.value) for n in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value] == [
        "urn:lockstep:node:edge-1"]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    ca = x509.load_pem_x509_certificate(cp.ca_file.read_bytes())
    cert.verify_directly_issued_by(ca)
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Lockstep Internal CA"
    # The key was made here and stays here: 0600 in a 0700 directory, and nowhere in the control plane's files.
    assert stat.S_IMODE(identity.cert_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(identity.directory.stat().st_mode) == 0o700
    key_body = identity.cert_file.read_text().split("-----BEGIN PRIVATE KEY-----")[1].split("-----END")[0]
    key_line = key_body.replace("\n", "")[:40]
    for path in cp.workdir.iterdir():
        if path.is_file():
            assert key_line.encode() not in path.read_bytes(), path
    async with _http(cp, identity.cert_file) as http:
        snapshot = await ControlPlaneClient(http).snapshot()
        assert snapshot.revision >= 0
    record = _node_record(cp, "edge-1")
    assert record["enrolled"] and record["pending_tokens"] == 0 and record["credential"] == "pki"
    # Restarted: the identity on disk is loaded, nothing is asked of the control plane (the token is spent).
    again = _manager(cp, tmp_path / "identity", token)
    assert (await again.start()).fingerprint == got.fingerprint and again.renewals == 0


async def test_token_is_one_time_and_refusals_issue_nothing(cp: ControlPlaneProcess) -> None:
    token = _add_node(cp, "edge-2")
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    async with _http(cp) as http:
        # A bad CSR is refused before the token is looked at: the token still works afterwards.
        bad = await http.post("/v1/pki/enroll", json={"token": token, "csr": "not a csr"})
        assert bad.status_code == 400 and bad.json()["error"] == "bad_csr"
        wrong = await http.post("/v1/pki/enroll", json={"token": "lsbt_" + "x" * 43, "csr": _csr(key)})
        assert wrong.status_code == 401 and wrong.json()["error"] == "unknown_token"
        first = await http.post("/v1/pki/enroll", json={"token": token, "csr": _csr(key)})
        assert first.status_code == 201, first.text
        body = first.json()
        assert body["identity"] == {"kind": "node", "id": "edge-2"} and body["ca"] == cp.ca_file.read_text()
        assert dt.datetime.fromisoformat(body["not_after"]) > dt.datetime.fromisoformat(body["renew_after"])
        second = await http.post("/v1/pki/enroll", json={"token": token, "csr": _csr(other)})
        assert second.status_code == 401 and second.json()["error"] == "token_used"
        # The same key again (a lost answer): the same certificate, not a second one.
        replay = await http.post("/v1/pki/enroll", json={"token": token, "csr": _csr(key)})
        assert replay.status_code == 201 and replay.json()["certificate"] == body["certificate"]

        expiring = _add_node(cp, "edge-3", ttl_s=1)
        await asyncio.sleep(1.5)
        late = await http.post("/v1/pki/enroll", json={"token": expiring, "csr": _csr(other)})
        assert late.status_code == 401 and late.json()["error"] == "token_expired"

        # Two requesters racing with one token: exactly one certificate.
        racing = _add_node(cp, "edge-4")
        answers = await asyncio.gather(*(
            http.post("/v1/pki/enroll", json={"token": racing, "csr": _csr(ec.generate_private_key(ec.SECP256R1()))})
            for _ in range(6)))
    assert sorted(a.status_code for a in answers) == [201] + [401] * 5
    assert len(_node_record(cp, "edge-2")["certificates"]) == 1  # type: ignore[arg-type]
    assert _node_record(cp, "edge-3")["certificates"] == []
    assert len(_node_record(cp, "edge-4")["certificates"]) == 1  # type: ignore[arg-type]


async def test_clients_without_a_registered_certificate_are_refused(cp: ControlPlaneProcess, tmp_path: Path) -> None:
    token = _add_node(cp, "edge-5")
    # The agent's own wiring (agent/identity.py) from an agent configuration.
    agent_cfg = parse_agent_config({"node": "edge-5", "state_dir": str(tmp_path / "state"), "control_plane": {
        "url": cp.url, "bootstrap_token": token, "ca_file": str(cp.ca_file)}})
    node = node_identity(agent_cfg, now=_utcnow, rand=random.Random(3))
    assert node is not None
    await node.start()
    assert node.cert_file == tmp_path / "state" / "identity" / "identity.pem"
    now = _utcnow()
    key = ec.generate_private_key(ec.SECP256R1())
    # A certificate of another CA, for the same node, with every field right.
    foreign_ca = pki.create_ca(now=now)
    foreign = pki.issue(foreign_ca, key.public_key(), profile=pki.Profile.NODE, identity_id="edge-5", now=now,
                        validity=pki.Validity())
    foreign_file = _bundle(tmp_path / "foreign.pem", foreign.cert, key)
    # Self-signed, carrying the node's name.
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-5")])
    self_signed = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
                   .not_valid_after(now + dt.timedelta(hours=1))
                   .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(
                       "urn:lockstep:node:edge-5")]), critical=False)
                   .sign(key, hashes.SHA256()))
    self_file = _bundle(tmp_path / "self.pem", self_signed, key)
    for cert_file in (foreign_file, self_file):
        async with _http(cp, cert_file) as http:
            with pytest.raises(httpx.TransportError):  # the handshake itself fails: not our CA
                await http.get("/v1/sync/snapshot")
    async with _http(cp) as http:  # no certificate at all
        with pytest.raises(Unauthorized) as info:
            await ControlPlaneClient(http).snapshot()
        assert info.value.status == 401
        renew = await http.post("/v1/pki/renew", json={"csr": _csr(key)})
        assert renew.status_code == 401 and renew.json()["error"] == "unauthenticated"
        edge = await http.post("/v1/pki/edge-client", json={"csr": _csr(key)})
        assert edge.status_code == 401
    async with _http(cp, headers={"Authorization": f"Bearer {API_TOKEN}"}) as http:  # the operator's token
        with pytest.raises(Unauthorized):
            await ControlPlaneClient(http).snapshot()
    # HAProxy's client certificate is the CA's and registered, but it is not a node's credential.
    edge_client = edge_client_identity(agent_cfg, node, now=_utcnow, rand=random.Random(4))
    await edge_client.start()
    assert edge_client.cert_file == tmp_path / "state" / "edge-client" / "edge-client.pem"
    async with _http(cp, edge_client.cert_file) as http:
        with pytest.raises(Unauthorized) as info:
            await ControlPlaneClient(http).snapshot()
        assert info.value.status == 403 and "not_a_node" in str(info.value)
        renew = await http.post("/v1/pki/renew", json={"csr": _csr(key)})
        assert renew.status_code == 403 and renew.json()["error"] == "wrong_certificate"
    # The node's own certificate works, and nothing was issued for the refused attempts.
    async with _http(cp, node.cert_file) as http:
        await ControlPlaneClient(http).snapshot()
    profiles = sorted(c["profile"] for c in _node_record(cp, "edge-5")["certificates"])  # type: ignore[union-attr]
    assert profiles == ["edge-client", "node"]


async def test_pki_endpoints_over_plain_http_are_refused(tmp_path: Path) -> None:
    """A control plane without TLS never takes a token or a CSR in the clear."""
    proc = ControlPlaneProcess(tmp_path / "cp", issuer_url=f"http://127.0.0.1:{free_port()}", issuer_api_key="x",
                               nodes=[]).start()
    try:
        status, body = proc.api("POST", "/v1/nodes", {"id": "edge-1"})
        assert status == 201
        async with httpx.AsyncClient(base_url=proc.url, timeout=10) as http:
            resp = await http.post("/v1/pki/enroll", json={"token": body["bootstrap_token"],
                                                           "csr": _csr(ec.generate_private_key(ec.SECP256R1()))})
            assert resp.status_code == 400 and resp.json()["error"] == "tls_required"
            assert "BEGIN CERTIFICATE" in (await http.get("/v1/pki/ca.pem")).text
        assert _node_record(proc, "edge-1")["pending_tokens"] == 1
    finally:
        proc.stop()


async def test_removed_node_is_refused_at_once(cp: ControlPlaneProcess, tmp_path: Path) -> None:
    token = _add_node(cp, "edge-6")
    node = _manager(cp, tmp_path / "node", token)
    await node.start()
    async with _http(cp, node.cert_file) as http:
        client = ControlPlaneClient(http)
        await client.snapshot()
        out = cp.cli("nodes", "remove", "edge-6")
        assert "removed" in out.stdout
        # The same keep-alive connection, a certificate valid for hours: refused on the very next request.
        with pytest.raises(Unauthorized) as info:
            await client.snapshot()
        assert info.value.status == 403 and "node_removed" in str(info.value)
    with pytest.raises(Removed) as removed:
        await node.renew()
    assert removed.value.wire_reason == "node_removed"
    edge = _manager(cp, tmp_path / "edge", None, name="edge-client", issue_path="/v1/pki/edge-client",
                    renew_path="/v1/pki/edge-client", authenticate_with=node)
    with pytest.raises(Removed):
        await edge.start()
    # Nothing was deleted locally, and a new token cannot be made for a removed node.
    assert node.cert_file.exists()
    status, body = cp.api("POST", "/v1/nodes/edge-6/token", {})
    assert status == 409 and body["error"] == "node_removed"
    assert cp.api("DELETE", "/v1/nodes/nope")[0] == 404


async def test_ca_pin(cp: ControlPlaneProcess, tmp_path: Path) -> None:
    ca = x509.load_pem_x509_certificate(cp.ca_file.read_bytes())
    pin = ca.fingerprint(hashes.SHA256()).hex()
    token = _add_node(cp, "edge-7")
    wrong = _manager(cp, tmp_path / "wrong", token, ca_sha256="sha256:" + "ab" * 32)
    with pytest.raises(TrustError, match="does not match ca_sha256"):
        await wrong.start()
    assert not (tmp_path / "wrong" / "identity.pem").exists()
    assert _node_record(cp, "edge-7")["pending_tokens"] == 1  # the token was never sent
    pinned = _manager(cp, tmp_path / "pinned", token, ca_sha256=":".join(f"{b:02X}" for b in bytes.fromhex(pin)))
    got = await pinned.start()
    assert got.id == "edge-7" and (tmp_path / "pinned" / "ca.pem").read_text() == cp.ca_file.read_text()
    async with httpx.AsyncClient(base_url=cp.url, verify=pinned.client_ssl_context(), timeout=10) as http:
        await ControlPlaneClient(http).snapshot()


async def test_cli_backends_and_the_edge_client_certificate(cp: ControlPlaneProcess, tmp_path: Path) -> None:
    out = cp.cli("nodes", "add", "edge-8", "--token-ttl", "10m")
    node_token = out.stdout.strip()
    assert node_token.startswith("lsbt_") and "shown once" in out.stderr
    listing = cp.cli("nodes", "list").stdout
    assert "edge-8" in listing and "awaiting enrollment" in listing
    duplicate = cp.cli("nodes", "add", "edge-8", check=False)
    assert duplicate.returncode == 1 and "exists" in duplicate.stderr
    spare = json.loads(cp.cli("nodes", "token", "edge-8", "--token-ttl", "90s", "--json").stdout)
    assert spare["bootstrap_token"] != node_token and spare["kind"] == "node"
    assert _node_record(cp, "edge-8")["pending_tokens"] == 2
    assert cp.cli("nodes", "add", "edge-x", "--token-ttl", "soon", check=False).returncode == 2
    out = cp.cli("backends", "add", "app", "--name", "app.internal", "--name", "127.0.0.1", "--json")
    backend_token = json.loads(out.stdout)["bootstrap_token"]

    node = _manager(cp, tmp_path / "node", node_token)
    await node.start()
    edge = _manager(cp, tmp_path / "edge", None, name="edge-client", issue_path="/v1/pki/edge-client",
                    renew_path="/v1/pki/edge-client", authenticate_with=node)
    await edge.start()
    edge_cert = x509.load_pem_x509_certificate(edge.cert_file.read_bytes())
    assert edge_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "edge.edge-8"
    backend = _manager(cp, tmp_path / "backend", backend_token, name="server")
    first = await backend.start()
    assert (first.kind, first.id) == ("backend", "app")
    renewed = await backend.renew()  # with its own certificate
    assert renewed.fingerprint != first.fingerprint
    backend_cert = x509.load_pem_x509_certificate(backend.cert_file.read_bytes())
    assert {str(n.value) for n in backend_cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value} == {"app.internal", "127.0.0.1", "urn:lockstep:backend:app"}

    # HAProxy's client certificate against the backend's server certificate: a real mTLS handshake, both sides
    # verified against the internal CA, the backend seeing edge.edge-8.
    server_ctx = backend.server_ssl_context()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: list[str] = []

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        conn, _ = await loop.sock_accept(listener)
        conn.setblocking(True)

        def handshake() -> None:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                seen.append(dict(x[0] for x in tls.getpeercert()["subject"])["commonName"])  # type: ignore[index]
                tls.sendall(b"ok")

        await asyncio.to_thread(handshake)

    listener.setblocking(False)
    server = asyncio.create_task(serve())
    try:
        client_ctx = ssl.create_default_context(cafile=str(edge.ca_file))
        client_ctx.load_cert_chain(str(edge.cert_file))
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="app.internal"), 10)
        assert await reader.read(2) == b"ok"
        writer.close()
        await server
    finally:
        listener.close()
    assert seen == ["edge.edge-8"]

    listing = json.loads(cp.cli("backends", "list", "--json").stdout)
    assert [b["id"] for b in listing] == ["app"] and listing[0]["certificate_not_after"]
    cp.cli("backends", "remove", "app")
    with pytest.raises(Removed):
        await backend.renew()
    bad = cp.cli("backends", "add", "x", "--name", "*.wild.internal", check=False)
    assert bad.returncode == 1 and "host name" in bad.stderr


class _Recorder:
    """The sync loop's sink: when each token arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}

    def on_snapshot(self, snapshot: Snapshot) -> None:
        for t in snapshot.tokens:
            self.arrived.setdefault(t.host, time.monotonic())

    def on_changes(self, batch: ChangeBatch) -> None:
        for c in batch.changes:
            if c.token is not None:
                self.arrived.setdefault(c.token.host, time.monotonic())


class _Counting:
    def __init__(self, inner: ControlPlaneClient) -> None:
        self.inner = inner
        self.requests = 0

    async def snapshot(self) -> Snapshot:
        self.requests += 1
        return await self.inner.snapshot()

    async def changes(self, since: int, *, wait_s: float) -> ChangeBatch:
        self.requests += 1
        return await self.inner.changes(since, wait_s=wait_s)


def _serving_fingerprint(cp: ControlPlaneProcess) -> str:
    with socket.create_connection(("127.0.0.1", cp.port), timeout=5) as raw:
        with _ctx(cp).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return "sha256:" + x509.load_der_x509_certificate(der).fingerprint(hashes.SHA256()).hex()


@pytest.mark.slow
async def test_rotation_under_a_running_long_poll_loses_nothing(short_tmp: Path, tmp_path: Path) -> None:
    """Node certificates live 6 s and the control plane's own 8 s: over ~20 s the agent's identity is renewed
    several times and the server's certificate too, while the sync loop long-polls and changes are published.
    Zero failed sync requests, every change delivered within the normal latency, the old certificate accepted
    until its not_after and refused after."""
    root = Path(tempfile.mkdtemp(prefix="rot-", dir=short_tmp))
    proc = _control_plane(root / "cp", pki={"node_validity_s": 6, "control_plane_validity_s": 8}).start()
    store = None
    try:
        token = _add_node(proc, "edge-r")
        identity = _manager(proc, tmp_path / "identity", token)
        slot = HttpClientSlot()

        def swap(_: object) -> None:
            slot.replace(httpx.AsyncClient(base_url=proc.url, verify=identity.client_ssl_context(), timeout=10))

        identity.add_listener(swap)
        await identity.start()
        first = identity.current
        assert first is not None
        old_cert = shutil.copy(identity.cert_file, tmp_path / "old.pem")
        source = _Counting(ControlPlaneClient(slot))
        recorder = _Recorder()
        sync = SyncLoop(source, recorder, settings=SyncSettings(wait_s=1.0, anti_entropy_s=300.0),
                        clock=time.monotonic)
        serving = {_serving_fingerprint(proc)}
        store = await open_store(proc.store_url, kek=load_kek_file(proc.workdir / "kek"), poll_interval_s=0.2)
        published: dict[str, float] = {}
        tasks = [asyncio.create_task(identity.run()), asyncio.create_task(sync.run())]
        try:
            await asyncio.wait_for(sync.synced.wait(), 20)
            old_checked = False
            deadline = time.monotonic() + 20
            i = 0
            while time.monotonic() < deadline:
                host = f"t{i}.rotation.test"
                await store.put_token(Token(host, FILEAUTH, f"value-{i}", _utcnow() + dt.timedelta(minutes=5)))
                published[host] = time.monotonic()
                i += 1
                serving.add(_serving_fingerprint(proc))
                if not old_checked and identity.renewals >= 2 and _utcnow() < first.not_after - dt.timedelta(
                        seconds=0.5):
                    # Renewed twice, the first certificate still valid: still accepted.
                    async with _http(proc, Path(old_cert)) as http:
                        await ControlPlaneClient(http).snapshot()
                    old_checked = True
                await asyncio.sleep(0.7)
            # Every change arrived, each within a long-poll round trip (poll interval + wait + margin).
            wait_deadline = time.monotonic() + 10
            while set(published) - set(recorder.arrived) and time.monotonic() < wait_deadline:
                await asyncio.sleep(0.1)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await slot.aclose()
        missing = set(published) - set(recorder.arrived)
        assert not missing, sorted(missing)
        latencies = sorted(recorder.arrived[h] - published[h] for h in published)
        print(f"\n{len(published)} changes during {identity.renewals - 1} renewals of the node certificate and "
              f"{len(serving) - 1} of the control plane's; {source.requests} sync requests, "
              f"{sync.failures_total} failed; latency median {latencies[len(latencies) // 2] * 1000:.0f} ms, "
              f"max {latencies[-1] * 1000:.0f} ms")
        assert sync.failures_total == 0, sync.last_error
        assert identity.failures == 0, identity.last_error
        assert identity.renewals >= 4, identity.renewals  # the enrollment + at least three renewals
        assert slot.replacements == identity.renewals
        assert len(serving) >= 3, serving  # the control plane's certificate was renewed at least twice
        assert latencies[-1] < 4.0, latencies
        assert source.requests > 15
        assert old_checked, "the old certificate was not checked before it expired"
        # After its not_after, the first certificate is refused.
        while _utcnow() < first.not_after + dt.timedelta(seconds=1):
            await asyncio.sleep(0.2)
        async with _http(proc, Path(old_cert)) as http:
            try:
                resp = await http.get("/v1/sync/snapshot")
            except httpx.TransportError:
                pass  # the handshake refused it: certificate expired
            else:
                assert resp.status_code == 401, resp.text
    finally:
        if store is not None:
            await store.aclose()
        proc.stop()


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    from controlplane.serve import ConfigError, parse_config

    base = {"listen": "127.0.0.1:1", "store_url": "sqlite:///x.db", "api_token": "t",
            "issuers": [{"kind": "digicert", "base_url": "http://x", "api_key": "k"}]}
    (tmp_path / "node.token").write_text("lsbt_from_a_file_0123456789\n")
    cfg = parse_config({**base, "tls": "internal", "tls_names": ["CP.Internal", "127.0.0.1"],
                        "pki": {"node_validity_s": 60, "config_token_ttl_s": 600},
                        "nodes": [{"id": "edge-1", "http": "a:80", "https": "a:443",
                                   "bootstrap_token_file": "node.token"}],
                        "backends": [{"id": "app", "names": ["app.internal"], "bootstrap_token": "x" * 20}]},
                       base=tmp_path)
    assert cfg.tls_internal and cfg.tls_names == ("cp.internal", "127.0.0.1")
    assert cfg.pki.validity.node_s == 60 and cfg.pki.config_token_ttl_s == 600
    assert cfg.nodes[0].bootstrap_token == "lsbt_from_a_file_0123456789"
    assert "lsbt" not in repr(cfg) and "xxxxxxxx" not in repr(cfg)
    for bad, key in [({"tls": "files"}, "tls"), ({"tls": "internal", "tls_cert": "c.pem"}, "tls_cert"),
                     ({"tls_names": ["*.x"]}, "tls_names"), ({"pki": {"node_validity_s": 0}}, "pki"),
                     ({"pki": {"nodes_validity_s": 5}}, "pki.nodes_validity_s"),
                     ({"nodes": [{"id": "Edge 1", "http": "a", "https": "b", "bootstrap_token": "x" * 20}]},
                      "nodes[0].id"),
                     ({"backends": [{"id": "app", "names": []}]}, "backends[0].names")]:
        with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
            parse_config({**base, **bad}, base=tmp_path)


def test_agent_config_for_the_internal_pki(tmp_path: Path) -> None:
    from agent.config import ConfigError, parse_config

    ok = parse_config({"node": "edge-1", "control_plane": {"url": "https://cp:8443", "bootstrap_token_file": "/t",
                                                          "ca_sha256": "sha256:" + "ab" * 32}})
    assert ok.control_plane.bootstrap_token_file == Path("/t")
    assert "tok-secret" not in repr(parse_config({"node": "n", "control_plane": {
        "url": "https://cp", "bootstrap_token": "tok-secret", "ca_file": "/ca.pem"}}))
    for cp, words in [({"url": "http://cp", "bootstrap_token": "t", "ca_file": "/c"}, "https"),
                      ({"url": "https://cp", "bootstrap_token": "t"}, "ca_file or ca_sha256"),
                      ({"url": "https://cp", "bootstrap_token": "t", "ca_sha256": "abc"}, "64 hex"),
                      ({"url": "https://cp", "bootstrap_token": "t", "bootstrap_token_file": "/t", "ca_file": "/c"},
                       "not both"),
                      ({"url": "https://cp", "bootstrap_token": "t", "bearer_token": "b", "ca_file": "/c"},
                       "one way")]:
        with pytest.raises(ConfigError, match=words):
            parse_config({"node": "edge-1", "control_plane": cp})


class _StopLoop(Exception):
    pass


async def test_failures_are_reported_retried_and_never_delete_the_identity(short_tmp: Path, tmp_path: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="fail-", dir=short_tmp))
    proc = _control_plane(root / "cp").start()
    try:
        token = _add_node(proc, "edge-f")
        delays: list[float] = []

        async def sleep(seconds: float) -> None:
            delays.append(seconds)
            if len(delays) >= 4:
                raise _StopLoop

        identity = _manager(proc, tmp_path / "identity", token, sleep=sleep)
        first = await identity.start()
        before = identity.cert_file.read_bytes()
        proc.stop()
        with pytest.raises(_StopLoop):
            await identity.run()  # waits for the renewal time, then fails three times: the control plane is down
        assert delays[0] > 3600  # the renewal time of a 24 h certificate
        # The retry schedule (1, 2, 5, ... s) with ±20 % jitter.
        assert all(0.8 * want <= got <= 1.2 * want for got, want in zip(delays[1:], (1.0, 2.0, 5.0), strict=True)), \
            delays
        assert identity.failures == 3 and "ControlPlaneUnavailable" in (identity.last_error or "")
        assert identity.current == first and identity.cert_file.read_bytes() == before
        proc.start()
        renewed = await identity.renew()
        assert renewed.fingerprint != first.fingerprint and identity.failures == 0 and identity.last_error is None

        # A second node directory with the spent token: a clear, retried error, nothing written but the pending key.
        delays.clear()
        spent = _manager(proc, tmp_path / "other", token, sleep=sleep)
        with pytest.raises(_StopLoop):
            await spent.run()
        assert spent.current is None and spent.last_error_reason == "token_used"
        assert "one-time" in (spent.last_error or "") and not spent.cert_file.exists()
        assert len(delays) == 4
    finally:
        proc.stop()

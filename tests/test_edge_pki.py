"""HAProxy's backend-facing material kept current live, against real HAProxy 2.6 and 2.8: the client certificate
it presents to backends is renewed several times while requests flow (each renewal seen by the backend, no failed
request, same HAProxy process), and an internal-CA rollover reaches the server line's ca-file without a reload.

The material comes from a local CA here (the control plane's `/v1/pki/edge-client` source is exercised end to
end by tests/test_node_identity.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import stat
import tempfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from agent.edge_pki import EdgeFiles, EdgePkiError, EdgePkiKeeper, IssuedClientCert
from agent.haproxy import HAProxyProcess, find_haproxy
from agent.runtime import RuntimeClient
from lockstep.pki import Issued, issue, make_ca
from tests.harness.backend import TlsBackend
from tests.harness.edge import make_layout
from tests.harness.net import free_port, https_get
from tests.harness.pki import BACKEND_NAME, DEFAULT_NAME, TestPki, write_private

pytestmark = pytest.mark.haproxy


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class LocalCaSource:
    """Signs CSRs with a local CA, `lifetime_s` long (the control plane's role in production)."""

    def __init__(self, ca: Issued, lifetime_s: float) -> None:
        self.cas = [ca]
        self.lifetime_s = lifetime_s
        self.issued = 0
        self.fail = False

    async def ca_bundle(self) -> str:
        return "".join(ca.cert_pem for ca in self.cas)

    async def issue_client_cert(self, csr_pem: str) -> IssuedClientCert:
        if self.fail:
            raise EdgePkiError("control plane unreachable (test)")
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        now = _utcnow()
        ca = self.cas[0]
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name.from_rfc4514_string("CN=edge.node-1"))
                .issuer_name(ca.cert.subject).public_key(csr.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(seconds=5))
                .not_valid_after(now + dt.timedelta(seconds=self.lifetime_s))
                .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(ca.key, hashes.SHA256()))
        self.issued += 1
        return IssuedClientCert(chain_pem=cert.public_bytes(Encoding.PEM).decode())


@pytest.mark.parametrize("version", ["2.6", "2.8"])
async def test_client_cert_renewed_live_and_ca_rollover(version: str, short_tmp: Path, pki: TestPki) -> None:
    root = Path(tempfile.mkdtemp(prefix="epki-", dir=short_tmp))
    files = EdgeFiles(client_cert=root / "edge-client.pem", ca_file=root / "internal-ca.pem")
    source = LocalCaSource(pki.internal_ca, lifetime_s=4.0)
    backend_port = free_port()
    backend = TlsBackend(port=backend_port, cert_file=pki.backend_file, client_ca=pki.internal_ca_file).start()
    layout = dataclasses.replace(make_layout(root, pki, backend_port=backend_port, spoe_port=free_port()),
                                 backend_client_cert=files.client_cert, backend_ca=files.ca_file)
    runtime = RuntimeClient(layout.admin_socket, cert_dir=layout.cert_dir)
    keeper = EdgePkiKeeper(files, source, common_name="edge.node-1", runtime=lambda: runtime, now=_utcnow,
                           ca_refresh_s=0.5)
    await keeper.ensure()  # before HAProxy starts: it needs both files
    for path in (files.client_cert, files.ca_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    haproxy = HAProxyProcess(layout, binary=find_haproxy(version), log_path=root / "haproxy.log")
    await asyncio.to_thread(haproxy.start)
    stop = asyncio.Event()
    task = asyncio.create_task(keeper.run(stop))
    try:
        pid = haproxy.pid
        serials: list[str] = []
        failures = []
        deadline = asyncio.get_running_loop().time() + 40
        while len(set(serials)) < 4 and asyncio.get_running_loop().time() < deadline:
            res = await asyncio.to_thread(https_get, layout.https_bind, "/", sni=DEFAULT_NAME,
                                          cafile=str(pki.edge_ca_file))
            if res.status != 200:
                failures.append(res.status)
            else:
                seen = json.loads(res.body)
                assert seen["client_cn"] == "edge.node-1"
                serials.append(seen["client_serial"])
            await asyncio.sleep(0.1)
        assert failures == [], (root / "haproxy.log").read_text()
        assert len(set(serials)) >= 4, (serials[-3:], keeper.last_error)
        assert haproxy.pid == pid and haproxy.is_running()

        # CA rollover: the control plane publishes old + new; a backend moving to the new CA keeps working.
        new_ca = make_ca("Lockstep Test Internal CA 2", now=_utcnow())
        source.cas.append(new_ca)
        for _ in range(100):
            if new_ca.cert_pem in files.ca_file.read_text():
                break
            await asyncio.sleep(0.1)
        backend.stop()
        new_cert = write_private(root / "backend2.pem", issue(new_ca, [BACKEND_NAME], now=_utcnow()).bundle_pem)
        backend = TlsBackend(port=backend_port, cert_file=new_cert, client_ca=pki.internal_ca_file).start()
        res = await asyncio.to_thread(https_get, layout.https_bind, "/", sni=DEFAULT_NAME,
                                      cafile=str(pki.edge_ca_file))
        assert res.status == 200, (root / "haproxy.log").read_text()

        # Control plane unreachable: the current certificate stays in place and errors are counted.
        source.fail = True
        before = files.client_cert.read_bytes()
        for _ in range(100):
            if keeper.errors:
                break
            await asyncio.sleep(0.1)
        assert keeper.errors and "unreachable" in (keeper.last_error or "")
        assert files.client_cert.read_bytes() == before
        assert haproxy.pid == pid
    finally:
        stop.set()
        await task
        await runtime.aclose()
        await asyncio.to_thread(haproxy.stop)
        backend.stop()

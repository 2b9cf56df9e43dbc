"""HAProxy's backend-facing material kept current live, against real HAProxy 2.6 and 2.8: the client certificate
it presents to backends is renewed several times while requests flow (each renewal seen by the backend, no failed
request, same HAProxy process); an internal-CA rollover reaches the server line's ca-file without a reload on 2.8,
through the graceful path (file written, reload asked for) on 2.6.12, whose `commit ssl ca-file` would detach the
client certificate from the runtime API.

The material comes from a local CA here; tests/test_zero_trust.py runs the same path with the control plane's
internal PKI, an enrolled agent and an enrolled backend."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import stat
import tempfile
from pathlib import Path

import pytest

from agent.edge_pki import EdgeFiles, EdgePkiKeeper
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


class LocalIssuer:
    """Stands in for the edge-client identity manager and the control plane's CA endpoint: a new key and
    certificate from a local CA on each `renew()` (the control plane's role in production)."""

    def __init__(self, ca: Issued) -> None:
        self.cas = [ca]
        self.bundle: str | None = None
        self.fail = False

    async def ca_bundle(self) -> str:
        if self.fail:
            raise ConnectionError("control plane unreachable (test)")
        return "".join(ca.cert_pem for ca in self.cas)

    def renew(self) -> None:
        self.bundle = issue(self.cas[0], ["edge.node-1"], now=_utcnow(), client=True, server=False).bundle_pem


@pytest.mark.parametrize("version", ["2.6", "2.8"])
async def test_client_cert_renewed_live_and_ca_rollover(version: str, short_tmp: Path, pki: TestPki) -> None:
    root = Path(tempfile.mkdtemp(prefix="epki-", dir=short_tmp))
    files = EdgeFiles(client_cert=root / "edge-client.pem", ca_file=root / "internal-ca.pem")
    source = LocalIssuer(pki.internal_ca)
    source.renew()
    backend_port = free_port()
    backend = TlsBackend(port=backend_port, cert_file=pki.backend_file, client_ca=pki.internal_ca_file).start()
    layout = dataclasses.replace(make_layout(root, pki, backend_port=backend_port, spoe_port=free_port()),
                                 backend_client_cert=files.client_cert, backend_ca=files.ca_file)
    runtime = RuntimeClient(layout.admin_socket, cert_dir=layout.cert_dir)
    keeper = EdgePkiKeeper(files, client_bundle=lambda: source.bundle, ca_bundle=source.ca_bundle,
                           runtime=lambda: runtime, now=_utcnow, ca_refresh_s=0.5)
    await keeper.ensure()  # before HAProxy starts: it needs both files
    for path in (files.client_cert, files.ca_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    haproxy = HAProxyProcess(layout, binary=find_haproxy(version), log_path=root / "haproxy.log")
    await asyncio.to_thread(haproxy.start)
    stop = asyncio.Event()
    task = asyncio.create_task(keeper.run(stop))

    async def renewals() -> None:  # what the identity manager does at each renew time
        while not stop.is_set():
            await asyncio.sleep(0.7)
            source.renew()
            keeper.wake()

    renewer = asyncio.create_task(renewals())
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
        assert len(set(serials)) >= 4, (serials[-3:], keeper.last_error, keeper.published)
        assert haproxy.pid == pid and haproxy.is_running()

        # CA rollover: the control plane publishes old + new; a backend moving to the new CA keeps working. 2.8
        # takes the CA file live; 2.6.12 cannot without losing the client certificate's live path, so the keeper
        # only writes it and asks for a reload (the graceful path), which we then do.
        new_ca = make_ca("Lockstep Test Internal CA 2", now=_utcnow())
        source.cas.append(new_ca)
        for _ in range(100):
            if new_ca.cert_pem in files.ca_file.read_text() and (version == "2.8" or keeper.reload_required):
                break
            await asyncio.sleep(0.1)
        assert new_ca.cert_pem in files.ca_file.read_text()
        assert keeper.reload_required == (version == "2.6")
        if keeper.reload_required:
            await asyncio.to_thread(haproxy.stop)
            await asyncio.to_thread(haproxy.start)
            pid = haproxy.pid
            for _ in range(100):
                if not keeper.reload_required:
                    break
                await asyncio.sleep(0.1)
            assert not keeper.reload_required
        backend.stop()
        new_cert = write_private(root / "backend2.pem", issue(new_ca, [BACKEND_NAME], now=_utcnow()).bundle_pem)
        backend = TlsBackend(port=backend_port, cert_file=new_cert, client_ca=pki.internal_ca_file).start()
        res = await asyncio.to_thread(https_get, layout.https_bind, "/", sni=DEFAULT_NAME,
                                      cafile=str(pki.edge_ca_file))
        assert res.status == 200, (root / "haproxy.log").read_text()
        # ... and client certificates still go live afterwards (the 2.6 hazard above would break exactly this).
        serial = json.loads(res.body)["client_serial"]
        for _ in range(100):
            res = await asyncio.to_thread(https_get, layout.https_bind, "/", sni=DEFAULT_NAME,
                                          cafile=str(pki.edge_ca_file))
            if res.status == 200 and json.loads(res.body)["client_serial"] != serial:
                break
            await asyncio.sleep(0.1)
        assert res.status == 200 and json.loads(res.body)["client_serial"] != serial

        # Control plane unreachable: the current files stay in place and errors are counted.
        renewer.cancel()
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
        renewer.cancel()
        await task
        await runtime.aclose()
        await asyncio.to_thread(haproxy.stop)
        backend.stop()

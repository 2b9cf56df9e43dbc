"""The demo backend over real TLS: client certificate required (internal CA only), rotated server certificate served
without a restart, a broken rewrite keeps the previous certificate."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from lockstep.demo_backend import BackendFiles, start_backend
from lockstep.pki import Issued, issue, make_ca
from tests.harness.net import free_port

NOW = dt.datetime.now(dt.timezone.utc)
NAME = "app.internal.lockstep.test"


def _write(path: Path, text: str) -> Path:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    tmp.replace(path)
    return path


def _client_ctx(ca: Issued, client: Issued | None, tmp: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca.cert_pem)
    if client is not None:
        ctx.load_cert_chain(str(_write(tmp / f"client-{client.fingerprint[-8:]}.pem", client.bundle_pem)))
    return ctx


async def _get(port: int, ctx: ssl.SSLContext) -> tuple[dict[str, object], bytes]:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=NAME), 5)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.write("GET /x HTTP/1.1\r\nHost: shop.example.com\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    return json.loads(data.partition(b"\r\n\r\n")[2]), der


async def test_mtls_only_and_rotation_without_restart(tmp_path: Path) -> None:
    ca = make_ca("Internal CA", now=NOW)
    other_ca = make_ca("Other CA", now=NOW)
    edge = issue(ca, ["edge.node-1"], now=NOW, client=True, server=False)
    first, second = issue(ca, [NAME], now=NOW), issue(ca, [NAME], now=NOW)
    files = BackendFiles(cert=_write(tmp_path / "app.pem", first.bundle_pem),
                         client_ca=_write(tmp_path / "ca.pem", ca.cert_pem))
    port = free_port()
    runner = await start_backend("127.0.0.1", port, files, name="b1", reload_s=0.05)
    try:
        body, der = await _get(port, _client_ctx(ca, edge, tmp_path))
        assert body["host"] == "shop.example.com" and body["haproxy_client_cert"] == "edge.node-1"
        assert der == first.cert.public_bytes(Encoding.DER)

        for client in (None, issue(other_ca, ["edge.node-1"], now=NOW, client=True, server=False)):
            with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, json.JSONDecodeError)):
                await _get(port, _client_ctx(ca, client, tmp_path))

        _write(files.cert, second.bundle_pem)
        for _ in range(200):
            _, der = await _get(port, _client_ctx(ca, edge, tmp_path))
            if der == second.cert.public_bytes(Encoding.DER):
                break
            await asyncio.sleep(0.05)
        assert der == second.cert.public_bytes(Encoding.DER)

        _write(files.cert, "-----BEGIN CERTIFICATE-----\nbroken\n")
        await asyncio.sleep(0.3)  # several watcher passes
        _, der = await _get(port, _client_ctx(ca, edge, tmp_path))
        assert der == second.cert.public_bytes(Encoding.DER)
    finally:
        await runner.cleanup()


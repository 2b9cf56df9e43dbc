"""The demo application server behind HAProxy: TLS only, and only for clients whose certificate chains to the
internal CA (HAProxy's client certificate). It answers JSON saying which Host it saw and who the client was, so a
request through the edge shows there is no plaintext hop.

Its certificate files are re-read when they change (checked every `reload_s`), so a rotated server certificate is
served on the next handshake without a restart: `SSLContext.load_cert_chain` on the live context applies to new
handshakes.

`lockstep demo-backend --listen 127.0.0.1:9443 --cert app.pem --client-ca internal-ca.pem` (files made elsewhere), or
`lockstep demo-backend --listen 127.0.0.1:9443 --enroll https://cp:8000 --token-file T --ca-sha256 H --state-dir D`
(a server certificate from the control plane's internal PKI, renewed automatically).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
from pathlib import Path

from aiohttp import web

from lockstep.enroll import IdentityManager

__all__ = ["BackendFiles", "run_backend", "run_enrolled_backend", "start_backend"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class BackendFiles:
    cert: Path  # PEM: certificate chain, and the key unless `key` is given
    client_ca: Path  # CA(s) whose client certificates are accepted
    key: Path | None = None

    def stamp(self) -> tuple[int, ...]:
        """What changes when any of the files is rewritten (atomic rename or in place)."""
        out: list[int] = []
        for path in (self.cert, self.key, self.client_ca):
            if path is not None:
                st = path.stat()
                out += [st.st_ino, st.st_mtime_ns, st.st_size]
        return tuple(out)


def _context(files: BackendFiles) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(files.cert), str(files.key) if files.key else None)
    ctx.load_verify_locations(str(files.client_ca))
    ctx.verify_mode = ssl.CERT_REQUIRED
    # No TLS 1.3 session tickets (and no TLS 1.2 ones): a resumed session skips the client-certificate check, so a
    # ticket would let HAProxy in on a certificate that has since expired (a removed node's, say) for the ticket's
    # lifetime. Every connection from HAProxy proves a currently valid certificate instead.
    ctx.num_tickets = 0
    ctx.options |= ssl.OP_NO_TICKET
    return ctx


def _reload(ctx: ssl.SSLContext, files: BackendFiles) -> None:
    ctx.load_cert_chain(str(files.cert), str(files.key) if files.key else None)
    ctx.load_verify_locations(str(files.client_ca))  # adds: a CA rollover keeps the old CA until restart


async def _hello(request: web.Request) -> web.Response:
    peer = request.transport.get_extra_info("peercert") if request.transport else None
    subject = dict(x[0] for x in peer["subject"]) if peer else {}
    return web.json_response({
        "message": "hello from the demo backend, over mTLS",
        "backend": request.app[NAME],
        "host": request.headers.get("Host"),
        "path": request.path_qs,
        "forwarded_proto": request.headers.get("X-Forwarded-Proto"),
        "haproxy_client_cert": subject.get("commonName"),
        "haproxy_client_serial": peer.get("serialNumber") if peer else None,
    })


NAME = web.AppKey("name", str)


async def _watch(ctx: ssl.SSLContext, files: BackendFiles, reload_s: float) -> None:
    stamp = files.stamp()
    while True:
        await asyncio.sleep(reload_s)
        try:
            current = files.stamp()
            if current != stamp:
                _reload(ctx, files)
                stamp = current
                logger.info("demo backend: reloaded %s", files.cert)
        except (OSError, ssl.SSLError) as exc:  # half-written or broken: keep serving the previous certificate
            logger.warning("demo backend: keeping the previous certificate: %s", exc)


async def start_backend(host: str, port: int, files: BackendFiles, *, name: str = "demo",
                        reload_s: float = 1.0) -> web.AppRunner:
    """Start serving; the returned runner's `cleanup()` stops the server and the file watcher."""
    ctx = _context(files)
    app = web.Application()
    app[NAME] = name
    app.router.add_get("/{tail:.*}", _hello)
    watcher = asyncio.create_task(_watch(ctx, files, reload_s), name=f"demo-backend-watch-{name}")

    async def stop_watch(_: web.Application) -> None:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher

    app.on_cleanup.append(stop_watch)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=ctx).start()
    return runner


async def run_enrolled_backend(listen: str, identity: IdentityManager, *, name: str, stop: asyncio.Event) -> None:
    """Serve with a server certificate from the control plane's internal PKI: enroll with the backend's bootstrap
    token (or load the certificate from the state directory), serve, and renew for ever; each renewal is picked up
    by the file watcher. Client certificates are checked against the same internal CA."""
    renewals = asyncio.create_task(identity.run(), name=f"backend-identity-{name}")
    try:
        ready = asyncio.create_task(identity.ready.wait())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({ready, stopped, renewals}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        stopped.cancel()
        if renewals.done():
            renewals.result()  # raises what ended it
        if stop.is_set():
            return
        await run_backend(listen, BackendFiles(cert=identity.cert_file, client_ca=identity.ca_file), name=name,
                          stop=stop)
    finally:
        renewals.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewals


async def run_backend(listen: str, files: BackendFiles, *, name: str, stop: asyncio.Event) -> None:
    host, _, port = listen.rpartition(":")
    runner = await start_backend(host.strip("[]"), int(port), files, name=name)
    logger.info("demo backend %s listening on %s (TLS, client certificate required)", name, listen)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()

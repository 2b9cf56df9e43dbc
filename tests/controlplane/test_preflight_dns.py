"""`Preflight.check` against real DNS servers on 127.0.0.1, and `EdgeProbe` against real HTTP listeners.

Two servers:

* Debian's `pebble-challtestsrv` (package `pebble`), as its own process on free ports, told what to answer through
  its management API (/add-a, /set-cname, /add-caa, ...). It answers every A query with -defaultIPv4 unless told
  otherwise, never NXDOMAIN, always flags 0 on CAA, and does not chase a CNAME for CAA queries.
* `ZoneServer`, a small dnspython UDP server in the test's event loop, for what challtestsrv cannot do: NXDOMAIN,
  CNAME loops and long chains, the CAA critical flag, SERVFAIL, silence (timeouts).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from controlplane.preflight import Preflight, PreflightSettings, probe_token
from controlplane.probe import EdgeNode, EdgeProbe

EDGE_TARGET = "edge.lockstep.test"
EDGE_IP = "10.77.0.1"


# ---------------------------------------------------------------------------------------------- challtestsrv


def _free_tcp_udp_port() -> int:
    """A port free for both TCP and UDP (challtestsrv's DNS server binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise OSError("no port free for both TCP and UDP")


class ChallTestSrv:
    """pebble-challtestsrv with only its DNS server and management API, both on 127.0.0.1."""

    def __init__(self, log: Path) -> None:
        self.dns_port = _free_tcp_udp_port()
        self.mgmt_port = _free_tcp_udp_port()
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ChallTestSrv:
        binary = shutil.which("pebble-challtestsrv")
        assert binary is not None
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [binary, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "", "-dns01", f"127.0.0.1:{self.dns_port}",
                 "-http01", "", "-https01", "", "-tlsalpn01", "", "-management", f"127.0.0.1:{self.mgmt_port}"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"challtestsrv exited: {self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.mgmt_port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"challtestsrv did not start: {self.log.read_text()}") from None
                time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def call(self, path: str, **body: object) -> None:
        req = urllib.request.Request(f"http://127.0.0.1:{self.mgmt_port}{path}", data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200, resp.read()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.dns_port}"


@pytest.fixture(scope="module")
def challtestsrv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChallTestSrv]:
    if shutil.which("pebble-challtestsrv") is None:
        pytest.skip("pebble-challtestsrv not installed (Debian package `pebble`: apt-get install -y pebble)")
    server = ChallTestSrv(tmp_path_factory.mktemp("challtestsrv") / "challtestsrv.log").start()
    try:
        server.call("/add-a", host=EDGE_TARGET, addresses=[EDGE_IP])
        yield server
    finally:
        server.stop()


def _settings(address: str, **kw: object) -> PreflightSettings:
    return PreflightSettings(edge_cname_targets=(EDGE_TARGET,), edge_addresses=(EDGE_IP,), resolver_address=address,
                             timeout_s=kw.pop("timeout_s", 3.0), **kw)  # type: ignore[arg-type]


async def test_challtestsrv_not_pointing_at_edge_then_fixed_by_cname(challtestsrv: ChallTestSrv) -> None:
    pf = Preflight(_settings(challtestsrv.address))
    name = "shop.cname-fix.test"
    before = await pf.check(name)
    assert (before.ok, before.cause) == (False, "dns_not_pointing_at_edge"), before.message
    assert "127.0.0.1" in before.message and f"CNAME {EDGE_TARGET}." in before.message

    challtestsrv.call("/set-cname", host=name, target=EDGE_TARGET)
    try:
        after = await pf.check(name)
        assert (after.ok, after.cause) == (True, None), after.message
        assert f"{name} → {EDGE_TARGET}" in after.message
    finally:
        challtestsrv.call("/clear-cname", host=name)


async def test_challtestsrv_a_records_fixed_and_cname_elsewhere(challtestsrv: ChallTestSrv) -> None:
    pf = Preflight(_settings(challtestsrv.address))
    challtestsrv.call("/add-a", host="a-record.test", addresses=[EDGE_IP])
    challtestsrv.call("/add-a", host="other-cdn.test", addresses=["10.99.0.9"])
    challtestsrv.call("/set-cname", host="www.elsewhere.test", target="other-cdn.test")
    try:
        assert (await pf.check("a-record.test")).ok
        elsewhere = await pf.check("www.elsewhere.test")
        assert elsewhere.cause == "dns_not_pointing_at_edge"
        assert "www.elsewhere.test → other-cdn.test resolves to 10.99.0.9" in elsewhere.message
        challtestsrv.call("/add-a", host="two-ips.test", addresses=[EDGE_IP, "10.99.0.9"])
        assert (await pf.check("two-ips.test")).cause == "dns_not_pointing_at_edge"
        challtestsrv.call("/add-aaaa", host="a-record.test", addresses=["fd00::99"])  # a stray AAAA fails it
        assert (await pf.check("a-record.test")).cause == "dns_not_pointing_at_edge"
    finally:
        for host in ("a-record.test", "other-cdn.test", "two-ips.test"):
            challtestsrv.call("/clear-a", host=host)
        challtestsrv.call("/clear-aaaa", host="a-record.test")
        challtestsrv.call("/clear-cname", host="www.elsewhere.test")


async def test_challtestsrv_caa_forbids_digicert_allows_pebble(challtestsrv: ChallTestSrv) -> None:
    pf = Preflight(_settings(challtestsrv.address))
    name = "shop.caa-brand.test"
    challtestsrv.call("/set-cname", host=name, target=EDGE_TARGET)
    challtestsrv.call("/add-caa", host="caa-brand.test", policies=[{"tag": "issue", "value": "pebble.test"}])
    try:
        result = await pf.check(name, issuers=("digicert", "pebble"))
        assert (result.ok, result.cause, result.allowed_issuers) == (True, None, ("pebble",)), result.message
        assert "forbid digicert" in result.message

        only_digicert = await pf.check(name, issuers=("digicert",))
        assert (only_digicert.ok, only_digicert.cause) == (False, "caa_forbids")
        assert 'caa-brand.test. CAA 0 issue "digicert.com"' in only_digicert.message
    finally:
        challtestsrv.call("/clear-caa", host="caa-brand.test")
        challtestsrv.call("/clear-cname", host=name)


async def test_challtestsrv_closest_caa_rrset_wins(challtestsrv: ChallTestSrv) -> None:
    pf = Preflight(_settings(challtestsrv.address))
    name = "www.caa-closest.test"  # A records, not a CNAME: a CNAME owner cannot hold CAA records of its own
    challtestsrv.call("/add-a", host=name, addresses=[EDGE_IP])
    challtestsrv.call("/add-caa", host="caa-closest.test", policies=[{"tag": "issue", "value": "pebble.test"}])
    challtestsrv.call("/add-caa", host=name, policies=[{"tag": "issue", "value": "digicert.com"},
                                                       {"tag": "iodef", "value": "mailto:sec@caa-closest.test"}])
    try:
        closer = await pf.check(name, issuers=("digicert", "pebble"))
        assert (closer.ok, closer.allowed_issuers) == (True, ("digicert",)), closer.message
        parent = await pf.check("other.caa-closest.test", issuers=("digicert", "pebble"))
        assert parent.cause == "dns_not_pointing_at_edge"  # DNS first: challtestsrv's default 127.0.0.1
        challtestsrv.call("/add-a", host="other.caa-closest.test", addresses=[EDGE_IP])
        parent = await pf.check("other.caa-closest.test", issuers=("digicert", "pebble"))
        assert parent.allowed_issuers == ("pebble",)
    finally:
        challtestsrv.call("/clear-caa", host="caa-closest.test")
        challtestsrv.call("/clear-caa", host=name)
        challtestsrv.call("/clear-a", host=name)
        challtestsrv.call("/clear-a", host="other.caa-closest.test")


async def test_challtestsrv_caa_at_the_cname_target(challtestsrv: ChallTestSrv) -> None:
    """challtestsrv answers a CAA query on a CNAME with the CNAME only; the shell asks the target itself."""
    pf = Preflight(_settings(challtestsrv.address))
    name = "shop.caa-alias.test"
    challtestsrv.call("/set-cname", host=name, target="tenant.caa-target.test")
    challtestsrv.call("/add-caa", host="tenant.caa-target.test", policies=[{"tag": "issue", "value": ";"}])
    challtestsrv.call("/add-a", host="tenant.caa-target.test", addresses=[EDGE_IP])
    try:
        result = await pf.check(name, issuers=("digicert", "pebble"))
        assert (result.ok, result.cause) == (False, "caa_forbids"), result.message
        assert "CAA records at shop.caa-alias.test (via tenant.caa-target.test)" in result.message
        assert 'tenant.caa-target.test. CAA 0 issue "digicert.com"' in result.message  # the fix goes there
    finally:
        challtestsrv.call("/clear-caa", host="tenant.caa-target.test")
        challtestsrv.call("/clear-a", host="tenant.caa-target.test")
        challtestsrv.call("/clear-cname", host=name)


# ---------------------------------------------------------------------------------------------- ZoneServer


class ZoneServer(asyncio.DatagramProtocol):
    """A tiny DNS server over UDP. `rr[(name, type)] = [rdata texts]`, `cname[name] = target`; names with no data
    answer NXDOMAIN unless a longer name ends in them (an empty non-terminal: NOERROR, no data). With `chase`, a
    CNAME chain is followed inside the zone as a recursive resolver would; without it only the CNAME is given."""

    def __init__(self) -> None:
        self.rr: dict[tuple[str, str], list[str]] = {}
        self.cname: dict[str, str] = {}
        self.servfail: set[tuple[str, str]] = set()
        self.silent: set[str] = set()
        self.chase = True
        self.queries: list[tuple[str, str]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    @property
    def address(self) -> str:
        assert self.transport is not None
        return f"127.0.0.1:{self.transport.get_extra_info('sockname')[1]}"

    def _exists(self, name: str) -> bool:
        names = {n for n, _ in self.rr} | set(self.cname)
        return name in names or any(n.endswith("." + name) for n in names)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype))
        if name in self.silent:
            return
        response = dns.message.make_response(query)
        if (name, rdtype) in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        else:
            current, seen = name, {name}
            while True:
                if current in self.cname:
                    target = self.cname[current]
                    response.answer.append(dns.rrset.from_text(current + ".", 60, "IN", "CNAME", target + "."))
                    if not self.chase or target in seen or len(seen) > 20:
                        break
                    seen.add(target)
                    current = target
                    continue
                records = self.rr.get((current, rdtype))
                if records:
                    response.answer.append(dns.rrset.from_text_list(current + ".", 60, "IN", rdtype, records))
                elif not self._exists(current):
                    response.set_rcode(dns.rcode.NXDOMAIN)
                break
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


@pytest.fixture
async def zone() -> AsyncIterator[ZoneServer]:
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(ZoneServer, local_addr=("127.0.0.1", 0))
    server.rr[(EDGE_TARGET, "A")] = [EDGE_IP]
    try:
        yield server
    finally:
        transport.close()


async def test_zone_nxdomain_and_dangling_cname(zone: ZoneServer) -> None:
    zone.cname["dangling.customer.test"] = "gone.nowhere.test"
    zone.rr[("customer.test", "A")] = ["10.99.0.1"]
    pf = Preflight(_settings(zone.address))
    missing = await pf.check("missing.customer.test")
    assert (missing.ok, missing.cause) == (False, "dns_nxdomain")
    assert "missing.customer.test does not exist" in missing.message
    dangling = await pf.check("dangling.customer.test")
    assert dangling.cause == "dns_nxdomain" and "gone.nowhere.test does not exist" in dangling.message


async def test_zone_no_addresses(zone: ZoneServer) -> None:
    zone.rr[("txt-only.customer.test", "TXT")] = ['"hello"']
    result = await Preflight(_settings(zone.address)).check("txt-only.customer.test")
    assert result.cause == "dns_no_answer"


@pytest.mark.parametrize("chase", [True, False])
async def test_zone_cname_loop_and_long_chain(zone: ZoneServer, chase: bool) -> None:
    zone.chase = chase
    zone.cname.update({"loop.customer.test": "b.customer.test", "b.customer.test": "loop.customer.test"})
    for i in range(12):
        zone.cname[f"c{i}.customer.test"] = f"c{i + 1}.customer.test"
    zone.rr[("c12.customer.test", "A")] = [EDGE_IP]
    pf = Preflight(_settings(zone.address, max_aliases=8))
    loop = await pf.check("loop.customer.test")
    assert (loop.cause, loop.ok) == ("dns_error", False)
    if chase:  # the whole loop in one response: dnspython's resolver rejects it ("CNAME chain is too long")
        assert "loop.customer.test" in loop.message
    else:  # one hop per answer: our walker sees the repeated name
        assert "CNAME loop: loop.customer.test → b.customer.test → loop.customer.test" in loop.message
    long = await pf.check("c0.customer.test")
    assert long.cause == "dns_error" and "longer than 8" in long.message
    ok = await pf.check("c4.customer.test")  # 8 hops to c12, whose A record is ours
    assert ok.ok, ok.message
    # without chasing the server is asked once per hop; never more than max_aliases + 1 times per walk
    asked = [q for q in zone.queries if q[1] == "A" and q[0].startswith("c")]
    assert len(asked) == (2 if chase else 18)


async def test_zone_cname_to_edge_target_via_intermediate(zone: ZoneServer) -> None:
    zone.cname.update({"www.customer.test": "customer-cdn.test", "customer-cdn.test": EDGE_TARGET})
    result = await Preflight(_settings(zone.address)).check("www.customer.test")
    assert result.ok and f"www.customer.test → customer-cdn.test → {EDGE_TARGET}" in result.message


async def test_zone_aaaa_elsewhere_fails(zone: ZoneServer) -> None:
    zone.rr[("dual.customer.test", "A")] = [EDGE_IP]
    zone.rr[("dual.customer.test", "AAAA")] = ["2001:db8::bad"]
    result = await Preflight(_settings(zone.address)).check("dual.customer.test")
    assert result.cause == "dns_not_pointing_at_edge" and "2001:db8::bad" in result.message


async def test_zone_caa_critical_flag_and_tree_climb(zone: ZoneServer) -> None:
    zone.cname["shop.crit.test"] = EDGE_TARGET
    zone.rr[("crit.test", "CAA")] = ['128 tbs "something new"', '0 issue "pebble.test"']
    result = await Preflight(_settings(zone.address)).check("shop.crit.test", issuers=("digicert", "pebble"))
    assert (result.ok, result.cause) == (False, "caa_forbids")
    assert "critical" in result.message
    asked = [n for n, t in zone.queries if t == "CAA"]
    assert set(asked) == {"shop.crit.test", EDGE_TARGET, "crit.test", "test"}  # the CNAME is followed for CAA too


async def test_zone_caa_empty_issue_and_parameters(zone: ZoneServer) -> None:
    zone.cname["a.params.test"] = EDGE_TARGET
    zone.rr[("params.test", "CAA")] = ['0 issue ";"', '0 issue "pebble.test; accounturi=https://x.test/acct/7"',
                                       '0 iodef "mailto:sec@params.test"']
    result = await Preflight(_settings(zone.address)).check("a.params.test", issuers=("digicert", "pebble"))
    assert result.ok and result.allowed_issuers == ("pebble",)


async def test_zone_caa_servfail_is_dns_error(zone: ZoneServer) -> None:
    zone.cname["shop.broken.test"] = EDGE_TARGET
    zone.servfail.add(("broken.test", "CAA"))
    result = await Preflight(_settings(zone.address)).check("shop.broken.test", issuers=("pebble",))
    assert (result.ok, result.cause) == (False, "dns_error")
    assert "CAA lookup of broken.test failed" in result.message


async def test_zone_silence_is_a_bounded_dns_error(zone: ZoneServer) -> None:
    zone.silent.add("slow.customer.test")
    started = time.monotonic()
    result = await Preflight(_settings(zone.address, timeout_s=0.5)).check("slow.customer.test")
    assert (result.ok, result.cause) == (False, "dns_error")
    assert time.monotonic() - started < 2.0


async def test_zone_nothing_listening_is_dns_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = await Preflight(_settings(f"127.0.0.1:{port}", timeout_s=0.5)).check("shop.customer.test")
    assert result.cause == "dns_error"


# ---------------------------------------------------------------------------------------------- token self-probe


class Nodes:
    """HTTP listeners on 127.0.0.1 playing edge nodes: each serves the tokens in its own dict."""

    def __init__(self) -> None:
        self.tokens: dict[str, dict[tuple[str, str], str]] = {}
        self.servers: list[asyncio.Server] = []
        self.nodes: list[EdgeNode] = []

    async def add(self, node_id: str) -> None:
        served = self.tokens.setdefault(node_id, {})

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            path = head.split(" ", 2)[1]
            host = next(line.split(":", 1)[1].strip() for line in head.split("\r\n") if line.lower().startswith("host:"))
            body = served.get((host, path))
            status = "200 OK" if body is not None else "404 Not Found"
            payload = (body or "").encode()
            writer.write(f"HTTP/1.1 {status}\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                         + payload)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.servers.append(server)
        port = server.sockets[0].getsockname()[1]
        self.nodes.append(EdgeNode(node_id, f"127.0.0.1:{port}", f"127.0.0.1:{port}"))

    async def close(self) -> None:
        for server in self.servers:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()


async def test_token_self_probe_through_every_node(zone: ZoneServer) -> None:
    zone.cname["shop.tokens.test"] = EDGE_TARGET
    nodes = Nodes()
    try:
        for node_id in ("node-1", "node-2", "node-3"):
            await nodes.add(node_id)
        tok = probe_token("shop.tokens.test", "c0ffee00c0ffee00c0ffee00c0ffee00")
        for node_id in ("node-1", "node-3"):
            nodes.tokens[node_id][(tok.host, tok.path)] = tok.value
        pf = Preflight(_settings(zone.address), probe=EdgeProbe(nodes.nodes, timeout_s=2.0))
        partial = await pf.check("shop.tokens.test", issuers=("pebble",), token=tok)
        assert (partial.ok, partial.cause) == (False, "token_not_served")
        assert "node-2" in partial.message and "node-1" not in partial.message
        assert partial.allowed_issuers == ("pebble",)  # CAA was evaluated before the probe

        nodes.tokens["node-2"][(tok.host, tok.path)] = tok.value
        full = await pf.check("shop.tokens.test", issuers=("pebble",), token=tok)
        assert (full.ok, full.allowed_issuers) == (True, ("pebble",)), full.message
    finally:
        await nodes.close()


async def test_dns_failure_skips_caa_and_probe(zone: ZoneServer) -> None:
    class NeverCalled:
        async def token_served(self, host: str, path: str, value: str) -> list[str]:
            raise AssertionError("probe must not run when DNS fails")

    pf = Preflight(_settings(zone.address), probe=NeverCalled())
    result = await pf.check("missing.customer.test", issuers=("pebble",), token=("missing.customer.test", "/x", "v"))
    assert result.cause == "dns_nxdomain" and result.allowed_issuers == ()
    assert not [q for q in zone.queries if q[1] == "CAA"]

"""The README's run command as a new user runs it: `lockstep demo` brings up the whole stack (simulator as the CA,
control plane, HAProxy, sidecar, TLS backend), every command it prints works as printed (real curl, real shell),
and Ctrl-C stops everything it started.

Everything behind the edge comes from the control plane's internal PKI, and the test checks it from the outside:
the node's identity, HAProxy's client certificate (the one the backend saw) and the backend's server certificate
all chain to the CA the control plane serves at /v1/pki/ca.pem, and the short demo lifetimes really renew (HAProxy
takes the new client certificate live, same PID)."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from lockstep.demo import BACKEND_NAME, HAPROXY_CLIENT_NAME, run_demo
from tests.harness.agentproc import REPO_ROOT
from tests.harness.net import tls_peer_cert

pytestmark = pytest.mark.haproxy

ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
END_OF_TEXT = "  Ctrl-C stops everything."
PORT_KEYS = ("http", "https", "controlplane", "simulator", "status", "backend", "spoe")


@dataclass
class Demo:
    proc: subprocess.Popen[bytes]
    err_file: Path
    buffer: bytes = b""
    ready: dict[str, object] = field(default_factory=dict)
    text: list[str] = field(default_factory=list)

    def readline(self, timeout_s: float) -> str:
        """The next stdout line, or AssertionError (with the demo's stderr) when none comes in time."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None and not select.select([self.proc.stdout], [], [], 0)[0]:
                raise AssertionError(f"no line from the demo (exit {self.proc.poll()}):\n{self.stderr()}")
            if select.select([self.proc.stdout], [], [], min(left, 0.5))[0]:
                self.buffer += os.read(self.proc.stdout.fileno(), 65536)
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    def stderr(self) -> str:
        return self.err_file.read_text(errors="replace")[-6000:]

    def commands(self) -> list[str]:
        return [ln.strip() for ln in self.text if ln.startswith("    ")]

    def curl_for(self, name: str) -> str:
        return next(c for c in self.commands() if c.startswith("curl ") and f"https://{name}:" in c)

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


def start_demo(workdir: Path, *args: str) -> Demo:
    err_file = workdir.parent / f"{workdir.name}.stderr"
    with open(err_file, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "lockstep.cli", "demo", "--workdir", str(workdir), *args],
                                cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=err, env=ENV)
    return Demo(proc, err_file)


def wait_ready(demo: Demo) -> Demo:
    first = demo.readline(timeout_s=180)
    demo.ready = json.loads(first)  # the first stdout line is the machine-readable one
    assert demo.ready["event"] == "ready", first
    while (line := demo.readline(timeout_s=10)) != END_OF_TEXT:
        demo.text.append(line)
    return demo


def shell(command: str, *extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """A printed command as a user pastes it into a shell (plus curl options that make failures visible)."""
    res = subprocess.run(["bash", "-c", " ".join([command, *extra])], capture_output=True, text=True, timeout=60,
                         env=ENV, cwd=REPO_ROOT, check=False)
    if check:
        assert res.returncode == 0, f"{command}\n{res.stdout}\n{res.stderr}"
    return res


def check_https(demo: Demo, name: str) -> dict[str, Any]:
    """The printed curl verifies the chain for `name`; the backend saw the Host and HAProxy's client cert (the
    internal CA's edge-client certificate of this node). Returns the backend's answer."""
    res = shell(demo.curl_for(name), "-sS", "-v", "--fail", "--max-time", "10")
    answer = json.loads(res.stdout)
    https_port = str(demo.ready["https"]).rpartition(":")[2]
    assert answer["host"] == f"{name}:{https_port}", answer
    assert answer["haproxy_client_cert"] == HAPROXY_CLIENT_NAME == f"edge.{demo.ready['node']}", answer
    assert answer["forwarded_proto"] == "https", answer
    assert f'subjectAltName: host "{name}" matched cert\'s "{name}"' in res.stderr, res.stderr
    assert "SSL certificate verify ok" in res.stderr, res.stderr
    # The leaf served for this SNI names exactly this domain (not a wildcard or the default certificate).
    leaf, _ = tls_peer_cert(str(demo.ready["https"]), name, cafile=str(demo.ready["cacert"]))
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)
    assert sans == [name]
    return answer  # type: ignore[no-any-return]


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def check_internal_pki(demo: Demo, tmp_path: Path) -> x509.Certificate:
    """Every internal certificate chains to the CA the control plane serves; returns that CA."""
    ready = demo.ready
    # Fetched without verification on purpose, as an agent with only the pin does: the pin and the chain checks
    # below are what make it trustworthy.
    with urllib.request.urlopen(f"{ready['controlplane']}/v1/pki/ca.pem", timeout=10,
                                context=ssl._create_unverified_context()) as resp:
        ca_pem = resp.read()
    ca = x509.load_pem_x509_certificate(ca_pem)
    assert "sha256:" + ca.fingerprint(hashes.SHA256()).hex() == ready["internal_ca_sha256"]
    assert Path(str(ready["internal_ca"])).read_bytes() == ca_pem  # the file the printed commands use
    ca_file = tmp_path / "served-internal-ca.pem"
    ca_file.write_bytes(ca_pem)
    trust_only_ca = ssl.create_default_context(cafile=str(ca_file))
    # The control plane's HTTPS certificate (tls: internal).
    with urllib.request.urlopen(f"{ready['controlplane']}/healthz", timeout=10, context=trust_only_ca) as resp:
        assert resp.status == 200
    workdir = Path(str(ready["workdir"]))
    # The node's identity (what the sidecar authenticates with) and HAProxy's client certificate (written by the
    # sidecar where haproxy.cfg reads it): issued by that CA, for this node.
    node_cert = x509.load_pem_x509_certificates((workdir / "agent" / "identity" / "identity.pem").read_bytes())[0]
    node_cert.verify_directly_issued_by(ca)
    assert _cn(node_cert) == ready["node"] == "demo-node"
    client_bundle = workdir / "pki" / "haproxy-client.pem"
    client_cert = x509.load_pem_x509_certificates(client_bundle.read_bytes())[0]
    client_cert.verify_directly_issued_by(ca)
    assert _cn(client_cert) == HAPROXY_CLIENT_NAME
    # Demo lifetimes: a minute, plus the minute of backdating every internal certificate gets.
    assert (client_cert.not_valid_after_utc - client_cert.not_valid_before_utc).total_seconds() == 120
    # The backend's server certificate, as HAProxy sees it: verified against the served CA only, for the backend's
    # name, with HAProxy's client certificate (the backend requires one of the internal CA).
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.load_cert_chain(str(client_bundle))
    host, _, port = str(ready["backend"]).rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=BACKEND_NAME) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    backend_cert = x509.load_der_x509_certificate(der)
    backend_cert.verify_directly_issued_by(ca)
    sans = backend_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [BACKEND_NAME]
    assert f"urn:lockstep:backend:{ready['backend_id']}" in sans.get_values_for_type(x509.UniformResourceIdentifier)
    return ca


def port_free(port: int) -> bool:
    """Nothing listens there (a listener may bind it again: SO_REUSEADDR ignores connections in TIME_WAIT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def assert_stopped(demo: Demo, haproxy_pid: int, ports: list[int]) -> None:
    deadline = time.monotonic() + 10
    while Path(f"/proc/{haproxy_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{haproxy_pid}").exists(), "the demo left HAProxy running"
    busy = [p for p in ports if not port_free(p)]
    assert not busy, f"ports still in use after the demo stopped: {busy}"


@pytest.mark.parametrize("version", ["2.6", "2.8"])
def test_demo_serves_its_domains_over_https_and_every_printed_command_works(tmp_path: Path, version: str) -> None:
    demo = start_demo(tmp_path / "demo", "--haproxy-version", version)
    try:
        wait_ready(demo)
        ready = demo.ready
        assert str(ready["haproxy"]).startswith(version), ready
        names = list(ready["domains"])  # type: ignore[call-overload]
        assert names == ["shop.demo.lockstep.test", "blog.demo.lockstep.test", "api.demo.lockstep.test"]
        text = "\n".join(demo.text)
        answers = {}
        for name in names:
            assert re.search(rf"{re.escape(name)}: added -> served over HTTPS in \d+\.\d s", text), text
            answers[name] = check_https(demo, name)
        check_internal_pki(demo, tmp_path)
        # The chain check is real: the same request without the printed root is refused by curl.
        without_ca = re.sub(r"--cacert \S+ ", "", demo.curl_for(names[0]))
        assert shell(without_ca, "-sS", "--max-time", "10", check=False).returncode == 60

        new_name = "new.demo.lockstep.test"
        add_line, list_line = [c for c in demo.commands() if " domains " in c]
        assert add_line.endswith(f"domains add {new_name}") and list_line.endswith("domains list")
        # Not registered yet: HAProxy serves its default certificate, which does not verify for this name.
        assert shell(demo.curl_for(new_name), "-sS", "--max-time", "10", check=False).returncode == 60
        assert "added 1 domain(s)" in shell(add_line).stdout
        deadline = time.monotonic() + 90
        while shell(demo.curl_for(new_name), "-sS", "--fail", "--max-time", "10", check=False).returncode != 0:
            assert time.monotonic() < deadline, f"{new_name} never served:\n{demo.stderr()}"
            time.sleep(0.2)
        check_https(demo, new_name)
        announced = demo.readline(timeout_s=30)  # the demo's window says so too
        assert announced.startswith(f"{new_name}: served over HTTPS"), announced

        status = ready["status"]
        health = json.loads(shell(f"curl {status}/healthz", "-sS", "--fail").stdout)
        assert health["ready"] is True and health["node"] == "demo-node", health
        assert health["certificates"]["applied"] == 4, health
        # Enrolled with the internal PKI, and HAProxy's client certificate handed to HAProxy.
        assert health["identity"]["enrolled"] is True and health["identity"]["id"] == "demo-node", health
        assert health["edge_pki"]["published"] >= 1 and health["edge_pki"]["identity"]["enrolled"] is True, health
        metrics = shell(f"curl {status}/metrics", "-sS", "--fail").stdout
        assert re.search(r"^lockstep_agent_certificates_applied 4\.0$", metrics, re.MULTILINE), metrics[:2000]
        # The control plane speaks HTTPS only, with a certificate of its internal CA.
        cp_curl = next(c for c in demo.commands() if c.startswith("curl --cacert ") and c.endswith("/healthz"))
        assert cp_curl == f"curl --cacert {ready['internal_ca']} {ready['controlplane']}/healthz"
        assert str(ready["controlplane"]).startswith("https://")
        cp_health = json.loads(shell(cp_curl, "-sS", "--fail").stdout)
        assert cp_health["ready"] is True and cp_health["domains"]["deployed"] >= 3, cp_health
        listing = shell(list_line).stdout
        for name in [*names, new_name]:
            assert re.search(rf"^{re.escape(name)}\s+(deployed|issued)\s", listing, re.MULTILINE), listing
        nodes_line, backends_line = [c for c in demo.commands() if c.endswith((" nodes list", " backends list"))]
        # Under a day, the expiry shows its time and what is left (a renewal every 40 s is visible there).
        assert re.search(r"^demo-node\s+enrolled\s+pki\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(\d+ s\)$",
                         shell(nodes_line).stdout, re.MULTILINE)
        assert re.search(rf"^app\s+enrolled\s+{re.escape(BACKEND_NAME)}\s", shell(backends_line).stdout,
                         re.MULTILINE)
        # Every command the demo printed was run above.
        ran = {demo.curl_for(n) for n in [*names, new_name]} | {add_line, list_line, nodes_line, backends_line} | {
            f"curl {status}/healthz", f"curl {status}/metrics", cp_curl}
        assert set(demo.commands()) == ran, set(demo.commands()) ^ ran

        # "Renewals show within a minute": the node's identity and HAProxy's client certificate are renewed, and
        # HAProxy presents the new one to the backend without a restart.
        first_serial = answers[names[0]]["haproxy_client_serial"]
        deadline = time.monotonic() + 90
        while not (health["identity"]["renewals"] >= 2 and health["edge_pki"]["published"] >= 2):
            assert time.monotonic() < deadline, health
            time.sleep(1)
            health = json.loads(shell(f"curl {status}/healthz", "-sS", "--fail").stdout)
        assert health["edge_pki"]["errors"] == 0 and health["identity"]["failures"] == 0, health
        # A connection HAProxy opened before the renewal may still be reused for a while; new ones present the new
        # certificate.
        while check_https(demo, names[0])["haproxy_client_serial"] == first_serial:
            assert time.monotonic() < deadline + 30, "HAProxy still presents its first client certificate"
            time.sleep(0.5)
        assert Path(f"/proc/{ready['haproxy_pid']}").exists()
        check_internal_pki(demo, tmp_path)  # the renewed ones chain to the same CA
    except BaseException:
        demo.proc.kill()
        demo.proc.wait(10)
        raise
    assert demo.interrupt() == 0, demo.stderr()
    assert "lockstep demo: stopped" in demo.stderr()
    assert_stopped(demo, int(ready["haproxy_pid"]), [int(str(ready[k]).rpartition(":")[2]) for k in PORT_KEYS])

    if version == "2.6":  # a second run in the same workdir starts clean (new CA, new store) and works again
        again = start_demo(tmp_path / "demo", "--domains", "1")
        try:
            wait_ready(again)
            assert again.ready["domains"] == ["shop.demo.lockstep.test"]
            check_https(again, "shop.demo.lockstep.test")
        finally:
            assert again.interrupt() == 0, again.stderr()


def test_a_failure_after_start_up_stops_everything_and_names_the_logs(tmp_path: Path) -> None:
    # A wildcard cannot be validated by file: the control plane refuses it after the whole stack is up.
    workdir = tmp_path / "demo"
    demo = start_demo(workdir, "--domain", "*.wild.demo.lockstep.test")
    try:
        code = demo.proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        demo.proc.kill()
        raise
    err = demo.stderr()
    assert code == 1, err
    assert "refused *.wild.demo.lockstep.test: wildcard" in err and str(workdir / "lockstep.log") in err and str(workdir / "haproxy.log") in err
    pid = int(re.search(r"HAProxy \S+ \(pid (\d+)\)", err).group(1))  # type: ignore[union-attr]
    ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", err)]
    assert len(ports) >= 5, err
    assert_stopped(demo, pid, ports)
    assert demo.proc.stdout is not None and demo.proc.stdout.read() == b""  # no ready line


def test_refuses_a_workdir_it_did_not_make_and_bad_counts(tmp_path: Path) -> None:
    mine = tmp_path / "notes.txt"
    mine.write_text("keep me")

    class Capture:
        text = ""

        def write(self, s: str) -> None:
            self.text += s

        def flush(self) -> None:
            pass

    err = Capture()
    assert run_demo(workdir=tmp_path, err=err) == 2  # type: ignore[arg-type]
    assert "not made by `lockstep demo`" in err.text
    assert mine.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert run_demo(workdir=tmp_path / "fresh", domains=9, err=err) == 2  # type: ignore[arg-type]
    assert "--domains: between 1 and 5" in err.text and not (tmp_path / "fresh").exists()


def test_sigterm_while_starting_stops_what_was_started(tmp_path: Path) -> None:
    demo = start_demo(tmp_path / "demo")
    deadline = time.monotonic() + 120
    while not (started := re.search(r"HAProxy \S+ \(pid (\d+)\)", demo.stderr())):
        assert demo.proc.poll() is None and time.monotonic() < deadline, demo.stderr()
        time.sleep(0.01)
    demo.proc.send_signal(signal.SIGTERM)  # the domains are not served yet: the demo is still coming up
    try:
        assert demo.proc.wait(timeout=30) == 0, demo.stderr()
    except subprocess.TimeoutExpired:
        demo.proc.kill()
        raise
    assert demo.proc.stdout is not None and demo.proc.stdout.read() == b""
    ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", demo.stderr())]
    assert_stopped(demo, int(started.group(1)), ports)

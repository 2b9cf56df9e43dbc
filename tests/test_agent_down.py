"""The sidecar dies: validation requests get a prompt 503/404 (never a hang), HTTPS is unaffected, and a restarted
sidecar answers again without any HAProxy reload."""

from __future__ import annotations

import datetime as dt
import secrets
import time

import pytest

from controlplane.sync import Token
from lockstep.devserver import SyncServerThread
from tests.harness.edge import Edge
from tests.harness.net import http_get, https_get
from tests.harness.pki import DEFAULT_NAME, TestPki

pytestmark = pytest.mark.haproxy

FILEAUTH = "/.well-known/pki-validation/fileauth.txt"
# haproxy/spoe-lockstep.conf: "timeout processing 500ms"; allow scheduling noise on a loaded 2-core machine.
SPOE_TIMEOUT_S = 0.5
SLACK_S = 0.5


def _wait_status(edge: Edge, host: str, want: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    status = 0
    while time.monotonic() < deadline:
        status = http_get(edge.http, FILEAUTH, host=host).status
        if status == want:
            break
        time.sleep(0.05)
    return status


def test_sidecar_killed_then_restarted(edge: Edge, sync_server: SyncServerThread, pki: TestPki) -> None:
    host = f"down-{edge.kind.replace('.', '')}.example.test"
    value = secrets.token_hex(16)
    sync_server.publish_token(Token(host, FILEAUTH, value, dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)))
    assert _wait_status(edge, host, 200, 5) == 200, edge.logs()
    haproxy_pid = edge.haproxy.pid

    edge.agent.kill()  # SIGKILL: no goodbye to HAProxy
    deadline = time.monotonic() + 4.0  # spans "check not failed yet" and "marked DOWN"
    statuses = set()
    while time.monotonic() < deadline:
        res = http_get(edge.http, FILEAUTH, host=host, timeout_s=5)
        statuses.add(res.status)
        assert res.status in (404, 503), res
        assert res.elapsed_s < SPOE_TIMEOUT_S + SLACK_S, f"validation request took {res.elapsed_s:.3f} s"
        assert value.encode() not in res.body
        https = https_get(edge.https, "/still-up", sni=DEFAULT_NAME, cafile=str(pki.edge_ca_file))
        assert https.status == 200
        time.sleep(0.1)
    assert 503 in statuses  # the operator-facing answer when the agent is unreachable

    edge.agent.start()
    assert _wait_status(edge, host, 200, 10) == 200, edge.logs()
    assert http_get(edge.http, FILEAUTH, host=host).body == value.encode()
    assert edge.haproxy.pid == haproxy_pid and edge.haproxy.is_running()  # no reload, no restart

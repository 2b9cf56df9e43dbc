"""Reliability: a client doing full handshakes with random SNIs while certificates are renewed and removed.
Counts failed handshakes and wrong certificates (goal 0 and 0). CI runs a small size; `bench` (reliability) the
large one with the same code (tests/harness/reliability.py)."""

from __future__ import annotations

import pytest

from lockstep.devserver import SyncServerThread
from tests.harness.edge import Edge
from tests.harness.pki import TestPki
from tests.harness.reliability import rotation_under_load

pytestmark = pytest.mark.haproxy

N, RENEW, REMOVE = 200, 150, 20


def test_rotation_under_load(fresh_node: tuple[Edge, SyncServerThread], pki: TestPki) -> None:
    edge, sync = fresh_node
    result = rotation_under_load(edge, sync, pki, n=N, renew=RENEW, remove=REMOVE, tag=edge.kind.replace(".", ""))
    print(f"\n{edge.kind}: {result.ok} handshakes ok, {result.failed} failed, {result.wrong} wrong "
          f"during {RENEW} renewals and {REMOVE} removals (applied in {result.apply_s:.1f} s)")
    assert result.failed == 0, result.errors[:5]
    assert result.wrong == 0
    assert result.ok > 100
    assert result.stale_after == 0

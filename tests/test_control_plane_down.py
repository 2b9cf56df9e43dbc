"""The control plane goes away for a while: the node keeps serving every certificate and answering every token it
already knows; changes made meanwhile arrive once it is back, without a restart of anything. CI runs a small size;
`bench` (reliability) a large one with the same code (tests/harness/reliability.py)."""

from __future__ import annotations

import pytest

from lockstep.devserver import SyncServerThread
from tests.harness.edge import Edge
from tests.harness.pki import TestPki
from tests.harness.reliability import control_plane_outage

pytestmark = pytest.mark.haproxy


def test_outage_then_catch_up(fresh_node: tuple[Edge, SyncServerThread], pki: TestPki) -> None:
    edge, sync = fresh_node
    result = control_plane_outage(edge, sync, pki, known=20, late=5, gone=3, tag=edge.kind.replace(".", ""),
                                  catch_up_timeout_s=45)
    assert result.served_during == 20 and result.wrong_during == 0  # everything known kept working
    assert result.token_during  # the known token answered, also after the desired state moved on
    assert result.stale_after == 0  # late names served, withdrawn ones back on the default certificate
    assert result.failures_after == 0

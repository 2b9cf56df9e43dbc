"""The reliability scenarios at large sizes (CI runs them small: tests/test_rotation_under_load.py,
tests/test_control_plane_down.py; the code is shared in tests/harness/reliability.py).

Rotation under load: full handshakes with random SNIs from several client threads while 1000 certificates are
renewed and 100 removed in one burst: failed handshakes and wrong certificates, goal 0 and 0.
Control plane down: with thousands of certificates and a token applied, the control plane goes away; every known
name must keep its certificate and the token must keep answering; changes made meanwhile must be served after it
returns (backlog drain time).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path

from lockstep.devserver import SyncServerThread
from tests.harness.edge import Edge, running_edge
from tests.harness.net import free_port
from tests.harness.pki import TestPki
from tests.harness.reliability import control_plane_outage, rotation_under_load

from .report import Row
from .workdir import scratch


@contextlib.contextmanager
def _node(root: Path, pki: TestPki, haproxy_version: str) -> Iterator[tuple[Edge, SyncServerThread]]:
    token = secrets.token_hex(16)
    sync = SyncServerThread(node_tokens={token: "node-1"}).start()
    try:
        with running_edge(haproxy_version, root, pki, backend_port=free_port(), control_plane_url=sync.url,
                          bearer_token=token) as edge:
            yield edge, sync
    finally:
        sync.stop()


def run(*, renew: int = 1000, remove: int = 100, untouched: int = 100, known: int = 2000, late: int = 500,
        gone: int = 200, workers: int = 4, haproxy_version: str = "2.6") -> list[Row]:
    n = renew + remove + untouched
    with scratch("brel-") as root:
        pki = TestPki.create(root / "pki")
        with _node(root / "rot", pki, haproxy_version) as (edge, sync):
            rot = rotation_under_load(edge, sync, pki, n=n, renew=renew, remove=remove, tag="b", workers=workers,
                                      apply_timeout_s=120 + n * 0.2)
        with _node(root / "cpd", pki, haproxy_version) as (edge, sync):
            out = control_plane_outage(edge, sync, pki, known=known, late=late, gone=gone, tag="b",
                                       catch_up_timeout_s=120 + (late + gone) * 0.1)
    rot_what = f"{renew:,} renewed + {remove:,} removed of {n:,}"
    rot_note = (f"{rot.ok:,} handshakes ok from {workers} client threads; changes applied and served in "
                f"{rot.apply_s:.1f} s; {rot.stale_after} names stale afterwards; HAProxy {haproxy_version}"
                + (f"; first failure: {rot.errors[0]}" if rot.errors else ""))
    out_what = f"control plane down, {known:,} certs + 1 token known"
    return [
        Row(f"rotation under load ({rot_what}): failed handshakes", rot.failed, "handshakes",
            higher_is_better=False, goal_value=0, note=rot_note),
        Row(f"rotation under load ({rot_what}): wrong certificates", rot.wrong, "handshakes",
            higher_is_better=False, goal_value=0, note="a certificate neither the old nor the new one of that name"),
        Row(f"{out_what}: names served with their certificate during the outage", out.served_during, "names",
            "names known before the outage", known, goal=1.0,
            note=f"{out.wrong_during} wrong or failed; token answered throughout: "
                 f"{'yes' if out.token_during else 'NO'}; the agent noticed the outage in {out.noticed_s:.1f} s"),
        Row(f"{out_what}: backlog drain after it returns ({late:,} added, {gone:,} removed, token changed)",
            out.catch_up_s, "s", higher_is_better=False,
            note=f"{out.stale_after} names stale afterwards; sync failures after: {out.failures_after}; "
                 "no restart of anything"),
    ]

"""The pure parts of agent/edge_pki.py: which HAProxy takes a CA file live, and bundle checks."""

from __future__ import annotations

import datetime as dt

import pytest

from agent.edge_pki import EdgePkiError, ca_file_live, check_client_bundle
from lockstep.pki import issue, make_ca

NOW = dt.datetime(2026, 11, 24, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize(("version", "live"), [("2.6.12-1+deb12u1", False), ("2.7.9", False), ("2.8.25", True),
                                               ("3.0.5", True), ("3.2-dev1", True), ("", False), ("x.y", False)])
def test_ca_file_live_only_from_2_8(version: str, live: bool) -> None:
    assert ca_file_live(version) is live


def test_client_bundle_needs_the_matching_key() -> None:
    ca = make_ca("ca", now=NOW)
    one, two = (issue(ca, ["edge.node-1"], now=NOW, client=True, server=False) for _ in range(2))
    assert check_client_bundle(one.bundle_pem).serial_number == one.cert.serial_number
    with pytest.raises(EdgePkiError, match="another certificate"):
        check_client_bundle(one.chain_pem + one.cert_pem + two.key_pem)
    for broken in ("", one.cert_pem, one.key_pem, "-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n"):
        with pytest.raises(EdgePkiError):
            check_client_bundle(broken)

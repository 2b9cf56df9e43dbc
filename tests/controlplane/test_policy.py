from __future__ import annotations

import pytest

from controlplane.policy import IssuerPolicy

POLICY = IssuerPolicy(order=("digicert", "pebble"), unavailable_attempts=3, validation_attempts=2)


@pytest.mark.parametrize(
    ("current", "kind", "attempts", "allowed", "issuer", "switch"),
    [
        ("digicert", "rejected", 1, None, "pebble", True),
        ("digicert", "rate_limited", 1, None, "pebble", True),
        ("digicert", "unavailable", 1, None, "digicert", False),
        ("digicert", "unavailable", 3, None, "pebble", True),
        ("digicert", "validation_failed", 1, None, "digicert", False),
        ("digicert", "validation_failed", 2, None, "pebble", True),
        ("pebble", "rejected", 1, None, None, False),
        ("digicert", "unavailable", 1, ("pebble",), "pebble", True),  # CAA no longer allows digicert
        ("digicert", "rejected", 1, ("digicert",), None, False),
    ],
)
def test_after_failure(current: str, kind: str, attempts: int, allowed: tuple[str, ...] | None,
                       issuer: str | None, switch: bool) -> None:
    decision = POLICY.after_failure(current, kind, attempts, cause="boom", allowed=allowed)
    assert (decision.issuer, decision.switch) == (issuer, switch)
    assert "boom" in decision.reason
    if switch:
        assert decision.reason.startswith(f"switched from {current} to {issuer}")


def test_first_respects_allowed() -> None:
    assert POLICY.first() == "digicert"
    assert POLICY.first(("pebble",)) == "pebble"
    assert POLICY.first(()) is None

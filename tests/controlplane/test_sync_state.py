from __future__ import annotations

import datetime as dt

import pytest

from controlplane.sync import CertRef, DesiredState, ResyncRequired, Token

EXP = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
FILEAUTH = "/.well-known/pki-validation/fileauth.txt"


def test_revisions_and_deltas() -> None:
    state = DesiredState()
    state.put_token(Token("a.test", FILEAUTH, "1", EXP))
    state.put_certificate(CertRef("a.test", "sha256:" + "0" * 64, EXP, ("a.test",)))
    assert state.delete_token("missing" + FILEAUTH) is None  # no revision for a no-op
    state.delete_token("a.test" + FILEAUTH)
    assert state.revision == 3
    assert [c.revision for c in state.changes_since(0)] == [1, 2, 3]
    assert [c.op for c in state.changes_since(1)] == ["put", "delete"]
    assert state.changes_since(3) == []
    with pytest.raises(ResyncRequired):
        state.changes_since(4)


def test_compacted_history_requires_resync() -> None:
    state = DesiredState(retain=2)
    for i in range(5):
        state.put_token(Token("a.test", FILEAUTH, str(i), EXP))
    assert [c.revision for c in state.changes_since(3)] == [4, 5]
    with pytest.raises(ResyncRequired):
        state.changes_since(2)
    rev, tokens, _ = state.snapshot()
    assert rev == 5 and [t.value for t in tokens] == ["4"]

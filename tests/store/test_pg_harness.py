"""tests/harness/postgres.py: without Debian's package the harness installs nothing and names the setup."""

from __future__ import annotations

import pytest

from tests.harness import postgres


def test_missing_server_names_the_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres.glob, "glob", lambda pattern: [])
    with pytest.raises(postgres.PostgresUnavailable, match=r"make setup.*install-system\.sh"):
        postgres.find_postgres_bin()


def test_server_runs_as_our_child(pg_server: postgres.PostgresServer) -> None:
    assert pg_server.psql("SELECT pg_backend_pid() > 0").strip() == "t"
    with open(pg_server.data / "postmaster.pid") as f:
        assert int(f.readline()) == pg_server.pid  # the process the fixture stops by pid

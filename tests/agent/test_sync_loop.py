"""SyncLoop on a fake clock and a scripted source: snapshot first, deltas after, resync on 410, backoff on errors,
anti-entropy on schedule."""

from __future__ import annotations

import datetime as dt
import random

from agent.desired import DesiredState
from agent.sync.errors import ControlPlaneUnavailable, ResyncRequired
from agent.sync.loop import SyncLoop, SyncSettings
from agent.sync.model import Change, ChangeBatch, Snapshot
from agent.tokens import Token, TokenStore

EXP = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
FILEAUTH = "/.well-known/pki-validation/fileauth.txt"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class ScriptedSource:
    def __init__(self, clock: FakeClock, script: list[object]) -> None:
        self.clock = clock
        self.script = script
        self.calls: list[tuple[str, int | None, float | None]] = []

    def _next(self) -> object:
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    async def snapshot(self) -> Snapshot:
        self.calls.append(("snapshot", None, None))
        return self._next()  # type: ignore[return-value]

    async def changes(self, since: int, *, wait_s: float) -> ChangeBatch:
        self.calls.append(("changes", since, wait_s))
        self.clock.now += 1
        return self._next()  # type: ignore[return-value]


def _token(host: str, value: str) -> Token:
    return Token(host, FILEAUTH, value, EXP)


def _loop(script: list[object], **settings: float) -> tuple[SyncLoop, ScriptedSource, DesiredState, FakeClock]:
    clock = FakeClock()
    source = ScriptedSource(clock, script)
    desired = DesiredState(TokenStore())
    loop = SyncLoop(source, desired, settings=SyncSettings(jitter=0.0, **settings), clock=clock, sleep=clock.sleep,
                    rng=random.Random(1))
    return loop, source, desired, clock


async def test_snapshot_then_deltas_then_resync() -> None:
    t1 = _token("a.test", "1")
    loop, source, desired, _ = _loop([
        Snapshot(5, (t1,), ()),
        ChangeBatch(6, (Change(6, "put", "token", "b.test" + FILEAUTH, token=_token("b.test", "2")),)),
        ChangeBatch(7, (Change(7, "delete", "token", "a.test" + FILEAUTH),)),
        ResyncRequired("gone"),
        Snapshot(9, (_token("c.test", "3"),), ()),
    ])
    for _ in range(5):
        await loop.step()
    assert [c[0] for c in source.calls] == ["snapshot", "changes", "changes", "changes", "snapshot"]
    assert [c[1] for c in source.calls[1:4]] == [5, 6, 7]
    assert loop.revision == 9 and desired.revision == 9
    assert [t.host for t in desired.tokens.all()] == ["c.test"]
    assert loop.synced.is_set()


async def test_backoff_schedule_and_recovery_keep_what_we_have() -> None:
    err = ControlPlaneUnavailable("down")
    loop, source, desired, clock = _loop(
        [Snapshot(1, (_token("a.test", "1"),), ()), err, err, err, err, err, err, err,
         ChangeBatch(1, ())], backoff_s=(0.5, 1.0, 2.0, 5.0))
    for _ in range(9):
        await loop.step()
    assert clock.sleeps == [0.5, 1.0, 2.0, 5.0, 5.0, 5.0, 5.0]
    assert desired.tokens.lookup("a.test", FILEAUTH, now=EXP - dt.timedelta(days=1)) == "1"
    assert loop.failures == 0 and loop.last_error is None


async def test_anti_entropy_snapshot_on_schedule_and_wait_capped_by_it() -> None:
    loop, source, _, clock = _loop([Snapshot(1, (), ()), ChangeBatch(1, ()), Snapshot(1, (), ())],
                                   anti_entropy_s=10.0, wait_s=25.0)
    await loop.step()
    await loop.step()
    assert source.calls[1] == ("changes", 1, 10.0)  # long-poll ends in time for the anti-entropy pass
    clock.now += 10
    await loop.step()
    assert source.calls[2][0] == "snapshot"


async def test_certificate_changes_notify_the_reconciler() -> None:
    calls: list[int] = []
    from agent.sync.model import CertRef

    desired = DesiredState(TokenStore(), on_certificates_changed=lambda: calls.append(1))
    ref = CertRef("a.test", "sha256:" + "0" * 64, EXP, ("a.test",))
    desired.on_snapshot(Snapshot(1, (), (ref,)))
    desired.on_snapshot(Snapshot(2, (), (ref,)))  # same set: no call
    desired.on_changes(ChangeBatch(3, (Change(3, "delete", "certificate", "a.test"),)))
    assert calls == [1, 1] and desired.certificates == {}

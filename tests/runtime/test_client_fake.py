"""RuntimeClient against FakeRuntime: retry on "locked", cleanup on failure, hazards, timeouts, reconnects."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from agent.runtime import (
    AlreadyExists,
    ClientSettings,
    CommandFailed,
    ConnectionMode,
    InvalidCertificate,
    Locked,
    PayloadTooLarge,
    RuntimeClient,
    RuntimeTimeout,
    RuntimeUnavailable,
    TransactionConflict,
)
from agent.runtime.client import parse_address

from .fake_runtime import (
    CLOSE,
    HANG,
    LOCKED,
    NO_TRANSACTION,
    FakeRuntime,
    abort_ok,
    add_ok,
    happy_script,
    set_ok,
)

D = "/etc/haproxy/certs"
NAME = f"{D}/example.com.pem"
PEM = ("-----BEGIN CERTIFICATE-----\nQ0VSVA==\n-----END CERTIFICATE-----\n"
       "-----BEGIN PRIVATE KEY-----\nU0VDUkVUS0VZ\n-----END PRIVATE KEY-----\n")
MODES = [ConnectionMode.PERSISTENT, ConnectionMode.PER_COMMAND]


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="rtf-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def fake(sock_dir: Path) -> AsyncIterator[FakeRuntime]:
    server = await FakeRuntime(happy_script()).start_unix(sock_dir / "admin.sock")
    yield server
    await server.aclose()


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def make_client(sock_dir: Path, mode: ConnectionMode = ConnectionMode.PERSISTENT, sleep: Sleeps | None = None,
                **settings: object) -> RuntimeClient:
    return RuntimeClient(sock_dir / "admin.sock", cert_dir=D,
                         settings=ClientSettings(mode=mode, **settings),  # type: ignore[arg-type]
                         sleep=sleep or Sleeps())


@pytest.mark.parametrize("mode", MODES)
async def test_add_update_remove_sequence(fake: FakeRuntime, sock_dir: Path, mode: ConnectionMode) -> None:
    async with make_client(sock_dir, mode) as client:
        await client.add_certificate(NAME, PEM)
        await client.update_certificate(NAME, PEM)
        assert await client.remove_certificate(NAME) is True
        info = await client.info()
    assert info.pid == 4242 and info.version == "2.8.25-fake"
    assert fake.lines == [
        f"abort ssl cert {NAME}", f"new ssl cert {NAME}", f"set ssl cert {NAME} <<", f"commit ssl cert {NAME}",
        f"add ssl crt-list {D} {NAME}",
        f"abort ssl cert {NAME}", f"set ssl cert {NAME} <<", f"commit ssl cert {NAME}",
        f"abort ssl cert {NAME}", f"del ssl crt-list {D} {NAME}", f"del ssl cert {NAME}",
        "show info",
    ]
    assert fake.received[2].payload_lines == 6
    expected_connections = 1 if mode is ConnectionMode.PERSISTENT else len(fake.lines)
    assert fake.connections == expected_connections == client.stats.connections
    assert all(r.interactive is (mode is ConnectionMode.PERSISTENT) for r in fake.received)


STEP_BY_STEP = ConnectionMode.PER_COMMAND  # the mode that never pipelines (PERSISTENT falls back to the same steps)
LOCKED_COMMIT = "Can't commit the certificate!\nOperations on certificates are currently locked!"


def committing(line: str) -> str:
    return f"Committing {line.split()[-1]}\nSuccess!"


async def test_locked_is_retried_on_the_schedule(fake: FakeRuntime, sock_dir: Path) -> None:
    fake.on("new ssl cert", LOCKED, LOCKED, LOCKED, lambda line: f"New empty certificate store '{line.split()[-1]}'!")
    fake.on("commit ssl cert", LOCKED_COMMIT, committing)
    sleeps = Sleeps()
    async with make_client(sock_dir, STEP_BY_STEP, sleep=sleeps, locked_backoff_s=(0.01, 0.02, 0.04, 0.08)) as client:
        await client.add_certificate(NAME, PEM)
        assert client.stats.locked_retries == 4
    assert sleeps.calls == [0.01, 0.02, 0.04, 0.01]
    assert fake.lines.count(f"new ssl cert {NAME}") == 4
    assert fake.lines.count(f"commit ssl cert {NAME}") == 2


async def test_pipeline_sends_probe_and_steps_in_one_write(fake: FakeRuntime, sock_dir: Path) -> None:
    async with make_client(sock_dir) as client:
        await client.add_certificate(NAME, PEM)
        await client.update_certificate(NAME, PEM)
        assert await client.remove_certificate(NAME) is True
        assert client.stats.pipelines == 3 and client.stats.pipeline_fallbacks == 0
        assert client.stats.commands == 5 + 3 + 3
    assert fake.connections == 1
    assert fake.lines == [
        f"abort ssl cert {NAME}", f"new ssl cert {NAME}", f"set ssl cert {NAME} <<", f"commit ssl cert {NAME}",
        f"add ssl crt-list {D} {NAME}",
        f"abort ssl cert {NAME}", f"set ssl cert {NAME} <<", f"commit ssl cert {NAME}",
        f"abort ssl cert {NAME}", f"del ssl crt-list {D} {NAME}", f"del ssl cert {NAME}",
    ]


async def test_locked_in_a_pipeline_is_redone_step_by_step(fake: FakeRuntime, sock_dir: Path) -> None:
    """Another session held the lock during our commit: HAProxy ran the rest anyway (the add was refused, the store
    being empty); the whole operation is redone step by step, with the "locked" retries."""
    fake.on("commit ssl cert", LOCKED_COMMIT, LOCKED_COMMIT, committing)
    fake.on("add ssl crt-list", "Can't edit the crt-list: certificate 'x' is empty!", fake.script["add ssl crt-list"][0])
    sleeps = Sleeps()
    async with make_client(sock_dir, sleep=sleeps, locked_backoff_s=(0.01, 0.02)) as client:
        await client.add_certificate(NAME, PEM)
        assert (client.stats.pipelines, client.stats.pipeline_fallbacks, client.stats.locked_retries) == (1, 1, 1)
    assert sleeps.calls == [0.01]
    steps = [f"new ssl cert {NAME}", f"set ssl cert {NAME} <<", f"commit ssl cert {NAME}"]
    assert fake.lines == [f"abort ssl cert {NAME}", *steps, f"add ssl crt-list {D} {NAME}",
                          f"abort ssl cert {NAME}", *steps, f"commit ssl cert {NAME}", f"add ssl crt-list {D} {NAME}"]
    assert not any(line.startswith("del ") for line in fake.lines)


async def test_entry_listed_by_a_failed_pipeline_is_taken_out_again(fake: FakeRuntime, sock_dir: Path) -> None:
    """A store that existed unlisted (a crash between commit and add) gets listed by the pipeline's `add` although
    our commit failed; when the step-by-step redo fails too, that entry goes again and the store stays."""
    fake.on("new ssl cert", lambda line: f"Certificate '{line.split()[-1]}' already exists!")
    fake.on("commit ssl cert", LOCKED_COMMIT)
    fake.on("abort ssl cert", NO_TRANSACTION, NO_TRANSACTION, abort_ok)
    async with make_client(sock_dir, locked_backoff_s=(0.01,)) as client:
        with pytest.raises(Locked):
            await client.add_certificate(NAME, PEM)
    assert fake.lines[-3:] == [f"commit ssl cert {NAME}", f"abort ssl cert {NAME}", f"del ssl crt-list {D} {NAME}"]
    assert f"del ssl cert {NAME}" not in fake.lines  # not ours to delete


async def test_locked_exhausted_aborts_and_rolls_back(fake: FakeRuntime, sock_dir: Path) -> None:
    fake.on("commit ssl cert", LOCKED_COMMIT)
    fake.on("abort ssl cert", NO_TRANSACTION, abort_ok)
    fake.on("del ssl crt-list", lambda line: f"Can't delete the entry: certificate '{line.split()[-1]}' can't be "
                                              f"found in crt-list '{D}'!")
    sleeps = Sleeps()
    async with make_client(sock_dir, sleep=sleeps, locked_backoff_s=(0.01, 0.02)) as client:
        with pytest.raises(Locked) as info:
            await client.add_certificate(NAME, PEM)
    assert info.value.command == f"commit ssl cert {NAME}"
    assert fake.lines[-6:] == [
        f"commit ssl cert {NAME}", f"commit ssl cert {NAME}", f"commit ssl cert {NAME}",
        f"abort ssl cert {NAME}",  # the transaction we opened is closed
        f"del ssl crt-list {D} {NAME}", f"del ssl cert {NAME}",  # and the store this call created is freed
    ]


@pytest.mark.parametrize("mode", MODES)
async def test_refused_payload_aborts_the_transaction(fake: FakeRuntime, sock_dir: Path,
                                                      mode: ConnectionMode) -> None:
    fake.on("set ssl cert", lambda line: f"unable to load certificate from file '{NAME}': no start line.\n"
                                         f"Can't load the payload\nCan't update {NAME}!")
    fake.on("commit ssl cert", NO_TRANSACTION)
    fake.on("abort ssl cert", NO_TRANSACTION)
    async with make_client(sock_dir, mode) as client:
        with pytest.raises(InvalidCertificate):
            await client.update_certificate(NAME, PEM)
    step_by_step = [f"abort ssl cert {NAME}", f"set ssl cert {NAME} <<", f"abort ssl cert {NAME}"]
    pipelined = [f"abort ssl cert {NAME}", f"set ssl cert {NAME} <<", f"commit ssl cert {NAME}"]
    assert fake.lines == (step_by_step if mode is STEP_BY_STEP else pipelined + step_by_step)


async def test_stale_transaction_of_another_client_is_aborted_first(fake: FakeRuntime, sock_dir: Path) -> None:
    stale = f"{D}/crashed.pem"
    fake.on("abort ssl cert", f"The ongoing transaction is about '{stale}' but you are trying to abort a "
                              f"transaction for '{NAME}'", abort_ok)
    async with make_client(sock_dir, STEP_BY_STEP) as client:
        await client.add_certificate(NAME, PEM)
        assert client.stats.stale_transactions_aborted == 1
    assert fake.lines[:3] == [f"abort ssl cert {NAME}", f"abort ssl cert {stale}", f"new ssl cert {NAME}"]


@pytest.mark.parametrize("version", ["2.6", "2.8"])
async def test_pipeline_meets_a_stale_transaction_of_another_client(fake: FakeRuntime, sock_dir: Path,
                                                                    version: str) -> None:
    """Replies as HAProxy gives them (tests/runtime/test_client_haproxy.py runs the same against the real thing):
    the probe names the other transaction; `set` goes into it (2.6.12) or is refused (2.8); `commit` and `add` are
    refused. The other transaction is aborted (at once on 2.6: it holds our payload), and the certificate goes in
    step by step."""
    stale = f"{D}/crashed.pem"
    about = f"The ongoing transaction is about '{stale}' but you are trying to"
    probe = f"{about} abort a transaction for '{NAME}'"
    if version == "2.6":  # the probe, our abort of the stale one, the step-by-step probe
        fake.on("abort ssl cert", probe, abort_ok, NO_TRANSACTION)
    else:  # the probe, the step-by-step probe (still open), its abort of the stale one
        fake.on("abort ssl cert", probe, probe, abort_ok, NO_TRANSACTION)
    fake.on("set ssl cert", f"Transaction updated for certificate {stale}!" if version == "2.6"
            else f"{about} set '{NAME}'\nCan't update {NAME}!", fake.script["set ssl cert"][0])
    fake.on("commit ssl cert", f"{about} set '{NAME}'\nCan't commit {NAME}!", committing)
    fake.on("add ssl crt-list", f"Can't edit the crt-list: certificate '{NAME}' is empty!",
            fake.script["add ssl crt-list"][0])
    async with make_client(sock_dir) as client:
        await client.add_certificate(NAME, PEM)
        assert client.stats.stale_transactions_aborted == 1 and client.stats.pipeline_fallbacks == 1
    steps = [f"new ssl cert {NAME}", f"set ssl cert {NAME} <<", f"commit ssl cert {NAME}", f"add ssl crt-list {D} {NAME}"]
    if version == "2.6":
        cleanup = [f"abort ssl cert {stale}", f"abort ssl cert {NAME}"]  # at once, then the step-by-step probe
    else:
        cleanup = [f"abort ssl cert {NAME}", f"abort ssl cert {stale}"]  # the step-by-step probe finds it
    assert fake.lines == [f"abort ssl cert {NAME}", *steps, *cleanup, *steps]
    assert not any(line.startswith("del ") for line in fake.lines)  # the store we created is the one we filled


async def test_stale_transaction_on_our_own_name_is_aborted(fake: FakeRuntime, sock_dir: Path) -> None:
    fake.on("abort ssl cert", abort_ok, NO_TRANSACTION)
    async with make_client(sock_dir) as client:
        await client.update_certificate(NAME, PEM)
        assert client.stats.stale_transactions_aborted == 1
        assert client.stats.pipeline_fallbacks == 0  # aborted by the probe in front of our steps: nothing failed


@pytest.mark.parametrize("mode", MODES)
async def test_26_wrong_transaction_reply_is_caught_and_cleaned(fake: FakeRuntime, sock_dir: Path,
                                                               mode: ConnectionMode) -> None:
    """2.6.12 answers `set ssl cert B` with "Transaction updated for certificate A!" when A's transaction opened
    between our probe and our set: we must not commit it, and A's transaction (now holding our PEM) must go. Step
    by step we do not send the commit; pipelined it is already sent, and HAProxy refuses it (another name)."""
    other = f"{D}/other.pem"
    fake.on("set ssl cert", f"Transaction updated for certificate {other}!")
    fake.on("commit ssl cert", f"The ongoing transaction is about '{other}' but you are trying to set '{NAME}'\n"
                               f"Can't commit {NAME}!")
    fake.on("abort ssl cert", NO_TRANSACTION, abort_ok, NO_TRANSACTION)
    async with make_client(sock_dir, mode) as client:
        with pytest.raises(TransactionConflict) as info:
            await client.update_certificate(NAME, PEM)
    assert info.value.open_name == other
    assert fake.lines.count(f"commit ssl cert {NAME}") == (0 if mode is STEP_BY_STEP else 1)
    aborted = fake.lines.index(f"abort ssl cert {other}")
    assert f"set ssl cert {NAME} <<" in fake.lines[:aborted]  # right after our payload went astray


async def test_28_conflict_is_raised_without_touching_the_other_transaction(fake: FakeRuntime,
                                                                            sock_dir: Path) -> None:
    other = f"{D}/other.pem"
    fake.on("set ssl cert", f"The ongoing transaction is about '{other}' but you are trying to set '{NAME}'\n"
                            f"Can't update {NAME}!")
    fake.on("abort ssl cert", NO_TRANSACTION)
    async with make_client(sock_dir, STEP_BY_STEP) as client:
        with pytest.raises(TransactionConflict) as info:
            await client.update_certificate(NAME, PEM)
    assert info.value.open_name == other and info.value.retryable
    assert f"abort ssl cert {other}" not in fake.lines  # maybe a live client: the next probe decides


async def test_add_is_idempotent(fake: FakeRuntime, sock_dir: Path) -> None:
    fake.on("new ssl cert", lambda line: f"Certificate '{line.split()[-1]}' already exists!")
    fake.on("add ssl crt-list", "Can't edit the crt-list: file already exists in this directory!")
    async with make_client(sock_dir) as client:
        await client.add_certificate(NAME, PEM)
    assert fake.lines[-2:] == [f"commit ssl cert {NAME}", f"add ssl crt-list {D} {NAME}"]
    assert not any(line.startswith("del ") for line in fake.lines)  # a store we did not create stays


async def test_add_refusal_other_than_exists_propagates(fake: FakeRuntime, sock_dir: Path) -> None:
    fake.on("add ssl crt-list", "Can't edit the crt-list: certificate 'x' is empty!")
    async with make_client(sock_dir) as client:
        with pytest.raises(AlreadyExists.__mro__[1]):  # CommandFailed
            await client.add_certificate(NAME, PEM)
    assert fake.lines[-2:] == [f"del ssl crt-list {D} {NAME}", f"del ssl cert {NAME}"]


async def test_remove_missing_returns_false(fake: FakeRuntime, sock_dir: Path) -> None:
    fake.on("del ssl crt-list", f"Can't delete the entry: certificate '{NAME}' does not exist!")
    fake.on("del ssl cert", f"Can't remove the certificate: certificate '{NAME}' doesn't exist!")
    async with make_client(sock_dir) as client:
        assert await client.remove_certificate(NAME) is False


async def test_oversize_refused_before_connecting(fake: FakeRuntime, sock_dir: Path) -> None:
    big = "-----BEGIN CERTIFICATE-----\n" + "QUFB\n" * 5000 + "-----END CERTIFICATE-----\n"
    async with make_client(sock_dir) as client:
        with pytest.raises(PayloadTooLarge):
            await client.add_certificate(NAME, big)
        with pytest.raises(PayloadTooLarge):
            await client.update_certificate(NAME, big + PEM.split("-----END CERTIFICATE-----\n")[1])
    assert fake.connections == 0 and fake.lines == []


@pytest.mark.parametrize("mode", MODES)
async def test_timeout_then_recovery(fake: FakeRuntime, sock_dir: Path, mode: ConnectionMode) -> None:
    fake.on("show info", HANG, happy_script()["show info"][0])
    async with make_client(sock_dir, mode, timeout_s=0.2) as client:
        with pytest.raises(RuntimeTimeout) as info:
            await client.info()
        assert info.value.retryable and info.value.command == "show info"
        assert (await client.info()).pid == 4242  # a fresh connection: the hung one was dropped
    assert fake.connections == 2


async def test_persistent_redials_a_connection_closed_while_idle(fake: FakeRuntime, sock_dir: Path) -> None:
    async with make_client(sock_dir) as client:
        await client.info()
        fake.drop_connections()  # HAProxy's `stats timeout`, or a reload
        await asyncio.sleep(0.05)
        assert (await client.info()).pid == 4242
        assert client.stats.redials == 1
    assert fake.lines == ["show info", "show info"]


async def test_persistent_renews_idle_connections_proactively(fake: FakeRuntime, sock_dir: Path) -> None:
    now = [0.0]
    client = RuntimeClient(sock_dir / "admin.sock", cert_dir=D, settings=ClientSettings(idle_reconnect_s=5.0),
                           clock=lambda: now[0])
    async with client:
        await client.info()
        now[0] = 4.0
        await client.info()
        now[0] = 10.0
        await client.info()
    assert fake.connections == 2 and client.stats.redials == 0


async def test_no_replay_once_reply_bytes_arrived(fake: FakeRuntime, sock_dir: Path) -> None:
    fake.on("show info", CLOSE)
    async with make_client(sock_dir) as client:
        with pytest.raises(RuntimeUnavailable):
            await client.info()  # fresh connection closed before the reply: reported, not replayed
    assert fake.lines == ["show info"]


async def test_unreachable_socket(sock_dir: Path) -> None:
    for mode in MODES:
        async with make_client(sock_dir, mode) as client:
            with pytest.raises(RuntimeUnavailable, match="connect"):
                await client.info()


async def test_tcp_address() -> None:
    server = FakeRuntime(happy_script())
    port = await server.start_tcp()
    try:
        async with RuntimeClient(f"127.0.0.1:{port}", cert_dir=D) as client:
            assert (await client.info()).pid == 4242
    finally:
        await server.aclose()


@pytest.mark.parametrize(("address", "parsed"), [
    ("/run/haproxy/admin.sock", Path("/run/haproxy/admin.sock")), ("relative/admin.sock", Path("relative/admin.sock")),
    ("127.0.0.1:9999", ("127.0.0.1", 9999)), ("[::1]:9999", ("::1", 9999)), ("localhost:1", ("localhost", 1)),
])
def test_parse_address(address: str, parsed: object) -> None:
    assert parse_address(address) == parsed


@pytest.mark.parametrize("address", ["admin.sock", "host:", ":80", "host:0", "host:70000", "host:x"])
def test_parse_address_rejects(address: str) -> None:
    with pytest.raises(ValueError):
        parse_address(address)


async def test_concurrent_operations_are_serialised(fake: FakeRuntime, sock_dir: Path) -> None:
    names = [f"{D}/c{i}.pem" for i in range(5)]
    async with make_client(sock_dir) as client:
        await asyncio.gather(*(client.add_certificate(n, PEM) for n in names))
    # each certificate's steps are contiguous: never two transactions interleaved
    steps = [line.removesuffix(" <<").split()[-1] for line in fake.lines]
    groups = [steps[i:i + 5] for i in range(0, len(steps), 5)]
    assert all(len(set(g)) == 1 for g in groups) and len(groups) == 5


async def test_private_key_never_logged_or_in_errors(fake: FakeRuntime, sock_dir: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    fake.on("set ssl cert", "unable to load certificate")
    fake.on("abort ssl cert", NO_TRANSACTION)
    caplog.set_level(logging.DEBUG, logger="agent.runtime")
    async with make_client(sock_dir) as client:
        with pytest.raises(InvalidCertificate) as info:
            await client.add_certificate(NAME, PEM)
    assert "U0VDUkVUS0VZ" not in str(info.value) + repr(info.value) + info.value.command + caplog.text


# --- add_many: several requests in flight ----------------------------------------------------------------------


def many(n: int) -> list[str]:
    return [f"{D}/m{i}.pem" for i in range(n)]


def add_lines(name: str) -> list[str]:
    return [f"abort ssl cert {name}", f"new ssl cert {name}", f"set ssl cert {name} <<", f"commit ssl cert {name}",
            f"add ssl crt-list {D} {name}"]


def once_for(name: str, failure: str, otherwise: Callable[[str], str]) -> Callable[[str], str]:
    """A reply that is `failure` the first time the command concerns `name`, else `otherwise`."""
    seen: set[str] = set()

    def reply(line: str) -> str:
        if name in line.split() and name not in seen:
            seen.add(name)
            return failure
        return otherwise(line)
    return reply


async def test_add_many_sends_the_next_request_before_reading_replies(fake: FakeRuntime, sock_dir: Path) -> None:
    """The fake withholds every reply until it has the first two requests: only a client with two requests in
    flight gets any answer."""
    names = many(5)
    fake.hold_replies_until = 2 * len(add_lines(names[0]))
    async with make_client(sock_dir, timeout_s=5.0) as client:
        results = await client.add_many([client.prepare(name, PEM) for name in names])
        assert results == [None] * 5
        assert client.stats.pipelines == 5 and client.stats.pipeline_fallbacks == 0 and fake.connections == 1
    assert fake.lines == [line for name in names for line in add_lines(name)]


async def test_add_many_without_window_times_out_on_the_holding_fake(fake: FakeRuntime, sock_dir: Path) -> None:
    """The control for the test above: one request in flight never gets an answer from the holding fake."""
    fake.hold_replies_until = 2 * len(add_lines(many(1)[0]))
    async with make_client(sock_dir, timeout_s=0.3, window=1) as client:
        results = await client.add_many([client.prepare(name, PEM) for name in many(2)])
    assert all(isinstance(r, RuntimeTimeout) for r in results)


async def test_add_many_stops_at_a_failure_then_redoes_it_in_order(fake: FakeRuntime, sock_dir: Path) -> None:
    names = many(5)
    fake.on("commit ssl cert", once_for(names[1], LOCKED_COMMIT, committing))
    fake.on("add ssl crt-list", once_for(names[1], "Can't edit the crt-list: certificate 'x' is empty!",
                                         fake.script["add ssl crt-list"][0]))  # type: ignore[arg-type]
    async with make_client(sock_dir) as client:
        results = await client.add_many([client.prepare(name, PEM) for name in names])
        assert results == [None] * 5
        assert client.stats.pipeline_fallbacks == 1
    # 0 and 1 in flight; 2 sent when 0 is answered; 1 failed: nothing more sent until 2 is answered and 1 redone
    assert fake.lines == [*add_lines(names[0]), *add_lines(names[1]), *add_lines(names[2]),
                          *add_lines(names[1]), *add_lines(names[3]), *add_lines(names[4])]
    assert not any(line.startswith("del ") for line in fake.lines)


async def test_add_many_aborts_a_transaction_our_next_request_wrote_into(fake: FakeRuntime, sock_dir: Path) -> None:
    """2.6.12 in a window: request 0's commit fails and leaves its transaction open; request 1 (already sent) then
    writes its payload into 0's transaction, and its own commit is refused. That transaction is aborted before
    anything else, then both go in step by step."""
    names = many(2)
    about = f"The ongoing transaction is about '{names[0]}' but you are trying to"
    fake.on("commit ssl cert", once_for(names[0], LOCKED_COMMIT, once_for(
        names[1], f"{about} set '{names[1]}'\nCan't commit {names[1]}!", committing)))
    fake.on("set ssl cert", once_for(names[1], f"Transaction updated for certificate {names[0]}!", set_ok))
    fake.on("add ssl crt-list", "Can't edit the crt-list: certificate 'x' is empty!", add_ok, add_ok)
    fake.on("abort ssl cert", NO_TRANSACTION, f"{about} abort a transaction for '{names[1]}'", abort_ok, NO_TRANSACTION)
    async with make_client(sock_dir) as client:
        results = await client.add_many([client.prepare(name, PEM) for name in names])
        assert results == [None, None]
        assert client.stats.pipeline_fallbacks == 2
    assert fake.lines == [*add_lines(names[0]), *add_lines(names[1]),
                          f"abort ssl cert {names[0]}",  # holds names[1]'s payload
                          *add_lines(names[0]), *add_lines(names[1])]


async def test_add_many_transport_failure_ends_the_batch(fake: FakeRuntime, sock_dir: Path) -> None:
    names = many(4)
    fake.on("set ssl cert", once_for(names[1], CLOSE, set_ok))
    async with make_client(sock_dir) as client:
        results = await client.add_many([client.prepare(name, PEM) for name in names])
    assert results[0] is None
    assert all(isinstance(r, RuntimeUnavailable) for r in results[1:]), results
    assert fake.lines[-1] == f"abort ssl cert {names[1]}"  # on a new connection: whatever may be open is aborted
    assert f"new ssl cert {names[2]}" not in fake.lines


async def test_add_many_step_by_step_without_pipelining(fake: FakeRuntime, sock_dir: Path) -> None:
    names = many(3)
    fake.on("add ssl crt-list", once_for(names[1], "Can't edit the crt-list: certificate 'x' is empty!", add_ok))
    async with make_client(sock_dir, STEP_BY_STEP) as client:
        results = await client.add_many([client.prepare(name, PEM) for name in names])
    assert results[0] is None and results[2] is None and isinstance(results[1], CommandFailed)
    assert client.stats.pipelines == 0


async def test_add_many_redials_a_connection_closed_while_idle(fake: FakeRuntime, sock_dir: Path) -> None:
    names = many(3)
    async with make_client(sock_dir) as client:
        await client.info()
        fake.drop_connections()  # HAProxy's `stats timeout`, or a reload: nothing we send next is read
        await asyncio.sleep(0.05)
        assert await client.add_many([client.prepare(name, PEM) for name in names]) == [None] * 3
        assert client.stats.redials == 1
    assert fake.lines == ["show info", *[line for name in names for line in add_lines(name)]]


async def test_add_many_never_resends_after_a_timeout(fake: FakeRuntime, sock_dir: Path) -> None:
    names = many(3)
    fake.on("commit ssl cert", once_for(names[0], HANG, committing))
    async with make_client(sock_dir, timeout_s=0.3) as client:
        results = await client.add_many([client.prepare(name, PEM) for name in names])
        assert all(isinstance(r, RuntimeTimeout) for r in results), results
        assert client.stats.redials == 0
    assert fake.lines.count(f"new ssl cert {names[0]}") == 1

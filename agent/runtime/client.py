"""RuntimeClient: the asyncio shell around `commands` and `responses` for HAProxy's certificate runtime API.

Owns the connection (unix socket, or "host:port"), the per-call timeout, the retry on "currently locked", the one
transaction at a time, and the high-level add/update/remove operations. Must not build command text or interpret
replies itself (that is `commands.py` / `responses.py`), and never logs or stores a PEM.

Connection modes (pick by measurement; numbers in tests/vectors/runtime/README.md and docs/PERFORMANCE.md):
* `PER_COMMAND`: one connection per command, non-interactive, read to EOF. Nothing can go stale.
* `PERSISTENT` (default): one interactive (`prompt`) connection reused for every command, replies framed by the
  `\\n> ` prompt; measured ~30% faster from asyncio (add 1.5 vs 2.1 ms/cert on 2.6 and 2.8). Any transport
  error or timeout drops the connection (its state is unknown); the next call reconnects. An idle connection is
  renewed before use (HAProxy closes idle CLI sessions after `stats timeout`, 10 s by default), and a reused
  connection that fails before the first reply byte is redialled once.
* Pipelining (PERSISTENT, on by default): an add, update or removal goes as one request holding the probe and
  every step (HAProxy runs a request's commands in order, each to completion, whatever the earlier ones
  answered; why each step is then harmless after a failed one: `_judge`), and `add_many` keeps two such requests
  in flight. Any reply but the expected one, and the operation is redone step by step as below.

Hazards handled (haproxy.md C.4):
* HAProxy has one process-wide certificate transaction, and a crashed client leaves it open. Before opening a
  transaction we probe with `abort ssl cert <our name>` (in the same request, when pipelined): "No ongoing
  transaction!" means none, "Transaction aborted" removes a leftover on our own name, and "The ongoing
  transaction is about 'X'" names another one, which we abort (pipelined: after the steps that follow the probe
  were refused, before they are redone). The probe is O(1), unlike parsing `show ssl cert` (one line per
  certificate: O(n) per operation); `open_transaction()` offers the `show ssl cert` view for diagnostics.
* On 2.6.12, `set ssl cert B` during A's transaction answers "Transaction updated for certificate A!" and writes B
  into A; `check_reply` rejects that reply, and we abort A's transaction (it now holds our PEM) before raising.
* "Operations on certificates are currently locked!" (another session holds CKCH_LOCK) is retried on an explicit
  backoff schedule; every other failure inside a transaction aborts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar, final

from . import commands as cmds
from .commands import Command, Verb
from .errors import (
    AlreadyExists,
    BadArgument,
    CommandFailed,
    Locked,
    NotFound,
    NoTransaction,
    PayloadTooLarge,
    RuntimeApiError,
    RuntimeTimeout,
    RuntimeUnavailable,
    TransactionConflict,
)
from .responses import (
    PROMPT_END,
    CertDetails,
    CertList,
    CrtList,
    Info,
    check_reply,
    parse_cert_details,
    parse_cert_list,
    parse_crt_list,
    parse_crt_lists,
    parse_info,
    strip_prompt,
)

__all__ = ["ClientSettings", "ClientStats", "ConnectionMode", "RuntimeClient", "parse_address"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ConnectionMode(enum.Enum):
    PER_COMMAND = "per-command"
    PERSISTENT = "persistent"


@dataclasses.dataclass(frozen=True, slots=True)
class ClientSettings:
    """Tuning of one RuntimeClient.

    Attributes:
        timeout_s: bound on each command, connect included (a commit rebuilds one SSL_CTX per bind line).
        mode: see the module docstring; PERSISTENT measured fastest, PER_COMMAND is the simple fallback.
        bufsize: HAProxy's tune.bufsize; requests are kept `margin` bytes below it.
        margin: safety margin under bufsize (the measured hard limit is bufsize - 1).
        locked_backoff_s: pauses between retries of a command refused as "currently locked"; when exhausted,
            `Locked` is raised. Sum ≈ 4 s: the lock is held for one commit/add (about a millisecond per bind line).
        idle_reconnect_s: PERSISTENT only: renew a connection idle for longer (below HAProxy's stats timeout).
        max_reply_bytes: cap on one reply (a `show ssl cert` of 100k certificates is ~6 MB).
        crt_list: the crt-list new certificates go into; None = the certificate directory (a directory bind).
        pipeline: PERSISTENT only: send each add/update/remove (probe included) as one request; False = one round
            trip per command, as PER_COMMAND does.
        window: `add_many` keeps this many requests in flight (2 keeps HAProxy busy: bench/cert_inject.py).
    """

    timeout_s: float = 10.0
    mode: ConnectionMode = ConnectionMode.PERSISTENT
    bufsize: int = cmds.DEFAULT_BUFSIZE
    margin: int = cmds.DEFAULT_MARGIN
    locked_backoff_s: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
    idle_reconnect_s: float = 5.0
    max_reply_bytes: int = 64 * 1024 * 1024
    crt_list: str | None = None
    pipeline: bool = True
    window: int = 2

    def __post_init__(self) -> None:
        if not self.timeout_s > 0 or not self.idle_reconnect_s > 0 or self.max_reply_bytes < 1:
            raise ValueError("timeout_s, idle_reconnect_s and max_reply_bytes must be positive")
        if self.window < 1:
            raise ValueError("window must be at least 1")
        if any(not delay >= 0 for delay in self.locked_backoff_s):
            raise ValueError("locked_backoff_s holds a negative delay")
        cmds.max_request_size(self.bufsize, self.margin)  # ValueError on implausible values


@dataclasses.dataclass(frozen=True, slots=True)
class ClientStats:
    """Counters since the client was created (a snapshot; see `RuntimeClient.stats`)."""

    commands: int = 0  # requests written, retries included
    connections: int = 0  # connections opened
    locked_retries: int = 0  # commands re-sent after "currently locked"
    stale_transactions_aborted: int = 0  # transactions found open before ours and aborted
    redials: int = 0  # PERSISTENT: a reused connection found closed and redialled
    pipelines: int = 0  # PERSISTENT: operations sent as one request (probe and every step in one write)
    pipeline_fallbacks: int = 0  # of those, operations that failed somewhere and were redone step by step


def parse_address(address: str | os.PathLike[str]) -> tuple[str, int] | Path:
    """A unix socket path (anything with a "/", or a Path) or a TCP "host:port" ("[::1]:9999" for IPv6)."""
    if isinstance(address, os.PathLike):
        return Path(address)
    if "/" in address:
        return Path(address)
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"runtime API address must be a socket path or host:port, got {address!r}")
    return host.strip("[]"), int(port)


class _Transport(Protocol):
    async def roundtrip(self, request: bytes, command: Command) -> str: ...
    async def aclose(self) -> None: ...


async def _open(address: tuple[str, int] | Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if isinstance(address, Path):
        return await asyncio.open_unix_connection(str(address), limit=1 << 20)
    return await asyncio.open_connection(address[0], address[1], limit=1 << 20)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, asyncio.TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 1.0)


def _decode(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace")


class _PerCommand:
    """Non-interactive: connect, write one request, read to EOF (HAProxy closes after the last reply)."""

    def __init__(self, address: tuple[str, int] | Path, settings: ClientSettings, stats: _Counters) -> None:
        self._address = address
        self._settings = settings
        self._stats = stats

    async def roundtrip(self, request: bytes, command: Command) -> str:
        try:
            reader, writer = await _open(self._address)
        except OSError as exc:
            raise RuntimeUnavailable(command.line, detail=f"connect {self._address}: {exc}") from exc
        self._stats.connections += 1
        try:
            writer.write(request)
            await writer.drain()
            data = bytearray()
            while chunk := await reader.read(1 << 16):
                data += chunk
                if len(data) > self._settings.max_reply_bytes:
                    raise RuntimeUnavailable(command.line, detail="reply larger than max_reply_bytes")
            return _decode(data)
        except OSError as exc:
            raise RuntimeUnavailable(command.line, detail=f"{type(exc).__name__}: {exc}") from exc
        finally:
            await _close(writer)

    async def aclose(self) -> None:
        return None


class _Persistent:
    """Interactive: one `prompt` connection, each reply read up to the `\\n> ` prompt.

    `send` and `receive` let a caller keep several requests in flight (HAProxy answers them in order); `exchange`
    is one request and its replies."""

    def __init__(self, address: tuple[str, int] | Path, settings: ClientSettings, stats: _Counters,
                 clock: Callable[[], float]) -> None:
        self._address = address
        self._settings = settings
        self._stats = stats
        self._clock = clock
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._last_used = 0.0
        self._buffer = bytearray()  # reply bytes read ahead: the start of a later request's replies
        self._in_flight = 0  # requests written whose replies are not all read

    async def _connect(self, command: Command) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            reader, writer = await _open(self._address)
        except OSError as exc:
            raise RuntimeUnavailable(command.line, detail=f"connect {self._address}: {exc}") from exc
        self._stats.connections += 1
        self._conn = (reader, writer)
        try:
            writer.write(b"prompt\n")
            await writer.drain()
            await self._read_reply(reader, command)
        except BaseException:
            await self._drop()
            raise
        return reader, writer

    async def _read_reply(self, reader: asyncio.StreamReader, command: Command) -> bytearray:
        data = bytearray()
        while not data.endswith(PROMPT_END):
            chunk = await reader.read(1 << 16)
            if not chunk:
                raise RuntimeUnavailable(command.line, _decode(data), detail="connection closed mid-reply"
                                         if data else "connection closed before the reply")
            data += chunk
            if len(data) > self._settings.max_reply_bytes:
                raise RuntimeUnavailable(command.line, detail="reply larger than max_reply_bytes")
        return data

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._buffer = bytearray()
        self._in_flight = 0
        if conn is not None:
            await _close(conn[1])

    async def renew_if_idle(self) -> bool:
        """Drop a connection idle for too long (only with nothing in flight). Returns whether the next request
        goes on a connection that is already open."""
        if self._in_flight == 0 and self._conn is not None and \
                self._clock() - self._last_used > self._settings.idle_reconnect_s:
            await self._drop()
        return self._conn is not None

    async def send(self, request: bytes, command: Command) -> None:
        """Write one request (connecting first if needed); its replies are read by `receive`, in order."""
        try:
            _, writer = self._conn or await self._connect(command)
            writer.write(request)
            await writer.drain()
        except OSError as exc:
            await self._drop()
            raise RuntimeUnavailable(command.line, detail=f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            await self._drop()
            raise
        self._in_flight += 1

    async def receive(self, commands: Sequence[Command]) -> list[str]:
        """The replies to the oldest request in flight, which held `commands`."""
        assert self._conn is not None and self._in_flight > 0, "nothing in flight"
        try:
            replies = await self._read_replies(self._conn[0], commands)
            self._in_flight -= 1
            if self._in_flight == 0 and self._buffer:
                raise RuntimeUnavailable(commands[-1].line, _decode(self._buffer),
                                         detail="more output than the commands sent")
        except OSError as exc:
            await self._drop()
            raise RuntimeUnavailable(commands[0].line, detail=f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            await self._drop()  # timeout, cancellation, protocol trouble: the stream position is unknown
            raise
        self._last_used = self._clock()
        return [strip_prompt(_decode(reply)) for reply in replies]

    async def roundtrip(self, request: bytes, command: Command) -> str:
        return (await self.exchange(request, (command,)))[0]

    async def exchange(self, request: bytes, commands: Sequence[Command]) -> list[str]:
        """Write `request` (the text of `commands`, in order) at once and read one reply per command."""
        reused = await self.renew_if_idle()
        try:
            await self.send(request, commands[0])
            return await self.receive(commands)
        except RuntimeUnavailable as exc:
            # A reused connection that died before answering (idle close, HAProxy reload): the request was not
            # read, so it is safe to send it once more on a fresh connection.
            if not reused or exc.response:
                raise
            self._stats.redials += 1
            await self.send(request, commands[0])
            return await self.receive(commands)

    async def _read_replies(self, reader: asyncio.StreamReader, commands: Sequence[Command]) -> list[bytearray]:
        if len(commands) == 1 and not self._buffer and self._in_flight == 1:
            return [await self._read_reply(reader, commands[0])]
        # Several commands, or requests in flight after this one: each reply ends at the first prompt after it.
        # Only state-changing commands are sent this way, and their replies are fixed texts without a prompt.
        data, self._buffer = self._buffer, bytearray()
        replies: list[bytearray] = []
        start = scanned = 0
        while len(replies) < len(commands):
            end = data.find(PROMPT_END, scanned)
            if end >= 0:
                replies.append(data[start:end + len(PROMPT_END)])
                start = scanned = end + len(PROMPT_END)
                continue
            scanned = max(start, len(data) - len(PROMPT_END) + 1)
            chunk = await reader.read(1 << 16)
            if not chunk:
                command = commands[len(replies)]
                # `data` holds every byte of this request's replies so far (non-empty: it ran, do not replay it)
                raise RuntimeUnavailable(command.line, _decode(data), detail="connection closed mid-reply"
                                         if data else "connection closed before the reply")
            data += chunk
            if len(data) - start > self._settings.max_reply_bytes:
                raise RuntimeUnavailable(commands[len(replies)].line, detail="reply larger than max_reply_bytes")
        self._buffer = data[start:]
        return replies

    async def aclose(self) -> None:
        await self._drop()


@dataclasses.dataclass(frozen=True, slots=True)
class _Verdict:
    """How a pipelined add or update went (see `RuntimeClient._judge`)."""

    ok: bool
    created: bool = False  # our `new ssl cert` created the store
    listed: bool = False  # our `add ssl crt-list` added the entry
    cross_written: str | None = None  # 2.6.12: our payload went into this other transaction


@dataclasses.dataclass(slots=True)
class _Counters:
    commands: int = 0
    connections: int = 0
    locked_retries: int = 0
    stale_transactions_aborted: int = 0
    redials: int = 0
    pipelines: int = 0
    pipeline_fallbacks: int = 0


@final
class RuntimeClient:
    """Async client of one HAProxy's runtime API for the certificates in one directory.

    Args:
        address: the admin socket path (needs `level admin`), or "host:port".
        cert_dir: the directory bound as a crt-list; every certificate we manage is a file directly inside it.
        settings: timeouts, connection mode, size limit, retry schedule.
        sleep: injected for the "locked" backoff (tests pass a recorder).
        clock: monotonic clock (idle detection).

    Use as `async with RuntimeClient(...) as client:` or call `aclose()`.
    """

    def __init__(
        self,
        address: str | os.PathLike[str],
        *,
        cert_dir: str | os.PathLike[str],
        settings: ClientSettings = ClientSettings(),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._address = parse_address(address)
        self._cert_dir = cmds.check_cert_dir(os.fspath(cert_dir))
        self._crt_list = cmds.check_cert_dir(settings.crt_list) if settings.crt_list else self._cert_dir
        self._settings = settings
        self._max_request = cmds.max_request_size(settings.bufsize, settings.margin)
        self._sleep = sleep
        self._counters = _Counters()
        self._transport: _Transport
        if settings.mode is ConnectionMode.PERSISTENT:
            self._transport = _Persistent(self._address, settings, self._counters, clock)
        else:
            self._transport = _PerCommand(self._address, settings, self._counters)
        self._pipelines = settings.pipeline and settings.mode is ConnectionMode.PERSISTENT
        self._io_lock = asyncio.Lock()  # PERSISTENT: one command at a time on the shared connection
        self._tx_lock = asyncio.Lock()  # one certificate change (new/set/commit/add, or del) at a time

    # --- lifecycle ---------------------------------------------------------------------------------------------

    async def __aenter__(self) -> RuntimeClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        async with self._io_lock:
            await self._transport.aclose()

    @property
    def cert_dir(self) -> str:
        return self._cert_dir

    @property
    def crt_list_name(self) -> str:
        return self._crt_list

    @property
    def max_request(self) -> int:
        return self._max_request

    @property
    def stats(self) -> ClientStats:
        c = self._counters
        return ClientStats(c.commands, c.connections, c.locked_retries, c.stale_transactions_aborted, c.redials,
                           c.pipelines, c.pipeline_fallbacks)

    # --- one command -------------------------------------------------------------------------------------------

    async def _roundtrip(self, command: Command) -> str:
        request = command.text.encode()
        if len(request) > self._max_request:  # builders check already; this guards hand-made Commands
            raise PayloadTooLarge(command.line, size=len(request), limit=self._max_request)
        if self._settings.mode is ConnectionMode.PERSISTENT:
            async with self._io_lock:  # waiting for the shared connection does not count against the timeout
                return await self._timed_roundtrip(request, command)
        return await self._timed_roundtrip(request, command)

    async def _timed_roundtrip(self, request: bytes, command: Command) -> str:
        self._counters.commands += 1
        try:
            async with asyncio.timeout(self._settings.timeout_s):
                return await self._transport.roundtrip(request, command)
        except TimeoutError as exc:
            raise RuntimeTimeout(command.line, detail=f"no complete reply within {self._settings.timeout_s} s") from exc

    async def _pipeline(self, commands: Sequence[Command]) -> list[str]:
        """PERSISTENT only: send `commands` in one write and return their replies, in order (HAProxy runs the
        commands of one request one after the other, each to completion). No retry on "locked": the caller
        judges the replies as a whole."""
        assert isinstance(self._transport, _Persistent)
        request = b"".join(command.text.encode() for command in commands)
        for command in commands:
            if command.size > self._max_request:  # the limit is per command, not per write
                raise PayloadTooLarge(command.line, size=command.size, limit=self._max_request)
        async with self._io_lock:
            self._counters.commands += len(commands)
            self._counters.pipelines += 1
            try:
                async with asyncio.timeout(self._settings.timeout_s):
                    return await self._transport.exchange(request, commands)
            except TimeoutError as exc:
                raise RuntimeTimeout(commands[0].line,
                                     detail=f"no complete replies within {self._settings.timeout_s} s") from exc

    async def run(self, command: Command, parse: Callable[[Command, str], T]) -> T:
        """Send one command and parse its reply, re-sending it while HAProxy answers "currently locked".

        A locked command did nothing (CKCH_LOCK is taken with a trylock before any change), so re-sending it is
        safe for every command, including those inside a transaction.

        Raises:
            RuntimeUnavailable / RuntimeTimeout: transport failure.
            CommandFailed: HAProxy's refusal (Locked once the backoff schedule is exhausted).
        """
        schedule = self._settings.locked_backoff_s
        for attempt in range(len(schedule) + 1):
            reply = await self._roundtrip(command)
            try:
                return parse(command, reply)
            except Locked:
                if attempt == len(schedule):
                    raise
                self._counters.locked_retries += 1
                logger.debug("certificate lock busy, retrying %s in %.3f s", command.line, schedule[attempt])
                await self._sleep(schedule[attempt])
        raise AssertionError("unreachable")

    # --- queries -----------------------------------------------------------------------------------------------

    async def info(self) -> Info:
        """`show info`: Pid, Version, Uptime_sec (compare Pid/uptime to detect a reload that lost our changes)."""
        return await self.run(cmds.show_info(), parse_info)

    async def list_certificates(self) -> CertList:
        """`show ssl cert`: every store name, and the store with an open transaction, if any."""
        return await self.run(cmds.show_ssl_cert(), parse_cert_list)

    async def certificate_info(self, name: str, *, transaction: bool = False) -> CertDetails:
        """`show ssl cert <name>` (`*<name>` with transaction=True). Raises NotFound for an unknown name."""
        return await self.run(cmds.show_ssl_cert(name, transaction=transaction), parse_cert_details)

    async def crt_list(self, crt_list: str | None = None, *, line_numbers: bool = False) -> CrtList:
        """`show ssl crt-list [-n] <list>`; the list defaults to ours."""
        return await self.run(cmds.show_ssl_crt_list(crt_list or self._crt_list, line_numbers=line_numbers),
                              parse_crt_list)

    async def crt_lists(self) -> tuple[str, ...]:
        """`show ssl crt-list`: the names of every crt-list (a directory bind is listed by its path)."""
        return await self.run(cmds.show_ssl_crt_list(), parse_crt_lists)

    async def open_transaction(self) -> str | None:
        """The store whose transaction is open right now, from `show ssl cert` (O(number of certificates))."""
        return (await self.list_certificates()).transaction

    # --- transactions ------------------------------------------------------------------------------------------

    async def _abort(self, name: str) -> None:
        await self.run(cmds.abort_ssl_cert(name), check_reply)

    async def abort_transaction(self, name: str) -> None:
        """Abort the open transaction on `name` (one a crashed writer left behind)."""
        async with self._tx_lock:
            with contextlib.suppress(NoTransaction):
                await self._abort(name)

    def _stale_aborted(self, name: str) -> None:
        self._counters.stale_transactions_aborted += 1
        logger.warning("aborted a certificate transaction left open by another client", extra={"cert": name})

    async def _clear_stale_transaction(self, name: str) -> str | None:
        """Abort whatever transaction is open, probing with `abort ssl cert <name>`. Returns the aborted name.

        Caller holds `_tx_lock`, so an open transaction is never one of ours in progress.
        """
        try:
            await self._abort(name)
        except NoTransaction:
            return None
        except TransactionConflict as exc:
            if not exc.open_name:
                raise
            stale = exc.open_name
            try:
                abort = cmds.abort_ssl_cert(stale)
            except BadArgument as bad:  # a name that cannot be sent back as one CLI word
                raise TransactionConflict(exc.command, exc.response, open_name=stale,
                                          detail="cannot abort a transaction with this name safely") from bad
            try:
                await self.run(abort, check_reply)
            except NoTransaction:  # its owner finished in between
                return None
        else:
            stale = name
        self._stale_aborted(stale)
        return stale

    async def _abort_quietly(self, name: str) -> None:
        try:
            await self._clear_stale_transaction(name)
        except RuntimeApiError as exc:
            logger.error("could not abort the transaction on %s: %s", name, exc)

    async def _set_and_commit(self, name: str, sets: tuple[Command, ...], commit: Command) -> None:
        """set (1 or 2 requests) + commit, with abort on any failure. Caller holds `_tx_lock`."""
        try:
            for command in sets:
                try:
                    await self.run(command, check_reply)
                except TransactionConflict as exc:
                    if exc.open_name and exc.response.lstrip().startswith("Transaction updated"):
                        # 2.6.12: our payload went into the other transaction; it must never be committed.
                        await self._abort_quietly(exc.open_name)
                    raise
            await self.run(commit, check_reply)
        except BaseException:
            await self._abort_quietly(name)
            raise

    def prepare(self, name: str, pem: str) -> cmds.Upload:
        """Build (and so check) every request that adds or updates `name` with `pem`, before anything is sent.

        Lets a caller refuse a certificate before it writes the file HAProxy would load at its next start, and
        build the requests once (`add_prepared` / `update_prepared` send them).

        Raises:
            BadArgument / PayloadTooLarge: a bad name, or a payload that does not fit HAProxy's CLI buffer.
        """
        return cmds.upload(name, pem, cert_dir=self._cert_dir, crt_list=self._crt_list,
                           max_request=self._max_request)

    def check_certificate(self, name: str, pem: str) -> cmds.Upload:
        """`prepare` under its older name: raises exactly what add/update would raise before sending anything."""
        return self.prepare(name, pem)

    async def add_certificate(self, name: str, pem: str) -> None:
        """`add_prepared(prepare(name, pem))`: load a new certificate and serve it."""
        await self.add_prepared(self.prepare(name, pem))

    async def add_prepared(self, upload: cmds.Upload) -> None:
        """Load a certificate and serve it: new, set, commit, then add to the crt-list.

        Idempotent: a store that already exists is updated instead, and an entry already listed stays. If the
        store was created by this call and a later step fails, it is deleted again.

        PERSISTENT mode sends the stale-transaction probe and every step in one write (see `_judge`); if any
        reply is not the expected one the operation is redone step by step, with the probe and the "locked"
        retries, exactly as PER_COMMAND mode always does it.

        Raises:
            CommandFailed, RuntimeUnavailable: from HAProxy or the socket, after cleaning up.
        """
        async with self._tx_lock:
            verdict = await self._attempt(upload, self._add_steps(upload)) if self._pipelines else _Verdict(False)
            if not verdict.ok:
                await self._add_step_by_step(upload, verdict)

    async def _attempt(self, upload: cmds.Upload, steps: tuple[Command, ...]) -> _Verdict:
        """One pipelined request of `steps` (the probe first), judged; cleans up a payload that went astray."""
        try:
            replies = await self._pipeline(steps)
        except RuntimeUnavailable:
            await self._abort_quietly(upload.name)  # a transaction of ours may be open; the store may stay
            raise
        verdict = self._judge(upload, steps, replies)
        if verdict.cross_written is not None:
            # 2.6.12: our payload went into the other transaction; it must never be committed.
            await self._abort_quietly(verdict.cross_written)
        return verdict

    async def add_many(self, uploads: Sequence[cmds.Upload]) -> list[RuntimeApiError | None]:
        """`add_prepared` for each upload, in order. Returns, per upload, None (added) or the error it ended with.

        PERSISTENT mode keeps `settings.window` requests in flight, so HAProxy starts on the next certificate
        while we read the replies of one. HAProxy runs a request only after the previous one is done, so the
        arguments of `_judge` hold between requests too: a request that failed leaves at most a transaction
        open, which the next request's probe names (or aborts, on its own name) and its steps are refused by or
        reported on. After the first failure nothing more is sent; once the requests in flight are answered, any
        transaction holding our payload is aborted and each failed upload is redone step by step, in order. A
        transport failure ends the batch: the uploads not yet confirmed get that error.
        """
        results: list[RuntimeApiError | None] = [None] * len(uploads)
        if not self._pipelines:
            for index, upload in enumerate(uploads):
                try:
                    await self.add_prepared(upload)
                except RuntimeApiError as exc:
                    results[index] = exc
            return results
        async with self._tx_lock:
            done = 0
            while done < len(uploads):
                verdicts, broken = await self._add_window(uploads[done:])
                for cross_written in dict.fromkeys(v.cross_written for v in verdicts if v.cross_written):
                    assert cross_written is not None
                    await self._abort_quietly(cross_written)  # holds a payload of ours: never to be committed
                for offset, verdict in enumerate(verdicts):
                    if not verdict.ok:
                        try:
                            await self._add_step_by_step(uploads[done + offset], verdict)
                        except RuntimeApiError as exc:
                            results[done + offset] = exc
                done += len(verdicts)
                if broken is not None:
                    await self._abort_quietly(uploads[done].name)  # a transaction of ours may be open
                    for index in range(done, len(uploads)):
                        results[index] = broken
                    break
        return results

    async def _add_window(self, uploads: Sequence[cmds.Upload]) -> tuple[list[_Verdict], RuntimeUnavailable | None]:
        """Send the uploads' requests keeping `settings.window` in flight, until one fails or all are answered.

        Returns the verdicts of the uploads answered (a prefix of `uploads`), and the transport error that stopped
        the window early, if any (the first upload without a verdict may have run in part)."""
        transport = self._transport
        assert isinstance(transport, _Persistent)
        window = self._settings.window
        verdicts: list[_Verdict] = []
        sent: list[tuple[Command, ...]] = []

        async def send(steps: tuple[Command, ...]) -> None:
            try:
                async with asyncio.timeout(self._settings.timeout_s):  # a connect may be part of it
                    await transport.send(b"".join(command.text.encode() for command in steps), steps[0])
            except TimeoutError as exc:
                raise RuntimeTimeout(steps[0].line, detail=f"not sent within {self._settings.timeout_s} s") from exc
            self._counters.commands += len(steps)

        async with self._io_lock:
            reused = await transport.renew_if_idle()
            while len(verdicts) < len(uploads):
                try:
                    while (len(sent) < len(uploads) and len(sent) - len(verdicts) < window
                           and all(v.ok for v in verdicts)):
                        steps = self._add_steps(uploads[len(sent)])
                        sent.append(steps)
                        self._counters.pipelines += 1
                        await send(steps)
                    if len(sent) == len(verdicts):
                        break  # a failure stopped the sending, and everything sent is answered
                    steps = sent[len(verdicts)]
                    try:
                        async with asyncio.timeout(self._settings.timeout_s):
                            replies = await transport.receive(steps)
                    except TimeoutError as exc:
                        raise RuntimeTimeout(steps[0].line, detail=f"no complete replies within "
                                                                  f"{self._settings.timeout_s} s") from exc
                except RuntimeUnavailable as exc:
                    if isinstance(exc, RuntimeTimeout) or not (reused and not verdicts and not exc.response):
                        return verdicts, exc  # a timeout may mean HAProxy is still at it: never resend then
                    # The reused connection had died before answering anything (idle close, reload): nothing sent
                    # on it was read, so all of it goes once more on a fresh connection.
                    self._counters.redials += 1
                    reused = False
                    try:
                        for earlier in sent:
                            await send(earlier)
                    except RuntimeUnavailable as again:
                        return verdicts, again
                    continue
                verdicts.append(self._judge(uploads[len(verdicts)], steps, replies))
        return verdicts, None

    def _add_steps(self, upload: cmds.Upload) -> tuple[Command, ...]:
        """The one request of a pipelined add: the stale-transaction probe, then every step."""
        return (cmds.abort_ssl_cert(upload.name), upload.new, *upload.sets, upload.commit, upload.add)

    async def _add_step_by_step(self, upload: cmds.Upload, verdict: _Verdict) -> None:
        """The add one command at a time, with the probe and the "locked" retries; after a pipelined attempt
        (`verdict`), undoes what that attempt did if this one fails too. Caller holds `_tx_lock`."""
        created, listed = verdict.created, verdict.listed
        try:
            await self._clear_stale_transaction(upload.name)
            try:
                await self.run(upload.new, check_reply)
                created = True
            except AlreadyExists:
                logger.info("certificate store exists, updating it", extra={"cert": upload.name})
            await self._set_and_commit(upload.name, upload.sets, upload.commit)
            try:
                await self.run(upload.add, check_reply)
            except AlreadyExists:
                pass  # listed already; the commit has rebuilt its SSL contexts
        except BaseException:
            if created:
                await self._delete_quietly(upload.name)
            elif listed:
                await self._unlist_quietly(upload.name)
            raise

    def _judge(self, upload: cmds.Upload, steps: tuple[Command, ...], replies: list[str]) -> _Verdict:
        """Judge the replies to `steps` (the probe, then an add's or an update's steps), sent as one request.

        HAProxy runs every command of the request whatever the earlier ones answered, so each step must be
        harmless when an earlier one failed; measured on 2.6.12 and 2.8 (tests/runtime/test_client_haproxy.py):
        * the probe aborts a transaction left open on our own name; one on another name A stays, and then
        * `set` is refused (2.8), or on 2.6.12 goes into A's transaction ("Transaction updated for certificate A!"):
          the caller aborts A before anything of ours is committed, so that payload never is;
        * `commit` commits only a transaction on our name ("The ongoing transaction is about A" otherwise), so
          after a failed `set` it commits nothing of anybody else's (a transaction on our name was just aborted);
        * `add ssl crt-list` refuses a store never committed ("is empty") and one already listed ("already
          exists"). It does list a store that existed unlisted before (a crash between commit and add) when our
          commit failed: that store holds a certificate we committed earlier, and the step-by-step redo either
          replaces it or, failing, takes the entry out again.
        """
        try:
            check_reply(steps[0], replies[0])
        except NoTransaction:
            pass
        except CommandFailed:
            pass  # another transaction (the steps below fail and we redo them), or locked
        else:
            self._stale_aborted(upload.name)
        created = listed = False
        failed: CommandFailed | None = None
        cross_written: str | None = None
        for command, reply in zip(steps[1:], replies[1:], strict=True):
            try:
                check_reply(command, reply)
            except AlreadyExists:
                continue  # the store exists (we update it), or the entry is listed already
            except CommandFailed as exc:
                if command.verb is Verb.NEW_CERT:
                    continue  # judged by `set`, which needs the store
                failed = failed or exc
                if (isinstance(exc, TransactionConflict) and exc.open_name
                        and exc.response.lstrip().startswith("Transaction updated")):
                    cross_written = exc.open_name
                continue
            created = created or command.verb is Verb.NEW_CERT
            listed = listed or command.verb is Verb.ADD_CRT_LIST
        if failed is None:
            return _Verdict(ok=True)
        self._counters.pipeline_fallbacks += 1
        logger.info("certificate %s: %s; redoing it step by step", upload.name, failed)
        return _Verdict(ok=False, created=created, listed=listed, cross_written=cross_written)

    async def update_certificate(self, name: str, pem: str) -> None:
        """`update_prepared(prepare(name, pem))`: replace a loaded certificate."""
        await self.update_prepared(self.prepare(name, pem))

    async def update_prepared(self, upload: cmds.Upload) -> None:
        """Replace a loaded certificate: set + commit (every bind using it is rebuilt, SNIs included).

        Raises:
            NotFound: no store of that name.
        """
        async with self._tx_lock:
            if self._pipelines:
                steps = (cmds.abort_ssl_cert(upload.name), *upload.sets, upload.commit)
                if (await self._attempt(upload, steps)).ok:
                    return
            await self._clear_stale_transaction(upload.name)
            await self._set_and_commit(upload.name, upload.sets, upload.commit)

    async def update_file_certificate(self, path: str, pem: str) -> None:
        """Replace a certificate file the configuration loads outside the certificate directory (HAProxy's client
        certificate on a `server ... crt` line): set + commit. Live on 2.6 and 2.8 (tests/test_edge_pki.py).

        Raises:
            NotFound: the configuration does not load that file.
            BadArgument / PayloadTooLarge: before anything is sent.
        """
        parent = path.rsplit("/", 1)[0] or "/"
        sets = cmds.set_certificate(path, pem, cert_dir=parent, max_request=self._max_request)
        commit = cmds.commit_ssl_cert(path, cert_dir=parent)
        async with self._tx_lock:
            await self._clear_stale_transaction(path)
            await self._set_and_commit(path, sets, commit)

    async def update_ca_file(self, path: str, pem: str) -> None:
        """Replace a CA file the configuration references (`ca-file` on the backend's server line): set + commit,
        abort on failure. Every SSL context using it is rebuilt; live on 2.6 and 2.8."""
        set_ca = cmds.set_ssl_ca_file(path, pem, max_request=self._max_request)
        commit = cmds.commit_ssl_ca_file(path)
        async with self._tx_lock:
            try:
                await self.run(set_ca, check_reply)
                await self.run(commit, check_reply)
            except BaseException:
                with contextlib.suppress(RuntimeApiError):
                    await self.run(cmds.abort_ssl_ca_file(path), check_reply)
                raise

    async def remove_certificate(self, name: str) -> bool:
        """Stop serving and free a certificate: del crt-list entry, then del cert.

        Returns:
            True if anything was removed, False if neither entry nor store existed.
        """
        del_entry = cmds.del_ssl_crt_list(self._crt_list, name, cert_dir=self._cert_dir)
        del_cert = cmds.del_ssl_cert(name, cert_dir=self._cert_dir)
        async with self._tx_lock:
            removed = False
            if self._pipelines:
                done, removed = await self._remove_pipelined(name, del_entry, del_cert)
                if done:
                    return removed
            await self._clear_stale_transaction(name)
            try:
                await self.run(del_entry, check_reply)
                removed = True
            except NotFound:
                pass
            try:
                await self.run(del_cert, check_reply)
            except NotFound:
                return removed
            return True

    async def _remove_pipelined(self, name: str, del_entry: Command, del_cert: Command) -> tuple[bool, bool]:
        """Probe, del entry and del cert in one write: the same steps, each run whatever the one before answered,
        as step by step. Returns (done, removed anything); not done: a reply other than success or "not found",
        and the caller redoes it step by step."""
        probe = cmds.abort_ssl_cert(name)
        try:
            replies = await self._pipeline((probe, del_entry, del_cert))
        except RuntimeUnavailable:
            await self._abort_quietly(name)
            raise
        try:
            check_reply(probe, replies[0])
        except CommandFailed:
            pass  # none open (the usual), another one (the second step fails: we redo), or locked
        else:
            self._stale_aborted(name)
        removed, done = False, True
        for command, reply in zip((del_entry, del_cert), replies[1:], strict=True):
            try:
                check_reply(command, reply)
                removed = True
            except NotFound:
                pass
            except CommandFailed as exc:
                if done:
                    self._counters.pipeline_fallbacks += 1
                    logger.info("certificate %s: %s; redoing the removal step by step", name, exc)
                done = False
        return done, removed

    async def _delete_quietly(self, name: str) -> None:
        try:
            with contextlib.suppress(NotFound):
                await self.run(cmds.del_ssl_crt_list(self._crt_list, name, cert_dir=self._cert_dir), check_reply)
            await self.run(cmds.del_ssl_cert(name, cert_dir=self._cert_dir), check_reply)
        except RuntimeApiError as exc:
            logger.error("could not delete the half-created store %s: %s", name, exc)

    async def _unlist_quietly(self, name: str) -> None:
        """Take out the crt-list entry this call added for a store it did not create and could not update."""
        try:
            with contextlib.suppress(NotFound):
                await self.run(cmds.del_ssl_crt_list(self._crt_list, name, cert_dir=self._cert_dir), check_reply)
        except RuntimeApiError as exc:
            logger.error("could not take %s out of the crt-list again: %s", name, exc)

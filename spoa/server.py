"""Thin asyncio shell around ``spoa.connection.Connection``: an SPOA TCP server.

This module owns the IO around the sans-IO core: accepting connections, feeding
received bytes to one ``Connection`` per socket, running the user's handler for
each NOTIFY, writing each reply frame with ONE ``transport.write()`` call, timeouts
and counters.  It uses the ``asyncio.Protocol`` API (not streams), so it runs
unchanged on uvloop; it never installs a loop policy -- pick the loop with
``event_loop_factory()`` if you want uvloop.

Behaviour (haproxy.md A.5/A.6):

* HAPROXY-HELLO -> the negotiated AGENT-HELLO (also for health-check hellos, after
  which HAProxy closes).
* A handler that answers synchronously is ACKed at once (ACKs of one read written together).
* Otherwise each NOTIFY's awaitable runs as its own task, concurrently; at most
  ``max_in_flight`` handlers run per connection, and once that many NOTIFYs are
  running or queued the socket stops reading (``pause_reading``) until one
  finishes.  ACKs go out in completion order, which SPOP allows.
* A handler that raises, times out, or returns actions that cannot be encoded gets
  an empty ACK (logged) -- never a DISCONNECT, which would kill every stream on
  the connection.
* A protocol error -> AGENT-DISCONNECT with the error's status, then only that
  connection is closed.  HAPROXY-DISCONNECT -> AGENT-DISCONNECT(normal), close.
* Closing a connection cancels its handler tasks; ``aclose()`` closes the listener
  and every connection.

What this module must not do: decode or encode frames itself, or know what the
messages mean.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast, final

from ._spec import DEFAULT_MAX_FRAME_SIZE, MIN_FRAME_SIZE
from .connection import Connection, State
from .errors import ProcessingTimeout, SpopError, Status
from .events import Action, AgentDisconnect, HaproxyDisconnect, HaproxyHello, Notify

__all__ = ["Handler", "ServerStats", "SpoaServer", "serve", "event_loop_factory"]

#: The handler: receives one NOTIFY (all messages of one event) and returns the ACK's actions (``()`` for an empty
#: ACK), either directly or as an awaitable. A direct answer is ACKed at once, with no task: for lookups that never
#: block (an in-memory table). An awaitable runs as its own task per NOTIFY, concurrently with the other NOTIFYs of
#: the same connection, bounded by ``max_in_flight`` and ``handler_timeout_s``.
Handler = Callable[[Notify], Awaitable[Sequence[Action]] | Sequence[Action]]

# HAProxy keeps at most 20 NOTIFYs in flight per connection (2.x max-waiting-frames,
# 3.1+ streams_limit; haproxy.md A.5), so 32 never throttles HAProxy itself but still
# bounds a misbehaving peer.
DEFAULT_MAX_IN_FLIGHT = 32

# An ACK that arrives after HAProxy's `timeout processing` (typically 0.5-2 s) is
# ignored (haproxy.md A.6); there is no point in running a handler much longer.
DEFAULT_HANDLER_TIMEOUT_S = 2.0

_SHUTDOWN_MESSAGE = "agent is shutting down"


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """A loop factory: ``uvloop.new_event_loop`` if uvloop is installed, else asyncio's.

    Use it with ``asyncio.Runner(loop_factory=event_loop_factory())``; nothing is
    installed globally.
    """
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


@final
@dataclass(frozen=True, slots=True)
class ServerStats:
    """A snapshot of the server's counters (totals since start unless noted)."""

    connections_total: int
    connections_active: int  # now
    healthchecks: int  # HELLOs with healthcheck=true
    frames_received: int
    frames_sent: int
    notifies: int
    acks: int
    handler_errors: int  # handler raised or returned unusable actions -> empty ACK
    handler_timeouts: int  # handler exceeded handler_timeout_s -> empty ACK
    protocol_errors: int  # connections closed with an error AGENT-DISCONNECT
    in_flight: int  # NOTIFYs running or queued now


@final
class _Counters:
    __slots__ = (
        "connections_total",
        "healthchecks",
        "frames_received",
        "frames_sent",
        "notifies",
        "acks",
        "handler_errors",
        "handler_timeouts",
        "protocol_errors",
    )

    def __init__(self) -> None:
        self.connections_total = 0
        self.healthchecks = 0
        self.frames_received = 0
        self.frames_sent = 0
        self.notifies = 0
        self.acks = 0
        self.handler_errors = 0
        self.handler_timeouts = 0
        self.protocol_errors = 0


@final
class _SpopProtocol(asyncio.Protocol):
    """One SPOP connection: bytes in -> Connection -> handler tasks -> bytes out."""

    def __init__(self, server: SpoaServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._conn = Connection(max_frame_size=server._max_frame_size)
        self._transport: asyncio.Transport | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._queue: collections.deque[Notify] = collections.deque()
        self._reading_paused = False
        self._writing_paused = False
        self._idle_timer: asyncio.TimerHandle | None = None
        self._last_activity = self._loop.time()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.peer: Any = None

    # -- asyncio.Protocol callbacks ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self.peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Small frames, request/response: do not let Nagle delay ACKs.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._server._register(self)
        self._arm_idle_timer()

    def data_received(self, data: bytes) -> None:
        self._last_activity = self._loop.time()
        try:
            events = self._conn.receive_data(data)
        except SpopError as exc:
            self._server._counters.protocol_errors += 1
            self._server._log.warning(
                "spop protocol error from %s: %s (status %d)", self.peer, exc, exc.status
            )
            self._close_with(AgentDisconnect.for_error(exc))
            return
        counters = self._server._counters
        counters.frames_received += len(events)
        queue = self._queue
        for event in events:
            if type(event) is Notify:
                counters.notifies += 1
                queue.append(event)
            elif type(event) is HaproxyHello:
                if event.healthcheck:
                    counters.healthchecks += 1
                self._write(self._conn.send(self._conn.agent_hello()))
            else:
                assert type(event) is HaproxyDisconnect
                self._server._log.debug(
                    "haproxy disconnect from %s: status %s %r",
                    self.peer,
                    event.status,
                    event.message,
                )
                self._close_with(AgentDisconnect(Status.NORMAL, ""))
                return
        self._start_queued()
        self._update_reading()

    def eof_received(self) -> bool | None:
        return False  # close the transport; SPOP has no half-close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self._queue.clear()
        for task in self._tasks:
            task.cancel()
        self._server._unregister(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        # HAProxy is not reading our ACKs: stop reading its NOTIFYs too.
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()

    # -- internals ---------------------------------------------------------------------

    def _write(self, frame: bytes) -> None:
        # One write per frame (haproxy.md A.6, haproxy#3478).
        assert self._transport is not None
        self._transport.write(frame)
        self._server._counters.frames_sent += 1

    def _close_with(self, disconnect: AgentDisconnect) -> None:
        """Send AGENT-DISCONNECT (unless already sent), cancel handlers, close."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._conn.our_state is not State.CLOSED:
            self._write(self._conn.send(disconnect))
        self._queue.clear()
        for task in self._tasks:
            task.cancel()
        transport.close()

    def shutdown(self) -> list[asyncio.Task[None]]:
        """Close on server shutdown; return the cancelled tasks to await."""
        tasks = list(self._tasks)
        self._close_with(AgentDisconnect(Status.NORMAL, _SHUTDOWN_MESSAGE))
        return tasks

    def _start_queued(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        limit = self._server._max_in_flight
        handler = self._server._handler
        queue, tasks = self._queue, self._tasks
        send_ack = self._conn.send_ack
        ready: list[bytes] = []  # ACKs of handlers that answered synchronously, written together
        while queue and len(tasks) < limit:
            notify = queue.popleft()
            try:
                result = handler(notify)
            except Exception:
                self._handler_failed(notify)
                result = ()
            # (the exact-type test first: isinstance() against an ABC costs more than the ACK itself)
            if type(result) is list or type(result) is tuple or not isinstance(result, Awaitable):
                # A synchronous answer needs no task: the common case of an in-memory lookup.
                try:
                    ready.append(send_ack(notify.stream_id, notify.frame_id, result))
                except (SpopError, TypeError) as exc:
                    ready.append(self._unusable_actions(notify, exc))
            else:
                task = self._loop.create_task(self._run(notify, result))
                tasks.add(task)
                task.add_done_callback(self._task_done)
        if ready:
            # Several whole frames in one write is fine; what HAProxy must never see is a frame split across
            # writes (haproxy.md A.6, haproxy#3478).
            transport.write(b"".join(ready))
            counters = self._server._counters
            counters.frames_sent += len(ready)
            counters.acks += len(ready)
            self._last_activity = self._loop.time()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # _run handles handler failures itself; this is a bug in this module.
            self._server._log.error("spop ack task failed", exc_info=task.exception())
        if self._transport is not None and not self._transport.is_closing():
            self._start_queued()
            self._update_reading()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        busy = len(self._tasks) + len(self._queue) >= self._server._max_in_flight
        pause = busy or self._writing_paused
        if pause and not self._reading_paused:
            transport.pause_reading()
            self._reading_paused = True
        elif not pause and self._reading_paused:
            transport.resume_reading()
            self._reading_paused = False

    def _handler_failed(self, notify: Notify) -> None:
        # Never a DISCONNECT for a handler failure: it would abort every stream on this connection
        # (haproxy.md A.6 pitfalls).
        self._server._counters.handler_errors += 1
        self._server._log.exception(
            "spop handler failed (stream %d frame %d): empty ACK", notify.stream_id, notify.frame_id
        )

    async def _run(self, notify: Notify, pending: Awaitable[Sequence[Action]]) -> None:
        server = self._server
        actions: Sequence[Action] = ()
        try:
            async with asyncio.timeout(server._handler_timeout_s):
                actions = await pending
        except TimeoutError:
            server._counters.handler_timeouts += 1
            server._log.warning(
                "spop handler timed out after %ss (stream %d frame %d): empty ACK",
                server._handler_timeout_s,
                notify.stream_id,
                notify.frame_id,
            )
        except Exception:
            self._handler_failed(notify)
        frame = self._ack_frame(notify, actions)
        if frame is not None:
            self._write(frame)

    def _ack_frame(self, notify: Notify, actions: Sequence[Action]) -> bytes | None:
        """The ACK frame for `notify`, or None when the connection is already closing."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return None
        try:
            frame = self._conn.send_ack(notify.stream_id, notify.frame_id, actions)
        except (SpopError, TypeError) as exc:
            frame = self._unusable_actions(notify, exc)
        self._server._counters.acks += 1
        self._last_activity = self._loop.time()
        return frame

    def _unusable_actions(self, notify: Notify, exc: Exception) -> bytes:
        """An empty ACK instead of actions that cannot be encoded or do not fit the negotiated frame size."""
        sid, fid = notify.stream_id, notify.frame_id
        self._server._counters.handler_errors += 1
        self._server._log.warning(
            "spop handler returned unusable actions (stream %d frame %d): %s; empty ACK", sid, fid, exc
        )
        return self._conn.send_ack(sid, fid)

    def _arm_idle_timer(self, delay: float | None = None) -> None:
        idle = self._server._idle_timeout_s
        if idle is None:
            return
        self._idle_timer = self._loop.call_later(
            idle if delay is None else delay, self._check_idle
        )

    def _check_idle(self) -> None:
        self._idle_timer = None
        idle = self._server._idle_timeout_s
        assert idle is not None
        if self._tasks or self._queue:
            self._arm_idle_timer()  # busy is not idle
            return
        remaining = self._last_activity + idle - self._loop.time()
        if remaining > 0:
            self._arm_idle_timer(remaining)
            return
        self._server._log.info("spop connection from %s idle for %ss: closing", self.peer, idle)
        self._close_with(AgentDisconnect.for_error(ProcessingTimeout("idle timeout")))

    @property
    def in_flight(self) -> int:
        return len(self._tasks) + len(self._queue)


@final
class SpoaServer:
    """A listening SPOA.  Create it with ``await serve(...)``; stop it with ``aclose()``.

    Also an async context manager (``async with await serve(...) as server``).
    """

    def __init__(
        self,
        handler: Handler,
        *,
        max_frame_size: int,
        max_in_flight: int,
        handler_timeout_s: float,
        idle_timeout_s: float | None,
        logger: logging.Logger,
    ) -> None:
        if not MIN_FRAME_SIZE <= max_frame_size <= 0xFFFFFFFF:
            raise ValueError(f"max_frame_size must be in [256, 2**32), got {max_frame_size}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if handler_timeout_s <= 0:
            raise ValueError(f"handler_timeout_s must be > 0, got {handler_timeout_s}")
        if idle_timeout_s is not None and idle_timeout_s <= 0:
            raise ValueError(f"idle_timeout_s must be > 0 or None, got {idle_timeout_s}")
        self._handler = handler
        self._max_frame_size = max_frame_size
        self._max_in_flight = max_in_flight
        self._handler_timeout_s = handler_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._log = logger
        self._counters = _Counters()
        self._protocols: set[_SpopProtocol] = set()
        self._server: asyncio.Server | None = None
        self._closed = False
        self._done = asyncio.Event()

    async def _start(
        self, host: str | Sequence[str] | None, port: int, *, backlog: int, reuse_port: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _SpopProtocol(self),
            host,
            port,
            backlog=backlog,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )

    def _register(self, proto: _SpopProtocol) -> None:
        if self._closed:
            # Accepted while aclose() runs: refuse politely.
            self._protocols.add(proto)
            proto.shutdown()
            return
        self._counters.connections_total += 1
        self._protocols.add(proto)

    def _unregister(self, proto: _SpopProtocol) -> None:
        self._protocols.discard(proto)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets (empty after ``aclose()``)."""
        if self._server is None:
            return ()
        return tuple(self._server.sockets)

    @property
    def port(self) -> int:
        """The port of the first listening socket (useful with ``port=0``)."""
        socks = self.sockets
        if not socks:
            raise RuntimeError("server is not listening")
        port: int = socks[0].getsockname()[1]
        return port

    def stats(self) -> ServerStats:
        """A consistent snapshot of the counters."""
        c = self._counters
        return ServerStats(
            connections_total=c.connections_total,
            connections_active=len(self._protocols),
            healthchecks=c.healthchecks,
            frames_received=c.frames_received,
            frames_sent=c.frames_sent,
            notifies=c.notifies,
            acks=c.acks,
            handler_errors=c.handler_errors,
            handler_timeouts=c.handler_timeouts,
            protocol_errors=c.protocol_errors,
            in_flight=sum(p.in_flight for p in self._protocols),
        )

    async def aclose(self, *, timeout_s: float = 5.0) -> None:
        """Stop listening, send AGENT-DISCONNECT(normal) on every connection, close them.

        In-flight handler tasks are cancelled and awaited.  Idempotent.

        Args:
            timeout_s: how long to wait for connections and tasks to finish.
        """
        if self._closed:
            return
        self._closed = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        protocols = list(self._protocols)
        tasks: list[asyncio.Task[None]] = []
        for proto in protocols:
            tasks += proto.shutdown()
        waiting: list[asyncio.Future[Any]] = [p.closed for p in protocols]
        waiting += tasks
        if waiting:
            await asyncio.wait(waiting, timeout=timeout_s)
        if server is not None:
            await server.wait_closed()
        self._done.set()

    async def serve_forever(self) -> None:
        """Wait until ``aclose()`` has finished; cancelling the wait does not close."""
        await self._done.wait()

    async def __aenter__(self) -> SpoaServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def serve(
    handler: Handler,
    host: str | Sequence[str] | None = "127.0.0.1",
    port: int = 0,
    *,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    handler_timeout_s: float = DEFAULT_HANDLER_TIMEOUT_S,
    idle_timeout_s: float | None = None,
    logger: logging.Logger | None = None,
    backlog: int = 512,
    reuse_port: bool = False,
) -> SpoaServer:
    """Start an SPOA listening on ``host:port`` (port 0 picks a free one).

    Args:
        handler: ``async (Notify) -> Sequence[Action]``, called once per NOTIFY.
        host: address(es) to bind; None for all interfaces.
        port: TCP port; 0 for an ephemeral port (read it from ``server.port``).
        max_frame_size: our max-frame-size, >= 256; the negotiated size is the
            minimum of this and HAProxy's (default 16380, HAProxy's own default).
        max_in_flight: handlers running at once per connection; beyond this,
            NOTIFYs queue and reading pauses.
        handler_timeout_s: per-NOTIFY handler deadline; on expiry: empty ACK.
        idle_timeout_s: close connections without traffic or work for this long
            (AGENT-DISCONNECT status 2).  None (default) leaves it to HAProxy,
            whose `timeout idle` (2.x) or backend `timeout server` (3.1+) closes
            idle connections itself.
        logger: where to log; default ``logging.getLogger("spoa.server")``.
        backlog: listen backlog.
        reuse_port: set SO_REUSEPORT (several processes on one port).

    Returns:
        The running server.
    """
    server = SpoaServer(
        handler,
        max_frame_size=max_frame_size,
        max_in_flight=max_in_flight,
        handler_timeout_s=handler_timeout_s,
        idle_timeout_s=idle_timeout_s,
        logger=logger if logger is not None else logging.getLogger("spoa.server"),
    )
    await server._start(host, port, backlog=backlog, reuse_port=reuse_port)
    return server

"""Sans-IO SPOP state machine for the agent side of one connection.

This module owns the protocol rules that span frames: cutting the byte stream into
frames and bounding LEN, the HELLO negotiation, which frame may come when, and
which NOTIFYs still wait for their ACK.  Like h11's ``Connection`` it does no IO
and reads no clock: ``receive_data(bytes)`` returns events, ``send(event)``
returns bytes, and the caller (``spoa.server`` or anything else) moves the bytes.

States (one per direction, as in h11)::

    their_state:  HELLO --HAPROXY-HELLO--> READY --HAPROXY-DISCONNECT--> CLOSED
    our_state:    HELLO --AGENT-HELLO----> READY --AGENT-DISCONNECT----> CLOSED

A protocol error from the peer moves ``their_state`` to ERROR; the caller should
then send ``AgentDisconnect.for_error(exc)`` (allowed in any state but CLOSED) and
close the transport (SPOE.txt §3.2.9, haproxy.md A.6).

What this module must not do: IO, timers, logging, or anything Lockstep-specific.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import final

from ._frames import (
    ActionMemo,
    FrameReader,
    NotifyMemo,
    ack_frame,
    decode_notify_fast,
    decode_payload,
    encode_frame,
    parse_header,
)
from ._spec import (
    DEFAULT_MAX_FRAME_SIZE,
    MIN_FRAME_SIZE,
    SPOP_VERSION,
    FrameType,
)
from .errors import (
    BadFrameSize,
    BadVersion,
    InvalidFrame,
    LocalProtocolError,
    SpopError,
    UnexpectedFrame,
)
from .events import (
    Ack,
    Action,
    AgentDisconnect,
    AgentEvent,
    AgentHello,
    HaproxyDisconnect,
    HaproxyEvent,
    HaproxyHello,
    Notify,
)

__all__ = ["Connection", "State", "PIPELINING"]

#: The only capability we ever announce (haproxy.md A.5): "async" is 2.x-only and
#: not needed, "fragmentation" was never supported by HAProxy on receive.
PIPELINING = "pipelining"

# Frame types HAProxy may send in each of its states.
_ALLOWED_AFTER_HELLO = frozenset({FrameType.NOTIFY, FrameType.HAPROXY_DISCONNECT})


class State(enum.Enum):
    """The state of one direction of a connection."""

    HELLO = "HELLO"  # the HELLO of this direction has not been sent/received yet
    READY = "READY"  # HELLO done: NOTIFY/ACK may flow
    CLOSED = "CLOSED"  # DISCONNECT sent/received: nothing more
    ERROR = "ERROR"  # (their_state only) the peer broke the protocol


_READY = State.READY  # read once per frame on the hot path


def _speaks_2x(version: str) -> bool:
    """True for "2", "2.0", "02.1" ...: a major version of 2 in ASCII digits.

    Compared as text, not with ``int()``: ``str.isdigit`` also accepts digits that
    ``int`` refuses ("²") and ``int`` refuses more than 4300 digits, so parsing could
    raise ValueError from a HELLO -- a crash instead of a BAD_VSN disconnect (found by
    the fuzz campaign, tests/spoa/test_fuzz_campaign.py).
    """
    head = version.split(".", 1)[0].strip()
    return head.isascii() and head.isdigit() and head.lstrip("0") == "2"


@final
class Connection:
    """The agent side of one SPOP connection, without IO.

    Args:
        max_frame_size: the largest frame (LEN) we accept and send.  It bounds
            inbound frames until the HELLO; afterwards the negotiated size,
            ``min(ours, haproxy's)``, does (SPOE.txt §3.2.5).
        pipelining: announce the ``pipelining`` capability when HAProxy offers it.

    Raises:
        ValueError: ``max_frame_size`` is below 256 (SPOE.txt §3.2.5).
    """

    __slots__ = (
        "_our_max",
        "_reader",
        "_pipelining",
        "_their",
        "_our",
        "_hello",
        "_reply",
        "_in_flight",
        "_action_memo",
        "_notify_memo",
    )

    def __init__(
        self, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, pipelining: bool = True
    ) -> None:
        if max_frame_size < MIN_FRAME_SIZE or max_frame_size > 0xFFFFFFFF:
            raise ValueError(f"max_frame_size must be in [256, 2**32), got {max_frame_size}")
        self._our_max = max_frame_size
        self._reader = FrameReader(max_frame_size)
        self._pipelining = pipelining
        self._their = State.HELLO
        self._our = State.HELLO
        self._hello: HaproxyHello | None = None
        self._reply: AgentHello | None = None
        self._in_flight: set[tuple[int, int]] = set()
        self._action_memo: ActionMemo = {}
        self._notify_memo: NotifyMemo = {}

    # -- read-only state ---------------------------------------------------------------

    @property
    def their_state(self) -> State:
        return self._their

    @property
    def our_state(self) -> State:
        return self._our

    @property
    def max_frame_size(self) -> int:
        """The frame size limit in force now (ours before HELLO, then the negotiated one)."""
        return self._reader.max_frame_size

    @property
    def hello(self) -> HaproxyHello | None:
        """The HAPROXY-HELLO received, if any."""
        return self._hello

    @property
    def healthcheck(self) -> bool:
        """True once a health-check HELLO (``healthcheck`` = true) was received."""
        return self._hello is not None and self._hello.healthcheck

    @property
    def in_flight(self) -> int:
        """NOTIFYs received and not yet ACKed."""
        return len(self._in_flight)

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held in the receive buffer."""
        return self._reader.buffered

    # -- receiving ---------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[HaproxyEvent]:
        """Feed bytes received from HAProxy; return the events they complete.

        Frames may be split anywhere and many may arrive in one chunk (pipelining).
        A frame's LEN is checked against ``max_frame_size`` as soon as its 4 bytes
        are in, before any of its body is buffered.  After HAPROXY-DISCONNECT (or
        after we sent AGENT-DISCONNECT) further data is ignored.

        Args:
            data: the bytes, possibly empty.

        Returns:
            ``HaproxyHello``, ``Notify`` and ``HaproxyDisconnect`` events, in order.

        Raises:
            SpopError: HAProxy broke the protocol; ``their_state`` becomes ERROR.
                Events decoded from the same chunk before the bad frame are lost,
                which does not matter: the connection must be closed.
            LocalProtocolError: called again after an error.
        """
        if self._their is State.ERROR:
            raise LocalProtocolError("cannot receive data after a protocol error")
        if self._their is State.CLOSED or not data:
            return []
        reader = self._reader
        in_flight = self._in_flight
        memo = self._notify_memo
        events: list[HaproxyEvent] = []
        try:
            reader.feed(data)
            while (body := reader.next_frame()) is not None:
                # The hot path: a NOTIFY of the usual shape once the HELLO is done.
                if self._their is _READY and (notify := decode_notify_fast(body, memo)) is not None:
                    key = (notify.stream_id, notify.frame_id)
                    if key in in_flight:
                        raise _duplicate(key)
                    in_flight.add(key)
                    events.append(notify)
                    continue
                events.append(self._frame(body))
                if self.their_state is State.CLOSED:  # (property: _frame changes it)
                    reader.clear()  # HAPROXY-DISCONNECT: whatever follows is ignored
                    break
        except SpopError:
            self._their = State.ERROR
            reader.clear()
            raise
        return events

    def _frame(self, body: bytes) -> HaproxyEvent:
        ftype, _flags, sid, fid, pos = parse_header(body)
        if self._their is State.HELLO:
            if ftype is not FrameType.HAPROXY_HELLO:
                raise UnexpectedFrame(f"{ftype.name} frame before HAPROXY-HELLO")
        elif ftype not in _ALLOWED_AFTER_HELLO:
            raise UnexpectedFrame(f"unexpected {ftype.name} frame after HAPROXY-HELLO")
        event = decode_payload(ftype, sid, fid, body, pos)
        if type(event) is Notify:
            key = (sid, fid)
            if key in self._in_flight:
                raise _duplicate(key)
            self._in_flight.add(key)
        elif type(event) is HaproxyHello:
            self._negotiate(event)
        else:
            assert type(event) is HaproxyDisconnect
            self._their = State.CLOSED
        assert isinstance(event, (Notify, HaproxyHello, HaproxyDisconnect))
        return event

    def _negotiate(self, hello: HaproxyHello) -> None:
        # SPOE.txt §3.2.5, haproxy.md A.5: answer "2.0" if HAProxy speaks any 2.x,
        # max-frame-size = min(ours, theirs) and >= 256, capabilities: pipelining only.
        if not any(_speaks_2x(v) for v in hello.supported_versions):
            raise BadVersion(f"no SPOP 2.x in supported-versions {hello.supported_versions}")
        size = min(self._our_max, hello.max_frame_size)
        if size < MIN_FRAME_SIZE:
            raise BadFrameSize(f"max-frame-size {hello.max_frame_size} is below 256")
        caps: tuple[str, ...] = ()
        if self._pipelining and PIPELINING in hello.capabilities:
            caps = (PIPELINING,)
        self._hello = hello
        self._reply = AgentHello(max_frame_size=size, capabilities=caps)
        self._reader.max_frame_size = size
        self._their = State.READY

    # -- sending -----------------------------------------------------------------------

    def agent_hello(self) -> AgentHello:
        """The AGENT-HELLO negotiated from the HAPROXY-HELLO received.

        Raises:
            LocalProtocolError: no HAPROXY-HELLO was received yet.
        """
        if self._reply is None:
            raise LocalProtocolError("no HAPROXY-HELLO received yet")
        return self._reply

    def send(self, event: AgentEvent) -> bytes:
        """Encode an agent event as ONE complete frame and update the state.

        Write the result with a single ``write()`` call: HAProxy 3.2 has been seen
        to reset connections whose frames arrive in pieces (haproxy.md A.6, #3478).

        Args:
            event: ``AgentHello`` (once, after HAPROXY-HELLO), ``Ack`` (once per
                NOTIFY received, any order) or ``AgentDisconnect`` (any time).

        Returns:
            The frame bytes, LEN included.

        Raises:
            LocalProtocolError: the event is not allowed now.
            FrameTooBig: the frame exceeds the negotiated max-frame-size; for an
                ``Ack`` the NOTIFY stays in flight so an empty ACK can be sent.
            InvalidValue: a string cannot be encoded.
        """
        if self._our is State.CLOSED:
            raise LocalProtocolError("connection closed: AGENT-DISCONNECT already sent")
        tp = type(event)
        if tp is Ack:
            assert isinstance(event, Ack)
            if self._our is not State.READY:
                raise LocalProtocolError("ACK before AGENT-HELLO")
            key = (event.stream_id, event.frame_id)
            if key not in self._in_flight:
                raise LocalProtocolError(
                    f"ACK for unknown NOTIFY stream-id {key[0]} frame-id {key[1]}"
                )
            data = encode_frame(event, max_frame_size=self._reader.max_frame_size)
            self._in_flight.discard(key)
            return data
        if tp is AgentHello:
            assert isinstance(event, AgentHello)
            self._check_agent_hello(event)
            data = encode_frame(event, max_frame_size=self._reader.max_frame_size)
            self._reader.max_frame_size = event.max_frame_size
            self._our = State.READY
            return data
        if tp is AgentDisconnect:
            data = encode_frame(event, max_frame_size=self._reader.max_frame_size)
            self._our = State.CLOSED
            if self._their is not State.ERROR:
                self._their = State.CLOSED
            self._in_flight.clear()
            self._reader.clear()
            return data
        raise LocalProtocolError(f"an agent cannot send {tp.__name__}")

    def send_ack(self, stream_id: int, frame_id: int, actions: Sequence[Action] = ()) -> bytes:
        """``send(Ack(stream_id, frame_id, actions))`` without building the ``Ack`` event.

        Same checks, same bytes, same state change; the server uses it once per NOTIFY.

        Raises:
            LocalProtocolError: not READY yet, or no such NOTIFY in flight.
            FrameTooBig: the frame exceeds the negotiated max-frame-size; the NOTIFY
                stays in flight so an empty ACK can be sent.
            InvalidValue: an action is not a ``SetVar``/``UnsetVar`` or cannot be encoded.
        """
        if self._our is not _READY:
            if self._our is State.CLOSED:
                raise LocalProtocolError("connection closed: AGENT-DISCONNECT already sent")
            raise LocalProtocolError("ACK before AGENT-HELLO")
        key = (stream_id, frame_id)
        in_flight = self._in_flight
        if key not in in_flight:
            raise LocalProtocolError(f"ACK for unknown NOTIFY stream-id {stream_id} frame-id {frame_id}")
        data = ack_frame(stream_id, frame_id, actions, self._reader.max_frame_size, self._action_memo)
        in_flight.discard(key)
        return data

    def _check_agent_hello(self, event: AgentHello) -> None:
        if self._our is not State.HELLO:
            raise LocalProtocolError("AGENT-HELLO already sent")
        if self._hello is None:
            raise LocalProtocolError("AGENT-HELLO before HAPROXY-HELLO")
        if event.version != SPOP_VERSION:
            raise LocalProtocolError(f"HAProxy only accepts version {SPOP_VERSION}")
        limit = self._reader.max_frame_size
        if not MIN_FRAME_SIZE <= event.max_frame_size <= limit:
            # HAProxy answers a larger size with status 9 (haproxy.md A.5).
            raise LocalProtocolError(
                f"max-frame-size must be in [256, {limit}], got {event.max_frame_size}"
            )
        for cap in event.capabilities:
            if cap not in self._hello.capabilities or cap != PIPELINING:
                raise LocalProtocolError(f"capability {cap!r} cannot be announced")


def _duplicate(key: tuple[int, int]) -> InvalidFrame:
    # HAProxy never reuses the ids of an un-ACKed NOTIFY (haproxy.md A.1): a duplicate
    # would make the two ACKs ambiguous.
    return InvalidFrame(f"NOTIFY stream-id {key[0]} frame-id {key[1]} already in flight")

"""SPOP frame codec: header + payload, both directions (pure functions, no state).

This module owns the mapping between one complete frame and one event
(SPOE.txt §3.2, haproxy.md A.1/A.4):

    <LEN:4 BE uint32> <TYPE:1> <FLAGS:4 BE> <STREAM-ID:varint> <FRAME-ID:varint> <PAYLOAD>

``FrameReader`` cuts a byte stream into frame bodies and bounds LEN before the body
is buffered.  ``encode_frame`` turns any event -- agent frames for the server, HAProxy frames for
tests, benchmarks and fuzzing -- into the full wire bytes including LEN, built in
one buffer.  ``decode_frame`` and the lower-level ``parse_header``/``decode_payload``
read the body of a frame, i.e. what follows LEN.  Only the framer sees partial
input (STYLE.md 2.2 rule 3).  Inside a complete frame, running out of bytes or any
malformed field is ``InvalidFrame``.

Every frame is sent with FIN and only FIN: fragmentation is never announced by us,
so a frame without FIN, with ABORT or of type UNSET is
``FragmentationNotSupported`` (haproxy.md A.1).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import final

from ._spec import (
    HEADER_MIN_LEN,
    MAX_DISCONNECT_MESSAGE,
    ActionType,
    DataType,
    Flags,
    FrameType,
    VarScope,
)
from ._typed import decode_string, decode_typed, encode_string, encode_typed
from ._varint import decode_varint, encode_varint
from .errors import (
    BadFrameSize,
    FragmentationNotSupported,
    FrameTooBig,
    InvalidFrame,
    InvalidValue,
    NoCapabilities,
    NoMaxFrameSize,
    NoVersion,
    SpopError,
    Status,
)
from .events import (
    AGENT_HELLO_KEYS,
    DISCONNECT_KEYS,
    HELLO_KEYS,
    KV,
    Ack,
    Action,
    AgentDisconnect,
    AgentHello,
    Event,
    HaproxyDisconnect,
    HaproxyHello,
    Message,
    Notify,
    SetVar,
    TypedValue,
    UnsetVar,
    message_unchecked,
    notify_unchecked,
    string_unchecked,
)

__all__ = [
    "FrameReader",
    "FrameHeader",
    "encode_frame",
    "decode_frame",
    "parse_header",
    "decode_payload",
    "frame_type_of",
    "decode_notify_fast",
    "encode_ack",
    "ack_frame",
    "ActionMemo",
    "NotifyMemo",
]

_LEN = struct.Struct(">I")
_FLAGS = struct.Struct(">I")
_U32_MAX = (1 << 32) - 1

# HELLO and DISCONNECT frames carry stream-id = frame-id = 0, i.e. the literal bytes
# "00 00"; HAProxy checks those two bytes directly (flt_spoe@2.8, haproxy.md A.1).
_FIN = _FLAGS.pack(Flags.FIN)
# Plain ints for the per-frame check: IntFlag arithmetic costs a Python call per operation on the hot path.
_FLAG_FIN = int(Flags.FIN)
_FLAG_ABORT = int(Flags.ABORT)
_INT_TYPES = frozenset({DataType.INT32, DataType.UINT32, DataType.INT64, DataType.UINT64})
_FRAME_TYPES = {int(t): t for t in FrameType}
_SCOPES = {int(s): s for s in VarScope}


FrameHeader = tuple[FrameType, int, int, int, int]
"""``(type, flags, stream_id, frame_id, payload_offset)`` as returned by ``parse_header``."""


# -- framing ------------------------------------------------------------------------


@final
class FrameReader:
    """Cuts a byte stream into frame bodies (sans-IO, h11 ``next_event`` style).

    ``feed()`` appends bytes; ``next_frame()`` returns the body (TYPE..PAYLOAD, LEN
    stripped) of the next complete frame or ``None`` if more bytes are needed.  LEN
    is checked against ``max_frame_size`` as soon as its 4 bytes are in, before
    waiting for the body (haproxy.md A.6 pitfalls); ``max_frame_size`` may change
    between two calls, as it does when the HELLO exchange ends mid-chunk.

    Args:
        max_frame_size: the largest LEN accepted.
    """

    __slots__ = ("_buf", "_pos", "max_frame_size")

    def __init__(self, max_frame_size: int) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.max_frame_size = max_frame_size

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        if self._pos:
            # Drop consumed frames before growing; amortised O(n) over a stream.
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_frame(self) -> bytes | None:
        """The next complete frame body, or None if incomplete.

        Raises:
            FrameTooBig: LEN exceeds ``max_frame_size``.
            InvalidFrame: LEN is too small to hold a frame header.
        """
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 4:
            return None
        (length,) = _LEN.unpack_from(buf, pos)
        if length > self.max_frame_size:
            raise FrameTooBig(
                f"frame of {length} bytes exceeds max-frame-size {self.max_frame_size}"
            )
        if length < HEADER_MIN_LEN:
            raise InvalidFrame(f"frame of {length} bytes is shorter than a header")
        end = pos + 4 + length
        if end > len(buf):
            return None
        self._pos = end
        return bytes(buf[pos + 4 : end])

    def clear(self) -> None:
        """Discard everything buffered."""
        self._buf.clear()
        self._pos = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as a frame."""
        return len(self._buf) - self._pos


# -- encoding -----------------------------------------------------------------------


def _start(ftype: FrameType, stream_id: int, frame_id: int) -> bytearray:
    out = bytearray(b"\0\0\0\0")  # LEN, filled in by _finish
    out.append(ftype)
    out += _FIN
    out += encode_varint(stream_id)
    out += encode_varint(frame_id)
    return out


def _finish(out: bytearray, max_frame_size: int | None) -> bytes:
    length = len(out) - 4
    if max_frame_size is not None and length > max_frame_size:
        raise FrameTooBig(f"frame of {length} bytes exceeds max-frame-size {max_frame_size}")
    _LEN.pack_into(out, 0, length)
    return bytes(out)


def _kv(out: bytearray, key: str, value: TypedValue) -> None:
    encode_string(out, key)
    encode_typed(out, value)


def _encode_haproxy_hello(ev: HaproxyHello, out: bytearray) -> None:
    # Key order as HAProxy writes it (flt_spoe@2.8 spoe_prepare_hahello_frame and the
    # check hello, haproxy.md A.8), so captured frames re-encode byte for byte.
    _kv(out, "supported-versions", TypedValue(DataType.STRING, ",".join(ev.supported_versions)))
    _kv(out, "max-frame-size", TypedValue(DataType.UINT32, ev.max_frame_size))
    _kv(out, "capabilities", TypedValue(DataType.STRING, ",".join(ev.capabilities)))
    if ev.healthcheck:
        _kv(out, "healthcheck", TypedValue(DataType.BOOL, True))
    if ev.engine_id is not None:
        _kv(out, "engine-id", TypedValue(DataType.STRING, ev.engine_id))
    for key, value in ev.extra:
        _kv(out, key, value)


def _encode_agent_hello(ev: AgentHello, out: bytearray) -> None:
    # Same order and types as the AGENT-HELLO that 2.6.12 accepted (haproxy.md A.7).
    _kv(out, "version", TypedValue(DataType.STRING, ev.version))
    _kv(out, "max-frame-size", TypedValue(DataType.UINT32, ev.max_frame_size))
    _kv(out, "capabilities", TypedValue(DataType.STRING, ",".join(ev.capabilities)))
    for key, value in ev.extra:
        _kv(out, key, value)


def _encode_disconnect(ev: HaproxyDisconnect | AgentDisconnect, out: bytearray) -> None:
    # status-code UINT32, message STRING (SPOE.txt §3.2.8-9; captured in haproxy.md A.8).
    _kv(out, "status-code", TypedValue(DataType.UINT32, int(ev.status)))
    _kv(out, "message", TypedValue(DataType.STRING, ev.message))
    for key, value in ev.extra:
        _kv(out, key, value)


def _encode_notify(ev: Notify, out: bytearray) -> None:
    # (msg-name STRING, nb-args u8, (arg-name STRING, value TYPED) x nb-args)*
    for msg in ev.messages:
        encode_string(out, msg.name)
        out.append(len(msg.args))  # <= 255, checked by Message
        for name, value in msg.args:
            encode_string(out, name)
            encode_typed(out, value)


def _encode_actions(out: bytearray, actions: Sequence[Action]) -> None:
    # set-var = 01 03 <scope> <name> <value>; unset-var = 02 02 <scope> <name> (§3.4)
    for action in actions:
        tp = type(action)
        if tp is SetVar:
            assert isinstance(action, SetVar)
            out += b"\x01\x03"
            out.append(action.scope)
            encode_string(out, action.name)
            encode_typed(out, action.value)
        elif tp is UnsetVar:
            out += b"\x02\x02"
            out.append(action.scope)
            encode_string(out, action.name)
        else:
            raise InvalidValue(f"actions must be SetVar/UnsetVar, got {tp.__name__}")


def _encode_ack(ev: Ack, out: bytearray) -> None:
    _encode_actions(out, ev.actions)


# TYPE=ACK, FLAGS=FIN: what follows LEN in every ACK.
_ACK_TYPE_FLAGS = bytes((FrameType.ACK,)) + _FIN
_SMALL_VARINTS = [bytes((i,)) for i in range(240)]  # one-byte varints, as in _varint

#: ``id(action) -> (action, its encoding)``: see ``encode_ack``.
ActionMemo = dict[int, tuple[Action, bytes]]

# Bounds of an ActionMemo: entries, and the largest encoding kept.
_MEMO_ENTRIES = 64
_MEMO_MAX_BYTES = 512


def encode_ack(
    stream_id: int,
    frame_id: int,
    actions: Sequence[Action],
    *,
    max_frame_size: int | None = None,
    memo: ActionMemo | None = None,
) -> bytes:
    """``encode_frame(Ack(stream_id, frame_id, actions))`` without building the ``Ack``.

    The server's per-NOTIFY path: the ids come from a decoded NOTIFY, so only the
    actions need checking, and that happens while encoding them.

    Args:
        memo: remembers the encoding of recently seen action objects, by identity, for
            a handler that answers with the same ``SetVar`` object again and again.
            Each entry holds its action, so an ``id`` cannot be reused while cached;
            at most 64 entries of at most 512 bytes (cleared when full).

    Raises:
        InvalidValue: an id does not fit 64 bits, or an action is not a
            ``SetVar``/``UnsetVar`` or cannot be encoded.
        FrameTooBig: the frame's LEN exceeds ``max_frame_size``.
    """
    return ack_frame(stream_id, frame_id, actions, max_frame_size, memo)


def ack_frame(
    stream_id: int,
    frame_id: int,
    actions: Sequence[Action],
    max_frame_size: int | None,
    memo: ActionMemo | None,
) -> bytes:
    """``encode_ack`` with positional arguments: the per-NOTIFY call of ``Connection.send_ack``."""
    sid = _SMALL_VARINTS[stream_id] if 0 <= stream_id < 240 else encode_varint(stream_id)
    fid = _SMALL_VARINTS[frame_id] if 0 <= frame_id < 240 else encode_varint(frame_id)
    if memo is None:
        out = bytearray()
        _encode_actions(out, actions)
        payload = bytes(out)
    elif (
        type(actions) is list
        and len(actions) == 1
        and (hit := memo.get(id(actions[0]))) is not None
        and hit[0] is actions[0]
    ):
        payload = hit[1]  # the common answer: one action encoded before
    else:
        parts = []
        for action in actions:
            hit = memo.get(id(action))
            if hit is not None and hit[0] is action:
                parts.append(hit[1])
                continue
            out = bytearray()
            _encode_actions(out, (action,))
            encoded = bytes(out)
            if len(encoded) <= _MEMO_MAX_BYTES:
                if len(memo) >= _MEMO_ENTRIES:
                    memo.clear()
                memo[id(action)] = (action, encoded)
            parts.append(encoded)
        payload = b"".join(parts)
    length = 5 + len(sid) + len(fid) + len(payload)
    if max_frame_size is not None and length > max_frame_size:
        raise FrameTooBig(f"frame of {length} bytes exceeds max-frame-size {max_frame_size}")
    return b"".join((_LEN.pack(length), _ACK_TYPE_FLAGS, sid, fid, payload))


def encode_frame(event: Event, *, max_frame_size: int | None = None) -> bytes:
    """Encode any event as one complete frame, LEN prefix included.

    Args:
        event: an agent or a HAProxy event.
        max_frame_size: if given, the largest LEN allowed (the negotiated size).

    Returns:
        The frame, ready for a single ``write()``.

    Raises:
        FrameTooBig: the frame's LEN exceeds ``max_frame_size``.
        InvalidValue: a string cannot be encoded as UTF-8.
    """
    tp = type(event)
    if tp is Ack:
        assert isinstance(event, Ack)
        out = _start(FrameType.ACK, event.stream_id, event.frame_id)
        _encode_ack(event, out)
    elif tp is Notify:
        assert isinstance(event, Notify)
        out = _start(FrameType.NOTIFY, event.stream_id, event.frame_id)
        _encode_notify(event, out)
    elif tp is AgentHello:
        assert isinstance(event, AgentHello)
        out = _start(FrameType.AGENT_HELLO, 0, 0)
        _encode_agent_hello(event, out)
    elif tp is HaproxyHello:
        assert isinstance(event, HaproxyHello)
        out = _start(FrameType.HAPROXY_HELLO, 0, 0)
        _encode_haproxy_hello(event, out)
    elif tp is AgentDisconnect:
        assert isinstance(event, AgentDisconnect)
        out = _start(FrameType.AGENT_DISCONNECT, 0, 0)
        _encode_disconnect(event, out)
    elif tp is HaproxyDisconnect:
        assert isinstance(event, HaproxyDisconnect)
        out = _start(FrameType.HAPROXY_DISCONNECT, 0, 0)
        _encode_disconnect(event, out)
    else:
        raise TypeError(f"not a SPOP event: {event!r}")
    return _finish(out, max_frame_size)


def frame_type_of(event: Event) -> FrameType:
    """The frame type an event is sent as."""
    return _EVENT_TYPES[type(event)]


_EVENT_TYPES: dict[type, FrameType] = {
    HaproxyHello: FrameType.HAPROXY_HELLO,
    HaproxyDisconnect: FrameType.HAPROXY_DISCONNECT,
    Notify: FrameType.NOTIFY,
    AgentHello: FrameType.AGENT_HELLO,
    AgentDisconnect: FrameType.AGENT_DISCONNECT,
    Ack: FrameType.ACK,
}


# -- decoding -----------------------------------------------------------------------


def parse_header(body: bytes | memoryview) -> FrameHeader:
    """Read TYPE, FLAGS, STREAM-ID and FRAME-ID of a frame body (LEN excluded).

    Checks what can be checked without the payload: the frame type is known, FIN is
    set and ABORT is not (fragmentation is not supported), and HELLO/DISCONNECT
    frames use ids 0/0.

    Returns:
        ``(type, flags, stream_id, frame_id, payload_offset)``.

    Raises:
        InvalidFrame: truncated header, unknown type, non-zero ids on HELLO/DISCONNECT.
        FragmentationNotSupported: UNSET type, FIN missing or ABORT set.
    """
    if len(body) < HEADER_MIN_LEN:
        raise InvalidFrame(f"frame of {len(body)} bytes is shorter than a header")
    ftype = _FRAME_TYPES.get(body[0])
    if ftype is None:
        # Reject unknown types before looking at anything else (haproxy-spoe-go
        # frame/read.go; STYLE.md 1.6).
        raise InvalidFrame(f"unknown frame type {body[0]}")
    if ftype is FrameType.UNSET:
        raise FragmentationNotSupported("fragmented frame (type UNSET) received")
    (flags,) = _FLAGS.unpack_from(body, 1)
    if not flags & _FLAG_FIN or flags & _FLAG_ABORT:
        raise FragmentationNotSupported(f"frame flags 0x{flags:08x}: fragmentation not supported")
    stream_id, pos = decode_varint(body, 5)
    frame_id, pos = decode_varint(body, pos)
    if ftype not in (FrameType.NOTIFY, FrameType.ACK) and (stream_id or frame_id):
        raise InvalidFrame(f"{ftype.name} must have stream-id 0 and frame-id 0")
    return ftype, flags, stream_id, frame_id, pos


def _decode_kv_list(body: bytes | memoryview, pos: int) -> list[KV]:
    # KV-LIST: (key STRING, value TYPED)* until the end of the frame, no count (A.4).
    items: list[KV] = []
    end = len(body)
    while pos < end:
        key, pos = decode_string(body, pos)
        value, pos = decode_typed(body, pos)
        items.append((key, value))
    return items


def _split_known(
    items: list[KV], known: frozenset[str]
) -> tuple[dict[str, TypedValue], tuple[KV, ...]]:
    # A repeated known key: the last one wins, as in HAProxy's sequential parsing.
    found: dict[str, TypedValue] = {}
    extra: list[KV] = []
    for key, value in items:
        if key in known:
            found[key] = value
        else:
            extra.append((key, value))
    return found, tuple(extra)


def _str_field(value: TypedValue, key: str) -> str:
    if value.type is not DataType.STRING:
        raise InvalidFrame(f"{key} must be a STRING, got {value.type.name}")
    assert isinstance(value.value, str)
    return value.value


def _split_list(text: str) -> tuple[str, ...]:
    # "pipelining,async" / "2.0" (SPOE.txt §3.2.5: comma-separated lists).
    return tuple(item for item in (part.strip() for part in text.split(",")) if item)


def _frame_size_field(found: dict[str, TypedValue]) -> int:
    value = found.get("max-frame-size")
    if value is None:
        raise NoMaxFrameSize("HELLO without max-frame-size")
    if value.type not in _INT_TYPES:
        raise InvalidFrame(f"max-frame-size must be an integer, got {value.type.name}")
    assert isinstance(value.value, int)
    if not 0 <= value.value <= _U32_MAX:
        raise BadFrameSize(f"max-frame-size {value.value} out of range")
    return value.value


def _decode_haproxy_hello(body: bytes | memoryview, pos: int) -> HaproxyHello:
    found, extra = _split_known(_decode_kv_list(body, pos), HELLO_KEYS)
    versions = found.get("supported-versions")
    if versions is None:
        raise NoVersion("HAPROXY-HELLO without supported-versions")
    max_frame_size = _frame_size_field(found)
    caps = found.get("capabilities")
    if caps is None:
        raise NoCapabilities("HAPROXY-HELLO without capabilities")
    engine = found.get("engine-id")
    check = found.get("healthcheck")
    if check is not None and check.type is not DataType.BOOL:
        raise InvalidFrame(f"healthcheck must be a BOOL, got {check.type.name}")
    return HaproxyHello(
        supported_versions=_split_list(_str_field(versions, "supported-versions")),
        max_frame_size=max_frame_size,
        capabilities=_split_list(_str_field(caps, "capabilities")),
        engine_id=None if engine is None else _str_field(engine, "engine-id"),
        healthcheck=check is not None and check.value is True,
        extra=extra,
    )


def _decode_agent_hello(body: bytes | memoryview, pos: int) -> AgentHello:
    found, extra = _split_known(_decode_kv_list(body, pos), AGENT_HELLO_KEYS)
    version = found.get("version")
    if version is None:
        raise NoVersion("AGENT-HELLO without version")
    max_frame_size = _frame_size_field(found)
    caps = found.get("capabilities")
    # HAProxy 2.x tolerates a missing capabilities key in AGENT-HELLO (haproxy.md A.5).
    return AgentHello(
        max_frame_size=max_frame_size,
        capabilities=() if caps is None else _split_list(_str_field(caps, "capabilities")),
        version=_str_field(version, "version"),
        extra=extra,
    )


def _decode_disconnect_fields(
    body: bytes | memoryview, pos: int
) -> tuple[int, str, tuple[KV, ...]]:
    found, extra = _split_known(_decode_kv_list(body, pos), DISCONNECT_KEYS)
    status = found.get("status-code")
    if status is None:
        raise InvalidFrame("DISCONNECT without status-code")
    if status.type not in _INT_TYPES:
        raise InvalidFrame(f"status-code must be an integer, got {status.type.name}")
    assert isinstance(status.value, int)
    if not 0 <= status.value <= _U32_MAX:
        raise InvalidFrame(f"status-code {status.value} out of range")
    message = found.get("message")
    text = "" if message is None else _str_field(message, "message")
    code: int = status.value
    try:
        code = Status(code)
    except ValueError:
        pass
    return code, text, extra


def _decode_notify(body: bytes | memoryview, pos: int, sid: int, fid: int) -> Notify:
    messages: list[Message] = []
    end = len(body)
    while pos < end:
        name, pos = decode_string(body, pos)
        if pos >= end:
            raise InvalidFrame("NOTIFY message without nb-args")
        nb_args = body[pos]
        pos += 1
        args: list[KV] = []
        for _ in range(nb_args):
            arg_name, pos = decode_string(body, pos)
            value, pos = decode_typed(body, pos)
            args.append((arg_name, value))
        messages.append(Message(name, tuple(args)))
    return Notify(sid, fid, tuple(messages))


def _decode_ack(body: bytes | memoryview, pos: int, sid: int, fid: int) -> Ack:
    actions: list[Action] = []
    end = len(body)
    while pos < end:
        if pos + 3 > end:
            raise InvalidFrame("truncated ACK action")
        atype, nb_args, scope_byte = body[pos], body[pos + 1], body[pos + 2]
        pos += 3
        scope = _SCOPES.get(scope_byte)
        if scope is None:
            raise InvalidFrame(f"unknown variable scope {scope_byte}")
        if atype == ActionType.SET_VAR and nb_args == 3:
            name, pos = decode_string(body, pos)
            value, pos = decode_typed(body, pos)
            actions.append(SetVar(scope, name, value))
        elif atype == ActionType.UNSET_VAR and nb_args == 2:
            name, pos = decode_string(body, pos)
            actions.append(UnsetVar(scope, name))
        else:
            raise InvalidFrame(f"unknown action {atype} with {nb_args} args")
    return Ack(sid, fid, tuple(actions))


# -- NOTIFY fast path -----------------------------------------------------------------

# TYPE=NOTIFY and FLAGS=FIN exactly: what HAProxy puts in front of every NOTIFY.
_NOTIFY_HEAD = bytes((FrameType.NOTIFY,)) + _FIN
_TYPE_STRING = int(DataType.STRING)  # a STRING type byte without flags

#: ``payload bytes -> the messages they decode to``: see ``decode_notify_fast``.
NotifyMemo = dict[bytes, tuple[Message, ...]]

# Bounds of a NotifyMemo: entries, and the largest payload kept.
_NOTIFY_MEMO_ENTRIES = 16
_NOTIFY_MEMO_MAX_BYTES = 512


def decode_notify_fast(body: bytes, memo: NotifyMemo | None = None) -> Notify | None:
    """Decode a NOTIFY body of the usual shape quickly, or return None.

    The shape HAProxy sends on the hot path: FLAGS = FIN exactly, message and
    argument names shorter than 240 bytes (one-byte length), STRING values.  Other
    typed values go through ``decode_typed``.  For every body it accepts the result
    equals ``decode_frame(body)`` (a differential property test checks this); for
    anything else -- another frame type or flags, a long name, malformed or
    truncated data -- it returns None and the caller runs the general decoder, which
    raises the precise error.  So the fast path never decides that input is bad.

    Args:
        body: a complete frame body (LEN stripped), as ``FrameReader`` returns it.
        memo: remembers the messages of recently decoded payloads (everything after
            the ids).  HAProxy sends the same payload for every request to the same
            URL -- only the ids differ -- and the decoded messages are immutable, so
            equal bytes may share them.  Only payloads that decoded successfully are
            kept; at most 16 entries of at most 512 bytes (cleared when full).
    """
    if body[:5] != _NOTIFY_HEAD:
        return None
    try:
        sid = body[5]
        if sid < 240:
            pos = 6
        else:
            sid, pos = decode_varint(body, 5)
        fid = body[pos]
        if fid < 240:
            pos += 1
        else:
            fid, pos = decode_varint(body, pos)
        if memo is None:
            messages = _messages_fast(body, pos)
        else:
            payload = body[pos:]
            messages = memo.get(payload)
            if messages is None:
                messages = _messages_fast(body, pos)
                if messages is not None and len(payload) <= _NOTIFY_MEMO_MAX_BYTES:
                    if len(memo) >= _NOTIFY_MEMO_ENTRIES:
                        memo.clear()
                    memo[payload] = messages
    except (SpopError, IndexError):
        return None  # truncated or malformed: the general decoder says how
    if messages is None:
        return None
    return notify_unchecked(sid, fid, messages)


def _messages_fast(body: bytes, pos: int) -> tuple[Message, ...] | None:
    # Every check the general decoder makes is made here too, or the body is refused
    # (None).  Lengths use `stop >= end` where another byte must follow (nb-args after
    # a message name, the type byte after an argument name).  May raise IndexError or
    # SpopError on malformed input; the caller turns both into None.
    end = len(body)
    messages: list[Message] = []
    while pos < end:
        n = body[pos]
        if n >= 240:
            return None
        pos += 1
        stop = pos + n
        if stop >= end:
            return None
        name = body[pos:stop].decode("utf-8", "surrogateescape")
        nb_args = body[stop]
        pos = stop + 1
        args: list[KV] = []
        for _ in range(nb_args):
            n = body[pos]
            if n >= 240:
                return None
            pos += 1
            stop = pos + n
            if stop >= end:
                return None
            arg_name = body[pos:stop].decode("utf-8", "surrogateescape")
            if body[stop] == _TYPE_STRING:
                pos = stop + 1
                n = body[pos]
                if n < 240:
                    pos += 1
                else:
                    n, pos = decode_varint(body, pos)
                stop = pos + n
                if stop > end:
                    return None
                value = string_unchecked(body[pos:stop].decode("utf-8", "surrogateescape"))
                pos = stop
            else:
                value, pos = decode_typed(body, stop)
            args.append((arg_name, value))
        messages.append(message_unchecked(name, tuple(args)))
    return tuple(messages)


def decode_payload(
    ftype: FrameType, stream_id: int, frame_id: int, body: bytes | memoryview, pos: int
) -> Event:
    """Decode the payload of a frame whose header ``parse_header`` already read.

    Raises:
        InvalidFrame: malformed payload.
        NoVersion, NoMaxFrameSize, NoCapabilities: a HELLO lacks a mandatory key.
        BadFrameSize: a HELLO's max-frame-size does not fit 32 bits.
    """
    if ftype is FrameType.NOTIFY:
        return _decode_notify(body, pos, stream_id, frame_id)
    if ftype is FrameType.ACK:
        return _decode_ack(body, pos, stream_id, frame_id)
    if ftype is FrameType.HAPROXY_HELLO:
        return _decode_haproxy_hello(body, pos)
    if ftype is FrameType.AGENT_HELLO:
        return _decode_agent_hello(body, pos)
    status, message, extra = _decode_disconnect_fields(body, pos)
    if ftype is FrameType.HAPROXY_DISCONNECT:
        return HaproxyDisconnect(status, message, extra)
    if len(message.encode("utf-8", "surrogateescape")) > MAX_DISCONNECT_MESSAGE:
        # HAProxy 2.x treats an AGENT-DISCONNECT message over 255 bytes as invalid (A.6).
        raise InvalidFrame("AGENT-DISCONNECT message exceeds 255 bytes")
    return AgentDisconnect(status, message, extra)


def decode_frame(body: bytes | memoryview) -> Event:
    """Decode one complete frame body (everything after LEN) into an event.

    Raises:
        SpopError: any subclass; see ``parse_header`` and ``decode_payload``.
    """
    ftype, _flags, sid, fid, pos = parse_header(body)
    return decode_payload(ftype, sid, fid, body, pos)


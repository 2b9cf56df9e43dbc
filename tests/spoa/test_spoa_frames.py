"""spoa._frames: frame header + payload codec, both directions (SPOE.txt §3.2)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings

from spoa import (
    Ack,
    AgentDisconnect,
    AgentHello,
    BadFrameSize,
    Event,
    FragmentationNotSupported,
    FrameTooBig,
    HaproxyDisconnect,
    HaproxyHello,
    InvalidFrame,
    InvalidValue,
    Message,
    NoCapabilities,
    NoMaxFrameSize,
    NoVersion,
    Notify,
    SetVar,
    SpopError,
    Status,
    TypedValue,
    UnsetVar,
    VarScope,
    decode_frame,
    encode_frame,
    typed,
)
from spoa._frames import FrameReader, frame_type_of

from spoa_helpers import CHECK_HELLO, TRAFFIC_HELLO, AnyFrameReader, chunkings, feed_all
from spoa_strategies import events

EVERY_FRAME_TYPE: list[Event] = [
    TRAFFIC_HELLO,
    CHECK_HELLO,
    HaproxyHello(
        ("2.0", "1.0"), 300, ("pipelining",), extra=(("x-unknown", TypedValue.int32(-7)),)
    ),
    HaproxyDisconnect(Status.TIMEOUT, "a timeout occurred"),
    HaproxyDisconnect(1234, "unknown code"),
    Notify(0, 1, ()),
    Notify(
        2**40,
        7,
        (
            Message("dcv", (("host", typed("example.com")), ("path", typed("/x")))),
            Message("", (("", typed(None)), ("b", typed(b"\x00")), ("i", typed(-1)))),
        ),
    ),
    AgentHello(max_frame_size=16380, capabilities=("pipelining",)),
    AgentHello(max_frame_size=256),
    AgentDisconnect(Status.INVALID, "bad frame"),
    Ack(5, 1),
    Ack(
        2**64 - 1,
        2**32,
        (
            SetVar(VarScope.TXN, "body", typed("tok1.thumb")),
            UnsetVar(VarScope.SESS, "old"),
            SetVar(VarScope.PROC, "n", TypedValue.uint32(9)),
        ),
    ),
]


@pytest.mark.parametrize("event", EVERY_FRAME_TYPE, ids=lambda e: type(e).__name__)
def test_round_trip_every_frame_type_fed_every_way(event: Event) -> None:
    frame = encode_frame(event)
    assert struct.unpack(">I", frame[:4])[0] == len(frame) - 4
    assert frame[4] == frame_type_of(event)
    assert frame[5:9] == b"\x00\x00\x00\x01"  # FIN only
    assert decode_frame(frame[4:]) == event
    for chunks in chunkings(frame):
        reader = AnyFrameReader()
        assert feed_all(reader.feed, chunks) == [event]


def test_pipelined_frames_in_one_chunk_and_split_anywhere() -> None:
    stream = b"".join(encode_frame(e) for e in EVERY_FRAME_TYPE)
    for chunks in chunkings(stream, seed=1):
        reader = AnyFrameReader()
        assert feed_all(reader.feed, chunks) == EVERY_FRAME_TYPE


def test_hello_and_disconnect_use_literal_zero_ids() -> None:
    for event in (TRAFFIC_HELLO, HaproxyDisconnect(0, ""), AgentHello(max_frame_size=300)):
        assert encode_frame(event)[9:11] == b"\x00\x00"


def test_frame_reader_bounds_len_before_the_body_arrives() -> None:
    reader = FrameReader(max_frame_size=300)
    reader.feed(struct.pack(">I", 301)[:3])
    assert reader.next_frame() is None
    reader.feed(struct.pack(">I", 301)[3:])  # only the 4 LEN bytes: no body yet
    with pytest.raises(FrameTooBig):
        reader.next_frame()


def test_frame_reader_rejects_len_below_header_size() -> None:
    reader = FrameReader(max_frame_size=300)
    reader.feed(b"\x00\x00\x00\x06" + b"\x03\x00\x00\x00\x01\x00")
    with pytest.raises(InvalidFrame):
        reader.next_frame()


def test_encode_checks_max_frame_size() -> None:
    ack = Ack(1, 1, (SetVar(VarScope.TXN, "v", typed("x" * 300)),))
    assert len(encode_frame(ack)) - 4 > 256
    with pytest.raises(FrameTooBig):
        encode_frame(ack, max_frame_size=256)
    small = encode_frame(Ack(1, 1), max_frame_size=7)
    assert len(small) == 11


def test_encode_rejects_non_events() -> None:
    with pytest.raises(TypeError):
        encode_frame("nope")  # type: ignore[arg-type]


def _frame(ftype: int, payload: bytes, *, flags: int = 1, ids: bytes = b"\x00\x00") -> bytes:
    return bytes([ftype]) + struct.pack(">I", flags) + ids + payload


def _kv(key: bytes, typed_hex: str) -> bytes:
    return bytes([len(key)]) + key + bytes.fromhex(typed_hex)


VERSIONS = _kv(b"supported-versions", "08 03 32 2e 30")
MFS = _kv(b"max-frame-size", "03 fc f0 06")
CAPS = _kv(b"capabilities", "08 00")


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"\x03\x00\x00\x00", InvalidFrame),  # shorter than a header
        (_frame(4, b""), InvalidFrame),  # unknown frame type
        (_frame(0x64, b""), InvalidFrame),  # unknown frame type (100)
        (_frame(0, b""), FragmentationNotSupported),  # UNSET: a fragment
        (_frame(3, b"", flags=0, ids=b"\x01\x01"), FragmentationNotSupported),  # no FIN
        (_frame(3, b"", flags=3, ids=b"\x01\x01"), FragmentationNotSupported),  # ABORT
        (_frame(1, VERSIONS + MFS + CAPS, ids=b"\x01\x00"), InvalidFrame),  # HELLO sid != 0
        (_frame(2, b"", ids=b"\x00\x01"), InvalidFrame),  # DISCONNECT fid != 0
        (_frame(1, MFS + CAPS), NoVersion),
        (_frame(1, VERSIONS + CAPS), NoMaxFrameSize),
        (_frame(1, VERSIONS + MFS), NoCapabilities),
        (_frame(1, _kv(b"supported-versions", "02 02") + MFS + CAPS), InvalidFrame),
        (_frame(1, VERSIONS + _kv(b"max-frame-size", "08 00") + CAPS), InvalidFrame),
        (_frame(1, VERSIONS + _kv(b"max-frame-size", "04 ff") + CAPS), InvalidFrame),
        (_frame(1, VERSIONS + _kv(b"max-frame-size", "02 ff f0 fe fe fe fe fe fe fe 0e") + CAPS),
         BadFrameSize),  # INT32 -1
        (_frame(1, VERSIONS + MFS + CAPS + _kv(b"healthcheck", "08 00")), InvalidFrame),
        (_frame(1, VERSIONS + MFS + CAPS + _kv(b"engine-id", "09 00")), InvalidFrame),
        (_frame(1, VERSIONS + MFS + CAPS + b"\x03abc"), InvalidFrame),  # key without value
        (_frame(1, VERSIONS + MFS + CAPS + b"\x09abc"), InvalidFrame),  # key runs past end
        (_frame(2, _kv(b"message", "08 00")), InvalidFrame),  # no status-code
        (_frame(2, _kv(b"status-code", "08 00")), InvalidFrame),  # status not an int
        (_frame(2, _kv(b"status-code", "04 ff f0 fe fe fe fe fe fe fe 0e")), InvalidFrame),  # -1
        (_frame(2, _kv(b"status-code", "03 00") + _kv(b"message", "09 00")), InvalidFrame),
        (_frame(3, b"\x03dcv", ids=b"\x01\x01"), InvalidFrame),  # no nb-args
        (_frame(3, b"\x03dcv\x02\x01a\x00", ids=b"\x01\x01"), InvalidFrame),  # 1 of 2 args
        (_frame(3, b"\x03dcv\x01\x01a", ids=b"\x01\x01"), InvalidFrame),  # arg without value
        (_frame(0x67, b"\x01\x03\x02\x01v", ids=b"\x01\x01"), InvalidFrame),  # no value
        (_frame(0x67, b"\x01\x02\x02\x01v", ids=b"\x01\x01"), InvalidFrame),  # set-var, 2 args
        (_frame(0x67, b"\x03\x02\x02\x01v", ids=b"\x01\x01"), InvalidFrame),  # action 3
        (_frame(0x67, b"\x02\x02\x05\x01v", ids=b"\x01\x01"), InvalidFrame),  # scope 5
        (_frame(0x67, b"\x02\x02", ids=b"\x01\x01"), InvalidFrame),  # truncated action
        (_frame(0x65, _kv(b"max-frame-size", "03 00")), NoVersion),
        (_frame(0x65, _kv(b"version", "08 00")), NoMaxFrameSize),
        (_frame(0x66, _kv(b"status-code", "03 00") + _kv(b"message", "08 f0 10" + "61" * 256)),
         InvalidFrame),  # AGENT-DISCONNECT message > 255 bytes
    ],
)
def test_decode_errors(body: bytes, error: type[SpopError]) -> None:
    with pytest.raises(error):
        decode_frame(body)


def test_unknown_kv_keys_are_kept_in_extra() -> None:
    body = _frame(1, VERSIONS + _kv(b"x-new", "11") + MFS + CAPS)
    hello = decode_frame(body)
    assert isinstance(hello, HaproxyHello)
    assert hello.extra == (("x-new", TypedValue.boolean(True)),)
    assert hello.engine_id is None and not hello.healthcheck


def test_repeated_known_key_last_wins_like_haproxy() -> None:
    body = _frame(1, VERSIONS + MFS + CAPS + _kv(b"max-frame-size", "03 fc 03"))
    hello = decode_frame(body)
    assert isinstance(hello, HaproxyHello) and hello.max_frame_size == 300


def test_hello_lists_are_split_and_stripped() -> None:
    body = _frame(
        1, _kv(b"supported-versions", "08 08" + b"2.0, 1.0".hex()) + MFS
        + _kv(b"capabilities", "08 11" + b"pipelining, async".hex())
    )
    hello = decode_frame(body)
    assert isinstance(hello, HaproxyHello)
    assert hello.supported_versions == ("2.0", "1.0")
    assert hello.capabilities == ("pipelining", "async")


def test_agent_hello_without_capabilities_is_tolerated() -> None:
    # HAProxy 2.x accepts it (haproxy.md A.5), so the decoder does too.
    body = _frame(0x65, _kv(b"version", "08 03 32 2e 30") + _kv(b"max-frame-size", "02 fc 03"))
    assert decode_frame(body) == AgentHello(max_frame_size=300, capabilities=())


@pytest.mark.parametrize(
    "build",
    [
        lambda: Message("m", tuple((str(i), typed(i)) for i in range(256))),
        lambda: HaproxyHello(("2,0",), 1, ()),
        lambda: HaproxyHello((" 2.0",), 1, ()),
        lambda: HaproxyHello(("",), 1, ()),
        lambda: HaproxyHello("2.0", 1, ()),  # type: ignore[arg-type]
        lambda: AgentHello(max_frame_size=300, capabilities="pipelining"),  # type: ignore[arg-type]
        lambda: HaproxyHello(("2.0",), 2**32, ()),
        lambda: HaproxyHello(("2.0",), 1, (), extra=(("engine-id", typed("x")),)),
        lambda: AgentHello(max_frame_size=-1),
        lambda: AgentHello(max_frame_size=300, extra=(("version", typed("x")),)),
        lambda: AgentDisconnect(0, "é" * 128),  # 256 bytes of UTF-8
        lambda: AgentDisconnect(-1, ""),
        lambda: HaproxyDisconnect(0, "", extra=(("message", typed("x")),)),
        lambda: Notify(-1, 0),
        lambda: Ack(0, 2**64),
        lambda: Ack(0, 0, ("not an action",)),  # type: ignore[arg-type]
        lambda: SetVar(VarScope.TXN, "v", "not typed"),  # type: ignore[arg-type]
        lambda: SetVar(7, "v", typed(1)),  # type: ignore[arg-type]
        lambda: UnsetVar(VarScope.TXN, b"bytes"),  # type: ignore[arg-type]
    ],
)
def test_events_refuse_values_that_cannot_round_trip(build: object) -> None:
    with pytest.raises(InvalidValue):
        build()  # type: ignore[operator]


def test_events_normalise_lists_to_tuples() -> None:
    ack = Ack(1, 1, [UnsetVar(2, "v")])  # type: ignore[arg-type]
    assert ack.actions == (UnsetVar(VarScope.TXN, "v"),)
    assert isinstance(ack.actions[0].scope, VarScope)
    hash(ack)


def test_message_helpers() -> None:
    msg = Message("m", (("a", typed(1)), ("b", typed("x")), ("a", typed(2))))
    assert msg.get("a") == typed(1)
    assert msg.get("zzz") is None
    assert msg.args_dict() == {"a": typed(1), "b": typed("x")}
    notify = Notify(1, 1, (msg,))
    assert notify.message("m") is msg and notify.message("n") is None


def test_agent_disconnect_for_error_truncates_to_255_bytes() -> None:
    ev = AgentDisconnect.for_error(FrameTooBig("é" * 200))
    assert ev.status == Status.TOO_BIG
    assert len(ev.message.encode()) <= 255 and ev.message == "é" * 127
    assert AgentDisconnect.for_error(RuntimeError()).status == Status.UNKNOWN
    assert AgentDisconnect.for_error(RuntimeError()).message == "RuntimeError"


@settings(max_examples=300)
@given(events)
def test_round_trip_property(event: Event) -> None:
    frame = encode_frame(event)
    assert decode_frame(frame[4:]) == event
    reader = AnyFrameReader()
    mid = len(frame) // 2
    assert reader.feed(frame[:mid]) + reader.feed(frame[mid:]) == [event]

"""spoa.connection: the sans-IO agent state machine (SPOE.txt §3.2, haproxy.md A.5/A.6)."""

from __future__ import annotations

import struct

import pytest

from spoa import (
    Ack,
    AgentDisconnect,
    AgentHello,
    BadFrameSize,
    BadVersion,
    Connection,
    FragmentationNotSupported,
    FrameTooBig,
    HaproxyDisconnect,
    HaproxyHello,
    InvalidFrame,
    InvalidValue,
    LocalProtocolError,
    Message,
    NoCapabilities,
    NoMaxFrameSize,
    NoVersion,
    Notify,
    SetVar,
    SpopError,
    State,
    Status,
    UnexpectedFrame,
    VarScope,
    encode_frame,
    typed,
)

from spoa_helpers import CHECK_HELLO, TRAFFIC_HELLO, chunkings, feed_all, load_vector, ready_connection


def _notify(sid: int, fid: int = 1) -> Notify:
    return Notify(sid, fid, (Message("dcv", (("host", typed("example.com")),)),))


# -- HELLO negotiation ----------------------------------------------------------------


def test_traffic_hello_negotiation() -> None:
    conn = Connection()
    assert (conn.their_state, conn.our_state) == (State.HELLO, State.HELLO)
    assert conn.receive_data(encode_frame(TRAFFIC_HELLO)) == [TRAFFIC_HELLO]
    assert conn.their_state is State.READY
    reply = conn.agent_hello()
    # "pipelining" only, never "async" even though HAProxy offered it (haproxy.md A.5).
    assert reply == AgentHello(max_frame_size=16380, capabilities=("pipelining",), version="2.0")
    data = conn.send(reply)
    assert data == encode_frame(reply)
    assert conn.our_state is State.READY
    assert not conn.healthcheck and conn.hello == TRAFFIC_HELLO


def test_health_check_hello_without_engine_id() -> None:
    conn = Connection()
    [hello] = conn.receive_data(encode_frame(CHECK_HELLO))
    assert isinstance(hello, HaproxyHello) and hello.engine_id is None
    assert conn.healthcheck
    # HAProxy offered no capability, so we announce none; capabilities is still sent.
    assert conn.agent_hello() == AgentHello(max_frame_size=16380, capabilities=())
    assert b"\x0ccapabilities\x08\x00" in conn.send(conn.agent_hello())


@pytest.mark.parametrize(
    ("ours", "theirs", "expected"),
    [(16380, 16380, 16380), (1024, 16380, 1024), (16380, 300, 300), (256, 256, 256)],
)
def test_max_frame_size_is_the_minimum(ours: int, theirs: int, expected: int) -> None:
    conn = Connection(max_frame_size=ours)
    conn.receive_data(encode_frame(HaproxyHello(("2.0",), theirs, ("pipelining",))))
    assert conn.agent_hello().max_frame_size == expected
    assert conn.max_frame_size == expected


def test_pipelining_can_be_declined() -> None:
    conn = Connection(pipelining=False)
    conn.receive_data(encode_frame(TRAFFIC_HELLO))
    assert conn.agent_hello().capabilities == ()


@pytest.mark.parametrize(
    ("hello", "error", "status"),
    [
        (HaproxyHello(("1.0",), 16380, ()), BadVersion, 8),
        (HaproxyHello((), 16380, ()), BadVersion, 8),
        (HaproxyHello(("3.0", "x.y"), 16380, ()), BadVersion, 8),
        (HaproxyHello(("2.0",), 255, ()), BadFrameSize, 9),
        (HaproxyHello(("2.0",), 0, ()), BadFrameSize, 9),
    ],
)
def test_hello_rejected(hello: HaproxyHello, error: type[SpopError], status: int) -> None:
    conn = Connection()
    with pytest.raises(error) as info:
        conn.receive_data(encode_frame(hello))
    assert info.value.status == status
    assert conn.their_state is State.ERROR


def test_any_2x_version_is_accepted_and_answered_with_2_0() -> None:
    conn = Connection()
    conn.receive_data(encode_frame(HaproxyHello(("1.0", "2.1"), 16380, ())))
    assert conn.agent_hello().version == "2.0"


def _hello_body(*kvs: bytes) -> bytes:
    payload = b"".join(kvs)
    body = b"\x01\x00\x00\x00\x01\x00\x00" + payload
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize(
    ("kvs", "error", "status"),
    [
        ((b"\x0emax-frame-size\x03\xfc\xf0\x06", b"\x0ccapabilities\x08\x00"), NoVersion, 5),
        ((b"\x12supported-versions\x08\x032.0", b"\x0ccapabilities\x08\x00"), NoMaxFrameSize, 6),
        ((b"\x12supported-versions\x08\x032.0", b"\x0emax-frame-size\x03\xfc\xf0\x06"),
         NoCapabilities, 7),
    ],
)
def test_missing_hello_keys(kvs: tuple[bytes, ...], error: type[SpopError], status: int) -> None:
    with pytest.raises(error) as info:
        Connection().receive_data(_hello_body(*kvs))
    assert info.value.status == status


def test_agent_hello_is_validated() -> None:
    conn = Connection()
    with pytest.raises(LocalProtocolError):
        conn.agent_hello()  # no HAPROXY-HELLO yet
    with pytest.raises(LocalProtocolError):
        conn.send(AgentHello(max_frame_size=16380))
    conn.receive_data(encode_frame(HaproxyHello(("2.0",), 1000, ("pipelining", "async"))))
    for bad in (
        AgentHello(max_frame_size=1001),  # above HAProxy's
        AgentHello(max_frame_size=255),
        AgentHello(max_frame_size=1000, version="2.1"),
        AgentHello(max_frame_size=1000, capabilities=("async",)),
        AgentHello(max_frame_size=1000, capabilities=("fragmentation",)),
    ):
        with pytest.raises(LocalProtocolError):
            conn.send(bad)
    assert conn.our_state is State.HELLO
    conn.send(AgentHello(max_frame_size=500))  # smaller than negotiated: allowed
    assert conn.max_frame_size == 500
    with pytest.raises(LocalProtocolError):
        conn.send(AgentHello(max_frame_size=500))  # twice


# -- frame order ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [_notify(1), HaproxyDisconnect(0, ""), Ack(1, 1), AgentHello(max_frame_size=300)],
    ids=lambda e: type(e).__name__,
)
def test_frames_before_hello_are_unexpected(event: object) -> None:
    conn = Connection()
    with pytest.raises(UnexpectedFrame) as info:
        conn.receive_data(encode_frame(event))  # type: ignore[arg-type]
    assert info.value.status == Status.INVALID


@pytest.mark.parametrize(
    "event",
    [TRAFFIC_HELLO, Ack(1, 1), AgentHello(max_frame_size=300), AgentDisconnect(0, "")],
    ids=lambda e: type(e).__name__,
)
def test_hello_and_agent_frames_after_hello_are_unexpected(event: object) -> None:
    conn = ready_connection()
    with pytest.raises(UnexpectedFrame):
        conn.receive_data(encode_frame(event))  # type: ignore[arg-type]


def test_notify_without_fin_is_fragmentation() -> None:
    conn = ready_connection()
    frame = bytearray(encode_frame(_notify(1)))
    frame[8] = 0  # clear FIN
    with pytest.raises(FragmentationNotSupported) as info:
        conn.receive_data(bytes(frame))
    assert info.value.status == 10


def test_unknown_frame_type_is_invalid() -> None:
    conn = ready_connection()
    with pytest.raises(InvalidFrame):
        conn.receive_data(b"\x00\x00\x00\x07\x09\x00\x00\x00\x01\x00\x00")


def test_error_state_is_sticky() -> None:
    conn = Connection()
    with pytest.raises(UnexpectedFrame):
        conn.receive_data(encode_frame(_notify(1)))
    with pytest.raises(LocalProtocolError):
        conn.receive_data(encode_frame(TRAFFIC_HELLO))
    # ... but we can still tell HAProxy why (SPOE.txt §3.2.9).
    data = conn.send(AgentDisconnect(Status.INVALID, "bad"))
    assert data[4] == 0x66 and conn.our_state is State.CLOSED


# -- frame size -----------------------------------------------------------------------


def test_len_bounded_by_our_max_before_hello() -> None:
    conn = Connection(max_frame_size=1024)
    with pytest.raises(FrameTooBig) as info:
        conn.receive_data(struct.pack(">I", 1025))  # the LEN alone is enough
    assert info.value.status == 3


def test_len_bounded_by_negotiated_size_after_hello() -> None:
    conn = Connection(max_frame_size=16380)
    hello = HaproxyHello(("2.0",), 512, ("pipelining",))
    big = Notify(1, 1, (Message("m", (("a", typed("x" * 600)),)),))
    # HELLO and the oversized NOTIFY in one chunk: the new limit applies at once.
    with pytest.raises(FrameTooBig):
        conn.receive_data(encode_frame(hello) + encode_frame(big))


def test_len_bound_check_does_not_wait_for_the_body() -> None:
    conn = ready_connection()
    conn.receive_data(b"\xff\xff")
    with pytest.raises(FrameTooBig):
        conn.receive_data(b"\xff\xff")  # 4 GiB announced; nothing buffered for it


def test_ack_too_big_keeps_notify_in_flight() -> None:
    conn = ready_connection(max_frame_size=256)
    conn.receive_data(encode_frame(_notify(3)))
    too_big = Ack(3, 1, (SetVar(VarScope.TXN, "v", typed("x" * 300)),))
    with pytest.raises(FrameTooBig):
        conn.send(too_big)
    assert conn.in_flight == 1
    conn.send(Ack(3, 1))  # the fallback empty ACK
    assert conn.in_flight == 0


# -- NOTIFY / ACK ---------------------------------------------------------------------


def test_pipelined_notifies_and_out_of_order_acks() -> None:
    notifies = [_notify(sid, fid) for sid in (0, 2, 4) for fid in (1, 2)]
    stream = encode_frame(TRAFFIC_HELLO) + b"".join(encode_frame(n) for n in notifies)
    for chunks in chunkings(stream, seed=7):
        conn = Connection()
        assert feed_all(conn.receive_data, chunks) == [TRAFFIC_HELLO, *notifies]
        conn.send(conn.agent_hello())
        assert conn.in_flight == len(notifies)
        for n in reversed(notifies):
            assert conn.send(Ack(n.stream_id, n.frame_id)) == encode_frame(
                Ack(n.stream_id, n.frame_id)
            )
        assert conn.in_flight == 0
        assert conn.buffered == 0


def test_ack_rules() -> None:
    conn = Connection()
    conn.receive_data(encode_frame(TRAFFIC_HELLO) + encode_frame(_notify(1)))
    with pytest.raises(LocalProtocolError):
        conn.send(Ack(1, 1))  # before AGENT-HELLO
    conn.send(conn.agent_hello())
    with pytest.raises(LocalProtocolError):
        conn.send(Ack(9, 9))  # no such NOTIFY
    conn.send(Ack(1, 1))
    with pytest.raises(LocalProtocolError):
        conn.send(Ack(1, 1))  # twice


def test_duplicate_in_flight_notify_is_invalid() -> None:
    conn = ready_connection()
    conn.receive_data(encode_frame(_notify(1)))
    with pytest.raises(InvalidFrame):
        conn.receive_data(encode_frame(_notify(1)))


def test_same_ids_after_ack_are_fine() -> None:
    conn = ready_connection()
    conn.receive_data(encode_frame(_notify(1)))
    conn.send(Ack(1, 1))
    assert conn.receive_data(encode_frame(_notify(1))) == [_notify(1)]


def test_ack_with_unencodable_value_raises_invalid_value() -> None:
    conn = ready_connection()
    conn.receive_data(encode_frame(_notify(1)))
    with pytest.raises(InvalidValue):
        conn.send(Ack(1, 1, (SetVar(VarScope.TXN, "v", typed("\ud800")),)))
    assert conn.in_flight == 1


def test_haproxy_cannot_be_sent_by_agent() -> None:
    conn = ready_connection()
    with pytest.raises(LocalProtocolError):
        conn.send(_notify(1))  # type: ignore[arg-type]


# -- DISCONNECT -----------------------------------------------------------------------


def test_haproxy_disconnect_then_agent_disconnect() -> None:
    conn = ready_connection()
    disconnect = HaproxyDisconnect(Status.TIMEOUT, "a timeout occurred")
    # Anything after the DISCONNECT in the same chunk is ignored.
    events = conn.receive_data(encode_frame(disconnect) + encode_frame(_notify(1)))
    assert events == [disconnect]
    assert conn.their_state is State.CLOSED
    assert conn.receive_data(encode_frame(_notify(2))) == []
    data = conn.send(AgentDisconnect(Status.NORMAL, ""))
    assert data == encode_frame(AgentDisconnect(0, ""))
    assert conn.our_state is State.CLOSED
    with pytest.raises(LocalProtocolError):
        conn.send(AgentDisconnect(Status.NORMAL, ""))


def test_agent_disconnect_before_hello_and_for_error() -> None:
    conn = Connection()
    with pytest.raises(SpopError) as info:
        conn.receive_data(encode_frame(HaproxyHello(("1.0",), 16380, ())))
    reply = AgentDisconnect.for_error(info.value)
    assert reply.status == Status.BAD_VSN
    assert conn.send(reply)[4] == 0x66
    assert conn.our_state is State.CLOSED


def test_notifies_dropped_after_our_disconnect() -> None:
    conn = ready_connection()
    conn.receive_data(encode_frame(_notify(1)))
    conn.send(AgentDisconnect(Status.NORMAL, "bye"))
    assert conn.in_flight == 0
    assert conn.receive_data(encode_frame(_notify(2))) == []
    with pytest.raises(LocalProtocolError):
        conn.send(Ack(1, 1))


def test_constructor_validates_max_frame_size() -> None:
    with pytest.raises(ValueError):
        Connection(max_frame_size=255)


# Found by the fuzz campaign: str.isdigit() accepts digits int() refuses, and int() refuses more than 4300
# digits, so these HELLOs raised ValueError (a crash) instead of BadVersion.
@pytest.mark.parametrize(
    "frame",
    [
        load_vector("fuzz-hello-superscript-version.hex"),
        encode_frame(HaproxyHello(("9" * 5000,), 16380, ())),
        encode_frame(HaproxyHello(("2" * 4400 + ".0",), 16380, ())),
        encode_frame(HaproxyHello(("\u0662.\u0660", "\uff12.0", "\u00b2.0"), 16380, ())),  # Arabic-Indic, fullwidth, superscript
    ],
    ids=["superscript-vector", "5000-digits", "4400-digit-major", "non-ascii-digits"],
)
def test_version_digits_that_int_refuses_are_bad_version(frame: bytes) -> None:
    conn = Connection()
    with pytest.raises(BadVersion) as info:
        conn.receive_data(frame)
    assert info.value.status == Status.BAD_VSN
    assert conn.their_state is State.ERROR


@pytest.mark.parametrize("versions", [("2",), ("02.0",), ("2.1",), (" 2.0 ",), ("1.0", "2.0")])
def test_ascii_major_2_is_spoken(versions: tuple[str, ...]) -> None:
    conn = Connection()
    conn.receive_data(encode_frame(HaproxyHello(tuple(v.strip() for v in versions), 16380, ())))
    assert conn.agent_hello().version == "2.0"

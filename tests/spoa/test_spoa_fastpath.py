"""The per-NOTIFY hot path: ``decode_notify_fast``, ``encode_ack`` and ``Connection.send_ack``.

Each is a shortcut for something the general codec already does, so each is tested
differentially against it: the fast decoder either returns exactly what
``decode_frame`` returns or declines (None) -- it never accepts a body the general
decoder rejects -- and the fast encoder produces the same bytes as
``encode_frame(Ack(...))``.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spoa import (
    Ack,
    AgentDisconnect,
    Connection,
    FrameTooBig,
    InvalidFrame,
    InvalidValue,
    LocalProtocolError,
    Message,
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
from spoa._frames import decode_notify_fast, encode_ack
from spoa.events import message_unchecked, notify_unchecked, string_unchecked

from spoa_helpers import VECTORS, load_vector, ready_connection
from spoa_strategies import actions, ids, notifies

NOTIFY_VECTORS = sorted(p.name for p in VECTORS.glob("*notify*.hex"))

VALIDATION = Message(
    "lockstep-validation",
    (("host", typed("bench.example.test")), ("path", typed("/.well-known/pki-validation/fileauth.txt"))),
)


def _general(body: bytes) -> object:
    """decode_frame's verdict: the event, or the error class."""
    try:
        return decode_frame(body)
    except SpopError as exc:
        return type(exc)


@pytest.mark.parametrize("name", NOTIFY_VECTORS)
def test_golden_notifies_take_the_fast_path(name: str) -> None:
    # Real HAProxy frames of every type (the captured ones carry IPV4, IPV6, INT64, BOOL, BINARY, NULL).
    body = load_vector(name)[4:]
    fast = decode_notify_fast(body)
    assert fast is not None
    assert fast == decode_frame(body)


@pytest.mark.parametrize("sid", [0, 1, 239, 240, 2287, 2288, 2**32 - 1, 2**64 - 1])
def test_multi_byte_ids_take_the_fast_path(sid: int) -> None:
    body = encode_frame(Notify(sid, sid, (VALIDATION,)))[4:]
    assert decode_notify_fast(body) == Notify(sid, sid, (VALIDATION,))


def test_long_values_take_the_fast_path_and_long_names_decline() -> None:
    long_value = Notify(1, 1, (Message("m", (("path", typed("/" + "x" * 1000)),)),))
    assert decode_notify_fast(encode_frame(long_value)[4:]) == long_value
    long_name = Notify(1, 1, (Message("m" * 240, ()),))
    body = encode_frame(long_name)[4:]
    assert decode_notify_fast(body) is None
    assert decode_frame(body) == long_name  # the general decoder takes it


@pytest.mark.parametrize(
    "body",
    [
        encode_frame(Ack(1, 1))[4:],  # not a NOTIFY
        b"\x03\x00\x00\x00\x05\x01\x01",  # FIN plus an unknown flag bit: valid, but not the usual shape
        b"\x03\x00\x00\x00\x01\x01",  # no frame-id
        b"\x03\x00\x00\x00\x01\x01\x01\x03abc",  # message without nb-args
        b"\x03\x00\x00\x00\x01\x01\x01\x01m\x01\x04host",  # argument without a value
        b"\x03\x00\x00\x00\x01\x01\x01\x01m\x01\x04host\x08\x05ab",  # string past the end
        b"\x03\x00\x00\x00\x01\x01\x01\x01m\x01\x01a\x18\x00",  # STRING with a flag
        b"\x03\x00\x00\x00\x01\x01\x01\x01m\x01\x01a\x02\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # overlong varint
        b"\x03\x00\x00\x00\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01\x01",  # overlong stream-id
        b"\x03\x00\x00\x00\x01\x01\x01\x01m\x02\x01a\x00",  # nb-args says 2, one present
    ],
)
def test_fast_path_declines_what_it_does_not_fully_check(body: bytes) -> None:
    assert decode_notify_fast(body) is None


@settings(max_examples=300)
@given(notifies)
def test_fast_decoder_agrees_with_decode_frame_on_valid_notifies(notify: Notify) -> None:
    body = encode_frame(notify)[4:]
    fast = decode_notify_fast(body)
    long_names = any(
        len(m.name.encode("utf-8", "surrogateescape")) >= 240
        or any(len(a.encode("utf-8", "surrogateescape")) >= 240 for a, _ in m.args)
        for m in notify.messages
    )
    assert fast == (None if long_names else notify)


@settings(max_examples=1000)
@given(
    st.lists(notifies, min_size=1, max_size=1),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    st.integers(0, 10_000),
)
def test_fast_decoder_never_accepts_what_decode_frame_rejects(
    items: list[Notify], flips: list[tuple[int, int]], cut: int
) -> None:
    body = bytearray(encode_frame(items[0])[4:])
    for where, value in flips:
        body[where % len(body)] = value
    data = bytes(body[: max(7, len(body) - cut % 8)])
    fast = decode_notify_fast(data)
    if fast is not None:
        assert _general(data) == fast


@settings(max_examples=500)
@given(st.binary(max_size=80))
def test_fast_decoder_on_random_payloads(payload: bytes) -> None:
    data = b"\x03\x00\x00\x00\x01\x01\x01" + payload
    fast = decode_notify_fast(data)
    if fast is not None:
        assert _general(data) == fast


@settings(max_examples=200)
@given(st.lists(notifies, min_size=1, max_size=8), st.lists(st.tuples(ids, ids), min_size=1, max_size=8))
def test_payload_memo_agrees_with_decode_frame(items: list[Notify], id_pairs: list[tuple[int, int]]) -> None:
    # The same payloads again with other ids: hits must give what a fresh decode gives.
    memo: dict[bytes, tuple[Message, ...]] = {}
    for notify in items:
        for sid, fid in id_pairs:
            body = encode_frame(Notify(sid, fid, notify.messages))[4:]
            assert decode_notify_fast(body, memo) == decode_notify_fast(body)
            fast = decode_notify_fast(body, memo)
            assert fast is None or fast == decode_frame(body)
    assert len(memo) <= 16


def test_payload_memo_shares_messages_and_is_bounded() -> None:
    memo: dict[bytes, tuple[Message, ...]] = {}
    first = decode_notify_fast(encode_frame(Notify(1, 1, (VALIDATION,)))[4:], memo)
    second = decode_notify_fast(encode_frame(Notify(300, 2, (VALIDATION,)))[4:], memo)
    assert first == Notify(1, 1, (VALIDATION,)) and second == Notify(300, 2, (VALIDATION,))
    assert first is not None and second is not None and first.messages is second.messages
    for i in range(40):
        decode_notify_fast(encode_frame(Notify(1, 1, (Message(f"m{i}"),)))[4:], memo)
    assert 0 < len(memo) <= 16
    big = Notify(1, 1, (Message("m", (("v", typed("x" * 600)),)),))
    assert decode_notify_fast(encode_frame(big)[4:], memo) == big
    assert all(len(k) <= 512 for k in memo)
    # Malformed payloads are never remembered (the general decoder must see them every time).
    memo.clear()
    assert decode_notify_fast(b"\x03\x00\x00\x00\x01\x01\x01\x01m\x02\x01a\x00", memo) is None
    assert memo == {}


def test_unchecked_constructors_build_equal_frozen_values() -> None:
    value = string_unchecked("x")
    assert value == TypedValue.string("x") and hash(value) == hash(TypedValue.string("x"))
    msg = message_unchecked("m", (("a", value),))
    assert msg == Message("m", (("a", typed("x")),))
    ev = notify_unchecked(1, 2, (msg,))
    assert ev == Notify(1, 2, (msg,))
    with pytest.raises(AttributeError):
        ev.stream_id = 3  # type: ignore[misc]


# -- encode_ack ------------------------------------------------------------------------


@settings(max_examples=300)
@given(ids, ids, st.lists(actions, max_size=4))
def test_encode_ack_matches_encode_frame(sid: int, fid: int, acts: list[SetVar | UnsetVar]) -> None:
    expected = encode_frame(Ack(sid, fid, tuple(acts)))
    assert encode_ack(sid, fid, acts) == expected
    memo: dict[int, tuple[object, bytes]] = {}
    assert encode_ack(sid, fid, acts, memo=memo) == expected  # fills the memo
    assert encode_ack(sid, fid, acts, memo=memo) == expected  # served from it


def test_encode_ack_memo_is_by_identity_and_bounded() -> None:
    memo: dict[int, tuple[object, bytes]] = {}
    a = SetVar(VarScope.TXN, "token", typed("one"))
    encode_ack(1, 1, [a], memo=memo)  # type: ignore[arg-type]
    assert memo[id(a)] == (a, encode_frame(Ack(1, 1, (a,)))[4 + 7 :])
    # An equal but distinct object is encoded afresh (and the stored one still holds its id).
    b = SetVar(VarScope.TXN, "token", typed("one"))
    assert encode_ack(1, 1, [b], memo=memo) == encode_frame(Ack(1, 1, (b,)))  # type: ignore[arg-type]
    for i in range(200):
        encode_ack(1, 1, [SetVar(VarScope.TXN, "v", typed(i))], memo=memo)  # type: ignore[arg-type]
    assert len(memo) <= 64
    big = SetVar(VarScope.TXN, "v", typed("x" * 600))
    encode_ack(1, 1, [big], memo=memo)  # type: ignore[arg-type]
    assert id(big) not in memo  # large encodings are not kept


@pytest.mark.parametrize("bad", [["not an action"], [None], "abc", None, [Ack(1, 1)]])
def test_encode_ack_rejects_non_actions(bad: object) -> None:
    with pytest.raises((InvalidValue, TypeError)):
        encode_ack(1, 1, bad)  # type: ignore[arg-type]


def test_encode_ack_checks_max_frame_size() -> None:
    with pytest.raises(FrameTooBig):
        encode_ack(1, 1, [SetVar(VarScope.TXN, "v", typed("x" * 300))], max_frame_size=256)


# -- Connection.send_ack -----------------------------------------------------------------


def test_send_ack_equals_send_ack_event() -> None:
    a, b = ready_connection(), ready_connection()
    stream = b"".join(encode_frame(Notify(sid, 1, (VALIDATION,))) for sid in range(1, 40))
    assert a.receive_data(stream) == b.receive_data(stream)
    act = SetVar(VarScope.TXN, "token", typed("t"))
    for sid in range(1, 40):
        assert a.send_ack(sid, 1, [act]) == b.send(Ack(sid, 1, (act,)))
    assert a.in_flight == b.in_flight == 0


def test_send_ack_rules() -> None:
    conn = Connection()
    with pytest.raises(LocalProtocolError, match="before AGENT-HELLO"):
        conn.send_ack(1, 1)
    conn = ready_connection()
    with pytest.raises(LocalProtocolError, match="unknown NOTIFY"):
        conn.send_ack(1, 1)
    conn.receive_data(encode_frame(Notify(1, 1)))
    with pytest.raises(InvalidValue):
        conn.send_ack(1, 1, ["nope"])  # type: ignore[list-item]
    assert conn.in_flight == 1  # a failed ACK leaves the NOTIFY in flight
    conn.send_ack(1, 1)
    with pytest.raises(LocalProtocolError, match="unknown NOTIFY"):
        conn.send_ack(1, 1)  # only once
    conn.send(AgentDisconnect(Status.NORMAL))
    with pytest.raises(LocalProtocolError, match="closed"):
        conn.send_ack(1, 1)


def test_send_ack_too_big_keeps_notify_in_flight() -> None:
    conn = ready_connection(max_frame_size=256)
    conn.receive_data(encode_frame(Notify(1, 1)))
    with pytest.raises(FrameTooBig):
        conn.send_ack(1, 1, [SetVar(VarScope.TXN, "v", typed("x" * 300))])
    assert conn.in_flight == 1
    assert conn.send_ack(1, 1) == encode_frame(Ack(1, 1))


def test_fast_path_keeps_the_duplicate_in_flight_rule() -> None:
    conn = ready_connection()
    frame = encode_frame(Notify(7, 1, (VALIDATION,)))
    conn.receive_data(frame)
    with pytest.raises(InvalidFrame, match="already in flight"):
        conn.receive_data(frame)


def test_fast_path_is_not_used_before_hello() -> None:
    conn = Connection()
    with pytest.raises(InvalidFrame, match="before HAPROXY-HELLO"):
        conn.receive_data(encode_frame(Notify(1, 1, (VALIDATION,))))


def test_header_len_prefix_is_exact() -> None:
    frame = encode_ack(300, 2, [SetVar(VarScope.TXN, "token", typed("v"))])
    assert struct.unpack(">I", frame[:4])[0] == len(frame) - 4

"""Property tests: any bytes from the peer decode to events or raise SpopError, nothing else.

The h11 fuzz rule ("parses, or raises RemoteProtocolError, never anything else",
STYLE.md 1.1) applied to a fresh ``Connection``, before and after the HELLO, with
purely random bytes, random bodies behind a valid LEN, and mutated valid streams.
Example counts stay moderate; the long fuzz campaign lives elsewhere.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from spoa import Connection, Event, SpopError, decode_frame, encode_frame

from spoa_helpers import TRAFFIC_HELLO, AnyFrameReader
from spoa_strategies import events, notifies

HELLO = encode_frame(TRAFFIC_HELLO)
FRAME_TYPES = [0, 1, 2, 3, 101, 102, 103]


def _feed(conn: Connection, data: bytes, cuts: list[int]) -> list[Event]:
    """Feed ``data`` split at ``cuts``; stop at the first SpopError (the shell would)."""
    out: list[Event] = []
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    try:
        for a, b in zip(bounds, bounds[1:]):
            out += conn.receive_data(data[a:b])
    except SpopError:
        pass  # the only exception allowed; anything else fails the test
    return out


@settings(max_examples=300)
@given(st.binary(max_size=200), st.lists(st.integers(0, 400), max_size=4))
def test_random_bytes_before_hello(data: bytes, cuts: list[int]) -> None:
    _feed(Connection(), data, cuts)


@settings(max_examples=300)
@given(st.binary(max_size=200), st.lists(st.integers(0, 400), max_size=4))
def test_random_bytes_after_hello(data: bytes, cuts: list[int]) -> None:
    conn = Connection()
    conn.receive_data(HELLO)
    conn.send(conn.agent_hello())
    _feed(conn, data, cuts)


@st.composite
def framed_bodies(draw: st.DrawFn) -> bytes:
    """A valid LEN and header prefix around a random payload: reaches the decoders."""
    ftype = draw(st.sampled_from(FRAME_TYPES))
    flags = draw(st.sampled_from([1, 1, 1, 0, 3, 0xFFFFFFFF]))
    ids = draw(st.sampled_from([b"\x00\x00", b"\x01\x01", b"\x00\x01", b"\xf0\x80\x00\x05"]))
    payload = draw(st.binary(max_size=120))
    body = bytes([ftype]) + struct.pack(">I", flags) + ids + payload
    return struct.pack(">I", len(body)) + body


@settings(max_examples=400)
@given(st.lists(framed_bodies(), min_size=1, max_size=4), st.booleans())
def test_random_payloads_behind_valid_headers(frames: list[bytes], after_hello: bool) -> None:
    conn = Connection()
    if after_hello:
        conn.receive_data(HELLO)
        conn.send(conn.agent_hello())
    _feed(conn, b"".join(frames), [])
    for frame in frames:  # the stateless decoder obeys the same rule
        try:
            decode_frame(frame[4:])
        except SpopError:
            pass


@settings(max_examples=300)
@given(
    st.lists(notifies, min_size=1, max_size=3),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
    st.lists(st.integers(0, 2000), max_size=3),
)
def test_mutated_valid_streams(
    items: list[Event], flips: list[tuple[int, int]], cuts: list[int]
) -> None:
    stream = bytearray(HELLO + b"".join(encode_frame(e) for e in items))
    for where, value in flips:
        stream[where % len(stream)] = value
    _feed(Connection(), bytes(stream), cuts)


@settings(max_examples=200)
@given(st.lists(events, min_size=1, max_size=5), st.lists(st.integers(0, 5000), max_size=5))
def test_round_trip_streams_split_anywhere(items: list[Event], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(e) for e in items)
    bounds = [0, *sorted(c % (len(stream) + 1) for c in cuts), len(stream)]
    reader = AnyFrameReader()
    out: list[Event] = []
    for a, b in zip(bounds, bounds[1:]):
        out += reader.feed(stream[a:b])
    assert out == items


@settings(max_examples=200)
@given(st.lists(notifies, min_size=1, max_size=6, unique_by=lambda n: (n.stream_id, n.frame_id)))
def test_connection_round_trips_pipelined_notifies(items: list[Event]) -> None:
    conn = Connection()
    stream = HELLO + b"".join(encode_frame(e) for e in items)
    assert conn.receive_data(stream) == [TRAFFIC_HELLO, *items]
    assert conn.in_flight == len(items)

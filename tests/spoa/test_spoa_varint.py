"""spoa._varint: the real HAProxy varint (haproxy.md A.2)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoa import InvalidFrame, InvalidValue
from spoa._varint import decode_varint, encode_varint

# haproxy.md A.2, checked there against a C copy of intops.h.
BOUNDARIES = [
    (0, "00"),
    (1, "01"),
    (239, "ef"),
    (240, "f0 00"),
    (300, "fc 03"),
    (2287, "ff 7f"),
    (2288, "f0 80 00"),
    (16380, "fc f0 06"),
    (264431, "ff ff 7f"),
    (264432, "f0 80 80 00"),
    (2**32 - 1, "ff f0 fe fe 7e"),
    (2**64 - 1, "ff f0 fe fe fe fe fe fe fe 0e"),
]


@pytest.mark.parametrize(("value", "hexstr"), BOUNDARIES)
def test_boundary_table(value: int, hexstr: str) -> None:
    raw = bytes.fromhex(hexstr)
    assert encode_varint(value) == raw
    assert decode_varint(raw, 0) == (value, len(raw))


def test_decode_at_offset_and_stops_at_end_of_varint() -> None:
    buf = b"\xaa\xaa" + bytes.fromhex("fc f0 06") + b"\x05"
    assert decode_varint(buf, 2) == (16380, 5)
    assert decode_varint(memoryview(buf), 5) == (5, 6)


def test_exhaustive_round_trip_low_range() -> None:
    # Covers the 1-, 2- and 3-byte forms completely and the start of the 4-byte form.
    for value in range(0, 270_000):
        raw = encode_varint(value)
        assert decode_varint(raw, 0) == (value, len(raw))


def test_lengths_grow_monotonically() -> None:
    # One more byte exactly at each documented boundary.
    assert [len(encode_varint(v)) for v in (239, 240, 2287, 2288, 264431, 264432)] == [
        1, 2, 2, 3, 3, 4,
    ]


def test_negative_is_64_bit_twos_complement() -> None:
    assert encode_varint(-1) == encode_varint(2**64 - 1)
    assert len(encode_varint(-1)) == 10
    assert encode_varint(-42) == bytes.fromhex("f6 ee fe fe fe fe fe fe fe 0e")  # captured (2.8)
    assert decode_varint(encode_varint(-(2**63)), 0)[0] == 2**63


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 10**30])
def test_encode_out_of_range(value: int) -> None:
    with pytest.raises(InvalidValue):
        encode_varint(value)


@pytest.mark.parametrize(
    "hexstr",
    [
        "",  # nothing at all
        "f0",  # continuation announced, missing
        "ff ff",  # second byte says "more", missing
        "f0 80 80 80 80 80 80 80 80 80 00",  # 11 bytes: longer than any 64-bit value
        "ff ff ff ff ff ff ff ff ff 7f",  # 10 bytes but above 2**64-1
    ],
)
def test_decode_invalid(hexstr: str) -> None:
    with pytest.raises(InvalidFrame):
        decode_varint(bytes.fromhex(hexstr), 0)


@given(st.integers(min_value=-(2**63), max_value=2**64 - 1))
def test_round_trip_property(value: int) -> None:
    raw = encode_varint(value)
    assert 1 <= len(raw) <= 10
    decoded, end = decode_varint(raw + b"\x00junk", 0)
    assert end == len(raw)
    assert decoded == value % 2**64


@given(st.binary(max_size=12))
def test_decode_any_bytes_value_or_invalid_frame(data: bytes) -> None:
    try:
        value, end = decode_varint(data, 0)
    except InvalidFrame:
        return
    assert 0 <= value < 2**64
    assert 1 <= end <= min(len(data), 10)


class _CountingBytes(bytes):
    reads = 0

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        type(self).reads += 1
        return super().__getitem__(index)


def test_decoder_stops_after_ten_bytes() -> None:
    # Without the length bound a long run of 0xff bytes would be summed into an
    # ever-growing int (quadratic work on a 16 KB frame).
    buf = _CountingBytes(b"\xff" * 16380)
    with pytest.raises(InvalidFrame):
        decode_varint(buf, 0)
    assert _CountingBytes.reads <= 10

"""spoa._typed and TypedValue: TYPED-DATA and plain strings (SPOE.txt §3.1, haproxy.md A.3)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoa import DataType, InvalidFrame, InvalidValue, TypedValue, typed
from spoa._typed import decode_string, decode_typed, encode_string, encode_typed

from spoa_strategies import typed_values

GOLDEN = [
    (TypedValue.null(), "00"),
    (TypedValue.boolean(True), "11"),  # type id in the LOW nibble, 0x10 = true
    (TypedValue.boolean(False), "01"),
    (TypedValue.int32(5), "02 05"),
    (TypedValue.int32(-1), "02 ff f0 fe fe fe fe fe fe fe 0e"),
    (TypedValue.uint32(16380), "03 fc f0 06"),
    (TypedValue.int64(-42), "04 f6 ee fe fe fe fe fe fe fe 0e"),
    (TypedValue.int64(2**63 - 1), "04 ff f0 fe fe fe fe fe fe fe 06"),
    (TypedValue.uint64(2**64 - 1), "05 ff f0 fe fe fe fe fe fe fe 0e"),
    (TypedValue.ipv4("127.0.0.1"), "06 7f 00 00 01"),
    (TypedValue.ipv6("2001:db8::1"), "07 20 01 0d b8" + " 00" * 11 + " 01"),
    (TypedValue.string("2.0"), "08 03 32 2e 30"),
    (TypedValue.string(""), "08 00"),
    (TypedValue.binary(b"\x00\xff\x10"), "09 03 00 ff 10"),
]


@pytest.mark.parametrize(("value", "hexstr"), GOLDEN, ids=[g[1][:8] for g in GOLDEN])
def test_golden_encodings(value: TypedValue, hexstr: str) -> None:
    out = bytearray()
    encode_typed(out, value)
    assert out.hex(" ") == bytes.fromhex(hexstr).hex(" ")
    assert decode_typed(bytes(out) + b"\x99", 0) == (value, len(out))


def test_non_utf8_string_is_lossless_via_surrogateescape() -> None:
    # Captured from HAProxy 2.8: raw header bytes "caf\xc3\xa9-\xff" (haproxy.md A.3).
    raw = bytes.fromhex("08 07 63 61 66 c3 a9 2d ff")
    value, end = decode_typed(raw, 0)
    assert value == TypedValue.string("café-\udcff")
    assert value.raw_bytes() == b"caf\xc3\xa9-\xff"
    out = bytearray()
    encode_typed(out, value)
    assert bytes(out) == raw and end == len(raw)


def test_plain_strings_have_no_type_byte() -> None:
    out = bytearray()
    encode_string(out, "host")
    encode_string(out, "")
    assert bytes(out) == b"\x04host\x00"
    assert decode_string(bytes(out), 0) == ("host", 5)
    assert decode_string(bytes(out), 5) == ("", 6)


def test_lone_surrogate_cannot_be_encoded() -> None:
    value = TypedValue.string("\ud800")  # not produced by surrogateescape
    with pytest.raises(InvalidValue):
        encode_typed(bytearray(), value)
    with pytest.raises(InvalidValue):
        value.raw_bytes()


@pytest.mark.parametrize(
    ("hexstr", "why"),
    [
        ("", "no type byte"),
        ("0a", "reserved type 10"),
        ("0f", "reserved type 15"),
        ("18 00", "flag on STRING"),
        ("21", "flag 0x20 on BOOL"),
        ("08 05 61 62", "string longer than frame"),
        ("09 f0", "truncated length"),
        ("06 7f 00 00", "truncated IPv4"),
        ("07 00", "truncated IPv6"),
        ("02 f0 f0 fe fe 7e", "INT32 above 2**31-1"),
        ("02 f0 f1 fe fe fe fe fe fe fe 06", "INT32 below -2**31 (INT64 min)"),
        ("03 f0 f0 fe fe fe 00", "UINT32 >= 2**32"),
        ("04 f0", "truncated varint"),
    ],
)
def test_decode_invalid(hexstr: str, why: str) -> None:
    with pytest.raises(InvalidFrame):
        decode_typed(bytes.fromhex(hexstr), 0)


def test_signed_types_decode_back_to_negative() -> None:
    for t, v in [(DataType.INT32, -(2**31)), (DataType.INT64, -(2**63)), (DataType.INT64, -1)]:
        out = bytearray()
        encode_typed(out, TypedValue(t, v))
        assert decode_typed(bytes(out), 0)[0] == TypedValue(t, v)


@pytest.mark.parametrize(
    ("t", "v"),
    [
        (DataType.NULL, 0),
        (DataType.BOOL, 1),
        (DataType.INT32, 2**31),
        (DataType.INT32, True),
        (DataType.UINT32, -1),
        (DataType.UINT64, 2**64),
        (DataType.INT64, 2**63),
        (DataType.STRING, b"x"),
        (DataType.BINARY, "x"),
        (DataType.IPV4, "1.2.3.4"),
        (DataType.IPV6, ipaddress.IPv4Address("1.2.3.4")),
        (99, None),
    ],
)
def test_typed_value_validates(t: DataType, v: object) -> None:
    with pytest.raises(InvalidValue):
        TypedValue(t, v)  # type: ignore[arg-type]


def test_typed_infers_types() -> None:
    assert typed(None) == TypedValue.null()
    assert typed(True) == TypedValue(DataType.BOOL, True)
    assert typed(7) == TypedValue(DataType.INT64, 7)
    assert typed(2**63) == TypedValue(DataType.UINT64, 2**63)
    assert typed("x") == TypedValue(DataType.STRING, "x")
    assert typed(bytearray(b"x")) == TypedValue(DataType.BINARY, b"x")
    assert typed(ipaddress.ip_address("::1")).type is DataType.IPV6
    assert typed(ipaddress.ip_address("10.0.0.1")).type is DataType.IPV4
    tv = TypedValue.int32(1)
    assert typed(tv) is tv
    # INT64 1 and BOOL true are different values on the wire, hence not equal.
    assert typed(1) != typed(True)
    with pytest.raises(InvalidValue):
        typed(1.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidValue):
        typed(2**64)


@given(typed_values())
def test_round_trip_property(value: TypedValue) -> None:
    out = bytearray()
    encode_typed(out, value)
    assert decode_typed(bytes(out), 0) == (value, len(out))


@given(st.binary(max_size=24))
def test_decode_any_bytes_value_or_invalid_frame(data: bytes) -> None:
    try:
        value, end = decode_typed(data, 0)
    except InvalidFrame:
        return
    assert isinstance(value, TypedValue)
    assert 1 <= end <= len(data)

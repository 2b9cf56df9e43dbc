"""TYPED-DATA and plain-string codec (pure functions, no state).

This module owns two encodings (SPOE.txt §3.1, haproxy.md A.3):

* plain strings -- ``<varint len><bytes>`` with NO type byte -- used for KV keys,
  message names, argument names and set-var names (HAProxy's
  ``spoe_encode_buffer``);
* TYPED-DATA -- one type byte then the data -- used for every value (HAProxy's
  ``spoe_encode_data``).  The type id is the LOW nibble of the type byte and the
  flags the HIGH nibble; the only flag in use is BOOL's 0x10 ("true").

Decoders work on a complete frame and return ``(value, next_pos)``; running out of
bytes is ``InvalidFrame``.  Encoders append to a ``bytearray`` so a whole frame is
built in one buffer (one ``write()`` per frame, haproxy.md A.6 pitfalls).
"""

from __future__ import annotations

import ipaddress

from ._spec import DataType
from ._varint import decode_varint, encode_varint
from .errors import InvalidFrame, InvalidValue
from .events import TypedValue

__all__ = [
    "encode_string",
    "decode_string",
    "encode_typed",
    "decode_typed",
]

_U64 = 1 << 64
_I64_SIGN = 1 << 63
_TYPE_MASK = 0x0F  # spoe-t@2.8 SPOE_DATA_T_MASK
_FLAG_TRUE = 0x10  # spoe-t@2.8 SPOE_DATA_FL_TRUE

_T = DataType
# Pre-built single-byte prefixes: the hot paths append these instead of allocating.
_TYPE_BYTE = {t: bytes((int(t),)) for t in DataType}
_BOOL_TRUE = bytes((_FLAG_TRUE | DataType.BOOL,))
_DATA_TYPES = {int(t): t for t in DataType}

# Cached singletons for the argument-less values.
_NULL = TypedValue(DataType.NULL, None)
_TRUE = TypedValue(DataType.BOOL, True)
_FALSE = TypedValue(DataType.BOOL, False)


def _utf8(text: str) -> bytes:
    try:
        # surrogateescape undoes what decode_string did for non-UTF-8 input.
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise InvalidValue(f"string cannot be encoded as UTF-8: {exc.reason}") from None


def encode_string(out: bytearray, text: str | bytes) -> None:
    """Append a plain ``<varint len><bytes>`` string (no type byte)."""
    raw = text if isinstance(text, bytes) else _utf8(text)
    out += encode_varint(len(raw))
    out += raw


def _decode_bytes(buf: bytes | memoryview, pos: int) -> tuple[bytes, int]:
    length, pos = decode_varint(buf, pos)
    end = pos + length
    if end > len(buf):
        raise InvalidFrame("string runs past the end of the frame")
    return bytes(buf[pos:end]), end


def decode_string(buf: bytes | memoryview, pos: int) -> tuple[str, int]:
    """Decode a plain string; bytes that are not UTF-8 are kept via surrogateescape."""
    raw, pos = _decode_bytes(buf, pos)
    # surrogateescape never raises on decode: every byte sequence maps to a str.
    return raw.decode("utf-8", "surrogateescape"), pos


def encode_typed(out: bytearray, tv: TypedValue) -> None:
    """Append one TYPED-DATA item.

    Raises:
        InvalidValue: a STRING holds a lone surrogate that is not UTF-8 encodable.
    """
    t = tv.type
    v = tv.value
    if t is _T.STRING:
        assert isinstance(v, str)
        raw = _utf8(v)
        out += b"\x08"
        out += encode_varint(len(raw))
        out += raw
    elif t is _T.BINARY:
        assert isinstance(v, bytes)
        out += b"\x09"
        out += encode_varint(len(v))
        out += v
    elif t is _T.INT32 or t is _T.UINT32 or t is _T.INT64 or t is _T.UINT64:
        assert isinstance(v, int)
        out += _TYPE_BYTE[t]
        out += encode_varint(v)  # negative -> 64-bit two's complement (A.2)
    elif t is _T.BOOL:
        out += _BOOL_TRUE if v else b"\x01"
    elif t is _T.NULL:
        out += b"\x00"
    elif t is _T.IPV4 or t is _T.IPV6:
        assert isinstance(v, (ipaddress.IPv4Address, ipaddress.IPv6Address))
        out += _TYPE_BYTE[t]
        out += v.packed
    else:  # pragma: no cover - TypedValue.__post_init__ only admits DataType members
        raise InvalidValue(f"cannot encode {t!r}")


def decode_typed(buf: bytes | memoryview, pos: int) -> tuple[TypedValue, int]:
    """Decode one TYPED-DATA item starting at ``pos``.

    Integer types are range-checked: INT32/INT64 are read as 64-bit two's
    complement and must fit their type; UINT32 must fit 32 bits.

    Raises:
        InvalidFrame: truncated data, a reserved type id (10-15), flags on a type
            other than BOOL, or an integer out of its type's range.
    """
    try:
        byte = buf[pos]
    except IndexError:
        raise InvalidFrame("missing typed data") from None
    pos += 1
    tid = byte & _TYPE_MASK
    flags = byte & ~_TYPE_MASK
    t = _DATA_TYPES.get(tid)
    if t is None:
        raise InvalidFrame(f"reserved data type {tid}")
    if flags and (t is not _T.BOOL or flags != _FLAG_TRUE):
        # Only BOOL uses a flag (haproxy.md A.3).  HAProxy compares the whole byte to
        # tell STR from BIN, so flagged types would be misread there: refuse them.
        raise InvalidFrame(f"unexpected flags 0x{flags:02x} on {t.name}")
    if t is _T.STRING:
        raw, pos = _decode_bytes(buf, pos)
        return TypedValue(t, raw.decode("utf-8", "surrogateescape")), pos
    if t is _T.BINARY:
        raw, pos = _decode_bytes(buf, pos)
        return TypedValue(t, raw), pos
    if t is _T.INT64 or t is _T.INT32:
        value, pos = decode_varint(buf, pos)
        if value >= _I64_SIGN:
            value -= _U64
        if t is _T.INT32 and not -(1 << 31) <= value < (1 << 31):
            raise InvalidFrame(f"INT32 out of range: {value}")
        return TypedValue(t, value), pos
    if t is _T.UINT64 or t is _T.UINT32:
        value, pos = decode_varint(buf, pos)
        if t is _T.UINT32 and value >= (1 << 32):
            raise InvalidFrame(f"UINT32 out of range: {value}")
        return TypedValue(t, value), pos
    if t is _T.BOOL:
        return (_TRUE if flags else _FALSE), pos
    if t is _T.NULL:
        return _NULL, pos
    size = 4 if t is _T.IPV4 else 16
    end = pos + size
    if end > len(buf):
        raise InvalidFrame(f"truncated {t.name} address")
    raw = bytes(buf[pos:end])
    addr = ipaddress.IPv4Address(raw) if size == 4 else ipaddress.IPv6Address(raw)
    return TypedValue(t, addr), end

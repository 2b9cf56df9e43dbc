"""SPOP variable-length integers (pure functions, no state).

This module owns the varint used for stream-ids, frame-ids, integer typed data and
every length prefix.  The algorithm is the one HAProxy actually runs
(intops@2.8 ``encode_varint``/``decode_varint``, haproxy.md A.2), not the
table in SPOE.txt §3.1:

    encode(i):  if i < 240: emit i; done
                emit (i & 0xFF) | 0xF0 ;  i = (i - 240) >> 4
                while i >= 128: emit (i & 0xFF) | 0x80 ;  i = (i - 128) >> 7
                emit i

Boundaries: 239 -> ``EF``, 240 -> ``F0 00``, 2287 -> ``FF 7F``, 2288 -> ``F0 80 00``,
2**32-1 -> ``FF F0 FE FE 7E``, 2**64-1 -> 10 bytes.

Values are unsigned 64-bit on the wire.  Negative numbers are sent as their 64-bit
two's complement (haproxy.md A.2), so ``encode_varint(-1)`` is 10 bytes; the caller
(the typed-data codec) turns signed types back into negative numbers.
"""

from __future__ import annotations

from .errors import InvalidFrame, InvalidValue

__all__ = ["encode_varint", "decode_varint", "MAX_VARINT_LEN"]

_U64 = 1 << 64
_U64_MASK = _U64 - 1
_I64_MIN = -(1 << 63)

# 2**64 - 1 encodes to 10 bytes (4 bits in the first byte, 7 in each following one);
# anything longer cannot be a 64-bit value, and HAProxy's decoder would overflow.
MAX_VARINT_LEN = 10

# Precomputed one-byte encodings: most ids, lengths and small ints take this path.
_SMALL = [bytes((i,)) for i in range(240)]


def encode_varint(value: int) -> bytes:
    """Encode an integer as a SPOP varint.

    Args:
        value: an integer in ``[-2**63, 2**64)``; negative values are encoded as
            their 64-bit two's complement.

    Returns:
        The encoded bytes (1 to 10 of them).

    Raises:
        InvalidValue: the value does not fit in 64 bits.
    """
    if 0 <= value < 240:
        return _SMALL[value]
    if value < 0:
        if value < _I64_MIN:
            raise InvalidValue(f"integer {value} does not fit in 64 bits")
        value &= _U64_MASK
    elif value >= _U64:
        raise InvalidValue(f"integer {value} does not fit in 64 bits")
    out = bytearray()
    out.append((value & 0xFF) | 0xF0)
    value = (value - 240) >> 4
    while value >= 128:
        out.append((value & 0xFF) | 0x80)
        value = (value - 128) >> 7
    out.append(value)
    return bytes(out)


def decode_varint(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int]:
    """Decode one varint from a complete frame.

    ``buf`` always holds a whole frame (the framer has already waited for LEN
    bytes), so running out of bytes is an invalid frame, not "need more data".

    Args:
        buf: the frame bytes.
        pos: offset of the first varint byte.

    Returns:
        ``(value, next_pos)``, with ``value`` unsigned in ``[0, 2**64)``.

    Raises:
        InvalidFrame: the varint is truncated, longer than 10 bytes or above 2**64-1.
    """
    try:
        value = buf[pos]
        pos += 1
        if value < 240:
            return value, pos
        shift = 4
        start = pos
        while True:
            byte = buf[pos]
            pos += 1
            value += byte << shift
            if byte < 128:
                break
            shift += 7
            if pos - start >= MAX_VARINT_LEN - 1:
                raise InvalidFrame("varint longer than 10 bytes")
    except IndexError:
        raise InvalidFrame("truncated varint") from None
    if value >= _U64:
        raise InvalidFrame("varint above 2**64-1")
    return value, pos

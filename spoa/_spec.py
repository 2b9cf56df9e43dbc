"""SPOP constants and tables, transcribed from SPOE.txt §3 (and haproxy.md A).

This module owns every number the protocol defines: frame types, frame flags,
typed-data type ids, action types, variable scopes and size limits.  Each spec
table is one enum.  It holds no logic, so the codec modules, the events and the
connection can all import it without import cycles.
"""

from __future__ import annotations

import enum

__all__ = [
    "FrameType",
    "Flags",
    "DataType",
    "ActionType",
    "VarScope",
    "SPOP_VERSION",
    "MIN_FRAME_SIZE",
    "DEFAULT_MAX_FRAME_SIZE",
    "MAX_DISCONNECT_MESSAGE",
    "HEADER_MIN_LEN",
]


class FrameType(enum.IntEnum):
    """Frame types (SPOE.txt §3.2.4; spoe-t@2.8 ``enum spoe_frame_type``)."""

    # Continuation of a fragmented frame.  Fragmentation is never announced by us and
    # was removed in 3.1, so receiving one is FragmentationNotSupported (haproxy.md A.1).
    UNSET = 0
    HAPROXY_HELLO = 1
    HAPROXY_DISCONNECT = 2
    NOTIFY = 3
    AGENT_HELLO = 101
    AGENT_DISCONNECT = 102
    ACK = 103


class Flags(enum.IntFlag):
    """Frame FLAGS, a 32-bit big-endian field (SPOE.txt §3.2; spoe-t@2.8 ``SPOE_FRM_FL_*``)."""

    NONE = 0
    # Last fragment of a frame.  Every frame we send and accept carries it: HAProxy 2.x
    # rejects HELLO/DISCONNECT/ACK without it and 3.1+ rejects any frame without it.
    FIN = 0x00000001
    # The fragmented frame is aborted (only meaningful with fragmentation).
    ABORT = 0x00000002


class DataType(enum.IntEnum):
    """TYPED-DATA type ids (SPOE.txt §3.1).

    The id lives in the LOW nibble of the type byte and the flags in the high nibble,
    the reverse of the ASCII drawing in SPOE.txt (haproxy.md A.3; spoe-t@2.8
    ``SPOE_DATA_T_MASK = 0x0F``).  Ids 10-15 are reserved.
    """

    NULL = 0
    BOOL = 1  # no data; the value is the 0x10 flag: true = 0x11, false = 0x01
    INT32 = 2  # varint
    UINT32 = 3  # varint
    INT64 = 4  # varint
    UINT64 = 5  # varint
    IPV4 = 6  # 4 bytes, network order
    IPV6 = 7  # 16 bytes
    STRING = 8  # varint length + bytes
    BINARY = 9  # varint length + bytes


class ActionType(enum.IntEnum):
    """ACK action types (SPOE.txt §3.4)."""

    SET_VAR = 1  # always 3 args: scope, name, value
    UNSET_VAR = 2  # always 2 args: scope, name


class VarScope(enum.IntEnum):
    """Variable scopes for set-var / unset-var (SPOE.txt §3.4)."""

    PROC = 0
    SESS = 1
    TXN = 2
    REQ = 3
    RES = 4


# The only SPOP version HAProxy speaks since 1.0 was dropped (haproxy.md A.5).
SPOP_VERSION = "2.0"

# SPOE.txt §3.2.5: "max-frame-size ... must be greater than or equal to 256".
MIN_FRAME_SIZE = 256

# HAProxy's default max-frame-size is tune.bufsize - 4 = 16380 (haproxy.md A.5).
DEFAULT_MAX_FRAME_SIZE = 16380

# HAProxy 2.x treats a DISCONNECT message longer than 255 bytes as an invalid frame
# (haproxy.md A.6).
MAX_DISCONNECT_MESSAGE = 255

# TYPE(1) + FLAGS(4) + STREAM-ID(>=1) + FRAME-ID(>=1): the shortest possible LEN.
HEADER_MIN_LEN = 7

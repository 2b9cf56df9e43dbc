"""SPOP error tree: one exception class per AGENT-DISCONNECT status code.

This module owns the mapping from "what went wrong" to the status code an agent
puts in its AGENT-DISCONNECT frame (SPOE.txt §3.5, haproxy.md A.6).  Every class
carries that code as the class attribute ``status`` -- the same idea as h2's
``error_code`` -- so the asyncio shell can answer any failure with
``AgentDisconnect.for_error(exc)`` without a lookup table.

Rules (checked by the property tests in tests/spoa):

* every failure to decode bytes coming from HAProxy raises a ``SpopError``
  subclass -- never ``IndexError``, ``UnicodeError``, ``struct.error`` ...;
* misuse of the API on our side (sending a frame in the wrong state, a value that
  cannot be encoded) raises ``LocalProtocolError`` or ``InvalidValue``; those are
  ``SpopError`` too, but the peer did nothing wrong, so the shell must not
  disconnect because of them.

This module must not import anything else from ``spoa``.
"""

from __future__ import annotations

import enum
from typing import ClassVar

__all__ = [
    "Status",
    "SpopError",
    "ProcessingTimeout",
    "FrameTooBig",
    "InvalidFrame",
    "UnexpectedFrame",
    "NoVersion",
    "NoMaxFrameSize",
    "NoCapabilities",
    "BadVersion",
    "BadFrameSize",
    "FragmentationNotSupported",
    "LocalProtocolError",
    "InvalidValue",
]


class Status(enum.IntEnum):
    """AGENT-DISCONNECT / HAPROXY-DISCONNECT ``status-code`` values (SPOE.txt §3.5)."""

    NORMAL = 0
    IO = 1
    TIMEOUT = 2
    TOO_BIG = 3
    INVALID = 4
    NO_VSN = 5
    NO_FRAME_SIZE = 6
    NO_CAP = 7
    BAD_VSN = 8
    BAD_FRAME_SIZE = 9
    FRAG_NOT_SUPPORTED = 10
    INTERLACED_FRAMES = 11
    FRAMEID_NOTFOUND = 12
    RES = 13
    UNKNOWN = 99


class SpopError(Exception):
    """Root of every error raised by the ``spoa`` package.

    ``status`` is the SPOE.txt §3.5 code to send in an AGENT-DISCONNECT when this
    error ends a connection.
    """

    status: ClassVar[Status] = Status.UNKNOWN


class ProcessingTimeout(SpopError):
    """A connection timed out (idle or hello) on the agent side (status 2)."""

    status = Status.TIMEOUT


class FrameTooBig(SpopError):
    """A frame's LEN exceeds the (negotiated) max-frame-size (status 3)."""

    status = Status.TOO_BIG


class InvalidFrame(SpopError):
    """The peer sent bytes that are not a valid SPOP frame (status 4)."""

    status = Status.INVALID


class UnexpectedFrame(InvalidFrame):
    """A well-formed frame arrived in a state where it is not allowed (status 4).

    HAProxy itself answers an unexpected frame type with "invalid frame"
    (flt_spoe@2.8 ``spoe_handle_agenthello_frame``), so we do the same.
    """


class NoVersion(SpopError):
    """HAPROXY-HELLO without ``supported-versions`` (status 5)."""

    status = Status.NO_VSN


class NoMaxFrameSize(SpopError):
    """HAPROXY-HELLO without ``max-frame-size`` (status 6)."""

    status = Status.NO_FRAME_SIZE


class NoCapabilities(SpopError):
    """HAPROXY-HELLO without ``capabilities`` (status 7)."""

    status = Status.NO_CAP


class BadVersion(SpopError):
    """No SPOP 2.x version in common with HAProxy (status 8)."""

    status = Status.BAD_VSN


class BadFrameSize(SpopError):
    """The max-frame-size cannot be negotiated to at least 256 bytes (status 9)."""

    status = Status.BAD_FRAME_SIZE


class FragmentationNotSupported(SpopError):
    """A frame without FIN, with ABORT, or of type UNSET (status 10).

    We never announce the ``fragmentation`` capability (haproxy.md A.5), so any
    fragment is a protocol error, as in HAProxy 3.1+ (mux_spop@3.1).
    """

    status = Status.FRAG_NOT_SUPPORTED


class LocalProtocolError(SpopError):
    """We (the caller of ``Connection``) broke the protocol, e.g. ACK before HELLO.

    The peer did nothing wrong; do not answer it with a DISCONNECT for this.
    """


class InvalidValue(SpopError, ValueError):
    """A value cannot be encoded on the wire (out of range, too long, bad type).

    Raised when *building or encoding* events.  Also a ``ValueError`` so plain
    Python callers can catch it the usual way.
    """

    status = Status.INVALID

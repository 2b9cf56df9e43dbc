"""SPOP 2.0 (HAProxy's Stream Processing Offload Protocol), agent side.

A reusable library that knows nothing about its users: a sans-IO codec and state
machine (``Connection``), the events and values it speaks in, the error tree, and a
thin asyncio server (``serve``).  See SPOE.txt §3 and
shared/reference/haproxy.md section A.
"""

from ._frames import decode_frame, encode_frame
from ._spec import (
    DEFAULT_MAX_FRAME_SIZE,
    MIN_FRAME_SIZE,
    SPOP_VERSION,
    ActionType,
    DataType,
    Flags,
    FrameType,
    VarScope,
)
from .connection import Connection, State
from .errors import (
    BadFrameSize,
    BadVersion,
    FragmentationNotSupported,
    FrameTooBig,
    InvalidFrame,
    InvalidValue,
    LocalProtocolError,
    NoCapabilities,
    NoMaxFrameSize,
    NoVersion,
    ProcessingTimeout,
    SpopError,
    Status,
    UnexpectedFrame,
)
from .events import (
    Ack,
    Action,
    AgentDisconnect,
    AgentEvent,
    AgentHello,
    Event,
    HaproxyDisconnect,
    HaproxyEvent,
    HaproxyHello,
    Message,
    Notify,
    SetVar,
    TypedValue,
    UnsetVar,
    typed,
)
from .server import Handler, ServerStats, SpoaServer, event_loop_factory, serve

__all__ = [
    # sans-IO core
    "Connection",
    "State",
    "encode_frame",
    "decode_frame",
    # events and values
    "Event",
    "HaproxyEvent",
    "AgentEvent",
    "HaproxyHello",
    "HaproxyDisconnect",
    "Notify",
    "Message",
    "AgentHello",
    "AgentDisconnect",
    "Ack",
    "Action",
    "SetVar",
    "UnsetVar",
    "TypedValue",
    "typed",
    # protocol tables
    "FrameType",
    "Flags",
    "DataType",
    "ActionType",
    "VarScope",
    "SPOP_VERSION",
    "MIN_FRAME_SIZE",
    "DEFAULT_MAX_FRAME_SIZE",
    # errors
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
    # asyncio shell
    "serve",
    "SpoaServer",
    "ServerStats",
    "Handler",
    "event_loop_factory",
]

"""SPOP events and values: frozen, slotted dataclasses, nothing else.

This module owns the Python shape of everything that crosses the wire:

* ``TypedValue`` -- one TYPED-DATA item (SPOE.txt §3.1), kept as ``(type, value)``
  so that ``decode(encode(x)) == x`` holds exactly (an INT32 stays an INT32);
* the frames HAProxy sends (``HaproxyHello``, ``HaproxyDisconnect``, ``Notify``
  with its ``Message`` list) and the frames an agent sends (``AgentHello``,
  ``AgentDisconnect``, ``Ack`` with its ``SetVar``/``UnsetVar`` actions).

Each class validates in ``__post_init__`` that it can be encoded, raising
``InvalidValue``; every constructed event therefore round-trips through the codec.
Nothing here reads or writes bytes (that is ``_typed``/``_frames``) and nothing here
knows about connection state (that is ``connection``).  Don't subclass these.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Union, final

from ._spec import MAX_DISCONNECT_MESSAGE, SPOP_VERSION, DataType, VarScope
from .errors import InvalidValue, SpopError, Status

__all__ = [
    "PyValue",
    "TypedValue",
    "typed",
    "Message",
    "Notify",
    "HaproxyHello",
    "HaproxyDisconnect",
    "AgentHello",
    "AgentDisconnect",
    "SetVar",
    "UnsetVar",
    "Ack",
    "Action",
    "HaproxyEvent",
    "AgentEvent",
    "Event",
    "KV",
]

IPv4Address = ipaddress.IPv4Address
IPv6Address = ipaddress.IPv6Address

#: The Python values a ``TypedValue`` can hold.
PyValue = Union[None, bool, int, str, bytes, IPv4Address, IPv6Address]

_INT_RANGES: dict[DataType, tuple[int, int]] = {
    DataType.INT32: (-(1 << 31), (1 << 31) - 1),
    DataType.UINT32: (0, (1 << 32) - 1),
    DataType.INT64: (-(1 << 63), (1 << 63) - 1),
    DataType.UINT64: (0, (1 << 64) - 1),
}
_U32_MAX = (1 << 32) - 1
_U64_MAX = (1 << 64) - 1


def _setattr(obj: object, name: str, value: object) -> None:
    # Frozen dataclasses normalise their own fields (list -> tuple) this way.
    object.__setattr__(obj, name, value)


def _check_id(what: str, value: int) -> None:
    if type(value) is not int or not 0 <= value <= _U64_MAX:
        raise InvalidValue(f"{what} must be an int in [0, 2**64), got {value!r}")


def _check_str(what: str, value: object) -> None:
    if not isinstance(value, str):
        raise InvalidValue(f"{what} must be a str, got {type(value).__name__}")


@final
@dataclass(frozen=True, slots=True)
class TypedValue:
    """One TYPED-DATA value (SPOE.txt §3.1).

    ``value`` is ``None`` for NULL, ``bool`` for BOOL, ``int`` for the four integer
    types (range-checked), ``ipaddress.IPv4Address``/``IPv6Address`` for IPV4/IPV6,
    ``str`` for STRING and ``bytes`` for BINARY.

    STRING values are decoded as UTF-8 with ``errors="surrogateescape"``: HAProxy
    ships raw header bytes (haproxy.md A.3), and surrogateescape keeps any byte
    string lossless (``value.encode("utf-8", "surrogateescape")`` gives the bytes
    back).  Use ``raw_bytes()`` to get them.
    """

    type: DataType
    value: PyValue

    def __post_init__(self) -> None:
        t, v = self.type, self.value
        if type(t) is not DataType:
            try:
                t = DataType(t)
            except ValueError:
                raise InvalidValue(f"unknown data type {t!r}") from None
            _setattr(self, "type", t)
        if t is DataType.STRING:
            ok = isinstance(v, str)
        elif t is DataType.BINARY:
            ok = isinstance(v, bytes)
        elif t in _INT_RANGES:
            lo, hi = _INT_RANGES[t]
            ok = type(v) is int and lo <= v <= hi
        elif t is DataType.BOOL:
            ok = type(v) is bool
        elif t is DataType.NULL:
            ok = v is None
        elif t is DataType.IPV4:
            ok = isinstance(v, IPv4Address)
        else:  # IPV6
            ok = isinstance(v, IPv6Address)
        if not ok:
            raise InvalidValue(f"{v!r} is not a valid {t.name} value")

    # Convenience constructors -------------------------------------------------------

    @classmethod
    def of(cls, value: PyValue | bytearray | memoryview | TypedValue) -> TypedValue:
        """Infer the type from a Python value.

        ``None`` -> NULL, ``bool`` -> BOOL, ``int`` -> INT64 (UINT64 above 2**63-1),
        ``str`` -> STRING, ``bytes``/``bytearray``/``memoryview`` -> BINARY,
        ``IPv4Address`` -> IPV4, ``IPv6Address`` -> IPV6; a ``TypedValue`` is
        returned unchanged.  HAProxy stores any integer it receives as a signed
        64-bit sample (haproxy.md A.3), hence INT64 by default.

        Raises:
            InvalidValue: the value has no SPOP type or is out of range.
        """
        if isinstance(value, TypedValue):
            return value
        if value is None:
            return cls(DataType.NULL, None)
        if isinstance(value, bool):
            return cls(DataType.BOOL, value)
        if isinstance(value, int):
            return cls(DataType.INT64 if value < (1 << 63) else DataType.UINT64, int(value))
        if isinstance(value, str):
            return cls(DataType.STRING, value)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return cls(DataType.BINARY, bytes(value))
        if isinstance(value, IPv4Address):
            return cls(DataType.IPV4, value)
        if isinstance(value, IPv6Address):
            return cls(DataType.IPV6, value)
        raise InvalidValue(f"no SPOP type for {type(value).__name__}")

    @classmethod
    def null(cls) -> TypedValue:
        """NULL (in an ACK's set-var, HAProxy unsets the variable)."""
        return cls(DataType.NULL, None)

    @classmethod
    def boolean(cls, value: bool) -> TypedValue:
        return cls(DataType.BOOL, value)

    @classmethod
    def int32(cls, value: int) -> TypedValue:
        return cls(DataType.INT32, value)

    @classmethod
    def uint32(cls, value: int) -> TypedValue:
        return cls(DataType.UINT32, value)

    @classmethod
    def int64(cls, value: int) -> TypedValue:
        return cls(DataType.INT64, value)

    @classmethod
    def uint64(cls, value: int) -> TypedValue:
        return cls(DataType.UINT64, value)

    @classmethod
    def ipv4(cls, value: str | int | IPv4Address) -> TypedValue:
        return cls(DataType.IPV4, IPv4Address(value))

    @classmethod
    def ipv6(cls, value: str | int | IPv6Address) -> TypedValue:
        return cls(DataType.IPV6, IPv6Address(value))

    @classmethod
    def string(cls, value: str) -> TypedValue:
        return cls(DataType.STRING, value)

    @classmethod
    def binary(cls, value: bytes) -> TypedValue:
        return cls(DataType.BINARY, value)

    def raw_bytes(self) -> bytes:
        """The wire bytes of a STRING or BINARY value (undoing surrogateescape).

        Raises:
            InvalidValue: the value is not a STRING or BINARY, or the string holds
                a lone surrogate that surrogateescape cannot map back to a byte.
        """
        if isinstance(self.value, bytes):
            return self.value
        if isinstance(self.value, str):
            try:
                return self.value.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError as exc:
                raise InvalidValue(f"string cannot be encoded: {exc}") from None
        raise InvalidValue(f"{self.type.name} has no byte representation")


def typed(value: PyValue | bytearray | memoryview | TypedValue) -> TypedValue:
    """Shorthand for ``TypedValue.of(value)``."""
    return TypedValue.of(value)


#: A KV-LIST entry (SPOE.txt §3.1): a plain key and a typed value.
KV = tuple[str, TypedValue]


def _kv_tuple(what: str, items: Iterable[KV]) -> tuple[KV, ...]:
    out = tuple(items)
    for item in out:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise InvalidValue(f"{what} entries must be (name, TypedValue) pairs")
        _check_str(f"{what} name", item[0])
        if not isinstance(item[1], TypedValue):
            raise InvalidValue(f"{what} values must be TypedValue, got {type(item[1]).__name__}")
    return out


def _list_item(what: str, item: object) -> str:
    # Comma-separated lists (supported-versions, capabilities, SPOE.txt §3.2.5) are
    # split on "," and stripped; an item that would not survive that is refused so
    # that every event round-trips.
    if not isinstance(item, str) or not item or "," in item or item != item.strip():
        raise InvalidValue(f"invalid {what} {item!r}")
    return item


def _list(what: str, items: Iterable[str]) -> tuple[str, ...]:
    if isinstance(items, str):
        # A bare "2.0" would otherwise be iterated character by character.
        raise InvalidValue(f"{what}s must be a sequence of str, not a str")
    return tuple(_list_item(what, item) for item in items)


# -- frames sent by HAProxy ---------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class Message:
    """One SPOE message of a NOTIFY: a name and its ``(arg-name, value)`` pairs.

    HAProxy encodes an argument configured without a name as an empty name
    (haproxy.md A.3).  At most 255 args (``nb-args`` is one byte, SPOE.txt §3.2.6).
    """

    name: str
    args: tuple[KV, ...] = ()

    def __post_init__(self) -> None:
        _check_str("message name", self.name)
        args = self.args if type(self.args) is tuple else tuple(self.args)
        if len(args) > 255:
            raise InvalidValue("a message has at most 255 arguments")
        _setattr(self, "args", _kv_tuple("argument", args))

    def get(self, name: str, default: TypedValue | None = None) -> TypedValue | None:
        """The value of the first argument called ``name``, or ``default``."""
        for arg_name, value in self.args:
            if arg_name == name:
                return value
        return default

    def args_dict(self) -> dict[str, TypedValue]:
        """The arguments as a dict (the first one wins on duplicate names)."""
        out: dict[str, TypedValue] = {}
        for arg_name, value in self.args:
            out.setdefault(arg_name, value)
        return out


@final
@dataclass(frozen=True, slots=True)
class Notify:
    """NOTIFY (SPOE.txt §3.2.6): the messages bound to one event of one stream.

    The ACK must repeat ``stream_id`` and ``frame_id``.  In 2.x stream-id 0 is valid
    (haproxy.md A.1).
    """

    stream_id: int
    frame_id: int
    messages: tuple[Message, ...] = ()

    def __post_init__(self) -> None:
        _check_id("stream_id", self.stream_id)
        _check_id("frame_id", self.frame_id)
        messages = self.messages if type(self.messages) is tuple else tuple(self.messages)
        for m in messages:
            if not isinstance(m, Message):
                raise InvalidValue(f"messages must be Message, got {type(m).__name__}")
        _setattr(self, "messages", messages)

    def message(self, name: str) -> Message | None:
        """The first message called ``name``, or None."""
        for m in self.messages:
            if m.name == name:
                return m
        return None


@final
@dataclass(frozen=True, slots=True)
class HaproxyHello:
    """HAPROXY-HELLO (SPOE.txt §3.2.5, haproxy.md A.5).

    ``supported_versions`` and ``capabilities`` are the comma-separated strings of
    the frame, split and stripped.  ``engine_id`` is absent in health-check hellos,
    which carry ``healthcheck`` = true instead.  ``extra`` keeps every KV entry
    with an unknown key, raw and in order (unknown keys must be ignored, SPOE.txt
    §3.2.5).  ``max_frame_size`` is sent as UINT32.
    """

    supported_versions: tuple[str, ...]
    max_frame_size: int
    capabilities: tuple[str, ...]
    engine_id: str | None = None
    healthcheck: bool = False
    extra: tuple[KV, ...] = ()

    def __post_init__(self) -> None:
        _setattr(self, "supported_versions", _list("version", self.supported_versions))
        _setattr(self, "capabilities", _list("capability", self.capabilities))
        if type(self.max_frame_size) is not int or not 0 <= self.max_frame_size <= _U32_MAX:
            raise InvalidValue(f"max_frame_size must fit in a UINT32: {self.max_frame_size!r}")
        if self.engine_id is not None:
            _check_str("engine_id", self.engine_id)
        if type(self.healthcheck) is not bool:
            raise InvalidValue("healthcheck must be a bool")
        _setattr(self, "extra", _kv_tuple("extra", self.extra))
        for key, _ in self.extra:
            if key in HELLO_KEYS:
                raise InvalidValue(f"{key!r} is not an extra key")


@final
@dataclass(frozen=True, slots=True)
class HaproxyDisconnect:
    """HAPROXY-DISCONNECT (SPOE.txt §3.2.8): HAProxy closes the connection.

    ``status`` is a ``Status`` when the code is known, else a plain int.  The agent
    must answer AGENT-DISCONNECT and close (haproxy.md A.6).
    """

    status: int
    message: str = ""
    extra: tuple[KV, ...] = ()

    def __post_init__(self) -> None:
        _check_disconnect(self, limit=None)


# -- frames sent by the agent -------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class AgentHello:
    """AGENT-HELLO (SPOE.txt §3.2.5, haproxy.md A.5).

    HAProxy requires ``version`` "2.0" and 256 <= ``max_frame_size`` <= its own; we
    always send ``capabilities`` (possibly empty) because the 3.1 health check
    fails without it.  ``max_frame_size`` is sent as UINT32.
    """

    max_frame_size: int
    capabilities: tuple[str, ...] = ()
    version: str = SPOP_VERSION
    extra: tuple[KV, ...] = ()

    def __post_init__(self) -> None:
        _check_str("version", self.version)
        _setattr(self, "capabilities", _list("capability", self.capabilities))
        if type(self.max_frame_size) is not int or not 0 <= self.max_frame_size <= _U32_MAX:
            raise InvalidValue(f"max_frame_size must fit in a UINT32: {self.max_frame_size!r}")
        _setattr(self, "extra", _kv_tuple("extra", self.extra))
        for key, _ in self.extra:
            if key in AGENT_HELLO_KEYS:
                raise InvalidValue(f"{key!r} is not an extra key")


@final
@dataclass(frozen=True, slots=True)
class AgentDisconnect:
    """AGENT-DISCONNECT (SPOE.txt §3.2.9): we close the connection, with a reason.

    HAProxy 2.x rejects a ``message`` longer than 255 bytes (haproxy.md A.6), so
    this class does too; ``for_error`` truncates for you.
    """

    status: int
    message: str = ""
    extra: tuple[KV, ...] = ()

    def __post_init__(self) -> None:
        _check_disconnect(self, limit=MAX_DISCONNECT_MESSAGE)

    @classmethod
    def for_error(cls, exc: BaseException) -> AgentDisconnect:
        """The AGENT-DISCONNECT that reports ``exc`` to HAProxy.

        The status is ``exc.status`` for a ``SpopError``, else 99 (unknown); the
        message is ``str(exc)`` (or the class name), cut to 255 bytes of UTF-8.
        """
        status = exc.status if isinstance(exc, SpopError) else Status.UNKNOWN
        text = str(exc) or type(exc).__name__
        return cls(status, truncate_utf8(text, MAX_DISCONNECT_MESSAGE))


def truncate_utf8(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, on a character boundary."""
    raw = text.encode("utf-8", "surrogateescape")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", "ignore")


def _check_disconnect(ev: HaproxyDisconnect | AgentDisconnect, limit: int | None) -> None:
    if type(ev.status) is not int and not isinstance(ev.status, Status):
        raise InvalidValue(f"status must be an int, got {ev.status!r}")
    if not 0 <= ev.status <= _U32_MAX:
        raise InvalidValue(f"status must fit in a UINT32: {ev.status}")
    if type(ev.status) is int:
        try:
            _setattr(ev, "status", Status(ev.status))
        except ValueError:
            pass  # an unknown code is kept as a plain int
    _check_str("message", ev.message)
    if limit is not None:
        try:
            size = len(ev.message.encode("utf-8", "surrogateescape"))
        except UnicodeEncodeError:
            raise InvalidValue("message cannot be encoded as UTF-8") from None
        if size > limit:
            raise InvalidValue(f"disconnect message is {size} bytes, the limit is {limit}")
    _setattr(ev, "extra", _kv_tuple("extra", ev.extra))
    for key, _ in ev.extra:
        if key in DISCONNECT_KEYS:
            raise InvalidValue(f"{key!r} is not an extra key")


@final
@dataclass(frozen=True, slots=True)
class SetVar:
    """ACK action set-var (SPOE.txt §3.4): ``<scope>.<var-prefix>.<name> = value``.

    HAProxy silently truncates the full variable name at 64 bytes and only sets
    variables it already knows, unless ``option force-set-var`` (haproxy.md A.4).
    A NULL value makes HAProxy unset the variable.
    """

    scope: VarScope
    name: str
    value: TypedValue

    def __post_init__(self) -> None:
        _setattr(self, "scope", _scope(self.scope))
        _check_str("variable name", self.name)
        if not isinstance(self.value, TypedValue):
            raise InvalidValue("SetVar.value must be a TypedValue; wrap it with typed()")


@final
@dataclass(frozen=True, slots=True)
class UnsetVar:
    """ACK action unset-var (SPOE.txt §3.4)."""

    scope: VarScope
    name: str

    def __post_init__(self) -> None:
        _setattr(self, "scope", _scope(self.scope))
        _check_str("variable name", self.name)


def _scope(scope: int) -> VarScope:
    if type(scope) is VarScope:
        return scope
    try:
        return VarScope(scope)
    except ValueError:
        raise InvalidValue(f"unknown variable scope {scope!r}") from None


Action = Union[SetVar, UnsetVar]


@final
@dataclass(frozen=True, slots=True)
class Ack:
    """ACK (SPOE.txt §3.2.7): the answer to one NOTIFY, same stream-id and frame-id.

    ``actions`` may be empty: an empty ACK is valid and leaves every variable as it
    is (haproxy.md A.4).
    """

    stream_id: int
    frame_id: int
    actions: tuple[Action, ...] = ()

    def __post_init__(self) -> None:
        _check_id("stream_id", self.stream_id)
        _check_id("frame_id", self.frame_id)
        actions = self.actions if type(self.actions) is tuple else tuple(self.actions)
        for a in actions:
            if not isinstance(a, (SetVar, UnsetVar)):
                raise InvalidValue(f"actions must be SetVar/UnsetVar, got {type(a).__name__}")
        _setattr(self, "actions", actions)


HaproxyEvent = Union[HaproxyHello, HaproxyDisconnect, Notify]
AgentEvent = Union[AgentHello, AgentDisconnect, Ack]
Event = Union[HaproxyEvent, AgentEvent]

# -- unchecked constructors for the decoder's fast path --------------------------------
#
# The NOTIFY fast path (``_frames.decode_notify_fast``) builds these values from bytes
# it has already validated, so re-running ``__post_init__`` would only check again what
# the bytes guaranteed.  These helpers fill the slots directly (the slot descriptors'
# ``__set__`` bypasses the frozen ``__setattr__``); the objects are the same frozen
# values, equal to what the checked constructors build.  Nothing else may use them.

_new = object.__new__
_STRING = DataType.STRING
_set_tv_type = TypedValue.__dict__["type"].__set__
_set_tv_value = TypedValue.__dict__["value"].__set__
_set_msg_name = Message.__dict__["name"].__set__
_set_msg_args = Message.__dict__["args"].__set__
_set_notify_sid = Notify.__dict__["stream_id"].__set__
_set_notify_fid = Notify.__dict__["frame_id"].__set__
_set_notify_messages = Notify.__dict__["messages"].__set__


def string_unchecked(value: str) -> TypedValue:
    """``TypedValue(DataType.STRING, value)`` for a value decoded from the wire."""
    tv = _new(TypedValue)
    _set_tv_type(tv, _STRING)
    _set_tv_value(tv, value)
    return tv


def message_unchecked(name: str, args: tuple[KV, ...]) -> Message:
    """``Message(name, args)`` for values decoded from the wire (at most 255 args)."""
    msg = _new(Message)
    _set_msg_name(msg, name)
    _set_msg_args(msg, args)
    return msg


def notify_unchecked(stream_id: int, frame_id: int, messages: tuple[Message, ...]) -> Notify:
    """``Notify(stream_id, frame_id, messages)`` for values decoded from the wire."""
    ev = _new(Notify)
    _set_notify_sid(ev, stream_id)
    _set_notify_fid(ev, frame_id)
    _set_notify_messages(ev, messages)
    return ev


# KV keys with a field of their own (SPOE.txt §3.2.5, §3.2.8).
HELLO_KEYS = frozenset(
    {"supported-versions", "max-frame-size", "capabilities", "engine-id", "healthcheck"}
)
AGENT_HELLO_KEYS = frozenset({"version", "max-frame-size", "capabilities"})
DISCONNECT_KEYS = frozenset({"status-code", "message"})

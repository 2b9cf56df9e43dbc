"""Hypothesis strategies for SPOP values and events (shared by the property tests)."""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

from spoa import (
    Ack,
    AgentDisconnect,
    AgentHello,
    DataType,
    Event,
    HaproxyDisconnect,
    HaproxyHello,
    Message,
    Notify,
    SetVar,
    TypedValue,
    UnsetVar,
    VarScope,
)

# Strings as HAProxy can produce them: any bytes, decoded with surrogateescape.
raw_strings = st.binary(max_size=40).map(lambda b: b.decode("utf-8", "surrogateescape"))
text_strings = st.one_of(st.text(max_size=20), raw_strings)
ids = st.one_of(st.integers(0, 300), st.integers(0, 2**64 - 1))
list_items = st.text(
    alphabet=st.characters(exclude_characters=",", codec="utf-8"),
    min_size=1,
    max_size=12,
).filter(lambda s: s == s.strip())


def typed_values() -> st.SearchStrategy[TypedValue]:
    return st.one_of(
        st.just(TypedValue.null()),
        st.booleans().map(TypedValue.boolean),
        st.integers(-(2**31), 2**31 - 1).map(TypedValue.int32),
        st.integers(0, 2**32 - 1).map(TypedValue.uint32),
        st.integers(-(2**63), 2**63 - 1).map(TypedValue.int64),
        st.integers(0, 2**64 - 1).map(TypedValue.uint64),
        st.integers(0, 2**32 - 1).map(lambda i: TypedValue(DataType.IPV4, ipaddress.IPv4Address(i))),
        st.integers(0, 2**128 - 1).map(lambda i: TypedValue(DataType.IPV6, ipaddress.IPv6Address(i))),
        text_strings.map(TypedValue.string),
        st.binary(max_size=40).map(TypedValue.binary),
    )


kvs = st.lists(st.tuples(text_strings, typed_values()), max_size=4).map(tuple)


def _extra(known: frozenset[str]) -> st.SearchStrategy[tuple[tuple[str, TypedValue], ...]]:
    return st.lists(
        st.tuples(text_strings.filter(lambda k: k not in known), typed_values()), max_size=3
    ).map(tuple)


messages = st.builds(Message, name=text_strings, args=kvs)
notifies = st.builds(
    Notify, stream_id=ids, frame_id=ids, messages=st.lists(messages, max_size=3).map(tuple)
)
scopes = st.sampled_from(list(VarScope))
actions = st.one_of(
    st.builds(SetVar, scope=scopes, name=text_strings, value=typed_values()),
    st.builds(UnsetVar, scope=scopes, name=text_strings),
)
acks = st.builds(Ack, stream_id=ids, frame_id=ids, actions=st.lists(actions, max_size=4).map(tuple))
haproxy_hellos = st.builds(
    HaproxyHello,
    supported_versions=st.lists(list_items, max_size=3).map(tuple),
    max_frame_size=st.integers(0, 2**32 - 1),
    capabilities=st.lists(list_items, max_size=3).map(tuple),
    engine_id=st.none() | text_strings,
    healthcheck=st.booleans(),
    extra=_extra(
        frozenset({"supported-versions", "max-frame-size", "capabilities", "engine-id", "healthcheck"})
    ),
)
agent_hellos = st.builds(
    AgentHello,
    max_frame_size=st.integers(0, 2**32 - 1),
    capabilities=st.lists(list_items, max_size=3).map(tuple),
    version=text_strings,
    extra=_extra(frozenset({"version", "max-frame-size", "capabilities"})),
)
statuses = st.integers(0, 2**32 - 1)
_disconnect_extra = _extra(frozenset({"status-code", "message"}))
haproxy_disconnects = st.builds(
    HaproxyDisconnect, status=statuses, message=text_strings, extra=_disconnect_extra
)
agent_disconnects = st.builds(
    AgentDisconnect,
    status=statuses,
    message=st.text(max_size=60),  # <= 255 bytes of UTF-8
    extra=_disconnect_extra,
)
events: st.SearchStrategy[Event] = st.one_of(
    haproxy_hellos, haproxy_disconnects, notifies, agent_hellos, agent_disconnects, acks
)

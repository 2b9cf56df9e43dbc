"""Golden frames from tests/vectors/spoa: hand-built (haproxy.md A.7/A.8) and captured.

The ``haproxy-<version>-*.hex`` vectors were recorded from the real binaries by
tests/vectors/spoa/capture.py (see the README there).  Every vector must decode to
the expected event and re-encode byte for byte: our encoder writes keys in
HAProxy's order with HAProxy's types.
"""

from __future__ import annotations

import ipaddress
import re

import pytest

from spoa import (
    Ack,
    AgentDisconnect,
    AgentHello,
    Connection,
    DataType,
    HaproxyDisconnect,
    HaproxyHello,
    Message,
    Notify,
    SetVar,
    Status,
    TypedValue,
    UnsetVar,
    VarScope,
    decode_frame,
    encode_frame,
    typed,
)

from spoa_helpers import VECTORS, chunkings, feed_all, load_vector

HAND_BUILT = {
    "notify-dcv.hex": Notify(
        5,
        1,
        (
            Message(
                "dcv",
                (
                    ("host", typed("example.com")),
                    ("path", typed("/.well-known/acme-challenge/tok1")),
                ),
            ),
        ),
    ),
    "ack-set-var.hex": Ack(5, 1, (SetVar(VarScope.TXN, "body", typed("tok1.thumb")),)),
    "ack-empty.hex": Ack(5, 1),
    "ack-unset-var.hex": Ack(5, 1, (UnsetVar(VarScope.TXN, "body"),)),
    "agent-hello.hex": AgentHello(max_frame_size=16380, capabilities=("pipelining",)),
    "lab-check-hello.hex": HaproxyHello(("2.0",), 16380, (), healthcheck=True),
    "lab-disconnect-idle.hex": HaproxyDisconnect(Status.TIMEOUT, "a timeout occurred"),
    "fuzz-hello-superscript-version.hex": HaproxyHello(("²",), 16380, ()),
}

CAPTURED_VERSIONS = sorted(
    {m.group(1) for p in VECTORS.glob("haproxy-*.hex") if (m := re.match(r"haproxy-([\d.]+)-", p.name))}
)


def test_captured_vectors_exist_for_both_versions() -> None:
    assert CAPTURED_VERSIONS == ["2.6", "2.8"]


@pytest.mark.parametrize("name", sorted(HAND_BUILT))
def test_hand_built_vectors(name: str) -> None:
    raw = load_vector(name)
    expected = HAND_BUILT[name]
    assert decode_frame(raw[4:]) == expected
    assert encode_frame(expected) == raw


def test_lengths_match_haproxy_md() -> None:
    # haproxy.md A.7/A.8 state these sizes (LEN prefix included).
    assert len(load_vector("notify-dcv.hex")) == 73
    assert len(load_vector("ack-set-var.hex")) == 31
    assert len(load_vector("agent-hello.hex")) == 68
    assert len(load_vector("lab-check-hello.hex")) == 82


@pytest.mark.parametrize("version", ["2.6", "2.8"])
def test_captured_traffic_hello(version: str) -> None:
    raw = load_vector(f"haproxy-{version}-hello.hex")
    hello = decode_frame(raw[4:])
    assert isinstance(hello, HaproxyHello)
    assert hello.supported_versions == ("2.0",)
    assert hello.max_frame_size == 16380
    assert hello.capabilities == ("pipelining", "async")  # 2.x default (haproxy.md A.5)
    assert hello.engine_id is not None and re.fullmatch(r"[0-9a-f-]{36}", hello.engine_id)
    assert not hello.healthcheck and hello.extra == ()
    assert encode_frame(hello) == raw


@pytest.mark.parametrize("version", ["2.6", "2.8"])
def test_captured_check_hello_is_the_lab_one(version: str) -> None:
    raw = load_vector(f"haproxy-{version}-check-hello.hex")
    assert raw == load_vector("lab-check-hello.hex")  # byte-identical (haproxy.md A.8)
    hello = decode_frame(raw[4:])
    assert isinstance(hello, HaproxyHello) and hello.healthcheck and hello.engine_id is None


@pytest.mark.parametrize("version", ["2.6", "2.8"])
def test_captured_idle_disconnect(version: str) -> None:
    raw = load_vector(f"haproxy-{version}-disconnect-idle.hex")
    assert raw == load_vector("lab-disconnect-idle.hex")
    assert decode_frame(raw[4:]) == HaproxyDisconnect(Status.TIMEOUT, "a timeout occurred")


@pytest.mark.parametrize("version", ["2.6", "2.8"])
def test_captured_notify(version: str) -> None:
    raw = load_vector(f"haproxy-{version}-notify.hex")
    notify = decode_frame(raw[4:])
    assert isinstance(notify, Notify)
    # 2.x: stream-id is the stream's uniq_id (0 for the first one), frame-id starts
    # at 1 (haproxy.md A.1).
    assert (notify.stream_id, notify.frame_id) == (0, 1)
    assert [m.name for m in notify.messages] == ["cap-req", "cap-types"]
    req, types = notify.messages
    assert req.args_dict() == {
        "host": typed("Example.COM"),  # not lower-cased by HAProxy (haproxy.md A.3)
        "path": typed("/cap/path"),
        "src": TypedValue.ipv4("127.0.0.1"),
        "method": typed("GET"),
        # Raw header bytes b"caf\xc3\xa9-\xff": UTF-8 plus one stray byte.
        "raw": typed("café-\udcff"),
    }
    assert req.get("raw") is not None and req.get("raw").raw_bytes() == b"caf\xc3\xa9-\xff"  # type: ignore[union-attr]
    assert types.args == (
        ("", typed("Example.COM")),  # an argument without a name
        ("neg", TypedValue(DataType.INT64, -42)),  # integers arrive as INT64
        ("big", TypedValue(DataType.INT64, 2**63 - 1)),
        ("v6", TypedValue(DataType.IPV6, ipaddress.IPv6Address("2001:db8::1"))),
        ("t", TypedValue.boolean(True)),
        ("f", TypedValue.boolean(False)),
        ("blob", TypedValue.binary(b"\x00\xff\x10")),
        ("missing", TypedValue.null()),  # a missing sample is NULL
    )
    assert encode_frame(notify) == raw


@pytest.mark.parametrize("version", ["2.6", "2.8"])
def test_captured_session_through_connection(version: str) -> None:
    """HELLO + NOTIFY + idle DISCONNECT as HAProxy sent them, fed every way."""
    stream = b"".join(
        load_vector(f"haproxy-{version}-{kind}.hex")
        for kind in ("hello", "notify", "disconnect-idle")
    )
    for chunks in chunkings(stream, seed=3):
        conn = Connection()
        hello, notify, disconnect = feed_all(conn.receive_data, chunks)
        assert isinstance(hello, HaproxyHello) and isinstance(notify, Notify)
        assert isinstance(disconnect, HaproxyDisconnect)
        assert conn.agent_hello() == decode_frame(load_vector("agent-hello.hex")[4:])
        assert conn.send(conn.agent_hello()) == load_vector("agent-hello.hex")
        assert conn.send(AgentDisconnect(Status.NORMAL, ""))[4] == 0x66


def test_every_vector_file_is_covered() -> None:
    names = {p.name for p in VECTORS.glob("*.hex")}
    captured = {
        f"haproxy-{v}-{k}.hex"
        for v in CAPTURED_VERSIONS
        for k in ("hello", "check-hello", "notify", "disconnect-idle")
    }
    assert names == set(HAND_BUILT) | captured

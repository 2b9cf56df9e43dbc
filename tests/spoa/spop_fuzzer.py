"""A structure-aware SPOP fuzzer: frame generator, mutators, oracle and the in-process campaign.

Pure: no IO and no clock; all randomness comes from the ``random.Random`` passed in,
so a seed replays a campaign exactly.  Used by tests/spoa/test_fuzz_campaign.py (CI
size) and bench/spop_fuzz.py (a million frames); tests/spoa/spop_fuzz_wire.py sends
the same streams to the real agent over sockets.

How frames are made:

* **Grammar.** Random events of every kind HAProxy sends (HAPROXY-HELLO, NOTIFY with
  messages whose arguments cover every TYPED-DATA type, HAPROXY-DISCONNECT), the
  agent-only kinds (which HAProxy never sends), fragmented NOTIFYs, and the golden
  frames of tests/vectors/spoa as seeds.
* **Tokens.** Each event is encoded here as a list of typed tokens (frame type, flags,
  ids, string lengths, type bytes, nb-args, ...) whose concatenation is exactly what
  ``spoa.encode_frame`` writes (checked by a test).  Structure-aware mutations replace
  one token: a wrong type byte, a huge nb-args, a string length that lies, an overlong
  or overflowing varint, non-zero ids on HELLO, an unknown frame type, bad flags.
* **Bytes.** Blind mutations of the whole frame: bit flips, interesting bytes,
  truncation (LEN fixed or left lying), LEN lies (off by a few, below the header,
  above max-frame-size, 2**32-1), splices of two frames.
* **Streams.** One connection's bytes: usually a HELLO then frames, sometimes no
  HELLO, two HELLOs, a small negotiated max-frame-size and a frame above it,
  duplicate in-flight ids, a DISCONNECT in the middle, split into random chunks.

The oracle (``predict``) runs the sans-IO ``spoa.Connection`` over a stream the way
the server does and says how the agent must end the connection: the status of its
AGENT-DISCONNECT, or "waiting" when the stream is valid so far.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import struct
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from spoa import (
    Ack,
    AgentDisconnect,
    AgentHello,
    Connection,
    DataType,
    Event,
    HaproxyDisconnect,
    HaproxyHello,
    LocalProtocolError,
    Message,
    Notify,
    SetVar,
    SpopError,
    Status,
    TypedValue,
    UnsetVar,
    VarScope,
    decode_frame,
    encode_frame,
)
from spoa._frames import decode_notify_fast
from spoa._varint import encode_varint

__all__ = [
    "Token",
    "FuzzFrame",
    "FuzzStream",
    "FrameFuzzer",
    "Prediction",
    "predict",
    "load_seeds",
    "tokens_of",
    "CampaignStats",
    "run_decoder_campaign",
]

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "spoa"

#: One encoded piece of a frame: (kind, bytes).  Kinds: len, ftype, flags, sid, fid,
#: key-len, key, type, varint, str-len, str, raw, nb-args, name-len, name, action.
Token = tuple[str, bytes]

AGENT_MAX_FRAME_SIZE = 16380  # the agent's default (agent.config.SpoeConfig) and HAProxy's

_FIN = struct.pack(">I", 1)
_MESSAGE = "lockstep-validation"
_ALPHABET = "abcdefghijklmnopqrstuvwxyz-./0123456789"
_TEMPLATES = 256  # events kept for reuse (fresh ids each time): generating one costs more than decoding it
_FRESH = 0.05  # probability that a draw replaces a template with a new event
_INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xEF, 0xF0, 0xFE, 0xFF, 0x0A, 0x0F, 0x10, 0x11, 0x18, 0x19)
_BAD_TYPE_BYTES = (10, 11, 12, 13, 14, 15, 0x18, 0x19, 0x12, 0x20, 0x21, 0xFF, 0x10, 0x80)
_UNKNOWN_FRAME_TYPES = (4, 5, 99, 100, 104, 200, 255)
_BAD_FLAGS = (0, 2, 3, 0xFFFFFFFE, 0xFFFFFFFF, 0x80000001, 5)
_BAD_VARINTS = (
    b"\xff" * 10 + b"\x01",  # 11 bytes: longer than any 64-bit value
    b"\xff" * 9 + b"\x7f",  # 10 bytes, above 2**64-1
    b"\xff" * 9 + b"\x0f",  # 10 bytes, valid boundary region
    b"\xff",  # truncated (continuation bit set at the end)
    b"\xf0",  # truncated 2-byte varint
    b"\xf0\x80\x80\x80\x80\x80\x80\x80\x80\x00",  # overlong encoding of a small value
)


def _varint(value: int) -> bytes:
    return encode_varint(value)


def _str_tokens(text: str | bytes, kind: str) -> list[Token]:
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
    return [(f"{kind}-len", _varint(len(raw))), (kind, raw)]


def _typed_tokens(tv: TypedValue) -> list[Token]:
    t, v = tv.type, tv.value
    if t is DataType.BOOL:
        return [("type", bytes((0x11 if v else 0x01,)))]
    out: list[Token] = [("type", bytes((int(t),)))]
    if t is DataType.NULL:
        return out
    if t in (DataType.INT32, DataType.INT64, DataType.UINT32, DataType.UINT64):
        assert isinstance(v, int)
        return [*out, ("varint", _varint(v))]
    if t in (DataType.IPV4, DataType.IPV6):
        assert isinstance(v, (ipaddress.IPv4Address, ipaddress.IPv6Address))
        return [*out, ("raw", v.packed)]
    assert isinstance(v, (str, bytes))
    return [*out, *_str_tokens(v, "str")]


def _kv_tokens(items: Sequence[tuple[str, TypedValue]]) -> list[Token]:
    out: list[Token] = []
    for key, value in items:
        out += _str_tokens(key, "key")
        out += _typed_tokens(value)
    return out


def tokens_of(event: Event) -> list[Token]:
    """The frame of ``event`` as tokens; ``b"".join`` of their bytes == ``encode_frame(event)``."""
    if isinstance(event, Notify):
        ftype, sid, fid = 3, event.stream_id, event.frame_id
        payload: list[Token] = []
        for msg in event.messages:
            payload += _str_tokens(msg.name, "name")
            payload.append(("nb-args", bytes((len(msg.args),))))
            payload += _kv_tokens(msg.args)
    elif isinstance(event, Ack):
        ftype, sid, fid = 103, event.stream_id, event.frame_id
        payload = []
        for action in event.actions:
            if isinstance(action, SetVar):
                payload.append(("action", bytes((1, 3, action.scope))))
                payload += _str_tokens(action.name, "name")
                payload += _typed_tokens(action.value)
            else:
                payload.append(("action", bytes((2, 2, action.scope))))
                payload += _str_tokens(action.name, "name")
    elif isinstance(event, HaproxyHello):
        ftype, sid, fid = 1, 0, 0
        items = [
            ("supported-versions", TypedValue.string(",".join(event.supported_versions))),
            ("max-frame-size", TypedValue.uint32(event.max_frame_size)),
            ("capabilities", TypedValue.string(",".join(event.capabilities))),
        ]
        if event.healthcheck:
            items.append(("healthcheck", TypedValue.boolean(True)))
        if event.engine_id is not None:
            items.append(("engine-id", TypedValue.string(event.engine_id)))
        payload = _kv_tokens([*items, *event.extra])
    elif isinstance(event, AgentHello):
        ftype, sid, fid = 101, 0, 0
        payload = _kv_tokens(
            [
                ("version", TypedValue.string(event.version)),
                ("max-frame-size", TypedValue.uint32(event.max_frame_size)),
                ("capabilities", TypedValue.string(",".join(event.capabilities))),
                *event.extra,
            ]
        )
    else:
        assert isinstance(event, (HaproxyDisconnect, AgentDisconnect))
        ftype = 2 if isinstance(event, HaproxyDisconnect) else 102
        sid = fid = 0
        payload = _kv_tokens(
            [
                ("status-code", TypedValue.uint32(int(event.status))),
                ("message", TypedValue.string(event.message)),
                *event.extra,
            ]
        )
    head: list[Token] = [("ftype", bytes((ftype,))), ("flags", _FIN), ("sid", _varint(sid)), ("fid", _varint(fid))]
    return _with_len([*head, *payload])


def _with_len(body: list[Token]) -> list[Token]:
    size = sum(len(b) for _, b in body)
    return [("len", struct.pack(">I", size)), *body]


def _join(tokens: Sequence[Token]) -> bytes:
    return b"".join(b for _, b in tokens)


def load_seeds(directory: Path = VECTORS) -> list[bytes]:
    """The golden frames (LEN included) of tests/vectors/spoa, as mutation seeds."""
    seeds = []
    for path in sorted(directory.glob("*.hex")):
        text = path.read_text()
        seeds.append(bytes.fromhex(" ".join(line.split("#", 1)[0] for line in text.splitlines())))
    return seeds


@dataclasses.dataclass(frozen=True, slots=True)
class FuzzFrame:
    """One frame (LEN included) and how it was made: ``valid:<kind>`` or ``<mutation>``."""

    kind: str
    data: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class FuzzStream:
    """The bytes of one fuzz connection, the frames they were built from, and where to cut them."""

    frames: tuple[FuzzFrame, ...]
    cuts: tuple[int, ...]  # increasing offsets into ``data``

    @property
    def data(self) -> bytes:
        return b"".join(f.data for f in self.frames)

    def chunks(self) -> list[bytes]:
        data = self.data
        bounds = [0, *self.cuts, len(data)]
        return [data[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


class FrameFuzzer:
    """Generates valid and mutated SPOP frames and streams from an injected ``random.Random``.

    Args:
        rng: the only source of randomness.
        seeds: complete frames (LEN included) used as extra mutation bases.
        token_values: (host, path) pairs that have a token on the agent: some NOTIFYs
            ask for them, so the fuzz traffic also exercises the hit path.
    """

    def __init__(
        self,
        rng: random.Random,
        *,
        seeds: Sequence[bytes] = (),
        token_values: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.rng = rng
        self.seeds = list(seeds)
        self.token_values = list(token_values)
        self._sid = 0
        self._templates: list[tuple[Event, list[Token]]] = []
        # Token mutators by name; structure-aware, so each knows which token kinds it targets.
        self._token_mutators: dict[str, Callable[[list[Token]], list[Token] | None]] = {
            "wrong-type": self._mut_type,
            "huge-count": self._mut_count,
            "str-len-lie": self._mut_str_len,
            "varint-overlong": self._mut_varint,
            "nonzero-ids": self._mut_ids,
            "unknown-frame-type": self._mut_frame_type,
            "agent-frame-type": self._mut_agent_type,
            "bad-flags": self._mut_flags,
            "drop-token": self._mut_drop,
            "dup-token": self._mut_dup,
        }
        self._byte_mutators: dict[str, Callable[[bytes], bytes]] = {
            "bit-flip": self._mut_bitflip,
            "byte-set": self._mut_byteset,
            "truncate-body": self._mut_truncate_body,
            "truncate-frame": self._mut_truncate_frame,
            "len-lie": self._mut_len,
            "splice": self._mut_splice,
            "garbage": self._mut_garbage,
        }

    # -- values and events ------------------------------------------------------------

    def _text(self, max_len: int = 24) -> str:
        rng = self.rng
        pick = rng.random()
        if pick < 0.5:
            return "".join(rng.choices(_ALPHABET, k=rng.randint(0, max_len)))
        if pick < 0.8:
            return rng.randbytes(rng.randint(0, max_len)).decode("utf-8", "surrogateescape")
        return rng.choice(["", "é", "\u2603" * 3, "host", "path", "\x00", "a" * rng.randint(200, 300)])

    def typed_value(self) -> TypedValue:
        rng = self.rng
        t = rng.choice(list(DataType))
        if t is DataType.NULL:
            return TypedValue.null()
        if t is DataType.BOOL:
            return TypedValue.boolean(rng.random() < 0.5)
        if t is DataType.INT32:
            return TypedValue.int32(rng.choice([0, -1, 2**31 - 1, -(2**31), rng.randint(-(2**31), 2**31 - 1)]))
        if t is DataType.UINT32:
            return TypedValue.uint32(rng.choice([0, 239, 240, 2287, 2288, 2**32 - 1, rng.randint(0, 2**32 - 1)]))
        if t is DataType.INT64:
            return TypedValue.int64(rng.choice([0, -1, 2**63 - 1, -(2**63), rng.randint(-(2**63), 2**63 - 1)]))
        if t is DataType.UINT64:
            return TypedValue.uint64(rng.choice([0, 2**64 - 1, rng.randint(0, 2**64 - 1)]))
        if t is DataType.IPV4:
            return TypedValue.ipv4(rng.randint(0, 2**32 - 1))
        if t is DataType.IPV6:
            return TypedValue.ipv6(rng.randint(0, 2**128 - 1))
        if t is DataType.STRING:
            return TypedValue.string(self._text(40))
        return TypedValue.binary(rng.randbytes(rng.randint(0, 40)))

    def _validation_message(self) -> Message:
        rng = self.rng
        if self.token_values and rng.random() < 0.5:
            host, path = rng.choice(self.token_values)
        else:
            host, path = self._text(20), "/.well-known/pki-validation/" + self._text(20)
        args = [("host", TypedValue.string(host)), ("path", TypedValue.string(path))]
        if rng.random() < 0.2:
            i = rng.randrange(2)
            args[i] = (args[i][0], self.typed_value())  # a wrong type for one argument
        if rng.random() < 0.1:
            rng.shuffle(args)
        return Message(_MESSAGE, tuple(args))

    def message(self) -> Message:
        rng = self.rng
        if rng.random() < 0.4:
            return self._validation_message()
        nb = rng.choice([0, 1, 2, 3, 5, rng.randint(0, 12)])
        return Message(self._text(16), tuple((self._text(10), self.typed_value()) for _ in range(nb)))

    def next_ids(self) -> tuple[int, int]:
        """Fresh (stream-id, frame-id) per call, crossing the one-byte varint boundary early."""
        self._sid += self.rng.choice([1, 1, 1, 7, 239, 2048])
        self._sid %= 2**64
        return self._sid, self.rng.choice([0, 1, 1, 2, 240, 2**32])

    def notify(self) -> Notify:
        sid, fid = self.next_ids()
        return Notify(sid, fid, tuple(self.message() for _ in range(self.rng.choice([0, 1, 1, 1, 2, 3]))))

    def hello(self, *, max_frame_size: int | None = None, healthcheck: bool | None = None) -> HaproxyHello:
        rng = self.rng
        check = rng.random() < 0.1 if healthcheck is None else healthcheck
        return HaproxyHello(
            supported_versions=self._versions(),
            max_frame_size=max_frame_size or rng.choice([16380, 16380, 16384, 4096, 256, 65536]),
            capabilities=rng.choice([("pipelining", "async"), ("pipelining",), (), ("fragmentation",)]),
            engine_id=None if check else self._text(36),
            healthcheck=check,
            extra=tuple((k, self.typed_value()) for k in rng.choice([(), (), ("x-extra",)])),
        )

    def _versions(self) -> tuple[str, ...]:
        rng = self.rng
        if rng.random() < 0.7:
            return rng.choice([("2.0",), ("2.0", "1.0"), ("2.1",), ("1.0", "2.0")])
        # Version strings HAProxy never sends: other digits, huge numbers, junk (parsed by the negotiation).
        odd = ["2", "02.0", "2.0.1", "3.0", "²", "².0", "٢.٠", "２.０", "9" * 5000, "2" * 4301 + ".0",
               "-2.0", "+2", " ", ".", "2..0", "\udcff.0", self._text(12)]
        items = [rng.choice(odd) for _ in range(rng.randint(1, 3))]
        return tuple(i.strip() for i in items if i.strip() and "," not in i)

    def bad_hello(self) -> HaproxyHello:
        """A well-formed HELLO that negotiation must refuse (status 8 or 9)."""
        if self.rng.random() < 0.5:
            return HaproxyHello(("1.0",), 16380, ("pipelining",), "e")
        return HaproxyHello(("2.0",), self.rng.choice([0, 1, 255]), ("pipelining",), "e")

    def odd_kv_frame(self) -> bytes:
        """A well-encoded HELLO or DISCONNECT whose KV-list the event classes would not build: known keys
        with other types or out-of-range values, keys missing or repeated, in any order."""
        rng = self.rng
        hello = rng.random() < 0.6
        ftype = 1 if hello else rng.choice([2, 2, 102])  # 102: AGENT-DISCONNECT, whose message HAProxy caps at 255
        if hello:
            normal = [
                ("supported-versions", TypedValue.string(",".join(self._versions()))),
                ("max-frame-size", TypedValue.uint32(rng.choice([16380, 256, 255, 0]))),
                ("capabilities", TypedValue.string("pipelining")),
                ("engine-id", TypedValue.string(self._text(12))),
                ("healthcheck", TypedValue.boolean(rng.random() < 0.5)),
            ]
        else:
            message = rng.choice(["m", "x" * 255, "x" * 256, "\u00e9" * 128])
            normal = [("status-code", TypedValue.uint32(rng.choice([0, 4, 99]))), ("message", TypedValue.string(message))]
        items: list[tuple[str, TypedValue]] = []
        for key, value in normal:
            pick = rng.random()
            if pick < 0.15:
                continue  # missing
            if pick < 0.5:
                value = self._odd_value()
            items.append((key, value))
            if rng.random() < 0.1:
                items.append((key, self._odd_value()))  # repeated: the last one wins
        if rng.random() < 0.3:
            rng.shuffle(items)
        head: list[Token] = [("ftype", bytes((ftype,))), ("flags", _FIN), ("sid", b"\x00"), ("fid", b"\x00")]
        return _join(_with_len([*head, *_kv_tokens(items)]))

    def _odd_value(self) -> TypedValue:
        rng = self.rng
        pick = rng.random()
        if pick < 0.3:
            return self.typed_value()
        if pick < 0.5:
            return TypedValue.int64(rng.choice([-1, -(2**63), 2**32, 2**40, 255, 256, 16380]))
        if pick < 0.6:
            return TypedValue.uint64(rng.choice([2**32, 2**64 - 1, 300]))
        if pick < 0.7:
            return TypedValue.int32(rng.choice([-1, 300, 2**31 - 1]))
        if pick < 0.8:
            return TypedValue.string(rng.choice(["16380", "2.0", "", "pipelining", "x" * 300]))
        return TypedValue.binary(b"2.0")

    def disconnect(self) -> HaproxyDisconnect:
        return HaproxyDisconnect(self.rng.choice([0, 1, 2, 4, 99, 2**32 - 1]), self._text(30))

    def agent_event(self) -> Event:
        rng = self.rng
        pick = rng.randrange(3)
        if pick == 0:
            return AgentHello(16380, ("pipelining",))
        if pick == 1:
            return AgentDisconnect(Status.NORMAL, "x")
        sid, fid = self.next_ids()
        acts: list[SetVar | UnsetVar] = [SetVar(VarScope.TXN, "token", self.typed_value()), UnsetVar(VarScope.SESS, "v")]
        return Ack(sid, fid, tuple(acts[: rng.randint(0, 2)]))

    def valid_event(self) -> Event:
        """A frame HAProxy may send after its HELLO: mostly NOTIFY."""
        return self.notify() if self.rng.random() < 0.9 else self.disconnect()

    def any_event(self) -> Event:
        """A mutation base: any frame kind, the agent's included."""
        pick = self.rng.random()
        if pick < 0.65:
            return self.notify()
        if pick < 0.8:
            return self.hello()
        if pick < 0.9:
            return self.disconnect()
        return self.agent_event()

    def template(self) -> tuple[Event, list[Token]]:
        """A pooled event and its tokens, NOTIFY/ACK ids freshly stamped."""
        rng = self.rng
        if len(self._templates) < _TEMPLATES or rng.random() < _FRESH:
            event = self.any_event()
            entry = (event, tokens_of(event))
            if len(self._templates) < _TEMPLATES:
                self._templates.append(entry)
            else:
                self._templates[rng.randrange(_TEMPLATES)] = entry
            return entry
        event, tokens = rng.choice(self._templates)
        if tokens[1][1][0] in (3, 103):
            sid, fid = self.next_ids()
            tokens = _with_len([tokens[1], tokens[2], ("sid", _varint(sid)), ("fid", _varint(fid)), *tokens[5:]])
        return event, tokens

    def notify_frame(self) -> bytes:
        """A valid NOTIFY frame with fresh ids (from the template pool)."""
        for _ in range(8):
            event, tokens = self.template()
            if isinstance(event, Notify):
                return _join(tokens)
        return encode_frame(self.notify())

    # -- frames -----------------------------------------------------------------------

    def fragmented(self) -> list[FuzzFrame]:
        """A NOTIFY cut in fragments: the first without FIN, then UNSET frames (status 10)."""
        tokens = tokens_of(self.notify())
        body = _join(tokens[1:])
        cut = self.rng.randint(7, max(7, len(body)))
        first = bytearray(body[:cut])
        first[1:5] = struct.pack(">I", self.rng.choice([0, 2]))  # no FIN (or ABORT)
        rest = bytes((0,)) + _FIN + body[5:7] + body[cut:]
        return [
            FuzzFrame("fragmented", struct.pack(">I", len(first)) + bytes(first)),
            FuzzFrame("fragment-unset", struct.pack(">I", len(rest)) + rest),
        ]

    def mutated(self, event: Event | None = None) -> FuzzFrame:
        """One mutated frame: a token mutation of a fresh event, or a byte mutation of anything."""
        rng = self.rng
        if rng.random() < 0.55:
            tokens = tokens_of(event) if event is not None else self.template()[1]
            names = list(self._token_mutators)
            for _ in range(4):
                name = rng.choice(names)
                out = self._token_mutators[name](tokens)
                if out is not None:
                    return FuzzFrame(name, _join(out))
        if rng.random() < 0.1:
            return FuzzFrame("odd-kv", self.odd_kv_frame())
        if self.seeds and rng.random() < 0.3:
            base = rng.choice(self.seeds)
        else:
            base = encode_frame(event) if event is not None else _join(self.template()[1])
        name = rng.choice(list(self._byte_mutators))
        return FuzzFrame(name, self._byte_mutators[name](base))

    # token mutators: return None when the frame has no token of the targeted kind

    def _pick(self, tokens: list[Token], *kinds: str) -> int | None:
        idx = [i for i, (k, _) in enumerate(tokens) if k in kinds]
        return self.rng.choice(idx) if idx else None

    def _replace(self, tokens: list[Token], i: int, data: bytes) -> list[Token]:
        out = list(tokens)
        out[i] = (out[i][0], data)
        return _with_len(out[1:])

    def _mut_type(self, tokens: list[Token]) -> list[Token] | None:
        i = self._pick(tokens, "type")
        if i is None:
            return None
        # Half the time another valid type id: the data that follows is then read as the wrong type
        # (an INT64 read as INT32 may be out of range, a STRING length read as an integer ...).
        byte = self.rng.randrange(10) if self.rng.random() < 0.5 else self.rng.choice(_BAD_TYPE_BYTES)
        return self._replace(tokens, i, bytes((byte,)))

    def _mut_count(self, tokens: list[Token]) -> list[Token] | None:
        i = self._pick(tokens, "nb-args")
        if i is None:
            return None
        n = tokens[i][1][0]
        return self._replace(tokens, i, bytes((self.rng.choice([255, min(255, n + 1), max(0, n - 1), 128]),)))

    def _mut_str_len(self, tokens: list[Token]) -> list[Token] | None:
        i = self._pick(tokens, "str-len", "key-len", "name-len")
        if i is None:
            return None
        rng = self.rng
        n = len(tokens[i + 1][1])
        return self._replace(tokens, i, _varint(rng.choice([n + 1, n + rng.randint(2, 5000), max(0, n - 1), 2**64 - 1, 2**32])))

    def _mut_varint(self, tokens: list[Token]) -> list[Token] | None:
        i = self._pick(tokens, "sid", "fid", "varint", "str-len", "key-len", "name-len")
        return None if i is None else self._replace(tokens, i, self.rng.choice(_BAD_VARINTS))

    def _mut_ids(self, tokens: list[Token]) -> list[Token] | None:
        if tokens[1][1][0] not in (1, 2):  # only HELLO/DISCONNECT must have 0/0
            return None
        i = self._pick(tokens, "sid", "fid")
        assert i is not None
        return self._replace(tokens, i, _varint(self.rng.choice([1, 5, 300])))

    def _mut_frame_type(self, tokens: list[Token]) -> list[Token] | None:
        return self._replace(tokens, 1, bytes((self.rng.choice(_UNKNOWN_FRAME_TYPES),)))

    def _mut_agent_type(self, tokens: list[Token]) -> list[Token] | None:
        return self._replace(tokens, 1, bytes((self.rng.choice([0, 101, 102, 103]),)))

    def _mut_flags(self, tokens: list[Token]) -> list[Token] | None:
        return self._replace(tokens, 2, struct.pack(">I", self.rng.choice(_BAD_FLAGS)))

    def _mut_drop(self, tokens: list[Token]) -> list[Token] | None:
        if len(tokens) <= 5:
            return None
        i = self.rng.randrange(5, len(tokens))
        return _with_len(tokens[1:i] + tokens[i + 1 :])

    def _mut_dup(self, tokens: list[Token]) -> list[Token] | None:
        if len(tokens) <= 5:
            return None
        i = self.rng.randrange(5, len(tokens))
        return _with_len(tokens[1 : i + 1] + tokens[i:])

    # byte mutators (frames with LEN)

    def _mut_bitflip(self, frame: bytes) -> bytes:
        out = bytearray(frame)
        for _ in range(self.rng.choice([1, 1, 2, 4])):
            pos = self.rng.randrange(4, len(out))
            out[pos] ^= 1 << self.rng.randrange(8)
        return bytes(out)

    def _mut_byteset(self, frame: bytes) -> bytes:
        out = bytearray(frame)
        for _ in range(self.rng.choice([1, 1, 3])):
            out[self.rng.randrange(4, len(out))] = self.rng.choice(_INTERESTING_BYTES)
        return bytes(out)

    def _mut_truncate_body(self, frame: bytes) -> bytes:
        body = frame[4 : 4 + self.rng.randint(0, len(frame) - 4)]
        return struct.pack(">I", len(body)) + body

    def _mut_truncate_frame(self, frame: bytes) -> bytes:
        # LEN left as it was: an incomplete frame, the agent must wait for the rest.
        return frame[: self.rng.randint(1, len(frame) - 1)]

    def _mut_len(self, frame: bytes) -> bytes:
        rng = self.rng
        n = len(frame) - 4
        new = rng.choice(
            [n + 1, n - 1, n + rng.randint(2, 64), max(0, n - rng.randint(2, 64)), 0, 1, 6, 7,
             AGENT_MAX_FRAME_SIZE, AGENT_MAX_FRAME_SIZE + 1, 2**31, 2**32 - 1]
        )
        return struct.pack(">I", max(0, min(new, 2**32 - 1))) + frame[4:]

    def _mut_splice(self, frame: bytes) -> bytes:
        other = _join(self.template()[1])
        body = frame[4 : 4 + self.rng.randint(5, len(frame) - 4)] + other[4 + self.rng.randint(0, len(other) - 4) :]
        return struct.pack(">I", len(body)) + body

    def _mut_garbage(self, frame: bytes) -> bytes:
        body = self.rng.randbytes(self.rng.randint(0, 64))
        if self.rng.random() < 0.5:
            return struct.pack(">I", len(body)) + body
        return body

    # -- streams ----------------------------------------------------------------------

    def cuts_for(self, size: int) -> tuple[int, ...]:
        """Random split points: usually a few, sometimes every byte."""
        rng = self.rng
        if size <= 1:
            return ()
        pick = rng.random()
        if pick < 0.3:
            return ()
        if pick < 0.35 and size <= 400:
            return tuple(range(1, size))  # one byte at a time
        return tuple(sorted(set(rng.sample(range(1, size), min(size - 1, rng.randint(1, 8))))))

    def stream(self, *, frames: int = 8, mutate: float = 0.5) -> FuzzStream:
        """One connection: a HELLO (usually), valid frames, and (with probability ``mutate``) one
        stream-level or frame-level fault near the end so the valid frames before it are processed."""
        rng = self.rng
        out: list[FuzzFrame] = []
        scenario = rng.random() if rng.random() < mutate else None
        hello = self.hello()
        if scenario is not None and scenario < 0.06:
            pass  # no HELLO: the first frame is unexpected (status 4) unless it is a HELLO after all
        elif scenario is not None and scenario < 0.10:
            out.append(FuzzFrame("bad-hello", encode_frame(self.bad_hello())))
        elif scenario is not None and scenario < 0.16:
            out.append(FuzzFrame("mutated-hello", self.mutated(hello).data))
        elif scenario is not None and scenario < 0.19:
            out.append(FuzzFrame("odd-kv", self.odd_kv_frame()))
        else:
            out.append(FuzzFrame("valid:hello", encode_frame(hello)))
        negotiated = min(hello.max_frame_size, AGENT_MAX_FRAME_SIZE)
        for _ in range(rng.randint(0, frames)):
            data = self.notify_frame()
            if len(data) - 4 <= negotiated:
                out.append(FuzzFrame("valid:notify", data))
        if scenario is None:
            pass
        elif scenario < 0.20:
            out.append(FuzzFrame("hello-again", encode_frame(self.hello())))
        elif scenario < 0.25:
            dup = self.notify()
            if rng.random() < 0.3:  # a name too long for the fast path: the duplicate check of the general path
                dup = Notify(dup.stream_id, dup.frame_id, (Message("m" * 250, ()),))
            out += [FuzzFrame("valid:notify", encode_frame(dup)), FuzzFrame("duplicate-ids", encode_frame(dup))]
        elif scenario < 0.30:
            big = Notify(*self.next_ids(), (Message("m", (("v", TypedValue.binary(b"x" * negotiated)),)),))
            out.append(FuzzFrame("above-max-frame-size", encode_frame(big)))
        elif scenario < 0.35:
            out += self.fragmented()
        elif scenario < 0.40:
            out.append(FuzzFrame("agent-frame", encode_frame(self.agent_event())))
        elif scenario < 0.45:
            out.append(FuzzFrame("valid:disconnect", encode_frame(self.disconnect())))
            out.append(FuzzFrame("after-disconnect", self.mutated().data))
        else:
            out.append(self.mutated())
        if rng.random() < 0.5:
            out.append(FuzzFrame("valid:disconnect", encode_frame(self.disconnect())))
        size = sum(len(f.data) for f in out)
        return FuzzStream(tuple(out), self.cuts_for(size))


# -- oracle -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Prediction:
    """How the agent must end a connection fed ``stream``.

    ``statuses``: the acceptable AGENT-DISCONNECT status codes; ``None`` in the set
    means "no DISCONNECT: the agent waits for more".  Two values only when the answer
    depends on how TCP cuts the stream (a duplicate NOTIFY id is an error only if the
    first one was not ACKed yet).  ``notifies``: NOTIFYs the agent must ACK when the
    stream has no error.  ``hello``: a HAPROXY-HELLO was accepted.
    """

    statuses: frozenset[int | None]
    notifies: int
    hello: bool


def _run_model(chunks: Sequence[bytes], *, ack_between: bool) -> tuple[int | None, int, bool]:
    conn = Connection(max_frame_size=AGENT_MAX_FRAME_SIZE)
    notifies = 0
    hello = False
    try:
        for chunk in chunks:
            for ev in conn.receive_data(chunk):
                if isinstance(ev, HaproxyHello):
                    hello = True
                    conn.send(conn.agent_hello())
                elif isinstance(ev, Notify):
                    notifies += 1
                    if ack_between:
                        conn.send_ack(ev.stream_id, ev.frame_id)
                else:
                    return Status.NORMAL, notifies, hello  # HAPROXY-DISCONNECT: the agent answers 0 and closes
    except SpopError as exc:
        return int(exc.status), notifies, hello
    return None, notifies, hello


def predict(stream: FuzzStream) -> Prediction:
    """The oracle: what the agent must answer on a connection that carries ``stream``."""
    frames = [f.data for f in stream.frames]
    data = b"".join(frames)
    # One extreme: every frame arrives alone and is ACKed before the next.
    eager, n_eager, hello = _run_model(_frame_cuts(data), ack_between=True)
    # The other: everything arrives in one read, so nothing is ACKed in between.
    lazy, _, _ = _run_model([data], ack_between=False)
    return Prediction(frozenset({eager, lazy}), n_eager, hello)


def _frame_cuts(data: bytes) -> list[bytes]:
    # Cut at frame boundaries (by LEN); a frame arriving alone is the finest grain that matters.
    out = []
    pos = 0
    while pos + 4 <= len(data):
        end = pos + 4 + int.from_bytes(data[pos : pos + 4], "big")
        if end > len(data):
            break
        out.append(data[pos:end])
        pos = end
    if pos < len(data):
        out.append(data[pos:])
    return out


# -- the in-process campaign ------------------------------------------------------


@dataclasses.dataclass
class CampaignStats:
    """What a campaign saw.  ``crashes`` and ``mismatches`` must stay empty."""

    frames: int = 0  # frames generated and decoded statelessly (decode_frame)
    valid_frames: int = 0
    connections: int = 0  # streams fed to a Connection
    events: int = 0  # events a Connection produced
    statuses: Counter[int] = dataclasses.field(default_factory=Counter)  # wire status code -> connections
    decode_errors: Counter[str] = dataclasses.field(default_factory=Counter)  # stateless: error class -> frames
    mutations: Counter[str] = dataclasses.field(default_factory=Counter)
    fast_path: int = 0  # frames the NOTIFY fast path decoded (and the general decoder agreed)
    crashes: list[str] = dataclasses.field(default_factory=list)  # "<kind>: <exception> <hex>"
    mismatches: list[str] = dataclasses.field(default_factory=list)  # fast path vs decode_frame
    notify_memo: dict[bytes, tuple[Message, ...]] = dataclasses.field(default_factory=dict, repr=False)

    def merge(self, other: CampaignStats) -> None:
        self.frames += other.frames
        self.valid_frames += other.valid_frames
        self.connections += other.connections
        self.events += other.events
        self.statuses.update(other.statuses)
        self.decode_errors.update(other.decode_errors)
        self.mutations.update(other.mutations)
        self.fast_path += other.fast_path
        self.crashes += other.crashes
        self.mismatches += other.mismatches


def _check_frame(frame: FuzzFrame, stats: CampaignStats) -> None:
    """Stateless: the frame's body through decode_frame and the fast path; only SpopError may escape."""
    data = frame.data
    stats.frames += 1
    stats.mutations[frame.kind] += 1
    if frame.kind.startswith("valid:"):
        stats.valid_frames += 1
    if len(data) < 4:
        return
    body = data[4 : 4 + int.from_bytes(data[:4], "big")]
    try:
        general: object = decode_frame(body)
    except SpopError as exc:
        general = type(exc)
        stats.decode_errors[type(exc).__name__] += 1
    except Exception as exc:  # noqa: BLE001 - the point: anything but SpopError is a crash
        stats.crashes.append(f"decode_frame {frame.kind}: {exc!r} {data.hex()}")
        return
    for memo in (None, stats.notify_memo):  # without and with the payload memo the Connection uses
        try:
            fast = decode_notify_fast(body, memo) if len(body) >= 7 else None
        except Exception as exc:  # noqa: BLE001
            stats.crashes.append(f"decode_notify_fast {frame.kind}: {exc!r} {data.hex()}")
            return
        if fast is not None:
            stats.fast_path += memo is None
            if fast != general:
                stats.mismatches.append(f"{frame.kind}: fast={fast!r} general={general!r} {data.hex()}")


def _feed_connection(stream: FuzzStream, stats: CampaignStats) -> None:
    """The server's loop without IO: feed chunks, answer HELLO and NOTIFYs, stop at the first error."""
    conn = Connection(max_frame_size=AGENT_MAX_FRAME_SIZE)
    stats.connections += 1
    try:
        for chunk in [b"", *stream.chunks()]:  # an empty read first: nothing happens
            events = conn.receive_data(chunk)
            stats.events += len(events)
            for ev in events:
                if isinstance(ev, HaproxyHello):
                    conn.send(conn.agent_hello())
                elif isinstance(ev, Notify):
                    conn.send_ack(ev.stream_id, ev.frame_id)
                else:
                    conn.send(AgentDisconnect(Status.NORMAL))
                    stats.statuses[Status.NORMAL] += 1
                    if conn.receive_data(stream.data) != []:  # after DISCONNECT everything is ignored
                        stats.crashes.append(f"data accepted after DISCONNECT: {stream.data.hex()}")
                    return
    except SpopError as exc:
        stats.statuses[int(exc.status)] += 1
        try:
            conn.send(AgentDisconnect.for_error(exc))  # what the server writes: must always encode
        except Exception as send_exc:  # noqa: BLE001
            stats.crashes.append(f"disconnect for {exc!r}: {send_exc!r} {stream.data.hex()}")
        try:
            conn.receive_data(b"\x00")
            stats.crashes.append(f"data accepted after a protocol error: {stream.data.hex()}")
        except LocalProtocolError:
            pass  # the contract: the caller must close after an error
    except Exception as exc:  # noqa: BLE001
        stats.crashes.append(f"connection: {exc!r} {stream.data.hex()}")


def run_decoder_campaign(rng: random.Random, *, frames: int, seeds: Sequence[bytes] = ()) -> CampaignStats:
    """At least ``frames`` generated frames, each decoded statelessly (decode_frame and the fast path),
    and fed in streams, split at random points, to a fresh ``Connection`` per stream."""
    fuzzer = FrameFuzzer(rng, seeds=seeds)
    stats = CampaignStats()
    for seed in seeds:  # the golden frames themselves, unmutated
        _check_frame(FuzzFrame("seed", seed), stats)
    while stats.frames < frames:
        stream = fuzzer.stream()
        for frame in stream.frames:
            _check_frame(frame, stats)
        _feed_connection(stream, stats)
        # A stream can carry one fatal fault only; the stateless decoder takes as many as there were valid frames.
        for _ in range(len(stream.frames)):
            _check_frame(fuzzer.mutated(), stats)
    return stats


# -- line coverage of the code that reads peer input -------------------------------

def _peer_input_functions() -> list[Callable[..., object]]:
    from spoa import _frames, _typed, _varint, connection

    return [
        _frames.FrameReader.feed, _frames.FrameReader.next_frame, _frames.parse_header, _frames.decode_payload,
        _frames.decode_frame, _frames._decode_kv_list, _frames._split_known, _frames._str_field,
        _frames._split_list, _frames._frame_size_field, _frames._decode_haproxy_hello, _frames._decode_agent_hello,
        _frames._decode_disconnect_fields, _frames._decode_notify, _frames._decode_ack,
        _frames.decode_notify_fast, _frames._messages_fast,
        _typed.decode_typed, _typed.decode_string, _typed._decode_bytes, _varint.decode_varint,
        connection.Connection.receive_data, connection.Connection._frame, connection.Connection._negotiate,
        connection._speaks_2x,
    ]


def peer_input_coverage(rng: random.Random, *, frames: int) -> tuple[int, dict[str, list[int]]]:
    """Run a small campaign under ``sys.settrace`` and report the lines of the peer-input code it never ran.

    Returns ``(lines_total, {function qualname: [missed line numbers]})``.  A cheap coverage signal in place
    of coverage.py/atheris (not installed): a generator change that stops reaching a decoder branch shows up.
    """
    import sys

    functions = _peer_input_functions()
    codes = {fn.__code__: fn for fn in functions}
    hits: dict[object, set[int]] = {code: set() for code in codes}

    def tracer(frame: object, event: str, arg: object) -> object:
        code = frame.f_code  # type: ignore[attr-defined]
        if code not in hits:
            return None
        lines = hits[code]

        def local(frame: object, event: str, arg: object) -> object:
            if event == "line":
                lines.add(frame.f_lineno)  # type: ignore[attr-defined]
            return local

        return local

    previous = sys.gettrace()
    sys.settrace(tracer)  # type: ignore[arg-type]
    try:
        run_decoder_campaign(rng, frames=frames, seeds=load_seeds())
    finally:
        sys.settrace(previous)
    total = 0
    missed: dict[str, list[int]] = {}
    for code, fn in codes.items():
        lines = {line for _, _, line in code.co_lines() if line is not None and line != code.co_firstlineno}
        total += len(lines)
        gap = sorted(lines - hits[code])
        if gap:
            missed[fn.__qualname__] = gap
    return total, missed

"""agent.validation: the SPOE handler, fed Notify values directly (the real-HAProxy path is tests/test_token_path.py)."""

from __future__ import annotations

import datetime as dt

from agent.tokens import Token, TokenStore
from agent.validation import MESSAGE_NAME, VAR_NAME, ValidationHandler
from spoa import Message, Notify, SetVar, TypedValue, VarScope, typed

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
PATH = "/.well-known/pki-validation/fileauth.txt"


def _handler(*tokens: Token) -> ValidationHandler:
    store = TokenStore()
    for t in tokens:
        store.put(t)
    return ValidationHandler(store, now=lambda: NOW)


def _notify(*messages: Message) -> Notify:
    return Notify(1, 1, messages)


def _msg(*args: tuple[str, TypedValue], name: str = MESSAGE_NAME) -> Message:
    return Message(name, args)


TOKEN = Token("example.com", PATH, "tok-1", NOW + dt.timedelta(hours=1))
SET = SetVar(VarScope.TXN, VAR_NAME, typed("tok-1"))


def test_hit_sets_the_token_variable_and_misses_are_empty() -> None:
    h = _handler(TOKEN)
    assert h(_notify(_msg(("host", typed("Example.COM")), ("path", typed(PATH))))) == [SET]
    assert h(_notify(_msg(("host", typed("other.com")), ("path", typed(PATH))))) == []
    assert h(_notify(_msg(("host", typed("example.com")), ("path", typed(PATH + "x"))))) == []
    assert (h.hits, h.misses) == (1, 2)


def test_argument_order_does_not_matter_and_the_first_of_each_name_counts() -> None:
    h = _handler(TOKEN)
    assert h(_notify(_msg(("path", typed(PATH)), ("host", typed("example.com"))))) == [SET]
    assert h(_notify(_msg(("host", typed("example.com")), ("host", typed("x.org")), ("path", typed(PATH))))) == [SET]
    assert h(_notify(_msg(("host", typed("x.org")), ("host", typed("example.com")), ("path", typed(PATH))))) == []


def test_missing_or_non_string_arguments_miss() -> None:
    h = _handler(TOKEN)
    assert h(_notify(_msg(("host", typed("example.com"))))) == []
    assert h(_notify(_msg(("host", typed(b"example.com")), ("path", typed(PATH))))) == []
    assert h(_notify(_msg(("host", TypedValue.null()), ("path", typed(PATH))))) == []
    # A non-string first "host" is not skipped in favour of a later string one (Message.get semantics).
    assert h(_notify(_msg(("host", typed(1)), ("host", typed("example.com")), ("path", typed(PATH))))) == []
    assert h.misses == 4


def test_other_messages_are_ignored_and_each_validation_message_answers() -> None:
    h = _handler(TOKEN)
    good = _msg(("host", typed("example.com")), ("path", typed(PATH)))
    assert h(_notify(_msg(("host", typed("example.com")), name="other"))) == []
    assert h(_notify(good, _msg(name="other"), good)) == [SET, SET]


def test_expired_token_misses() -> None:
    h = _handler(Token("example.com", PATH, "old", NOW))
    assert h(_notify(_msg(("host", typed("example.com")), ("path", typed(PATH))))) == []


def test_set_var_objects_are_reused_per_value_and_the_cache_is_bounded() -> None:
    tokens = [Token(f"h{i}.example.com", PATH, f"v{i}", NOW + dt.timedelta(hours=1)) for i in range(1100)]
    h = _handler(*tokens)
    first = h(_notify(_msg(("host", typed("h0.example.com")), ("path", typed(PATH)))))[0]
    again = h(_notify(_msg(("host", typed("h0.example.com")), ("path", typed(PATH)))))[0]
    assert first is again  # the SPOE server's ACK memo relies on this identity
    for i in range(1100):
        [action] = h(_notify(_msg(("host", typed(f"h{i}.example.com")), ("path", typed(PATH)))))
        assert action == SetVar(VarScope.TXN, VAR_NAME, typed(f"v{i}"))
    assert len(h._set_token) <= 1024

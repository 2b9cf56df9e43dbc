"""The SPOE handler: answers HAProxy's `lockstep-validation` message from the token store.

HAProxy (haproxy/spoe-lockstep.conf) sends `host=req.hdr(host)` and `path=path` for the two validation prefixes.
A current token for exactly that (host, path) becomes `set-var txn.lockstep.token`; anything else (unknown host or
path, expired token, missing or malformed argument) is an empty ACK, which HAProxy turns into a 404.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from spoa import Action, Notify, SetVar, TypedValue, VarScope

from .tokens import TokenStore

__all__ = ["MESSAGE_NAME", "VAR_NAME", "ValidationHandler"]

MESSAGE_NAME = "lockstep-validation"
VAR_NAME = "token"  # txn.lockstep.token with the SPOE var-prefix "lockstep"
_SET_VAR_CACHE = 1024  # distinct token values whose SetVar is kept; far above the tokens live at once


def _as_text(value: TypedValue | None) -> str | None:
    if value is None or type(value.value) is not str:  # STRING values are exactly str (BINARY is bytes)
        return None
    return value.value


class ValidationHandler:
    def __init__(self, tokens: TokenStore, *, now: Callable[[], dt.datetime]) -> None:
        self._tokens = tokens
        self._now = now
        # One SetVar per token value, reused for every hit: building it costs more than the lookup, and the SPOE
        # server skips re-encoding an action object it has just encoded. Cleared when full: a bound, not an LRU.
        self._set_token: dict[str, SetVar] = {}
        self.hits = 0
        self.misses = 0

    def __call__(self, notify: Notify) -> list[Action]:
        """Synchronous on purpose: a dict lookup needs no task, and the SPOE server ACKs it at once."""
        actions: list[Action] = []
        for message in notify.messages:
            if message.name != MESSAGE_NAME:
                continue
            # The first argument of each name counts (Message.get), scanned once instead of once per name.
            host_arg = path_arg = None
            for name, arg in message.args:
                if name == "host":
                    if host_arg is None:
                        host_arg = arg
                elif name == "path" and path_arg is None:
                    path_arg = arg
            host = _as_text(host_arg)
            path = _as_text(path_arg)
            value = None
            if host is not None and path is not None:
                value = self._tokens.lookup(host, path, now=self._now())
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
                actions.append(self._set_token.get(value) or self._new_set_var(value))
        return actions

    def _new_set_var(self, value: str) -> SetVar:
        if len(self._set_token) >= _SET_VAR_CACHE:
            self._set_token.clear()
        action = self._set_token[value] = SetVar(VarScope.TXN, VAR_NAME, TypedValue.string(value))
        return action

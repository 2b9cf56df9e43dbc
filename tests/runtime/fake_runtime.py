"""FakeRuntime: a unix-socket (or TCP) server speaking the HAProxy CLI framing, answering from a script.

Framing as HAProxy 2.6/2.8 do it (captured in tests/vectors/runtime/): a command is one line; a line ending in
" <<" takes a payload up to the first empty line; each output is followed by an empty line. Non-interactive
sessions answer one request and close; after `prompt` every output is followed by "> ", and each payload line is
echoed with "+ ". Every command line received is recorded (payloads only as their line count, never stored).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path

CLOSE = "<close>"  # drop the connection without answering
HANG = "<hang>"  # never answer


@dataclasses.dataclass
class Received:
    line: str
    payload_lines: int
    interactive: bool


class FakeRuntime:
    """Answers each command with the next scripted reply for the longest matching command prefix.

    `script = {"new ssl cert": ["Operations on certificates are currently locked!", "New empty ..."]}`: replies
    are consumed in order and the last one repeats. A reply may be a callable taking the command line.
    Unscripted commands answer "Unknown command".
    """

    def __init__(self, script: dict[str, list[str | Callable[[str], str]]] | None = None) -> None:
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.received: list[Received] = []
        self.connections = 0
        self.hold_replies_until = 0  # withhold replies until this many commands have arrived (proves pipelining)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def on(self, prefix: str, *replies: str | Callable[[str], str]) -> FakeRuntime:
        self.script[prefix] = list(replies)
        return self

    @property
    def lines(self) -> list[str]:
        return [r.line for r in self.received]

    async def start_unix(self, path: Path) -> FakeRuntime:
        self._server = await asyncio.start_unix_server(self._serve, path=str(path))
        return self

    async def start_tcp(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()

    def drop_connections(self) -> None:
        """Close every open session, as HAProxy does after `stats timeout` or on reload."""
        for writer in list(self._writers):
            writer.close()

    def _answer(self, line: str) -> str:
        matches = [p for p in self.script if line.startswith(p)]
        if not matches:
            return "Unknown command, but maybe one of the following ones is a better match:\n  help\n"
        replies = self.script[max(matches, key=len)]
        reply = replies.pop(0) if len(replies) > 1 else replies[0]
        return reply(line) if callable(reply) else reply

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        interactive = False
        held = b""
        try:
            while True:
                raw = await reader.readline()
                if not raw:
                    return
                line = raw.decode().rstrip("\n")
                payload = 0
                echo = b""
                if line.endswith(" <<"):
                    while await reader.readline() not in (b"\n", b""):
                        payload += 1
                    echo = b"+ " * (payload + 1) if interactive else b""
                if line == "prompt":
                    interactive = True
                    writer.write(b"\n> ")
                    await writer.drain()
                    continue
                self.received.append(Received(line, payload, interactive))
                answer = self._answer(line)
                if answer == CLOSE:
                    return
                if answer == HANG:
                    await asyncio.sleep(3600)
                out = answer if answer.endswith("\n") or not answer else answer + "\n"
                held += echo + (out + "\n").encode() + (b"> " if interactive else b"")
                if len(self.received) < self.hold_replies_until:
                    continue
                writer.write(held)
                held = b""
                await writer.drain()
                if not interactive:
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.close()


# Replies as HAProxy 2.8.25 prints them (tests/vectors/runtime/2.8/).
def new_ok(line: str) -> str:
    return f"New empty certificate store '{line.split()[-1]}'!"


def set_ok(line: str) -> str:
    name = line.split()[3].removesuffix(".key")
    return f"Transaction created for certificate {name}!"


def commit_ok(line: str) -> str:
    return f"Committing {line.split()[-1]}.\nSuccess!"


def abort_ok(line: str) -> str:
    return f"Transaction aborted for certificate '{line.split()[-1]}'!"


def add_ok(line: str) -> str:
    return f"Inserting certificate '{line.split()[-1]}' in crt-list '{line.split()[-2]}'.\nSuccess!"


def del_entry_ok(line: str) -> str:
    return f"Entry '{line.split()[-1]}' deleted in crtlist '{line.split()[-2]}'!"


def del_cert_ok(line: str) -> str:
    return f"Certificate '{line.split()[-1]}' deleted!"


LOCKED = "Can't create a certificate!\nOperations on certificates are currently locked!"
NO_TRANSACTION = "No ongoing transaction!"


def happy_script() -> dict[str, list[str | Callable[[str], str]]]:
    return {
        "abort ssl cert": [NO_TRANSACTION],
        "new ssl cert": [new_ok],
        "set ssl cert": [set_ok],
        "commit ssl cert": [commit_ok],
        "add ssl crt-list": [add_ok],
        "del ssl crt-list": [del_entry_ok],
        "del ssl cert": [del_cert_ok],
        "show info": ["Name: HAProxy\nVersion: 2.8.25-fake\nRelease_date: 2026/06/26\nNbthread: 2\nPid: 4242\n"
                      "Uptime_sec: 7\nStart_time_sec: 1795507335\nnode: fake"],
        "show ssl cert": ["# filename\n/etc/haproxy/default.pem"],
    }

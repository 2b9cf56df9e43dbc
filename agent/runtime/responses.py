"""Pure parsers for runtime-API replies: success needs an explicit marker, anything else becomes a typed error.

Owns: the reply texts of HAProxy 2.6/2.8 (every pattern below is in a captured vector under
tests/vectors/runtime/), the error classification, the `show ...` parsers, and the prompt-mode framing. Must not do
IO or keep state.

A reply here is the text HAProxy printed for one command, with or without the empty line that ends it. In prompt
mode the client first removes the `+ ` echoes and the `> ` prompt (`strip_prompt`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

from .commands import Command, Verb
from .errors import (
    AlreadyExists,
    CommandFailed,
    InUse,
    InvalidCertificate,
    Locked,
    NotFound,
    NoTransaction,
    PermissionDenied,
    RequestTooBig,
    TransactionConflict,
    UnknownCommand,
)

__all__ = [
    "PROMPT_END",
    "CertDetails",
    "CertList",
    "CrtList",
    "CrtListEntry",
    "Info",
    "classify_error",
    "check_reply",
    "parse_cert_list",
    "parse_cert_details",
    "parse_crt_lists",
    "parse_crt_list",
    "parse_info",
    "strip_prompt",
]

# In interactive mode (after `prompt`) every reply ends with its empty line and then "> " (cli.c, CLI_ST_PROMPT).
PROMPT_END = b"\n> "

_ONGOING = re.compile(r"The ongoing transaction is about '(?P<open>[^']*)'")
_SET_OK = re.compile(r"Transaction (?:created|updated) for certificate (?P<name>.*)!")
_SET_CA_OK = re.compile(r"transaction (?:created|updated) for CA (?P<name>.*)!")  # lower case on 2.6 and 2.8

# Ordered: the first matching marker decides. Texts from ckch@2.6/2.8, crtlist@2.6/2.8, cli@2.6/2.8.
_ERROR_MARKERS: tuple[tuple[str, type[CommandFailed]], ...] = (
    ("Operations on certificates are currently locked", Locked),
    ("Permission denied", PermissionDenied),
    ("Unknown command", UnknownCommand),
    ("The command is too big for the buffer size", RequestTooBig),
    ("in use, can't be deleted", InUse),
    ("already exists", AlreadyExists),  # "Certificate 'X' already exists!", "file already exists in this directory!"
    ("No ongoing transaction", NoTransaction),
    ("doesn't exist", NotFound),
    ("does not exist", NotFound),
    ("can't be found in crt-list", NotFound),
    ("Not found or the certificate is a bundle", NotFound),
    ("not referenced by the configuration", NotFound),
    ("didn't find the specified filename", NotFound),
    ("unable to load", InvalidCertificate),
    ("Invalid payload", InvalidCertificate),  # set ssl ca-file with something that is not a CA PEM
    ("Can't load the payload", InvalidCertificate),
    ("inconsistencies between private key and certificate", InvalidCertificate),
    ("must contain at least a certificate and a private key", InvalidCertificate),
)


def strip_prompt(raw: str) -> str:
    """A prompt-mode reply as non-interactive mode would print it: without the leading `+ ` echoed for each
    payload line and without the trailing `> ` prompt."""
    text = raw
    while text.startswith("+ "):
        text = text[2:]
    if text.endswith("> "):
        text = text[:-2]
    return text


def _clean(reply: str) -> str:
    # 2.6 ends some errors with an extra newline ("in use" → "\n\n\n"); a leading "\n" comes from a preceding
    # command with empty output ("operator\n…"). Neither is content.
    return reply.strip("\n")


def classify_error(command: Command, reply: str) -> CommandFailed:
    """The typed error for a reply that is not the command's success (returned, not raised)."""
    text = _clean(reply)
    if (match := _ONGOING.search(text)) is not None:
        return TransactionConflict(command.line, reply, open_name=match.group("open"))
    for marker, cls in _ERROR_MARKERS:
        if marker in text:
            return cls(command.line, reply)
    if not text:
        return CommandFailed(command.line, reply, detail="empty reply")
    return CommandFailed(command.line, reply)


# One "." per instance rebuilt (none while the store is unused), then "Success!". Compiled once: the names vary
# per command, so they are compared as plain strings around these fixed parts (a regex per name would be compiled
# for every command and thrash re's cache during bulk work).
_DOTS_THEN_SUCCESS = re.compile(r"\.*\n(?:.*\n)*?Success!", re.S)
_LINE_SUFFIX = re.compile(r"(?::\d+)?")


def _success(command: Command, text: str) -> bool | None:
    """Whether `text` is the success reply for exactly this command (None: not a state-changing command)."""
    name = command.cert or ""
    lst = command.crt_list or ""
    verb = command.verb
    if verb is Verb.NEW_CERT:
        return text == f"New empty certificate store '{name}'!"
    if verb is Verb.ABORT_CERT:
        return text == f"Transaction aborted for certificate '{name}'!"
    if verb is Verb.DEL_CERT:
        return text == f"Certificate '{name}' deleted!"
    if verb is Verb.ABORT_CA_FILE:  # 2.6/2.8 say "certificate" here too
        return text == f"Transaction aborted for certificate '{name}'!"
    if verb is Verb.SET_CA_FILE:
        match = _SET_CA_OK.fullmatch(text)
        return match is not None and match.group("name") == name
    if verb in (Verb.COMMIT_CERT, Verb.COMMIT_CA_FILE):
        head = f"Committing {name}"
    elif verb is Verb.ADD_CRT_LIST:
        head = f"Inserting certificate '{name}' in crt-list '{lst}'"
    elif verb is Verb.DEL_CRT_LIST:
        head, tail = f"Entry '{name}", f"' deleted in crtlist '{lst}'!"
        return (text.startswith(head) and text.endswith(tail) and len(text) >= len(head) + len(tail)
                and _LINE_SUFFIX.fullmatch(text, len(head), len(text) - len(tail)) is not None)
    else:
        return None
    return text.startswith(head) and _DOTS_THEN_SUCCESS.fullmatch(text, len(head)) is not None


def check_reply(command: Command, reply: str) -> str:
    """Accept the reply of a state-changing command (new/set/commit/abort/add/del), or raise.

    For `set ssl cert` the certificate named in the reply must be ours: HAProxy 2.6.12 answers `set ssl cert B`
    with "Transaction updated for certificate A!" while A's transaction is open and puts B's PEM into it
    (haproxy.md C.4); that reply raises `TransactionConflict(open_name=A)` instead of passing as success.

    Returns:
        the reply without its surrounding newlines.

    Raises:
        CommandFailed: the matching subclass, or CommandFailed itself for an unrecognised reply.
    """
    text = _clean(reply)
    if command.verb is Verb.SET_CERT:
        match = _SET_OK.fullmatch(text)
        if match is None:
            raise classify_error(command, reply)
        if match.group("name") != command.cert:
            raise TransactionConflict(
                command.line, reply, open_name=match.group("name"),
                detail="HAProxy applied the payload to another certificate's open transaction",
            )
        return text
    ok = _success(command, text)
    if ok is None:
        raise ValueError(f"check_reply does not handle {command.verb}; use the parse_* function")
    if not ok:
        raise classify_error(command, reply)
    return text


# --- show ssl cert ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class CertList:
    """`show ssl cert`: every certificate store, and the one with an open transaction (`*name`), if any."""

    names: tuple[str, ...]
    transaction: str | None


def parse_cert_list(command: Command, reply: str) -> CertList:
    """Parse `show ssl cert`:

        # transaction
        */etc/haproxy/certs/a.pem
        # filename
        /etc/haproxy/certs/a.pem
        /etc/haproxy/default.pem
    """
    text = _clean(reply)
    lines = text.split("\n") if text else []
    if not lines or lines[0] not in ("# transaction", "# filename"):
        raise classify_error(command, reply)
    section = ""
    names: list[str] = []
    transaction: str | None = None
    for line in lines:
        if line in ("# transaction", "# filename"):
            section = line
        elif not line:
            continue
        elif section == "# transaction" and line.startswith("*") and transaction is None:
            transaction = line[1:]
        elif section == "# filename":
            names.append(line)
        else:
            raise CommandFailed(command.line, reply, detail=f"unexpected line {line[:80]!r}")
    return CertList(tuple(names), transaction)


@dataclasses.dataclass(frozen=True, slots=True)
class CertDetails:
    """`show ssl cert <name>`. Dates are UTC; `serial` and `sha1_fingerprint` are upper-case hex as printed.

    `status` is "Used" (referenced by a crt-list/bind), "Unused" or "Empty" (created, never committed). An empty
    store has no certificate fields (they are None / empty). `dns_names` lists the DNS SANs: HAProxy prints only
    DNS entries (an IP SAN shows as an empty item).
    """

    filename: str
    transaction: bool
    status: str
    serial: str | None
    not_before: dt.datetime | None
    not_after: dt.datetime | None
    dns_names: tuple[str, ...]
    algorithm: str | None
    sha1_fingerprint: str | None
    subject: str | None
    issuer: str | None
    chain_subjects: tuple[str, ...]
    chain_issuers: tuple[str, ...]
    fields: tuple[tuple[str, str], ...]


_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
                                       "Dec"), start=1)}
_ASN1_TIME = re.compile(r"(?P<mon>[A-Z][a-z]{2}) +(?P<day>\d{1,2}) (?P<h>\d\d):(?P<m>\d\d):(?P<s>\d\d) "
                        r"(?P<year>\d{4}) GMT")


def _asn1_time(command: Command, reply: str, key: str, value: str) -> dt.datetime:
    """OpenSSL's ASN1_TIME_print form, e.g. "Feb  2 07:52:46 2027 GMT" (locale-independent)."""
    match = _ASN1_TIME.fullmatch(value.strip())
    if match is None or match.group("mon") not in _MONTHS:
        raise CommandFailed(command.line, reply, detail=f"unparseable {key}: {value!r}")
    try:
        return dt.datetime(int(match.group("year")), _MONTHS[match.group("mon")], int(match.group("day")),
                           int(match.group("h")), int(match.group("m")), int(match.group("s")), tzinfo=dt.timezone.utc)
    except ValueError as exc:
        raise CommandFailed(command.line, reply, detail=f"unparseable {key}: {value!r}") from exc


def _key_values(text: str) -> list[tuple[str, str]]:
    pairs = []
    for line in text.split("\n"):
        if not line:
            continue
        key, sep, value = line.partition(":")
        if not sep:
            return []
        pairs.append((key, value[1:] if value.startswith(" ") else value))
    return pairs


def parse_cert_details(command: Command, reply: str) -> CertDetails:
    """Parse `show ssl cert <name>`:

        Filename: /etc/haproxy/certs/a.pem
        Status: Used
        Serial: 4AF0767EE0642B97E9E91FBD26F9E773B6836AA5
        notBefore: Nov 24 07:52:46 2026 GMT
        notAfter: Feb 22 07:52:46 2027 GMT
        Subject Alternative Name: DNS:a.example.com, DNS:www.a.example.com
        Algorithm: RSA2048
        SHA1 FingerPrint: 335E7D136EFCF404AAA89178AFDA1EED3B57C0E4
        Subject: /CN=a.example.com
        Issuer: /CN=Intermediate
        Chain Subject: /CN=Intermediate
        Chain Issuer: /CN=Root
        OCSP Response Key:
    """
    text = _clean(reply)
    if not text.startswith("Filename: "):
        raise classify_error(command, reply)
    pairs = _key_values(text)
    if not pairs:
        raise CommandFailed(command.line, reply, detail="not a key: value listing")
    first: dict[str, str] = {}
    for key, value in pairs:
        first.setdefault(key, value)
    filename = first["Filename"]
    transaction = filename.startswith("*")
    not_before = first.get("notBefore")
    not_after = first.get("notAfter")
    san = first.get("Subject Alternative Name", "")
    dns = tuple(item.strip()[4:] for item in san.split(",") if item.strip().startswith("DNS:"))
    return CertDetails(
        filename=filename[1:] if transaction else filename,
        transaction=transaction,
        status=first.get("Status", ""),
        serial=first.get("Serial"),
        not_before=_asn1_time(command, reply, "notBefore", not_before) if not_before else None,
        not_after=_asn1_time(command, reply, "notAfter", not_after) if not_after else None,
        dns_names=dns,
        algorithm=first.get("Algorithm"),
        sha1_fingerprint=first.get("SHA1 FingerPrint"),
        subject=first.get("Subject"),
        issuer=first.get("Issuer"),
        chain_subjects=tuple(v for k, v in pairs if k == "Chain Subject"),
        chain_issuers=tuple(v for k, v in pairs if k == "Chain Issuer"),
        fields=tuple(pairs),
    )


# --- show ssl crt-list -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class CrtListEntry:
    """One crt-list line: the certificate, its line number (only with `-n`), and the rest (options, filters)."""

    cert: str
    line: int | None = None
    rest: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class CrtList:
    name: str
    entries: tuple[CrtListEntry, ...]

    @property
    def certs(self) -> tuple[str, ...]:
        return tuple(entry.cert for entry in self.entries)


def _looks_like_error(text: str) -> bool:
    return text.startswith("Can't") or any(marker in text for marker, _ in _ERROR_MARKERS)


def parse_crt_lists(command: Command, reply: str) -> tuple[str, ...]:
    """Parse `show ssl crt-list` (no argument): one crt-list name per line (a directory bind lists its path)."""
    text = _clean(reply)
    if _looks_like_error(text):
        raise classify_error(command, reply)
    return tuple(line for line in text.split("\n") if line)


def parse_crt_list(command: Command, reply: str) -> CrtList:
    """Parse `show ssl crt-list [-n] <list>`:

        # /etc/haproxy/certs
        /etc/haproxy/certs/a.pem:1
        /etc/haproxy/certs/b.pem:3

    (with `-n`; without it the `:<line>` suffixes are absent; crt-list files may add `[options]` and filters).
    """
    text = _clean(reply)
    lines = text.split("\n")
    if not lines[0].startswith("# "):
        raise classify_error(command, reply)
    with_numbers = " -n " in f" {command.line} "
    entries = []
    for line in lines[1:]:
        if not line:
            continue
        cert, _, rest = line.partition(" ")
        number: int | None = None
        if with_numbers:
            base, sep, digits = cert.rpartition(":")
            if not sep or not digits.isdigit():
                raise CommandFailed(command.line, reply, detail=f"entry without a line number: {line[:80]!r}")
            cert, number = base, int(digits)
        entries.append(CrtListEntry(cert, number, rest.strip()))
    return CrtList(lines[0][2:], tuple(entries))


# --- show info -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Info:
    """`show info`. A new `pid`, or an `uptime_s`/`start_time_s` going backwards, means HAProxy restarted or
    reloaded and lost every runtime change (haproxy.md C.3): the caller must re-sync."""

    pid: int
    version: str
    release_date: str
    uptime_s: int
    nbthread: int
    start_time_s: int | None
    node: str
    fields: tuple[tuple[str, str], ...]


def parse_info(command: Command, reply: str) -> Info:
    """Parse `show info` (one `Key: value` per line)."""
    text = _clean(reply)
    pairs = _key_values(text)
    values = dict(pairs)
    if values.get("Name") != "HAProxy" or "Pid" not in values or "Version" not in values:
        raise classify_error(command, reply)

    def integer(key: str) -> int:
        try:
            return int(values[key])
        except (KeyError, ValueError) as exc:
            raise CommandFailed(command.line, reply, detail=f"bad or missing {key}") from exc

    return Info(
        pid=integer("Pid"),
        version=values["Version"],
        release_date=values.get("Release_date", ""),
        uptime_s=integer("Uptime_sec"),
        nbthread=integer("Nbthread"),
        start_time_s=integer("Start_time_sec") if "Start_time_sec" in values else None,
        node=values.get("node", ""),
        fields=tuple(pairs),
    )

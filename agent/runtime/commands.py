"""Pure builders for the HAProxy runtime-API certificate commands, with every argument check done here.

Owns: the text of each request, the name and payload rules, and the size limit. Must not do IO, keep state, or
parse replies (that is `responses.py`). Every builder returns a `Command`; `Command.text` is exactly what goes on
the socket, `Command.line` is what may be logged or put in an error (never the payload: it holds a private key).

Rules (haproxy.md C.1-C.4, checked against HAProxy 2.6.12 and 2.8.25, see tests/vectors/runtime/README.md):

* Names of certificates we create or change are absolute paths *directly* inside the certificate directory:
  the shipped config binds that directory as a crt-list (`crt "${LOCKSTEP_CERT_DIR}"`), HAProxy refuses list
  entries outside it ("must contain the directory path"), and at startup it loads only regular files directly in
  it, skipping names that start with `.` and the companions `.key`/`.ocsp`/`.issuer`/`.sctl`. A name that would not
  load at the next start is refused here, so runtime state and disk never disagree. `new ssl cert` on its own
  accepts relative names, `..` and other directories (it only creates an orphan store), hence the checks.
* A name is one CLI word: no whitespace, control characters, `;` (command separator), `\\` (escape), `:`
  (`del ssl crt-list <list> <cert[:line]>` splits on it), `*` (the transaction marker in `show ssl cert`), `#`,
  quotes or `!` (crt-list syntax). Allowed: ASCII letters, digits and `._-+=@,~`.
* A payload has its blank lines removed and ends with one empty line: HAProxy ends the payload at the first empty
  line, and a further empty line would run as an (empty) command (2.6 then prints the help text).
* Each request (command line + payload + final empty line) must fit in tune.bufsize (default 16384); the limit
  is per command, not per write. Measured on 2.6.12 and 2.8.25 (tests/vectors/runtime/<v>/limits.json): 16383
  bytes are accepted, exactly 16384 hangs the session until the client gives up, larger requests are refused
  (2.8 answers "The command is too big for the buffer size", 2.6 closes without a word; haproxy.md C.1 saw a
  2.6.12 worker segfault). We stay `DEFAULT_MARGIN` below it and raise `PayloadTooLarge` before sending.
  A larger bundle can be sent as certificates+chain (`set ssl cert X <<`) and the key (`set ssl cert X.key <<`)
  in one transaction: both versions accept the `.key` companion over the CLI even with `ssl-load-extra-files none`.
"""

from __future__ import annotations

import dataclasses
import enum
import re

from .errors import BadArgument, PayloadTooLarge

__all__ = [
    "DEFAULT_BUFSIZE",
    "DEFAULT_MARGIN",
    "MAX_NAME_LENGTH",
    "Command",
    "Verb",
    "max_request_size",
    "check_cert_dir",
    "check_cert_name",
    "normalize_payload",
    "split_pem",
    "show_ssl_cert",
    "set_ssl_ca_file",
    "commit_ssl_ca_file",
    "abort_ssl_ca_file",
    "new_ssl_cert",
    "set_ssl_cert",
    "set_ssl_cert_key",
    "set_certificate",
    "commit_ssl_cert",
    "abort_ssl_cert",
    "add_ssl_crt_list",
    "del_ssl_crt_list",
    "del_ssl_cert",
    "show_ssl_crt_list",
    "show_info",
    "Upload",
    "upload",
]

DEFAULT_BUFSIZE = 16384  # HAProxy's default tune.bufsize; haproxy/haproxy.cfg sets it explicitly
# Headroom under the measured limit (bufsize - 1): other builds, a longer command line, and 2.6's habit of
# crashing or hanging right at the edge make a near-miss expensive; 1 KiB costs nothing for real bundles.
DEFAULT_MARGIN = 1024
MAX_NAME_LENGTH = 1024  # far above any real path; bounds what ends up in a command line and in logs

# Companions HAProxy loads next to a certificate file, never as certificates (ssl_crtlist.c, directory loader).
COMPANION_SUFFIXES = (".key", ".ocsp", ".issuer", ".sctl")
_SAFE_COMPONENT = re.compile(r"[A-Za-z0-9._+=@,~-]+")
# Fast paths of `_check_word` and `normalize_payload` (they run several times per certificate in a bulk apply);
# anything they do not accept goes through the character loops, which name the offending character.
_SAFE_WORD = re.compile(r"[$%&()+,\-./0-9<=>?@A-Z^_`a-z{|}~]+")  # printable ASCII minus ;\'"#!:*[]
_PAYLOAD_UNSAFE = re.compile(r"[^\n\t\x20-\x7e]")
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\n.*?\n-----END \1-----", re.S)


class Verb(enum.Enum):
    """The commands this package speaks (management.txt §9.3, "ssl" commands)."""

    SHOW_CERTS = "show ssl cert"
    SHOW_CERT = "show ssl cert <name>"
    NEW_CERT = "new ssl cert"
    SET_CERT = "set ssl cert"
    COMMIT_CERT = "commit ssl cert"
    ABORT_CERT = "abort ssl cert"
    ADD_CRT_LIST = "add ssl crt-list"
    DEL_CRT_LIST = "del ssl crt-list"
    DEL_CERT = "del ssl cert"
    SHOW_CRT_LISTS = "show ssl crt-list"
    SHOW_CRT_LIST = "show ssl crt-list <list>"
    SHOW_INFO = "show info"
    SET_CA_FILE = "set ssl ca-file"
    COMMIT_CA_FILE = "commit ssl ca-file"
    ABORT_CA_FILE = "abort ssl ca-file"


@dataclasses.dataclass(frozen=True, slots=True)
class Command:
    """One runtime-API request.

    Attributes:
        verb: which command this is (selects the reply check in `responses.py`).
        line: the command line without its trailing newline; safe to log.
        cert: the certificate store concerned (for `set ssl cert X.key`, the store X), if any.
        crt_list: the crt-list concerned, if any.
        payload: the normalised payload lines (no blank lines, no trailing newline), if any.
    """

    verb: Verb
    line: str
    cert: str | None = None
    crt_list: str | None = None
    payload: str | None = dataclasses.field(default=None, repr=False)

    @property
    def text(self) -> str:
        """The exact request: the line, then the payload and the empty line that ends it."""
        if self.payload is None:
            return self.line + "\n"
        return f"{self.line}\n{self.payload}\n\n"

    @property
    def size(self) -> int:
        return len(self.text.encode())


def max_request_size(bufsize: int = DEFAULT_BUFSIZE, margin: int = DEFAULT_MARGIN) -> int:
    """The largest request we send for a given tune.bufsize."""
    if bufsize < 1024 or not 0 <= margin < bufsize // 2:
        raise ValueError(f"implausible bufsize/margin: {bufsize}/{margin}")
    return bufsize - margin


# --- argument checks -------------------------------------------------------------------------------------------


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _check_word(verb: str, value: object, what: str) -> str:
    """One CLI word: a non-empty str with no character the CLI parser would treat specially."""
    if isinstance(value, str) and len(value) <= MAX_NAME_LENGTH and _SAFE_WORD.fullmatch(value):
        return value
    if not isinstance(value, str) or not value:
        raise BadArgument(verb, detail=f"{what} must be a non-empty string, got {_describe(value)}")
    if len(value) > MAX_NAME_LENGTH:
        raise BadArgument(verb, detail=f"{what} longer than {MAX_NAME_LENGTH} characters")
    for ch in value:
        if ch.isspace() or ord(ch) < 32 or ord(ch) == 127:
            raise BadArgument(verb, detail=f"{what} contains whitespace or a control character: {_describe(value)}")
        if ch in ";\\'\"#!:*[]" or ord(ch) > 126:
            raise BadArgument(verb, detail=f"{what} contains {ch!r}, which the CLI would not pass through: "
                                           f"{_describe(value)}")
    return value


def _components(verb: str, path: str, what: str) -> list[str]:
    if not path.startswith("/"):
        raise BadArgument(verb, detail=f"{what} must be an absolute path: {_describe(path)}")
    parts = path[1:].split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise BadArgument(verb, detail=f"{what} must be a normalised absolute path "
                                           f"(no empty, '.' or '..' components): {_describe(path)}")
        if not _SAFE_COMPONENT.fullmatch(part):
            raise BadArgument(verb, detail=f"{what} has a component outside [A-Za-z0-9._+=@,~-]: "
                                           f"{_describe(path)}")
    return parts


def check_cert_dir(cert_dir: object, *, verb: str = "cert_dir") -> str:
    """Validate the certificate directory (= the crt-list name of a directory bind); returns it without a
    trailing slash, which is how HAProxy names the list.

    Raises:
        BadArgument: not an absolute, normalised path made of safe characters.
    """
    if isinstance(cert_dir, str) and len(cert_dir) > 1:
        cert_dir = cert_dir.rstrip("/")
    path = _check_word(verb, cert_dir, "certificate directory")
    if path == "/":
        raise BadArgument(verb, detail="the certificate directory cannot be '/'")
    _components(verb, path, "certificate directory")
    return path


def check_cert_name(name: object, *, cert_dir: str, verb: str = "cert name") -> str:
    """Validate a certificate name we may create, change or delete.

    Returns:
        the name, unchanged.

    Raises:
        BadArgument: not an absolute path directly inside `cert_dir`, or a name HAProxy would not load from the
            directory at startup (hidden file, companion suffix), or a character the CLI would mangle.
    """
    directory = check_cert_dir(cert_dir, verb=verb)
    path = _check_word(verb, name, "certificate name")
    parts = _components(verb, path, "certificate name")
    if path.rpartition("/")[0] != directory:
        raise BadArgument(verb, detail=f"certificate name must be a file directly inside {directory}: "
                                       f"{_describe(path)}")
    leaf = parts[-1]
    if leaf.startswith("."):
        raise BadArgument(verb, detail=f"certificate name is a hidden file, which HAProxy skips when it loads the "
                                       f"directory at startup: {_describe(path)}")
    if leaf.endswith(COMPANION_SUFFIXES):
        raise BadArgument(verb, detail=f"certificate name ends in a companion suffix {COMPANION_SUFFIXES} that "
                                       f"HAProxy never loads as a certificate: {_describe(path)}")
    return path


def _check_any_name(verb: str, name: object) -> str:
    """A store name we only read or abort: any single safe CLI word (it may be the default certificate, or a
    relative name left by another client)."""
    return _check_word(verb, name, "certificate name")


# --- payloads --------------------------------------------------------------------------------------------------


def normalize_payload(pem: object, *, verb: str = "set ssl cert") -> str:
    """The payload lines for the CLI: line endings unified, trailing blanks cut, blank lines removed.

    Raises:
        BadArgument: not a str, empty, non-ASCII, or holding control characters.
    """
    if not isinstance(pem, str):
        raise BadArgument(verb, detail=f"payload must be str, got {type(pem).__name__}")
    lines = [line.rstrip() for line in pem.splitlines()]
    body = "\n".join(line for line in lines if line)
    if not body:
        raise BadArgument(verb, detail="empty payload")
    unsafe = _PAYLOAD_UNSAFE.search(body)
    if unsafe is not None:
        # never echo the payload: it may contain a private key
        raise BadArgument(verb, detail=f"payload contains a non-printable or non-ASCII character "
                                       f"(U+{ord(unsafe.group()):04X})")
    return body


def split_pem(pem: str) -> tuple[str, str]:
    """Split a bundle into (certificates and other blocks, private key) for the two-part upload.

    The key part holds the one `... PRIVATE KEY` block (plus `EC PARAMETERS`, which belongs to it); text outside
    PEM blocks is dropped. Both parts are normalised payloads.

    Raises:
        BadArgument: there is not exactly one private key block, or no certificate.
    """
    text = "\n".join(line.rstrip() for line in pem.splitlines())
    certs: list[str] = []
    keys: list[str] = []
    key_blocks = 0
    for match in _PEM_BLOCK.finditer(text):
        label = match.group(1)
        if label.endswith("PRIVATE KEY"):
            key_blocks += 1
            keys.append(match.group(0))
        elif label == "EC PARAMETERS":
            keys.append(match.group(0))
        else:
            certs.append(match.group(0))
    if key_blocks != 1:
        raise BadArgument("set ssl cert", detail=f"cannot split a bundle with {key_blocks} private keys")
    if not any(block.startswith("-----BEGIN CERTIFICATE-----") for block in certs):
        raise BadArgument("set ssl cert", detail="bundle holds no certificate")
    return normalize_payload("\n".join(certs)), normalize_payload("\n".join(keys))


def _sized(command: Command, max_request: int) -> Command:
    if command.size > max_request:
        raise PayloadTooLarge(command.line, size=command.size, limit=max_request)
    return command


# --- builders --------------------------------------------------------------------------------------------------


def show_ssl_cert(name: str | None = None, *, transaction: bool = False) -> Command:
    """`show ssl cert` (all stores, plus the open transaction) or `show ssl cert [*]<name>` (one store's details;
    with `transaction=True`, the uncommitted content of the open transaction on `name`)."""
    if name is None:
        if transaction:
            raise BadArgument(Verb.SHOW_CERTS.value, detail="transaction=True needs a name")
        return Command(Verb.SHOW_CERTS, "show ssl cert")
    name = _check_any_name("show ssl cert", name)
    return Command(Verb.SHOW_CERT, f"show ssl cert {'*' if transaction else ''}{name}", cert=name)


def new_ssl_cert(name: str, *, cert_dir: str) -> Command:
    """`new ssl cert <name>`: an empty store, to be filled by set + commit and then listed."""
    name = check_cert_name(name, cert_dir=cert_dir, verb="new ssl cert")
    return Command(Verb.NEW_CERT, f"new ssl cert {name}", cert=name)


def set_ssl_cert(name: str, pem: str, *, cert_dir: str, max_request: int = max_request_size()) -> Command:
    """`set ssl cert <name> <<` + PEM: opens (or updates) the transaction on `name`.

    Raises:
        BadArgument: bad name or payload.
        PayloadTooLarge: the request would exceed `max_request` bytes.
    """
    name = check_cert_name(name, cert_dir=cert_dir, verb="set ssl cert")
    body = normalize_payload(pem)
    return _sized(Command(Verb.SET_CERT, f"set ssl cert {name} <<", cert=name, payload=body), max_request)


def set_ssl_cert_key(name: str, key_pem: str, *, cert_dir: str, max_request: int = max_request_size()) -> Command:
    """`set ssl cert <name>.key <<` + key PEM: replaces the private key inside the transaction on `name`."""
    name = check_cert_name(name, cert_dir=cert_dir, verb="set ssl cert")
    body = normalize_payload(key_pem)
    return _sized(Command(Verb.SET_CERT, f"set ssl cert {name}.key <<", cert=name, payload=body), max_request)


def set_certificate(
    name: str, pem: str, *, cert_dir: str, max_request: int = max_request_size()
) -> tuple[Command, ...]:
    """The `set ssl cert` requests that load a whole bundle into the transaction on `name`.

    One request when the bundle fits, else two: certificates+chain, then `<name>.key`.

    Raises:
        BadArgument: bad name or payload, or an oversize bundle that cannot be split.
        PayloadTooLarge: even the split parts exceed `max_request` bytes.
    """
    try:
        return (set_ssl_cert(name, pem, cert_dir=cert_dir, max_request=max_request),)
    except PayloadTooLarge as whole:
        try:
            certs, key = split_pem(pem)
        except BadArgument as exc:
            raise PayloadTooLarge(whole.command, size=whole.size, limit=whole.limit,
                                  detail=f"request of {whole.size} bytes exceeds the {whole.limit}-byte limit "
                                         f"and the bundle cannot be split ({exc.detail})") from None
        return (
            set_ssl_cert(name, certs, cert_dir=cert_dir, max_request=max_request),
            set_ssl_cert_key(name, key, cert_dir=cert_dir, max_request=max_request),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Upload:
    """Every request that loads one bundle under one name, checked and built once (see `upload`).

    Attributes:
        name: the certificate store.
        new: `new ssl cert` (an add sends it; an update does not).
        sets: one `set ssl cert` request, or two (certificates+chain, then `.key`) when the bundle is too large.
        commit: `commit ssl cert`.
        add: `add ssl crt-list` into the crt-list the client serves from.
    """

    name: str
    new: Command
    sets: tuple[Command, ...] = dataclasses.field(repr=False)
    commit: Command
    add: Command


def upload(name: str, pem: str, *, cert_dir: str, crt_list: str, max_request: int = max_request_size()) -> Upload:
    """The requests of an add or update of `name` with `pem`, built (and so checked) before anything is sent.

    The same requests as `new_ssl_cert`, `set_certificate`, `commit_ssl_cert` and `add_ssl_crt_list` build, with the
    name and the list checked once instead of once per builder (this runs for every certificate of a bulk apply).

    Raises:
        BadArgument / PayloadTooLarge: as the individual builders.
    """
    sets = set_certificate(name, pem, cert_dir=cert_dir, max_request=max_request)  # checks `name` and `cert_dir`
    crt_list = check_cert_dir(crt_list, verb="add ssl crt-list")
    return Upload(
        name=name,
        new=Command(Verb.NEW_CERT, f"new ssl cert {name}", cert=name),
        sets=sets,
        commit=Command(Verb.COMMIT_CERT, f"commit ssl cert {name}", cert=name),
        add=Command(Verb.ADD_CRT_LIST, f"add ssl crt-list {crt_list} {name}", cert=name, crt_list=crt_list),
    )


def commit_ssl_cert(name: str, *, cert_dir: str) -> Command:
    """`commit ssl cert <name>`: applies the transaction to every instance of the store."""
    name = check_cert_name(name, cert_dir=cert_dir, verb="commit ssl cert")
    return Command(Verb.COMMIT_CERT, f"commit ssl cert {name}", cert=name)


def abort_ssl_cert(name: str) -> Command:
    """`abort ssl cert <name>`: drops the open transaction on `name`.

    Accepts any safe store name, not only ours: cleaning up a transaction another client left open must work
    whatever it was about. Also used as a cheap probe: on another name HAProxy names the open transaction.
    """
    name = _check_any_name("abort ssl cert", name)
    return Command(Verb.ABORT_CERT, f"abort ssl cert {name}", cert=name)


def add_ssl_crt_list(crt_list: str, name: str, *, cert_dir: str) -> Command:
    """`add ssl crt-list <list> <name>`: starts serving a committed store on the binds using the list.

    Only the simple form: a directory crt-list (the shipped config) refuses options and SNI filters ("SSL
    configuration and filters are not allowed"), so the payload form with options is not offered.
    """
    crt_list = check_cert_dir(crt_list, verb="add ssl crt-list")
    name = check_cert_name(name, cert_dir=cert_dir, verb="add ssl crt-list")
    return Command(Verb.ADD_CRT_LIST, f"add ssl crt-list {crt_list} {name}", cert=name, crt_list=crt_list)


def del_ssl_crt_list(crt_list: str, name: str, *, cert_dir: str, line: int | None = None) -> Command:
    """`del ssl crt-list <list> <name>[:<line>]`: stops serving `name` on the list's binds."""
    crt_list = check_cert_dir(crt_list, verb="del ssl crt-list")
    name = check_cert_name(name, cert_dir=cert_dir, verb="del ssl crt-list")
    suffix = ""
    if line is not None:
        if isinstance(line, bool) or not isinstance(line, int) or line < 1:
            raise BadArgument("del ssl crt-list", detail=f"line must be a positive int, got {_describe(line)}")
        suffix = f":{line}"
    return Command(Verb.DEL_CRT_LIST, f"del ssl crt-list {crt_list} {name}{suffix}", cert=name, crt_list=crt_list)


def del_ssl_cert(name: str, *, cert_dir: str) -> Command:
    """`del ssl cert <name>`: frees a store no crt-list references any more."""
    name = check_cert_name(name, cert_dir=cert_dir, verb="del ssl cert")
    return Command(Verb.DEL_CERT, f"del ssl cert {name}", cert=name)


def show_ssl_crt_list(crt_list: str | None = None, *, line_numbers: bool = False) -> Command:
    """`show ssl crt-list` (names of all lists) or `show ssl crt-list [-n] <list>` (its entries)."""
    if crt_list is None:
        if line_numbers:
            raise BadArgument("show ssl crt-list", detail="line_numbers needs a crt-list")
        return Command(Verb.SHOW_CRT_LISTS, "show ssl crt-list")
    crt_list = _check_word("show ssl crt-list", crt_list, "crt-list name")
    if len(crt_list) > 1:
        crt_list = crt_list.rstrip("/")
    return Command(Verb.SHOW_CRT_LIST, f"show ssl crt-list {'-n ' if line_numbers else ''}{crt_list}",
                   crt_list=crt_list)


def show_info() -> Command:
    """`show info`: process facts (Pid, Uptime_sec, Version); a changed Pid/uptime reveals a reload."""
    return Command(Verb.SHOW_INFO, "show info")


# --- CA files (the internal CA HAProxy verifies backends with; `ca-file` on the server line) --------------------


def set_ssl_ca_file(name: str, pem: str, *, max_request: int = max_request_size()) -> Command:
    """`set ssl ca-file <name> <<` + PEM (one or more CA certificates): opens the CA-file transaction.

    Only files the configuration references can be replaced ("not referenced by the configuration" otherwise).
    """
    name = _check_word("set ssl ca-file", name, "CA file name")
    if not name.startswith("/"):
        raise BadArgument("set ssl ca-file", detail=f"CA file name must be an absolute path: {_describe(name)}")
    body = normalize_payload(pem, verb="set ssl ca-file")
    return _sized(Command(Verb.SET_CA_FILE, f"set ssl ca-file {name} <<", cert=name, payload=body), max_request)


def commit_ssl_ca_file(name: str) -> Command:
    """`commit ssl ca-file <name>`: every SSL context using the file (binds and servers) is rebuilt."""
    name = _check_word("commit ssl ca-file", name, "CA file name")
    return Command(Verb.COMMIT_CA_FILE, f"commit ssl ca-file {name}", cert=name)


def abort_ssl_ca_file(name: str) -> Command:
    name = _check_word("abort ssl ca-file", name, "CA file name")
    return Command(Verb.ABORT_CA_FILE, f"abort ssl ca-file {name}", cert=name)

"""The certificate-handling error tree. Every failure of `agent.certs` is a `CertsError`.

Owns only the classes. No class here ever holds or prints key material: `MaterialRejected.detail` is written by
`material.py` from constants, labels, counts, names and fingerprints only, and a name that does not look like a
name is not echoed at all (it could be anything, a PEM passed by mistake included).

    CertsError
    ├── MaterialRejected(name, reason, detail)   a bundle or name failed a check; nothing was written
    ├── CertFileError(op, path, errno)           an OS call on the certificate directory or state file failed
    └── StateError(path, detail)                 the state file cannot be used and must not be replaced
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Final, final

__all__ = ["CertsError", "MaterialRejected", "Reason", "CertFileError", "StateError"]

_MAX_SHOWN_NAME: Final = 80


class CertsError(Exception):
    """Root of the `agent.certs` errors."""


@final
class Reason(enum.StrEnum):
    """Why a certificate bundle (or a certificate name) was refused. Stable strings: usable as metric labels."""

    BAD_NAME = "bad_name"  # the name is not a domain (or `*.` + domain) we can turn into a file name
    UNPARSABLE = "unparsable"  # not PEM, truncated, text outside blocks, or a block that does not decode
    UNSUPPORTED_BLOCK = "unsupported_block"  # a PEM block other than certificates and one private key
    UNSUPPORTED_KEY = "unsupported_key"  # a private key that is neither EC nor RSA (HAProxy serves both)
    NO_CERTIFICATE = "no_certificate"
    NO_KEY = "no_key"
    MULTIPLE_KEYS = "multiple_keys"
    KEY_MISMATCH = "key_mismatch"  # the key is not the leaf's
    CHAIN_ORDER = "chain_order"  # some certificate is not issued (name + signature) by the one after it
    LEAF_IS_CA = "leaf_is_ca"
    NAME_MISMATCH = "name_mismatch"  # the leaf's names do not cover the certificate name
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    TOO_LARGE = "too_large"  # more bytes than allowed, or too many certificates
    FINGERPRINT_MISMATCH = "fingerprint_mismatch"  # the leaf is not the certificate the control plane referenced


def _shown_name(name: object) -> str:
    if isinstance(name, str) and 0 < len(name) <= _MAX_SHOWN_NAME and name.isprintable():
        return repr(name)
    if isinstance(name, str):
        return f"<unprintable or long name, {len(name)} characters>"
    return f"<{type(name).__name__}>"


@final
class MaterialRejected(CertsError):
    """A certificate name or bundle failed a check. Permanent for that bundle: retrying the same bytes cannot help.

    Attributes:
        name: the certificate name concerned ("" when none applies, e.g. `leaf_fingerprint` on file contents).
        reason: which check failed.
        detail: a human explanation; never contains key material.
    """

    def __init__(self, name: str, reason: Reason, detail: str) -> None:
        self.name = name
        self.reason = reason
        self.detail = detail
        super().__init__(name, reason, detail)

    def __str__(self) -> str:
        prefix = f"{_shown_name(self.name)}: " if self.name else ""
        return f"{prefix}{self.reason.value}: {self.detail}"

    def __repr__(self) -> str:
        return f"MaterialRejected(name={_shown_name(self.name)}, reason={self.reason.value!r}, detail={self.detail!r})"


@final
class CertFileError(CertsError, OSError):
    """An OS call failed while writing, removing or reading a file; raised `from` the OSError.

    Also an `OSError` with the same `errno`, `strerror` and `filename`, so generic OS error handling still works.

    Attributes:
        op: what we were doing ("open", "fchmod", "write", "fsync", "replace", "unlink", "scandir", ...).
        path: the file or directory concerned.
        errno: the original errno, if any.
    """

    def __init__(self, op: str, path: Path, errno: int | None, detail: str = "") -> None:
        OSError.__init__(self, errno, detail or op, str(path))
        self.op = op
        self.path = path
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.op} {str(self.path)!r} failed" + (f": {self.detail}" if self.detail else "")

    def __repr__(self) -> str:
        return f"CertFileError(op={self.op!r}, path={str(self.path)!r}, errno={self.errno!r})"


@final
class StateError(CertsError):
    """The state file exists but must not be used or replaced (written by a newer agent, or unreadable).

    Attributes:
        path: the state file.
        detail: why.
        version: the file's format version, when that is the reason.
    """

    def __init__(self, path: Path, detail: str, *, version: int | None = None) -> None:
        self.path = path
        self.detail = detail
        self.version = version
        super().__init__(str(path), detail)

    def __str__(self) -> str:
        return f"state file {str(self.path)!r}: {self.detail}"

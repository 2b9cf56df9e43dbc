"""The certificate directory and the state file on disk: atomic writes, removals, crash leftovers, and a scan.

Owns every OS call of `agent.certs` (the rest of the package is pure). Must not decide what to write: callers
pass checked bytes. Every failure is raised as `CertFileError`, which is also an `OSError` (same errno and
filename), from the original error.

Why the details:

* A write goes to a temporary file in the same directory (so `os.replace` is an atomic rename on one file
  system), named `.lockstep-tmp-<random>`: HAProxy skips dotfiles when it loads a certificate directory at
  start-up, so a half-written file is never loaded, and `clean_temp_files` can tell our leftovers from anything
  else. It is created with O_EXCL|O_NOFOLLOW (never an existing file or a planted symlink) and with its final
  mode at open (then `fchmod`, since the umask can only remove bits), so a private key is never readable by
  others, not even for a moment. Data is fsynced before the rename and the directory after it, so after a crash
  the name holds either the old or the new content, and a removal or rename is durable once we return.
* The scan opens only regular files (O_NOFOLLOW|O_NONBLOCK, then fstat), so a symlink or FIFO planted under one
  of our names can neither redirect nor block us; such entries are reported with no fingerprint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets
import stat
from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Final, NoReturn

from .errors import CertFileError, MaterialRejected
from .material import leaf_der, name_from_file_name

__all__ = ["TEMP_PREFIX", "FileFingerprint", "write_atomic", "write_atomic_many", "remove", "clean_temp_files", "scan_cert_dir",
           "fsync_dir"]

TEMP_PREFIX: Final = ".lockstep-tmp-"
# A bundle is at most 64 KiB (material.DEFAULT_MAX_BYTES) and the leaf comes first; reading more of a foreign or
# damaged file is wasted work.
SCAN_READ_LIMIT: Final = 256 * 1024
_OPEN_NEW: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_SCAN: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_TEMP_ATTEMPTS: Final = 5


@dataclasses.dataclass(frozen=True, slots=True)
class FileFingerprint:
    """One of our certificate files as found on disk.

    Attributes:
        name: the certificate name (`name_from_file_name` of the file name).
        path: the file.
        fingerprint: `sha256:<hex>` of its first certificate, or None when it is not a readable regular file
            starting with a certificate (garbage, empty, a symlink, a FIFO, a directory, unreadable).
        sha1_hex: upper-case SHA-1 of the same certificate (as HAProxy prints it), or None likewise.
    """

    name: str
    path: Path
    fingerprint: str | None
    sha1_hex: str | None


def _fail(op: str, path: Path, exc: OSError) -> NoReturn:
    raise CertFileError(op, path, exc.errno, exc.strerror or str(exc)) from exc


def fsync_dir(directory: Path) -> None:
    """Make renames, creations and removals in `directory` durable."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        _fail("open", directory, exc)
    try:
        os.fsync(fd)
    except OSError as exc:
        _fail("fsync", directory, exc)
    finally:
        os.close(fd)


def _create_temp(directory: Path, mode: int) -> tuple[int, Path]:
    for attempt in range(_TEMP_ATTEMPTS):
        temp = directory / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        try:
            return os.open(temp, _OPEN_NEW, mode), temp
        except FileExistsError as exc:
            if attempt == _TEMP_ATTEMPTS - 1:
                _fail("open", temp, exc)
        except OSError as exc:
            _fail("open", temp, exc)
    raise AssertionError("unreachable")


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600, sync_dir: bool = True) -> None:
    """Replace `path` with `data` atomically and durably.

    Args:
        path: the destination; its directory must exist.
        data: the complete new content.
        mode: the file's permission bits, set from creation on (not subject to the umask).
        sync_dir: fsync the directory after the rename. A caller writing many files may pass False and call
            `fsync_dir` once before it relies on the renames (the content itself is always fsynced before the
            rename, so a crash can lose a rename, never leave a half-written file under the real name).

    Raises:
        CertFileError: any OS call failed; the destination is unchanged and no temporary file is left behind
            (unless the failure was the final directory fsync, after which the new content is in place).
    """
    error = write_atomic_many([(path, data)], mode=mode)[0]
    if error is not None:
        raise error
    if sync_dir:
        fsync_dir(path.parent)


def _error(op: str, path: Path, exc: OSError) -> CertFileError:
    error = CertFileError(op, path, exc.errno, exc.strerror or str(exc))
    error.__cause__ = exc
    return error


def _discard(temp: Path) -> None:
    try:
        os.unlink(temp)
    except OSError:
        pass  # already gone; the original error is what matters


def _fsync_each(fds: Sequence[int], pool: Executor | None) -> list[OSError | None]:
    def fsync(fd: int) -> OSError | None:
        try:
            os.fsync(fd)
        except OSError as exc:
            return exc
        return None

    if pool is None or len(fds) < 2:
        return [fsync(fd) for fd in fds]
    return list(pool.map(fsync, fds))


def write_atomic_many(entries: Sequence[tuple[Path, bytes]], *, mode: int = 0o600,
                      fsync_pool: Executor | None = None) -> list[CertFileError | None]:
    """`write_atomic(path, data, sync_dir=False)` for several files, as a group: every temporary file is created
    and filled, then all are fsynced (in parallel on `fsync_pool`, if given), then all renamed.

    Each file keeps the guarantee of `write_atomic` (its content is durable before its rename; a crash leaves the
    old or the new content under the name, and no temporary file once we return); the directory is not fsynced.
    The grouping is for speed (measured: docs/PERFORMANCE.md): an fsync mostly waits for the disk to flush its
    cache, and concurrent fsyncs share flushes (16 files: ~0.12 ms each in parallel, ~0.5 ms one after another).

    Returns:
        per entry, None (written) or the CertFileError that stopped it (that destination is unchanged). One
        failure does not stop the others.

    Raises:
        BaseException: an interrupt (not an OSError); every temporary file not yet renamed is removed first.
    """
    results: list[CertFileError | None] = [None] * len(entries)
    fds: dict[int, int] = {}  # entry -> open temporary file
    temps: dict[int, Path] = {}  # entry -> temporary file not yet renamed nor removed
    try:
        for index, (path, data) in enumerate(entries):
            try:
                fds[index], temps[index] = _create_temp(path.parent, mode)
            except CertFileError as exc:
                results[index] = exc
                continue
            op = "fchmod"
            try:
                os.fchmod(fds[index], mode)
                op = "write"
                view = memoryview(data)
                while view:
                    view = view[os.write(fds[index], view):]
            except OSError as exc:
                results[index] = _error(op, temps[index], exc)
        syncing = [index for index in fds if results[index] is None]
        for index, failure in zip(syncing, _fsync_each([fds[index] for index in syncing], fsync_pool), strict=True):
            if failure is not None:
                results[index] = _error("fsync", temps[index], failure)
        for index in list(fds):
            os.close(fds.pop(index))
        for index in list(temps):
            if results[index] is None:
                try:
                    os.replace(temps[index], entries[index][0])
                    del temps[index]
                    continue
                except OSError as exc:
                    results[index] = _error("replace", entries[index][0], exc)
            _discard(temps.pop(index))
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        for temp in temps.values():
            _discard(temp)
        raise
    return results


def remove(path: Path) -> bool:
    """Delete `path` durably. Returns False if it did not exist.

    Raises:
        CertFileError: the unlink or the directory fsync failed.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        _fail("unlink", path, exc)
    fsync_dir(path.parent)
    return True


def clean_temp_files(directory: Path) -> int:
    """Delete the temporary files a crash left in `directory` (ours only: `TEMP_PREFIX` names). Returns how many.

    Call it at start-up, before any write: a temporary file of a write in progress would be deleted too.

    Raises:
        CertFileError: the directory cannot be listed, or an unlink failed.
    """
    removed = 0
    try:
        entries = [entry.name for entry in os.scandir(directory) if entry.name.startswith(TEMP_PREFIX)]
    except OSError as exc:
        _fail("scandir", directory, exc)
    for name in entries:
        try:
            if stat.S_ISDIR(os.lstat(directory / name).st_mode):
                continue  # not something we create; leave it to the operator
            os.unlink(directory / name)
        except FileNotFoundError:
            continue
        except OSError as exc:
            _fail("unlink", directory / name, exc)
        removed += 1
    if removed:
        fsync_dir(directory)
    return removed


def _read_head(path: Path) -> bytes | None:
    """Up to SCAN_READ_LIMIT bytes of a regular file, without following symlinks or blocking; None otherwise."""
    try:
        fd = os.open(path, _OPEN_SCAN)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks: list[bytes] = []
        left = SCAN_READ_LIMIT
        while left > 0:
            chunk = os.read(fd, min(left, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def scan_cert_dir(directory: Path) -> dict[str, FileFingerprint]:
    """Our certificate files in `directory`, by certificate name, with the fingerprint of each file's leaf.

    Files whose names we do not own (`name_from_file_name` is None: temporary files, companions, anything
    foreign) are skipped; subdirectories too. An owned name that is not a readable regular file starting with a
    certificate is reported with `fingerprint=None`, never raised.

    Raises:
        CertFileError: the directory itself cannot be listed.
    """
    out: dict[str, FileFingerprint] = {}
    try:
        entries = list(os.scandir(directory))
    except OSError as exc:
        _fail("scandir", directory, exc)
    for entry in entries:
        name = name_from_file_name(entry.name)
        if name is None:
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                continue
        except OSError:
            pass
        path = directory / entry.name
        fingerprint = sha1_hex = None
        head = _read_head(path)
        if head is not None:
            try:
                fingerprint, sha1_hex = _fingerprints(head)
            except MaterialRejected:
                pass
        out[name] = FileFingerprint(name, path, fingerprint, sha1_hex)
    return out


def _fingerprints(head: bytes) -> tuple[str, str]:
    der = leaf_der(head)
    # SHA-1 is HAProxy's identifier for the loaded certificate ("SHA1 FingerPrint"), not a security check.
    return "sha256:" + hashlib.sha256(der).hexdigest(), hashlib.sha1(der).hexdigest().upper()

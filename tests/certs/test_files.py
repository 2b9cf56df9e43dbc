"""agent.certs.files: atomic writes, removals, crash leftovers and the directory scan, on a real temp directory."""

from __future__ import annotations

import concurrent.futures
import errno
import os
import secrets
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.certs.errors import CertFileError
from agent.certs.files import (
    TEMP_PREFIX,
    FileFingerprint,
    clean_temp_files,
    remove,
    scan_cert_dir,
    write_atomic,
    write_atomic_many,
)
from agent.certs.material import check_material, leaf_fingerprint
from lockstep.pki import Issued, issue

from .conftest import NAME, NOW, Pki


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _temps(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".")]


@pytest.fixture
def umask() -> Iterator[None]:
    """A permissive umask, so a mode that only the umask kept private would show."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# --- write_atomic ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"x", b"leaf\nchain\nkey\n", bytes(range(256)) * 1000])
def test_write_atomic_content_and_mode(tmp_path: Path, umask: None, data: bytes) -> None:
    target = tmp_path / "shop.example.test.pem"
    write_atomic(target, data)
    assert target.read_bytes() == data
    assert _mode(target) == 0o600
    assert _temps(tmp_path) == []


def test_write_atomic_replaces_and_resets_mode(tmp_path: Path) -> None:
    target = tmp_path / "shop.example.test.pem"
    target.write_bytes(b"old content that is longer than the new one")
    target.chmod(0o644)
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new" and _mode(target) == 0o600
    write_atomic(target, b"shared", mode=0o640)
    assert target.read_bytes() == b"shared" and _mode(target) == 0o640


def test_write_atomic_replaces_a_symlink_not_its_target(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"do not touch")
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "a.example.test.pem").symlink_to(outside)
    write_atomic(certs / "a.example.test.pem", b"new")
    assert outside.read_bytes() == b"do not touch"
    assert not (certs / "a.example.test.pem").is_symlink()


def test_temp_file_is_private_hidden_and_exclusive(tmp_path: Path, umask: None,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The temp file is a dotfile (HAProxy skips it), created O_EXCL|O_NOFOLLOW with mode 0600 from the start."""
    seen: dict[str, Any] = {}
    real_open, real_write = os.open, os.write

    def spy_open(path: Any, flags: int, mode: int = 0o777, *a: Any, **kw: Any) -> int:
        if Path(path).name.startswith(TEMP_PREFIX):
            seen.update(path=Path(path), flags=flags, mode=mode)
        return real_open(path, flags, mode, *a, **kw)

    def spy_write(fd: int, data: Any) -> int:
        seen["mode_while_writing"] = stat.S_IMODE(os.fstat(fd).st_mode)
        return real_write(fd, data)

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "write", spy_write)
    write_atomic(tmp_path / "x.example.test.pem", b"secret")
    assert seen["path"].parent == tmp_path and seen["path"].name.startswith(".")
    assert seen["flags"] & os.O_EXCL and seen["flags"] & os.O_CREAT and seen["flags"] & os.O_NOFOLLOW
    assert seen["mode"] == 0o600
    assert seen["mode_while_writing"] == 0o600


@pytest.mark.parametrize("call", ["replace", "fsync", "write", "fchmod"])
def test_write_atomic_failure_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          call: str) -> None:
    target = tmp_path / "shop.example.test.pem"
    target.write_bytes(b"old")

    def fail(*_a: Any, **_kw: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, call, fail)
    with pytest.raises(CertFileError) as info:
        write_atomic(target, b"new")
    monkeypatch.undo()
    exc = info.value
    assert isinstance(exc, OSError) and exc.errno == errno.ENOSPC and exc.op == call
    assert isinstance(exc.__cause__, OSError)
    assert target.read_bytes() == b"old"
    assert _temps(tmp_path) == []


def test_write_atomic_interrupted_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(*_a: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "a.example.test.pem", b"new")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_write_atomic_fsyncs_file_and_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kinds: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        kinds.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    write_atomic(tmp_path / "a.example.test.pem", b"x")
    assert kinds == ["file", "dir"]
    kinds.clear()
    assert remove(tmp_path / "a.example.test.pem") is True
    assert kinds == ["dir"]


def test_write_atomic_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CertFileError) as info:
        write_atomic(tmp_path / "nope" / "a.pem", b"x")
    assert info.value.op == "open" and info.value.errno == errno.ENOENT


def test_write_atomic_retries_a_taken_temp_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = iter(["taken000taken000", "taken000taken000", "free0000free0000"])
    monkeypatch.setattr(secrets, "token_hex", lambda _n: next(names))
    (tmp_path / f"{TEMP_PREFIX}taken000taken000").write_bytes(b"someone else's")
    write_atomic(tmp_path / "a.example.test.pem", b"x")
    assert (tmp_path / "a.example.test.pem").read_bytes() == b"x"
    assert (tmp_path / f"{TEMP_PREFIX}taken000taken000").read_bytes() == b"someone else's"


# --- write_atomic_many ------------------------------------------------------------------------------------------


@pytest.fixture
def fsync_pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        yield pool


@pytest.mark.parametrize("parallel", [False, True])
def test_write_atomic_many_writes_every_file_durably_before_renaming(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parallel: bool,
        fsync_pool: concurrent.futures.ThreadPoolExecutor) -> None:
    """Every temporary file is fsynced before any rename (so before its own), from the pool when one is given."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace
    threads: set[str] = set()

    def spy_fsync(fd: int) -> None:
        threads.add(threading.current_thread().name)
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def spy_replace(src: Any, dst: Any) -> None:
        events.append(("replace", str(src)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    (tmp_path / "b.example.test.pem").write_bytes(b"old")
    entries = [(tmp_path / f"{c}.example.test.pem", c.encode() * 100) for c in "abcdef"]
    errors = write_atomic_many(entries, fsync_pool=fsync_pool if parallel else None)
    monkeypatch.undo()
    assert errors == [None] * 6
    assert all((tmp_path / f"{c}.example.test.pem").read_bytes() == c.encode() * 100 for c in "abcdef")
    assert all(_mode(path) == 0o600 for path, _ in entries) and _temps(tmp_path) == []
    fsynced = [name for kind, name in events if kind == "fsync"]
    renamed = [name for kind, name in events if kind == "replace"]
    assert sorted(fsynced) == sorted(renamed) and len(renamed) == 6
    assert [kind for kind, _ in events] == ["fsync"] * 6 + ["replace"] * 6
    assert (threading.current_thread().name not in threads) is parallel


@pytest.mark.parametrize("call", ["fsync", "write", "replace"])
def test_write_atomic_many_one_failure_leaves_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str,
                                                         fsync_pool: concurrent.futures.ThreadPoolExecutor) -> None:
    (tmp_path / "b.example.test.pem").write_bytes(b"old")
    real = getattr(os, call)
    victim = {"fd": -1, "path": ""}
    real_open = os.open

    def spy_open(path: Any, flags: int, mode: int = 0o777, *a: Any, **kw: Any) -> int:
        fd = real_open(path, flags, mode, *a, **kw)
        if victim["fd"] < 0 and len([n for n in _temps(tmp_path)]) == 2:
            victim["fd"], victim["path"] = fd, str(path)  # the second temporary file: b's
        return fd

    def failing(first: Any, *rest: Any) -> Any:
        if first == victim["fd"] or str(first) == victim["path"]:
            raise OSError(errno.EIO, "I/O error")
        return real(first, *rest)

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, call, failing)
    entries = [(tmp_path / f"{c}.example.test.pem", c.encode()) for c in "abc"]
    errors = write_atomic_many(entries, fsync_pool=fsync_pool)
    monkeypatch.undo()
    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], CertFileError) and errors[1].op == call and errors[1].errno == errno.EIO
    assert isinstance(errors[1].__cause__, OSError)
    assert (tmp_path / "a.example.test.pem").read_bytes() == b"a"
    assert (tmp_path / "b.example.test.pem").read_bytes() == b"old"
    assert (tmp_path / "c.example.test.pem").read_bytes() == b"c"
    assert _temps(tmp_path) == []


def test_write_atomic_many_interrupted_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def interrupt_second(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        write_atomic_many([(tmp_path / f"{c}.example.test.pem", b"x") for c in "abc"])
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_write_atomic_many_of_nothing(tmp_path: Path) -> None:
    assert write_atomic_many([]) == []


# --- remove, clean_temp_files ----------------------------------------------------------------------------------


def test_remove(tmp_path: Path) -> None:
    target = tmp_path / "a.example.test.pem"
    target.write_bytes(b"x")
    assert remove(target) is True
    assert not target.exists()
    assert remove(target) is False


def test_remove_failure_is_typed(tmp_path: Path) -> None:
    (tmp_path / "dir.pem").mkdir()
    with pytest.raises(CertFileError) as info:
        remove(tmp_path / "dir.pem")
    assert info.value.op == "unlink"


def test_clean_temp_files(tmp_path: Path) -> None:
    for name in [f"{TEMP_PREFIX}0123456789abcdef", f"{TEMP_PREFIX}fedcba9876543210"]:
        (tmp_path / name).write_bytes(b"half a bundle")
    (tmp_path / f"{TEMP_PREFIX}dangling").symlink_to(tmp_path / "nowhere")
    keep = [".keep", ".shop.example.test.pem", "shop.example.test.pem", "lockstep-tmp-x", ".lockstep-other"]
    for name in keep:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / f"{TEMP_PREFIX}dir").mkdir()
    assert clean_temp_files(tmp_path) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep + [f"{TEMP_PREFIX}dir"])
    assert clean_temp_files(tmp_path) == 0


def test_clean_temp_files_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CertFileError):
        clean_temp_files(tmp_path / "nope")


# --- scan_cert_dir ---------------------------------------------------------------------------------------------


def test_scan_cert_dir(tmp_path: Path, ec_pki: Pki, rsa_pki: Pki, leaf: Issued) -> None:
    rsa_leaf = issue(rsa_pki.inter1, ["rsa.example.test"], now=NOW, key_type="rsa")
    wildcard = issue(ec_pki.inter2, ["*.example.test"], now=NOW)
    good = {
        NAME: leaf.bundle_pem,
        "rsa.example.test": rsa_leaf.bundle_pem,
        "*.example.test": wildcard.bundle_pem,
    }
    expected: dict[str, str | None] = {}
    for name, text in good.items():
        material = check_material(name, text, expected_fingerprint=leaf_fingerprint(text), now=NOW)
        write_atomic(tmp_path / material.file_name, material.pem.encode())
        expected[name] = material.fingerprint
    # ours, but not usable
    (tmp_path / "garbage.example.test.pem").write_bytes(b"\x00\x01garbage")
    (tmp_path / "empty.example.test.pem").write_bytes(b"")
    (tmp_path / "truncated.example.test.pem").write_text(leaf.bundle_pem[:300])
    (tmp_path / "keyfirst.example.test.pem").write_text(leaf.key_pem + leaf.cert_pem)  # first CERTIFICATE counts
    (tmp_path / "link.example.test.pem").symlink_to(tmp_path / f"{NAME}.pem")  # never followed
    os.mkfifo(tmp_path / "fifo.example.test.pem")  # must not block the scan
    expected |= {"garbage.example.test": None, "empty.example.test": None, "truncated.example.test": None,
                 "keyfirst.example.test": leaf.fingerprint, "link.example.test": None, "fifo.example.test": None}
    # not ours: skipped
    for foreign in ["default.crt", "README", ".hidden.example.test.pem", "x.example.test.pem.key",
                    "Upper.example.test.pem", f"{TEMP_PREFIX}0123456789abcdef", "x.example.test.key", "1.2.3.4.pem"]:
        (tmp_path / foreign).write_text(leaf.bundle_pem)
    (tmp_path / "subdir.example.test.pem").mkdir()

    found = scan_cert_dir(tmp_path)

    assert {name: f.fingerprint for name, f in found.items()} == expected
    assert found[NAME] == FileFingerprint(NAME, tmp_path / f"{NAME}.pem", leaf.fingerprint,
                                          check_material(NAME, leaf.bundle_pem, expected_fingerprint=leaf.fingerprint,
                                                         now=NOW).sha1_hex)
    assert found["*.example.test"].path == tmp_path / "_wildcard.example.test.pem"
    assert all((f.fingerprint is None) == (f.sha1_hex is None) for f in found.values())


def test_scan_cert_dir_missing(tmp_path: Path) -> None:
    with pytest.raises(CertFileError) as info:
        scan_cert_dir(tmp_path / "nope")
    assert info.value.op == "scandir"



def test_write_atomic_directory_fsync_can_be_deferred(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from agent.certs import files as files_module

    calls: list[object] = []
    monkeypatch.setattr(files_module, "fsync_dir", lambda d: calls.append(d))
    files_module.write_atomic(tmp_path / "a.pem", b"x", sync_dir=False)
    assert calls == [] and (tmp_path / "a.pem").read_bytes() == b"x"
    files_module.write_atomic(tmp_path / "b.pem", b"y")
    assert calls == [tmp_path]

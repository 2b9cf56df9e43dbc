"""The spoa package as a whole: public API, error tree, import rules (STYLE.md 2.1)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import spoa
from spoa import errors

SPOA_DIR = Path(spoa.__file__).resolve().parent


def test_all_names_exist() -> None:
    for name in spoa.__all__:
        assert hasattr(spoa, name), name
    assert len(set(spoa.__all__)) == len(spoa.__all__)


@pytest.mark.parametrize(
    ("cls", "status"),
    [
        (errors.ProcessingTimeout, 2),
        (errors.FrameTooBig, 3),
        (errors.InvalidFrame, 4),
        (errors.UnexpectedFrame, 4),
        (errors.InvalidValue, 4),
        (errors.NoVersion, 5),
        (errors.NoMaxFrameSize, 6),
        (errors.NoCapabilities, 7),
        (errors.BadVersion, 8),
        (errors.BadFrameSize, 9),
        (errors.FragmentationNotSupported, 10),
        (errors.LocalProtocolError, 99),
        (errors.SpopError, 99),
    ],
)
def test_error_status_codes(cls: type[errors.SpopError], status: int) -> None:
    # SPOE.txt §3.5
    assert issubclass(cls, errors.SpopError)
    assert cls.status == status
    assert cls("x").status == status


def test_status_table_is_complete() -> None:
    assert sorted(int(s) for s in errors.Status) == [*range(14), 99]


def test_invalid_value_is_also_a_value_error() -> None:
    assert issubclass(errors.InvalidValue, ValueError)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_spoa_imports_only_the_stdlib() -> None:
    # spoa knows nothing of ours (STYLE.md 2.1); uvloop is loaded lazily by name.
    for path in SPOA_DIR.glob("*.py"):
        third_party = {m for m in _imports(path) if m not in sys.stdlib_module_names}
        assert third_party <= {"__future__"}, (path.name, third_party)


def test_only_the_shell_does_io() -> None:
    io_modules = {"asyncio", "socket", "selectors", "ssl", "time", "threading"}
    for path in SPOA_DIR.glob("*.py"):
        if path.name == "server.py":
            continue
        assert not _imports(path) & io_modules, path.name

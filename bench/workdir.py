"""A scratch directory per benchmark under /tmp (short: unix socket paths must stay under 107 bytes), removed when
the benchmark ends: the large sizes leave hundreds of MB of certificate files and stores behind otherwise."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["scratch"]


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """Set LOCKSTEP_BENCH_KEEP=1 to keep the directory (logs of every process started) for a post-mortem."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield root
    finally:
        if os.environ.get("LOCKSTEP_BENCH_KEEP") != "1":
            shutil.rmtree(root, ignore_errors=True)

"""Result rows and the table the suite prints."""

from __future__ import annotations

import dataclasses
import json
import platform
from collections.abc import Sequence
from pathlib import Path


@dataclasses.dataclass(frozen=True, slots=True)
class Row:
    name: str
    value: float
    unit: str
    anchor: str = ""
    anchor_value: float | None = None
    higher_is_better: bool = True
    goal: float | None = None  # goal on the ratio (value / anchor_value)
    note: str = ""
    goal_value: float | None = None  # goal on the value itself (e.g. "p50 ≤ 2 s"), in `unit`

    @property
    def ratio(self) -> float | None:
        if self.anchor_value is None or self.anchor_value == 0:
            return None
        return self.value / self.anchor_value

    @property
    def verdict(self) -> str:
        """One clause per goal the row has, e.g. "meets goal ≥ 0.95×; MISSES goal ≤ 2 s"."""
        cmp = "≥" if self.higher_is_better else "≤"
        parts = []
        if self.goal is not None and self.ratio is not None:
            ok = self.ratio >= self.goal if self.higher_is_better else self.ratio <= self.goal
            parts.append(("meets" if ok else "MISSES") + f" goal {cmp} {self.goal:g}×")
        if self.goal_value is not None:
            ok = self.value >= self.goal_value if self.higher_is_better else self.value <= self.goal_value
            parts.append(("meets" if ok else "MISSES") + f" goal {cmp} {self.goal_value:g} {self.unit}")
        return "; ".join(parts)


def _fmt(v: float | None) -> str:
    if v is None:
        return "–"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def table(rows: Sequence[Row]) -> str:
    head = "| benchmark | value | anchor (same run) | anchor value | ratio | goal | note |\n|---|---|---|---|---|---|---|\n"
    lines = []
    for r in rows:
        lines.append(
            f"| {r.name} | {_fmt(r.value)} {r.unit} | {r.anchor or '–'} | "
            f"{_fmt(r.anchor_value)}{(' ' + r.unit) if r.anchor_value is not None else ''} | "
            f"{(_fmt(r.ratio) + '×') if r.ratio is not None else '–'} | {r.verdict or '–'} | {r.note} |"
        )
    return head + "\n".join(lines)


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, {platform.platform()}"


def save(rows: Sequence[Row], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([dataclasses.asdict(r) | {"ratio": r.ratio} for r in rows], indent=2))

"""Runs Debian's wrk against a URL and parses its summary (requests/s, latency percentiles, errors)."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess


@dataclasses.dataclass(frozen=True, slots=True)
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"unparsable latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse(output: str) -> WrkResult:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    pct = dict(re.findall(r"^\s+(\d+)%\s+(\S+)$", output, re.M))
    non_2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", output)) else 0
    errors = sum(int(x) for x in m.groups()) if (
        m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)) else 0
    return WrkResult(rps, _ms(pct["50"]), _ms(pct["99"]), total, non_2xx, errors)


def run(url: str, *, host: str, duration_s: float, connections: int = 32, threads: int = 1) -> WrkResult:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (scripts/install-system.sh installs it)")
    out = subprocess.run(
        [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration_s:g}s", "--latency", "-H", f"Host: {host}", url],
        capture_output=True, text=True, timeout=duration_s + 60, check=True,
    ).stdout
    result = parse(out)
    if result.non_2xx or result.socket_errors:
        raise RuntimeError(f"wrk saw {result.non_2xx} non-2xx answers and {result.socket_errors} socket errors:\n{out}")
    return result

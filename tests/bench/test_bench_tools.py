"""The benchmark suite's own tools: row verdicts, size parsing, percentiles, /proc readings, and the C handshake
client against a real HAProxy (it must count handshakes, and count a certificate that does not name the SNI)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import time
from pathlib import Path

import pytest

from agent.haproxy import find_haproxy
from bench.__main__ import _sizes
from bench.handshakes import BareHAProxy, build_client
from bench.memory import _counter
from bench.procstat import cpu_s, peak_rss_mb, rss_mb, run_time_s
from bench.report import Row, table
from bench.time_to_https import _pct
from lockstep.pki import issue
from tests.harness.net import split
from tests.harness.pki import TestPki


def test_ratio_goal_verdicts() -> None:
    assert Row("x", 96, "hs/s", "bare", 100, goal=0.95).verdict == "meets goal ≥ 0.95×"
    assert Row("x", 90, "hs/s", "bare", 100, goal=0.95).verdict == "MISSES goal ≥ 0.95×"
    assert Row("x", 1.3, "ms", "small", 1.0, higher_is_better=False, goal=1.25).verdict == "MISSES goal ≤ 1.25×"
    assert Row("x", 1.0, "ms", "small", 0, goal=1.25).verdict == ""  # no ratio without an anchor value


def test_value_goal_verdicts_and_both() -> None:
    assert Row("p50", 1.5, "s", higher_is_better=False, goal_value=2).verdict == "meets goal ≤ 2 s"
    assert Row("p50", 4.1, "s", higher_is_better=False, goal_value=2).verdict == "MISSES goal ≤ 2 s"
    assert Row("failed", 0, "handshakes", higher_is_better=False, goal_value=0).verdict.startswith("meets")
    both = Row("p50", 4.1, "s", "CA", 3.0, higher_is_better=False, goal=2.0, goal_value=2)
    assert both.verdict == "meets goal ≤ 2×; MISSES goal ≤ 2 s"
    assert "MISSES goal ≤ 2 s" in table([both])


def test_table_shows_a_benchmark_that_did_not_complete() -> None:
    out = table([Row("memory: did not complete", float("nan"), "", note="RuntimeError: boom")])
    assert "| memory: did not complete | nan " in out and "boom" in out


def test_sizes_argument() -> None:
    assert _sizes("1,100,1_000") == (1, 100, 1000)
    for bad in ("", "x", "0", "5,-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            _sizes(bad)


def test_nearest_rank_percentiles() -> None:
    values = [float(i) for i in range(1, 101)]
    assert _pct(values, 0.5) == 50.0
    assert _pct(values, 0.99) == 99.0
    assert _pct([3.0], 0.99) == 3.0
    assert _pct([2.0, 1.0], 0.5) == 1.0


def test_prometheus_counter_sum() -> None:
    text = ('# HELP x\nlockstep_agent_verify_ok_total 12.0\n'
            'lockstep_agent_certificate_operations_total{action="add"} 3.0\n'
            'lockstep_agent_certificate_operations_total{action="replace"} 2.0\n')
    assert _counter(text, "lockstep_agent_verify_ok_total") == 12
    assert _counter(text, "lockstep_agent_certificate_operations_total") == 5
    assert _counter(text, "missing_total") == 0


def test_proc_readings_of_this_process() -> None:
    import os

    pid = os.getpid()
    before, before_precise = cpu_s(pid), run_time_s(pid)
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:  # burn 0.2 s of CPU
        pass
    assert cpu_s(pid) - before >= 0.15
    assert run_time_s(pid) - before_precise >= 0.15
    assert 1 < rss_mb(pid) <= peak_rss_mb(pid)


@pytest.mark.haproxy
def test_handshake_client_counts_full_handshakes_and_wrong_certificates(short_tmp: Path, pki: TestPki) -> None:
    client = build_client(short_tmp / "hsbin")
    cert = short_tmp / "hs-bare.pem"
    cert.write_text(issue(pki.edge_ca, ["bare.bench.test"], now=dt.datetime.now(dt.timezone.utc)).bundle_pem)
    bare = BareHAProxy(short_tmp / "hs-bare", find_haproxy("2.6"), cert)
    bare.start()
    try:
        host, port = split(bare.bind)
        right = short_tmp / "right.txt"
        right.write_text("bare.bench.test\n")
        wrong = short_tmp / "wrong.txt"
        wrong.write_text("other.bench.test\n")
        cpu0 = cpu_s(bare.pid)
        ok = json.loads(subprocess.run([str(client), host, str(port), "1", "2", str(right), "10"],
                                       capture_output=True, text=True, timeout=60, check=True).stdout)
        assert cpu_s(bare.pid) > cpu0  # HAProxy did the work: these were real handshakes
        assert ok["handshakes"] > 20 and ok["failures"] == 0 and ok["mismatches"] == 0
        assert ok["checked"] > 0
        bad = json.loads(subprocess.run([str(client), host, str(port), "1", "1", str(wrong), "1"],
                                        capture_output=True, text=True, timeout=60, check=True).stdout)
        assert bad["handshakes"] > 0 and bad["mismatches"] == bad["checked"] == bad["handshakes"]
    finally:
        bare.stop()
    closed = json.loads(subprocess.run([str(client), host, str(port), "0.3", "1", str(right)],
                                       capture_output=True, text=True, timeout=60, check=False).stdout)
    assert closed["handshakes"] == 0 and closed["failures"] > 0  # nothing listening: counted, not hidden

"""The benchmark keeps working: ``python -m chat.bench --quick`` runs every workload, as CI would.

A smoke test, not a performance test: it checks that every workload ran against every target, that
the table and the JSON file say so, and that nothing was lost. No performance target is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
QUICK_TIMEOUT = 60.0  # seconds; the quick run takes about 15 on a loaded 2-core machine (40 on a very loaded one)
FANOUT_TARGETS = {"limit", "floor", "broker", "broker+history", "broker+secure"}
LATENCY_TARGETS = {"limit", "floor", "broker"}


def test_quick_bench_runs_every_workload_without_loss(tmp_path: Path) -> None:
    result_file = tmp_path / "bench.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "chat.bench", "--quick", "--json", str(result_file)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=QUICK_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the bench ends every process it started on SIGTERM
        out, err = proc.communicate(timeout=15)
        pytest.fail(f"the quick bench took more than {QUICK_TIMEOUT:g} s\n{out}\n{err}")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{err}"

    for heading in ("FAN-OUT", "LATENCY", "SCALE", "TARGETS", "LOSS: 0 in total"):
        assert heading in out, f"{heading!r} missing from the output:\n{out}"
    for target in FANOUT_TARGETS:
        assert f"\n{target} " in out, f"no table row for {target}:\n{out}"

    result = json.loads(result_file.read_text())
    assert result["problems"] == []
    assert {r["target"] for r in result["fanout"]} == FANOUT_TARGETS
    assert {r["target"] for r in result["latency"]} == LATENCY_TARGETS
    assert len({r["receivers"] for r in result["fanout"]}) == 2
    for row in result["fanout"] + result["latency"]:
        assert "failure" not in row, row["failure"]
        assert row["loss"] == 0 and row["disorder"] == 0 and row["bad_frames"] == 0, row
        assert row["deliveries"] == row["expected"] > 0, row
    for row in result["fanout"]:
        assert row["input_lines_per_s"] > 0 and row["cpu_us_per_line"] > 0, row
    for row in result["latency"]:
        assert 0 < row["latency_ms"]["p50"] <= row["latency_ms"]["p99"] <= row["latency_ms"]["max"], row
    files = result["files"]
    assert "failure" not in files, files["failure"]
    assert files["upload_mb_s"] > 0 and files["download_mb_s"] > 0 and files["cp_mb_s"] > 0 and files["loss"] == 0
    assert 0 < files["p99_quiet_ms"] and 0 < files["p99_busy_ms"]
    assert "5. FILES" in out
    scale = result["scale"]
    assert "failure" not in scale, scale["failure"]
    assert scale["joined"] == scale["clients"] and scale["join_errors"] == scale["idle_errors"] == 0
    assert scale["rss_kib_per_client"] > 0 and scale["idle_cpu_pct"] >= 0


# The receivers' check of every seq (a batch of events arrives at once): loss cannot hide in a fast path.
@pytest.mark.parametrize(
    "seqs, prev, expected",
    [
        ([11, 12, 13], 10, (13, 3, 0)),  # the next ones, in order: all counted
        ([11, 13, 14], 10, (14, 3, 0)),  # a jump: 12 is not counted (it shows as loss)
        ([11, 11, 12], 10, (12, 2, 1)),  # a duplicate: out of order, not counted twice
        ([9, 11], 10, (11, 1, 1)),  # an old one: out of order
        ([14, 12, 13], 11, (14, 1, 2)),  # reordered: only what advances counts
        ([1, 2, 3, 4], 0, (4, 2, 0)),  # warm-up seqs outside the timed range 3..20 are not counted
        ([19, 20, 21], 18, (21, 2, 0)),  # nor those after it
    ],
)
def test_receivers_count_each_timed_seq_once_and_in_order(seqs: list[int], prev: int, expected: tuple) -> None:
    from chat.bench.receivers import count_in_order

    assert count_in_order(seqs, prev, 3, 20) == expected

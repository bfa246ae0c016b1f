"""The web benchmark keeps working: a tiny ``python -m chat.bench.web`` run, checked for its report.

A smoke test, not a performance test: every delivery counted, none lost, duplicated or out of order.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 60.0  # seconds; the run itself takes a few


@pytest.mark.timeout(RUN_TIMEOUT + 20)
def test_a_tiny_web_bench_run_delivers_every_line_to_web_and_direct_users(tmp_path: Path) -> None:
    result_file = tmp_path / "bench-web.json"
    args = ["--web-clients", "4", "--direct-clients", "2", "--senders", "2", "--rate", "20", "--seconds", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "chat.bench.web", *args, "--json", str(result_file)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.terminate()  # its finally block ends the broker and the gateway it started
        out, err = proc.communicate(timeout=15)
        pytest.fail(f"the web bench took more than {RUN_TIMEOUT:g} s\n{out}\n{err}")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{err}"
    result = json.loads(result_file.read_text())
    assert result["lines"] == 20
    assert (result["web_lost"], result["direct_lost"], result["duplicates"], result["disorder"]) == (0, 0, 0, 0)
    assert result["web_ms"]["p50"] > 0 and result["direct_ms"]["p50"] > 0
    assert "web " in out and "direct " in out and "KiB per web session" in out

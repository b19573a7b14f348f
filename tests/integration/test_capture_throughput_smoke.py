"""benchmarks/capture_throughput.py still runs: a small run captures every change, per engine.

Counts only: figures from a shared machine mean nothing, and benchmarks are never timed tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_small_run_captures_every_row_once(tmp_path: Path) -> None:
    out = tmp_path / "capture.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "capture_throughput.py"),
            *("--rows", "2000", "--timeout", "120", "--json", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=ROOT,
        env={**os.environ, "NO_GCE_CHECK": "true"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(out.read_text())
    assert not figures["failed"], figures["failed"]
    if not figures["results"]:
        pytest.skip(f"no engine could run here: {figures['skipped']}")
    for r in figures["results"]:
        assert (r["engine"], r["snapshot_events"], r["events"]) == (r["engine"], 2000, 2000)
        assert r["peak_rss_mib"] > 0

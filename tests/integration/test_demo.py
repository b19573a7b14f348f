"""`cdc demo` end to end: both sides (PostgreSQL via pgoutput, MariaDB via the binlog reader)."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest

from cdc.demo.run import DemoOptions, run_demo
from connectors.local_servers import mariadb_binaries, postgres_bindir

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.skipif(
    postgres_bindir() is None or mariadb_binaries() is None,
    reason="needs local PostgreSQL and MariaDB server binaries",
)
def test_the_demo_captures_both_sides_and_exits_0(tmp_path: Path) -> None:
    import duckdb

    out, err = io.StringIO(), io.StringIO()
    folder = tmp_path / "demo"
    assert run_demo(DemoOptions(folder=folder, seconds=4, rate=25), out, err) == 0, err.getvalue()
    assert "starting a throwaway MariaDB" in err.getvalue()
    assert "0 dead letters" in out.getvalue()
    with duckdb.connect(str(folder / "warehouse.duckdb"), read_only=True) as db:
        assert db.sql("SELECT count(*) FROM payments_payments").fetchall()[0][0] > 0
        # every payment version came from the binlog: seq is file / position / row
        seqs = db.sql("SELECT DISTINCT length(_seq) FROM payments_payments").fetchall()
        assert seqs == [(50,)]

    # the closing hints run as printed in a new shell, where the project's venv is not on PATH
    hints = [
        line.strip().strip("()")
        for line in out.getvalue().splitlines()
        if " --config " in line or "import duckdb" in line
    ]
    # a renewal is one transaction over subscriptions and invoices: shown, with its two hints
    assert "One business action, one source transaction" in out.getvalue(), out.getvalue()
    assert len(hints) == 6, out.getvalue()
    shell_env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    shell_env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    for hint in hints:
        ran = subprocess.run(
            ["bash", "-c", hint], env=shell_env, capture_output=True, text=True, timeout=120
        )
        assert ran.returncode == 0, f"{hint}\n{ran.stderr}"
        assert ran.stdout.strip(), hint

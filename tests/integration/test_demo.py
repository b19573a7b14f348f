"""`cdc demo` end to end: both sides (PostgreSQL via pgoutput, MariaDB via the binlog reader)."""

from __future__ import annotations

import io
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

"""A DuckDB file is one process's at a time: ``cdc run`` lets go of it between merges
(``release``) so that ``cdc history`` and friends can read it, and waits while they do."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from connectors.warehouse import open_warehouse
from state_models.errors import TransientError

HOLD = textwrap.dedent(
    """
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1])
    print(con.execute("SELECT count(*) FROM t").fetchall()[0][0], flush=True)
    time.sleep(float(sys.argv[2]))
    """
)


def _hold(path, seconds):
    return subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )


def test_released_file_can_be_read_by_another_process_and_is_reopened_after(tmp_path):
    path = tmp_path / "w.duckdb"
    wh = open_warehouse(f"duckdb:///{path}")
    wh.con.execute("CREATE TABLE t AS SELECT 1 AS x")
    wh.release()
    reader = _hold(path, 1.5)
    assert reader.stdout is not None and reader.stdout.readline().strip() == "1"
    # while the other process holds the file, our next statement is postponed, not failed
    with pytest.raises(TransientError, match="cannot open DuckDB warehouse"):
        wh.con.execute("SELECT 1")
    reader.wait(30)
    assert wh.con.execute("SELECT count(*) FROM t").fetchall() == [(1,)]
    wh.close()


def test_opening_waits_for_the_holder_to_let_go(tmp_path):
    path = tmp_path / "w.duckdb"
    wh = open_warehouse(f"duckdb:///{path}")
    wh.con.execute("CREATE TABLE t AS SELECT 1 AS x")
    wh.close()
    holder = _hold(path, 1.0)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "1"
    with pytest.raises(TransientError):
        open_warehouse(f"duckdb:///{path}")
    started = time.monotonic()
    waited = open_warehouse(f"duckdb:///{path}", lock_wait_s=30)
    assert time.monotonic() - started < 30
    assert waited.con.execute("SELECT count(*) FROM t").fetchall() == [(1,)]
    waited.close()
    holder.wait(30)

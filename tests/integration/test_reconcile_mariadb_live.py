"""`cdc reconcile` against a real MariaDB captured by a running `cdc run` (engine binlog), with a
workload changing rows during the comparison: a clean table of many types reconciles equal; a
key whose versions were deleted, a changed value and a phantom key in the state table are each
reported with the right keys and columns; `--repair` fixes them and the next reconcile is equal.
The snapshot's binlog position is exact (MariaDB's binlog_snapshot_file/position), so nothing is
in doubt around it."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_reconcile_live import STATE, cdc, start_run, state_sql

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REGISTRY = """\
changelog: ./changelog
warehouse: duckdb:///warehouse.duckdb
state_dir: ./state
sources:
  shop:
    kind: mysql
    engine: binlog
    dsn: {dsn}
    tables:
      - name: {db}.subscriptions
        primary_key: [id]
        columns: {{id: bigint, plan: varchar(20), amount: "decimal(12,2)", renews_at: "datetime(6)",
                  paid_at: "timestamp(6)", note: text, flags: longtext, score: double,
                  active: tinyint(1), blob: varbinary(16), starts: date}}
"""

SCHEMA = """
CREATE TABLE subscriptions (
    id BIGINT PRIMARY KEY,
    plan VARCHAR(20),
    amount DECIMAL(12,2),
    renews_at DATETIME(6),
    paid_at TIMESTAMP(6) NULL,
    note TEXT,
    flags LONGTEXT,
    score DOUBLE,
    active TINYINT(1),
    `blob` VARBINARY(16),
    starts DATE
)
"""


def fill(n: int) -> str:
    rows = []
    for g in range(1, n + 1):
        note = "''" if g % 5 == 0 else ("NULL" if g % 5 == 1 else f"'note|{g}'")
        rows.append(
            f"({g}, 'plan {g % 7}', {g * 1.25:.2f}, '2026-01-01 00:00:00' + INTERVAL {g} SECOND, "
            f"'2026-02-01 00:00:00.5' + INTERVAL {g} MINUTE, {note}, "
            f'\'{{"z": {g}, "a": [1, "x"]}}\', {g}/3, {g % 2}, UNHEX(LPAD(HEX({g}), 8, \'0\')), '
            f"'2026-01-01' + INTERVAL {g} DAY)"
        )
    return "INSERT INTO subscriptions VALUES " + ", ".join(rows)


class Workload:
    def __init__(self, mariadb: Any, db: str):
        self.mariadb, self.db = mariadb, db
        self.stop = threading.Event()
        self.changes = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = random.Random(3)
        while not self.stop.is_set():
            key = rng.randint(1001, 2000)
            self.mariadb.execute(
                f"UPDATE subscriptions SET amount = amount + 1, note = 'w{self.changes}' "
                f"WHERE id = {key}",
                database=self.db,
            )
            self.changes += 1
            time.sleep(0.01)

    def __enter__(self) -> Workload:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def reconcile(tmp_path: Path, table: str, *extra: str) -> tuple[int, dict[str, Any]]:
    out = cdc(tmp_path, "reconcile", table, "--format", "json", "--wait", "60", *extra)
    assert out.returncode in (0, 1) and out.stdout, out.stdout + out.stderr
    [report] = json.loads(out.stdout)
    report["log"] = out.stderr
    return out.returncode, report


def test_mariadb_reconciles_exactly_under_load_and_repairs(mariadb, mysql_database, tmp_path):
    db = mysql_database
    mariadb.execute(SCHEMA, database=db)
    mariadb.execute(fill(2000), database=db)
    (tmp_path / "cdc.yaml").write_text(REGISTRY.format(dsn=mariadb.dsn(db), db=db))
    table = f"shop.{db}.subscriptions"
    run = start_run(tmp_path)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert run.poll() is None, (tmp_path / "run.log").read_text()
            status = json.loads(cdc(tmp_path, "status", "--format", "json").stdout)
            if status["tables"][0]["live_rows"] == 2000:
                break
            assert time.monotonic() < deadline, status
            time.sleep(1)
        with Workload(mariadb, db) as load:
            code, report = reconcile(tmp_path, table)
            assert (code, report["status"]) == (0, "equal"), report
            assert report["not_compared"] == {}, report
            assert report["rows_transferred"] < report["rows"] == 2000, report["log"]
            assert load.changes > 20

            state = STATE
            state_sql(tmp_path, f"DELETE FROM {state} WHERE id = 10")
            state_sql(
                tmp_path,
                f"UPDATE {state} SET score = 0.5, starts = DATE '1999-01-01' "
                "WHERE id = 20 AND _is_current",
            )
            state_sql(
                tmp_path,
                f"INSERT INTO {state} SELECT * REPLACE (999999 AS id) FROM {state} "
                "WHERE id = 30 AND _is_current",
            )
            code, report = reconcile(tmp_path, table)
            assert (code, report["status"]) == (1, "different"), report
            assert report["missing"] == [{"id": 10}]
            assert report["extra"] == [{"id": 999999}]
            assert report["different"] == [{"key": {"id": 20}, "columns": ["score", "starts"]}]

            code, report = reconcile(tmp_path, table, "--repair")
            assert (code, report["status"], report["repaired"]) == (0, "equal", 3), report["log"]
            code, report = reconcile(tmp_path, table)
            assert (code, report["status"]) == (0, "equal"), report
    finally:
        run.terminate()
        run.wait(120)

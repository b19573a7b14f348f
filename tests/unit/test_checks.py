"""`cdc check`: each invariant broken on purpose in a real DuckDB state table is found, naming the
table and the keys; a clean table passes; results are kept in `cdc_check_results`."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import pytest

from cdc.cli import main
from connectors.warehouse.duckdb import DuckDBWarehouse
from state_models.events import ChangeEvent, Op
from state_models.scd2 import TableDef
from state_models.seq import make_seq

TABLE = "billing.public.subscriptions"
REGISTRY = """\
warehouse: duckdb:///w.duckdb
state_dir: ./state
sources:
  billing:
    kind: postgres
    engine: pgoutput
    dsn: postgresql://u@h/db
    tables:
      - name: public.subscriptions
        primary_key: [id]
        columns: {id: bigint, plan: text}
"""


def change(op: str, id_: int, seq: int, plan: str | None = None) -> ChangeEvent:
    the_op = Op(op)
    return ChangeEvent(
        table=TABLE,
        op=the_op,
        key={"id": id_},
        before={"id": id_} if the_op is Op.DELETE else None,
        after=None if the_op is Op.DELETE else {"id": id_, "plan": plan},
        seq=make_seq(seq, seq),
        commit_ts=1_790_000_000_000_000 + seq * 1_000_000,
    )


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    (tmp_path / "cdc.yaml").write_text(REGISTRY)
    table = TableDef(
        TABLE, "billing_subscriptions", "postgres", ("id",), {"id": "bigint", "plan": "text"}
    )
    wh = DuckDBWarehouse(f"duckdb:///{tmp_path / 'w.duckdb'}")
    events = [change("c", i, i, "basic") for i in range(1, 6)]
    events += [change("u", 1, 10, "pro"), change("u", 1, 11, "gold"), change("d", 2, 12)]
    assert not wh.apply(table, events, dt.datetime.now(dt.UTC)).rejected
    wh.close()
    return tmp_path


def check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    code = main(["check", "--config", str(tmp_path / "cdc.yaml"), "--format", "json"])
    return code, json.loads(capsys.readouterr().out)


def failing(report: dict) -> dict[str, list]:
    return {r["check"]: r["keys"] for r in report["results"] if r["status"] == "fail"}


def test_a_clean_table_passes_every_check(warehouse, capsys):
    code, report = check(warehouse, capsys)
    assert code == 0 and report["ok"] and failing(report) == {}
    assert {r["check"] for r in report["results"]} == {
        "one_current",
        "one_version_per_seq",
        "validity_chained",
        "key_not_null",
        "dead_letters",
    }


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        # a second current row for key 3
        (
            "INSERT INTO billing_subscriptions SELECT * REPLACE ('zzzz' AS _seq) "
            "FROM billing_subscriptions WHERE id = 3",
            {"one_current": [{"id": 3}], "validity_chained": [{"id": 3}]},
        ),
        # an overlapping window: key 1's first version ends after the next one starts
        (
            "UPDATE billing_subscriptions SET _valid_to = _valid_to + INTERVAL 1 HOUR "
            "WHERE id = 1 AND _op = 'c'",
            {"validity_chained": [{"id": 1}]},
        ),
        # the same version twice (key 4)
        (
            "INSERT INTO billing_subscriptions SELECT * FROM billing_subscriptions WHERE id = 4",
            {
                "one_current": [{"id": 4}],
                "one_version_per_seq": [{"id": 4}],
                "validity_chained": [{"id": 4}],
            },
        ),
        # a gap: key 1's middle version's window closes before the next opens
        (
            "UPDATE billing_subscriptions SET _valid_to = _valid_to - INTERVAL 1 SECOND "
            "WHERE id = 1 AND _seq = (SELECT min(_seq) FROM billing_subscriptions WHERE id = 1 AND _op = 'u')",
            {"validity_chained": [{"id": 1}]},
        ),
        # a null key
        (
            "UPDATE billing_subscriptions SET id = NULL WHERE id = 5",
            {"key_not_null": [{"id": None}]},
        ),
    ],
)
def test_each_broken_invariant_is_found_with_its_table_and_keys(
    warehouse, capsys, breakage, expected
):
    with duckdb.connect(str(warehouse / "w.duckdb")) as con:
        con.execute(breakage)
    code, report = check(warehouse, capsys)
    assert code == 1 and not report["ok"]
    found = failing(report)
    for name, keys in expected.items():
        assert found[name] == keys, (name, found)
    assert all(r["table"] == TABLE for r in report["results"])


def test_results_are_kept_and_dead_letters_are_a_warning(warehouse, capsys):
    from connectors.deadletter import DeadLetterStore

    DeadLetterStore(warehouse / "state" / "dead_letters").put("bad", "E", "x", "billing", TABLE)
    code, report = check(warehouse, capsys)
    assert code == 0  # a warning only
    assert failing(report) == {"dead_letters": []}
    assert main(["check", "--config", str(warehouse / "cdc.yaml")]) == 0
    text = capsys.readouterr()
    assert "dead_letters" in text.out and "WARN" in text.out and "1 warnings" in text.err
    with duckdb.connect(str(warehouse / "w.duckdb"), read_only=True) as con:
        kept = con.sql(
            "SELECT check_name, status, observed FROM cdc_check_results ORDER BY checked_at, check_name"
        ).fetchall()
    assert ("dead_letters", "fail", 1) in kept and len(kept) == 10


def test_a_killed_cdc_run_fails_the_freshness_check(warehouse, capsys):
    """status.json says running, but nobody holds the state folder: the run was killed."""
    import time

    (warehouse / "state").mkdir(exist_ok=True)
    (warehouse / "state" / "status.json").write_text(
        json.dumps(
            {
                "pid": 999999,
                "running": True,
                "updated_at": time.time(),
                "captures": {"billing": {"phase": "streaming", "source_contact_at": time.time()}},
            }
        )
    )
    code, report = check(warehouse, capsys)
    assert code == 1
    [fresh] = [r for r in report["results"] if r["check"] == "freshness"]
    assert fresh["table"] == "source billing" and fresh["status"] == "fail"
    assert fresh["detail"].startswith("down")

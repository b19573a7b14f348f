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
        "loss_window",
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
    assert ("dead_letters", "fail", 1) in kept and len(kept) == 12


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


# --------------------------------------------------------------------------- registry checks


def with_registry(tmp_path: Path, extra: str) -> None:
    """The fixture's registry with ``extra`` lines added to its one table."""
    (tmp_path / "cdc.yaml").write_text(REGISTRY + extra)


def record_progress(tmp_path: Path, caught_up_ago_s: float | None, commit_ago_s: float) -> None:
    from state_models.progress import Progress

    now = dt.datetime.now(dt.UTC)
    wh = DuckDBWarehouse(f"duckdb:///{tmp_path / 'w.duckdb'}")
    try:
        wh.record_progress(
            [
                Progress(
                    "billing",
                    TABLE,
                    "billing_subscriptions",
                    make_seq(12, 12),
                    now - dt.timedelta(seconds=commit_ago_s),
                    None
                    if caught_up_ago_s is None
                    else now - dt.timedelta(seconds=caught_up_ago_s),
                )
            ],
            now,
        )
    finally:
        wh.close()


def result(report: dict, name: str) -> dict:
    [r] = [r for r in report["results"] if r["check"] == name]
    return r


@pytest.mark.parametrize(
    ("caught_up_ago", "commit_ago", "code", "level", "status"),
    [
        (10, 86_400, 0, "error", "pass"),  # idle for a day, but caught up 10 s ago: fresh
        (120, 120, 0, "warn", "fail"),  # past warn (1m), not error (5m)
        (600, 600, 1, "error", "fail"),
        (None, 30, 0, "error", "pass"),  # nothing attests it (Beam): the newest commit counts
        (None, 400, 1, "error", "fail"),
    ],
)
def test_the_freshness_sla_reads_caught_up_at_from_cdc_progress(
    warehouse, capsys, caught_up_ago, commit_ago, code, level, status
):
    with_registry(warehouse, "        sla: {freshness: {warn: 1m, error: 5m}}\n")
    record_progress(warehouse, caught_up_ago, commit_ago)
    got, report = check(warehouse, capsys)
    fresh = result(report, "freshness_sla")
    assert (got, fresh["level"], fresh["status"]) == (code, level, status), fresh
    assert abs(fresh["observed"] - (caught_up_ago or commit_ago)) <= 2


def test_the_freshness_sla_fails_a_table_with_no_progress_at_all(warehouse, capsys):
    with_registry(warehouse, "        sla: {freshness: {error: 5m}}\n")
    got, report = check(warehouse, capsys)
    assert got == 1 and "nothing applied yet" in result(report, "freshness_sla")["detail"]


def changelog_hours(tmp_path: Path, counts: dict[int, int]) -> None:
    """``counts[n]`` changes in the hour ``n`` hours before the last complete one."""
    import time

    from connectors.changelog.writer import ChangelogWriter
    from state_models.checks import HOUR_US, last_complete_hour

    last = last_complete_hour(int(time.time() * 1e6))
    events, n = [], 0
    for back, count in counts.items():
        for i in range(count):
            n += 1
            ts = last - back * HOUR_US + i * 1_000_000
            events.append(
                ChangeEvent(
                    table=TABLE,
                    op=Op.INSERT,
                    key={"id": n},
                    before=None,
                    after={"id": n, "plan": "basic"},
                    seq=make_seq(n, n),
                    commit_ts=ts,
                )
            )
    with ChangelogWriter(str(tmp_path / "changelog")) as writer:
        writer.append(events)


@pytest.mark.parametrize(
    ("last_hour", "status"), [(10, "pass"), (2, "fail"), (0, "fail"), (40, "fail")]
)
def test_volume_compares_the_last_hour_with_the_median_of_the_hours_before(
    warehouse, capsys, last_hour, status
):
    (warehouse / "cdc.yaml").write_text(
        REGISTRY.replace("state_dir:", "changelog: ./changelog\nstate_dir:")
        + "        checks: {volume: {min_ratio: 0.5, max_ratio: 3, baseline_hours: 6}}\n"
    )
    # six hours of 10, 8, 12, 10, 9, 11 changes, then the hour checked
    changelog_hours(warehouse, {0: last_hour, 1: 10, 2: 8, 3: 12, 4: 10, 5: 9, 6: 11})
    got, report = check(warehouse, capsys)
    vol = result(report, "volume")
    assert got == 0 and vol["level"] == "warn"  # warn by default: exit 0
    assert (vol["status"], vol["observed"]) == (status, last_hour), vol
    assert "median 10/h over the 6 h before" in vol["detail"]


def test_volume_of_an_error_level_fails_the_run_and_a_new_table_has_no_baseline(warehouse, capsys):
    (warehouse / "cdc.yaml").write_text(
        REGISTRY.replace("state_dir:", "changelog: ./changelog\nstate_dir:")
        + "        checks: {volume: {level: error}}\n"
    )
    changelog_hours(warehouse, {0: 5, 1: 50})  # one hour of history only
    got, report = check(warehouse, capsys)
    assert got == 0 and "not enough history" in result(report, "volume")["detail"]
    changelog_hours(warehouse, {2: 50, 3: 50})
    got, report = check(warehouse, capsys)
    assert got == 1 and result(report, "volume")["status"] == "fail"


def test_schema_drift_names_the_columns_added_or_widened_since_the_last_check(warehouse, capsys):
    with_registry(warehouse, "        checks: {schema_drift: {level: error}}\n")
    got, report = check(warehouse, capsys)
    assert got == 0 and "first check" in result(report, "schema_drift")["detail"]
    got, report = check(warehouse, capsys)
    assert got == 0 and result(report, "schema_drift")["status"] == "pass"
    table = TableDef(TABLE, "billing_subscriptions", "postgres", ("id",), None)
    wh = DuckDBWarehouse(f"duckdb:///{warehouse / 'w.duckdb'}")
    late = change("u", 1, 20, "gold")
    late.after["note"] = "a column the source added"
    assert wh.apply(table, [late], dt.datetime.now(dt.UTC)).schema_changes
    wh.close()
    got, report = check(warehouse, capsys)
    drift = result(report, "schema_drift")
    assert got == 1 and drift["status"] == "fail"
    assert drift["keys"] == [{"column": "note", "change": "added string"}]
    got, report = check(warehouse, capsys)  # reported once: the new columns are the baseline
    assert got == 0 and result(report, "schema_drift")["status"] == "pass"


def test_dry_run_runs_nothing_and_says_duckdb_does_not_estimate(warehouse, capsys):
    code = main(["check", "--config", str(warehouse / "cdc.yaml"), "--dry-run"])
    out = capsys.readouterr()
    assert code == 0 and "one_current" in out.out and "does not estimate bytes" in out.err
    with duckdb.connect(str(warehouse / "w.duckdb"), read_only=True) as con:
        tables = {r[0] for r in con.sql("SELECT table_name FROM duckdb_tables()").fetchall()}
    assert "cdc_check_results" not in tables  # nothing was recorded


def test_the_last_results_are_left_for_the_metrics(warehouse, capsys):
    with duckdb.connect(str(warehouse / "w.duckdb")) as con:
        con.execute(
            "INSERT INTO billing_subscriptions SELECT * FROM billing_subscriptions WHERE id = 4"
        )
    check(warehouse, capsys)
    doc = json.loads((warehouse / "state" / "last_check.json").read_text())
    failed = {(r["check"], r["level"]) for r in doc["results"] if r["status"] == "fail"}
    assert ("one_current", "error") in failed and doc["at"] > 0


def test_an_open_loss_window_fails_the_check_until_a_reconcile_closes_it(warehouse, capsys):
    import time

    from connectors.loss_windows import LossWindows

    windows = LossWindows(warehouse / "state")
    w = windows.record("billing", [TABLE], "replication slot cdc_billing is gone", "0/16B3748")
    assert windows.record("billing", [TABLE], "again", "0/16B3748").id == w.id  # one per position
    code, report = check(warehouse, capsys)
    lost = result(report, "loss_window")
    assert code == 1 and lost["status"] == "fail" and lost["observed"] == 1
    assert "after 0/16B3748 may be missing" in lost["detail"]
    assert f"cdc reconcile {TABLE} --repair" in lost["detail"]
    assert [c.id for c in windows.close(TABLE, time.time())] == [w.id]
    code, report = check(warehouse, capsys)
    assert code == 0 and result(report, "loss_window")["status"] == "pass"

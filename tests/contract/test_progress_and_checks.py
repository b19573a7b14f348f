"""``cdc_progress`` and the invariant checks run the same plans on every warehouse: progress only
moves forward whatever order its writers come in; a clean table passes every invariant and a
table broken on purpose (a copied current version) fails the ones it breaks, naming the key."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlglot import exp

from state_models.progress import Progress
from tests.scd2_histories import BASE_TS, INGESTED, event, table_def

S = 1_000_000
T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def rows(warehouse: Any) -> dict[str, dict[str, Any]]:
    return {r["table_id"]: r for r in warehouse.progress()}


def as_utc(value: Any) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def test_progress_only_moves_forward(warehouse):
    table = table_def()
    tid = f"{table.table_id}#{table.state_table}"  # one table id per test run: shared warehouse

    def progress(seq: str | None, caught: int | None, visible: float | None) -> Progress:
        return Progress(
            source="billing",
            table_id=tid,
            state_table=table.state_table,
            applied_seq=seq,
            applied_commit_at=None if seq is None else T0,
            caught_up_at=None if caught is None else T0 + dt.timedelta(seconds=caught),
            commit_to_visible_s=visible,
        )

    warehouse.record_progress([progress("0000000002", 10, 0.5)], T0)
    row = rows(warehouse)[tid]
    assert row["applied_seq"] == "0000000002" and row["source"] == "billing"
    assert as_utc(row["caught_up_at"]) == T0 + dt.timedelta(seconds=10)
    # an older writer (a restart, a second job) never moves it back; NULL never erases it
    warehouse.record_progress([progress("0000000001", 5, None)], T0)
    warehouse.record_progress([progress(None, None, None)], T0)
    row = rows(warehouse)[tid]
    assert row["applied_seq"] == "0000000002"
    assert as_utc(row["caught_up_at"]) == T0 + dt.timedelta(seconds=10)
    assert row["commit_to_visible_s"] == 0.5
    warehouse.record_progress([progress("0000000003", 20, 1.25)], T0 + dt.timedelta(seconds=30))
    row = rows(warehouse)[tid]
    assert (row["applied_seq"], row["commit_to_visible_s"]) == ("0000000003", 1.25)
    assert as_utc(row["caught_up_at"]) == T0 + dt.timedelta(seconds=20)
    assert as_utc(row["updated_at"]) == T0 + dt.timedelta(seconds=30)


def test_the_watermark_only_moves_forward_and_names_the_letter_holding_it(warehouse):
    table = table_def()
    tid = f"{table.table_id}#{table.state_table}#watermark"

    def progress(mark: str | None, held_by: str | None) -> Progress:
        return Progress(
            source="billing",
            table_id=tid,
            state_table=table.state_table,
            applied_seq="0000000009",
            watermark_seq=mark,
            watermark_held_by=held_by,
        )

    warehouse.record_progress([progress("0000000005", "letter-1")], T0)
    row = rows(warehouse)[tid]
    assert (row["watermark_seq"], row["watermark_held_by"]) == ("0000000005", "letter-1")
    warehouse.record_progress([progress("0000000004", None)], T0)  # an older writer: not back
    row = rows(warehouse)[tid]
    assert (row["watermark_seq"], row["watermark_held_by"]) == ("0000000005", None)
    warehouse.record_progress([progress("0000000007", None)], T0)
    assert rows(warehouse)[tid]["watermark_seq"] == "0000000007"


def test_invariants_pass_on_a_clean_table_and_name_the_key_a_copy_breaks(warehouse):
    table = table_def()
    events = [
        event(table, "c", {"id": 1}, (1, 1), BASE_TS, {"plan": "basic"}),
        event(table, "u", {"id": 1}, (2, 1), BASE_TS + S, {"plan": "pro"}),
        event(table, "c", {"id": 2}, (3, 1), BASE_TS + 2 * S, {"plan": "basic"}),
    ]
    assert not warehouse.apply(table, events, INGESTED).rejected
    clean = {r.check: r.status for r in warehouse.check(table)}
    assert clean == {
        "one_current": "pass",
        "one_version_per_seq": "pass",
        "validity_chained": "pass",
        "key_not_null": "pass",
    }
    state = warehouse._names(table.state_table).state
    copy = exp.insert(
        exp.select("*").from_(state.copy()).where("id = 2"), state.copy()
    )  # key 2's only version, twice: two current rows, two versions at one seq
    warehouse._run([copy])
    warehouse._forget(table.state_table)
    broken = {r.check: r for r in warehouse.check(table)}
    for name in ("one_current", "one_version_per_seq", "validity_chained"):
        assert broken[name].status == "fail", name
        assert broken[name].keys == [{"id": 2}], name
    assert broken["key_not_null"].status == "pass"


def test_a_dry_run_reads_nothing_and_bigquery_estimates_the_bytes(warehouse):
    table = table_def()
    events = [
        event(table, "c", {"id": i}, (i, 1), BASE_TS + i * S, {"plan": "basic"}) for i in (1, 2)
    ]
    assert not warehouse.apply(table, events, INGESTED).rejected
    estimates = warehouse.check_bytes(table)
    assert set(estimates) == {
        "one_current",
        "one_version_per_seq",
        "validity_chained",
        "key_not_null",
    }
    if warehouse.caps.dialect == "bigquery":
        assert all(isinstance(b, int) and b >= 0 for b in estimates.values()), estimates
    else:
        assert set(estimates.values()) == {None}


def test_check_results_are_kept_and_the_last_record_read_back(warehouse):
    from state_models.checks import CheckResult

    table = table_def()
    tid = f"{table.table_id}#{table.state_table}"
    at = dt.datetime(2026, 12, 7, 1, tzinfo=dt.UTC)
    first = CheckResult(
        tid, "schema_drift", "warn", "pass", 0, record='{"columns": {"a": "int64"}}'
    )
    warehouse.record_checks([first], at)
    later = CheckResult(
        tid,
        "schema_drift",
        "warn",
        "fail",
        1,
        keys=[{"column": "b"}],
        record='{"columns": {"a": "int64", "b": "string"}}',
    )
    warehouse.record_checks(
        [later, CheckResult(tid, "one_current", "error", "pass", 0)], at + dt.timedelta(hours=1)
    )
    assert (
        warehouse.last_record(tid, "schema_drift") == '{"columns": {"a": "int64", "b": "string"}}'
    )
    assert warehouse.last_record(tid, "nothing_like_it") is None

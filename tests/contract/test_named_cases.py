"""Named cases from what users report about the peers (research: peers_and_user_complaints §14).

Each runs on every warehouse and is checked against the reference fold and against what the
case is about, stated directly.
"""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from state_models.debezium import TOMBSTONE, decode_debezium
from state_models.errors import SchemaChangeError
from state_models.events import ChangeEvent
from state_models.oracle import fold
from state_models.scd2 import TableDef, render_version
from state_models.tables import TableInfo, resolver_for
from state_models.types import micros_to_datetime
from tests.scd2_histories import BASE_TS, INGESTED, event, table_def, without_ingested_at
from tests.unit.test_debezium import SUBSCRIPTION_COLUMNS as SUBSCRIPTIONS

S = 1_000_000  # one second in µs


def apply(warehouse: Any, table: TableDef, *batches: list[ChangeEvent]) -> list[Any]:
    return [warehouse.apply(table, batch, INGESTED) for batch in batches]


def history(warehouse: Any, table: TableDef, **key: Any) -> list[dict[str, Any]]:
    state = warehouse.state_table(table)
    return [render_version(state, r) for r in warehouse.history(table, key or None)]


def assert_matches_fold(warehouse: Any, table: TableDef, events: list[ChangeEvent]) -> None:
    state = warehouse.state_table(table)
    expected = [render_version(state, r) for r in fold(state, events, INGESTED)]
    assert without_ingested_at(history(warehouse, table)) == without_ingested_at(expected)


def short(rows: list[dict[str, Any]], *cols: str) -> list[tuple[Any, ...]]:
    return [tuple(r[c] for c in cols) for r in rows]


def test_same_second_updates_are_separate_versions_ordered_by_seq(warehouse):
    t = table_def()
    key = {"id": 1}
    c = event(t, "c", key, (1, 1), BASE_TS, {"plan": "basic"})
    u1 = event(t, "u", key, (2, 2), BASE_TS, {"plan": "pro"})
    u2 = event(t, "u", key, (3, 3), BASE_TS, {"plan": "team"})
    apply(warehouse, t, [u2], [u1, c])  # newest first

    rows = history(warehouse, t)
    assert short(rows, "plan", "_is_current") == [
        ("basic", False),
        ("pro", False),
        ("team", True),
    ]
    at = micros_to_datetime(BASE_TS)
    assert {r["_valid_from"] for r in rows} == {rows[0]["_valid_from"]}  # one commit second
    assert rows[0]["_valid_to"] == rows[0]["_valid_from"]  # zero-length: superseded at once
    assert [r["plan"] for r in warehouse.as_of(t, at=at)] == ["team"]
    assert_matches_fold(warehouse, t, [c, u1, u2])


def test_a_commit_time_that_falls_back_in_log_order_never_inverts_a_window(warehouse):
    # MariaDB: the snapshot reads a row at 10.8 s (the clock, microseconds); a change committed
    # in that same second is logged at 10 s (the binlog has whole seconds). By the log, the
    # change comes after the snapshot row, so its window starts no earlier than the row's.
    t = table_def()
    key = {"id": 1}
    snapshot = event(t, "r", key, (1, 1), BASE_TS + 10 * S + 800_000, {"plan": "basic"})
    change = event(t, "u", key, (2, 2), BASE_TS + 10 * S, {"plan": "pro"})
    later = event(t, "u", key, (3, 3), BASE_TS + 12 * S, {"plan": "team"})
    apply(warehouse, t, [later], [change], [snapshot])  # the snapshot row arrives last
    rows = history(warehouse, t)
    for r in rows:
        assert r["_valid_to"] is None or r["_valid_from"] <= r["_valid_to"]
    assert [r["plan"] for r in rows] == ["basic", "pro", "team"]
    snapshot_time = history(warehouse, t)[0]["_valid_from"]
    assert snapshot_time.endswith(".800000Z")  # the clock time of the snapshot read
    # the snapshot row's window is empty, the change starts when the snapshot row did
    assert rows[0]["_valid_from"] == rows[0]["_valid_to"] == rows[1]["_valid_from"]
    assert rows[1]["_valid_to"] == rows[2]["_valid_from"] > rows[1]["_valid_from"]
    assert_matches_fold(warehouse, t, [snapshot, change, later])
    # again, in one batch: nothing changes
    again = warehouse.apply(t, [snapshot, change, later], INGESTED)
    assert (again.inserted, again.updated) == (0, 0)


def test_a_late_older_update_never_resurrects_a_deleted_row(warehouse):
    t = table_def()
    key = {"id": 7}
    c = event(t, "c", key, (1, 1), BASE_TS, {"plan": "basic"})
    u = event(t, "u", key, (2, 2), BASE_TS + S, {"plan": "pro"})
    d = event(t, "d", key, (3, 3), BASE_TS + 2 * S)
    apply(warehouse, t, [c, d], [u])  # the update arrives after the delete

    rows = history(warehouse, t)
    assert short(rows, "_op", "plan", "_is_deleted", "_is_current") == [
        ("c", "basic", False, False),
        ("u", "pro", False, False),
        ("d", None, True, True),
    ]
    assert warehouse.current(t) == []
    assert [r["plan"] for r in warehouse.as_of(t, at=micros_to_datetime(BASE_TS + S))] == ["pro"]
    assert warehouse.as_of(t, at=micros_to_datetime(BASE_TS + 3 * S)) == []
    assert_matches_fold(warehouse, t, [c, u, d])


def test_composite_keys_that_collide_when_concatenated_stay_apart(warehouse):
    t = table_def(composite=True)
    ab_c, a_bc = {"plan": "ab", "currency": "c"}, {"plan": "a", "currency": "bc"}
    events = [
        event(t, "c", ab_c, (1, 1), BASE_TS, {"price": Decimal("1.00")}),
        event(t, "c", a_bc, (1, 2), BASE_TS, {"price": Decimal("2.00")}),
        event(t, "u", ab_c, (2, 3), BASE_TS + S, {"price": Decimal("1.50")}),
    ]
    apply(warehouse, t, [events[2]], [events[1], events[0]])

    assert short(history(warehouse, t, plan="a"), "currency", "price", "_is_current") == [
        ("bc", "2.00", True)  # untouched by the update of ("ab", "c")
    ]
    assert short(history(warehouse, t, plan="ab"), "price", "_is_current") == [
        ("1.00", False),
        ("1.50", True),
    ]
    current = sorted((r["plan"], r["currency"]) for r in warehouse.current(t))
    assert current == [("a", "bc"), ("ab", "c")]
    assert_matches_fold(warehouse, t, events)


def test_a_column_dropped_and_re_added(warehouse):
    """An undeclared column appears, disappears (dropped at the source) and comes back."""
    t = dataclasses.replace(table_def(), declared={"id": "bigint", "plan": "text"})
    key = {"id": 1}
    with_legacy = event(t, "c", key, (1, 1), BASE_TS, {"plan": "a", "legacy": 1})
    dropped = event(t, "u", key, (2, 2), BASE_TS + S, {"plan": "b"})
    re_added = event(t, "u", key, (3, 3), BASE_TS + 2 * S, {"plan": "c", "legacy": 7})
    retyped = dataclasses.replace(
        event(t, "u", key, (4, 4), BASE_TS + 3 * S, {"plan": "d", "legacy": "x"}),
        source_types={"id": "int64", "plan": "string", "legacy": "string"},
    )
    first, *rest = apply(warehouse, t, [dropped], [re_added, with_legacy], [retyped])
    assert first.schema_changes == []  # nothing typed yet: an absent column is a null
    assert any("add column legacy int64" in c for r in rest for c in r.schema_changes)

    rows = history(warehouse, t)
    assert short(rows, "plan", "legacy") == [("a", 1), ("b", None), ("c", 7)]
    assert_matches_fold(warehouse, t, [with_legacy, dropped, re_added])
    # the column came back as a string: not a safe widening of int64, so that event is refused
    refused = rest[-1].rejected
    assert [r.event.seq for r in refused] == [retyped.seq]
    assert isinstance(refused[0].error, SchemaChangeError)
    assert "'legacy'" in str(refused[0].error) and "int64" in str(refused[0].error)


def test_duplicate_delivery_after_a_crash(warehouse):
    """A worker applied a batch, crashed before acknowledging it, and everything is redelivered."""
    t = table_def()
    events = [
        event(t, "c", {"id": 1}, (1, 1), BASE_TS, {"plan": "basic"}),
        event(t, "c", {"id": 2}, (1, 2), BASE_TS, {"plan": "basic"}),
        event(t, "u", {"id": 1}, (2, 3), BASE_TS + S, {"plan": "pro"}),
        event(t, "d", {"id": 2}, (3, 4), BASE_TS + 2 * S),
        event(t, "u", {"id": 1}, (4, 5), BASE_TS + 3 * S, {"plan": "team"}),
    ]
    apply(warehouse, t, events[:2], events[2:4])
    before = history(warehouse, t)
    redelivered, everything = apply(warehouse, t, events[2:4] + events[4:], events)
    assert (redelivered.inserted, redelivered.updated) == (1, 1)  # only the new update is news
    assert (everything.inserted, everything.updated, everything.deleted) == (0, 0, 0)
    after = history(warehouse, t)
    assert len(after) == len(before) + 1
    assert after[-1]["_ingested_at"] == before[-1]["_ingested_at"]  # rows were not rewritten
    assert_matches_fold(warehouse, t, events)


def test_a_failed_batch_leaves_nothing_half_applied(warehouse, monkeypatch):
    """The MERGE and the truncate log are one transaction: a failure keeps neither."""
    import connectors.warehouse.sql as sql
    from state_models.plans import plan_record_truncates, qualified

    t = table_def()
    c = event(t, "c", {"id": 1}, (1, 1), BASE_TS, {"plan": "basic"})
    trunc = event(t, "t", {}, (2, 2), BASE_TS + S)
    apply(warehouse, t, [c])

    def broken(names, caps):
        statement = plan_record_truncates(names, caps)
        statement.set("this", qualified("no_such_table_" + t.state_table))
        return statement

    monkeypatch.setattr(sql, "plan_record_truncates", broken)
    with pytest.raises(Exception):  # noqa: B017 - whatever the warehouse raises
        apply(warehouse, t, [trunc])
    assert short(history(warehouse, t), "_op", "_is_current") == [("c", True)]
    monkeypatch.undo()
    apply(warehouse, t, [trunc])  # the redelivery
    assert short(history(warehouse, t), "_op", "_is_current") == [("c", False), ("t", True)]


def test_toast_values_carry_forward_also_when_the_predecessor_arrives_late(warehouse):
    t = table_def()
    key = {"id": 1}
    c = event(t, "c", key, (1, 1), BASE_TS, {"plan": "a", "note": "N" * 3000})
    u2 = event(t, "u", key, (2, 2), BASE_TS + S, {"plan": "b"}, unavailable=("note",))
    u3 = event(t, "u", key, (3, 3), BASE_TS + 2 * S, {"plan": "c"}, unavailable=("note",))
    apply(warehouse, t, [u3, u2])  # predecessors unknown: nothing to carry yet
    assert short(history(warehouse, t), "plan", "note", "_unavailable") == [
        ("b", None, ["note"]),
        ("c", None, ["note"]),
    ]
    apply(warehouse, t, [c])  # the insert arrives: both later versions are repaired
    assert short(history(warehouse, t), "plan", "note") == [
        ("a", "N" * 3000),
        ("b", "N" * 3000),
        ("c", "N" * 3000),
    ]
    # a late update that did send the note changes what the versions after it carry
    u2b = event(t, "u", key, (2, 9), BASE_TS + S, {"plan": "b2", "note": "M"})
    apply(warehouse, t, [u2b])
    assert short(history(warehouse, t), "plan", "note") == [
        ("a", "N" * 3000),
        ("b", "N" * 3000),
        ("b2", "M"),
        ("c", "M"),
    ]
    assert_matches_fold(warehouse, t, [c, u2, u3, u2b])


def test_a_truncate_closes_every_live_key_even_those_that_arrive_late(warehouse):
    t = table_def()
    k1, k2, k3, k4 = ({"id": i} for i in (1, 2, 3, 4))
    events = {
        "c1": event(t, "c", k1, (1, 1), BASE_TS, {"plan": "a"}),
        "c2": event(t, "c", k2, (1, 2), BASE_TS, {"plan": "a"}),
        "c3": event(t, "c", k3, (1, 3), BASE_TS, {"plan": "a"}),
        "d3": event(t, "d", k3, (2, 4), BASE_TS + S),
        "trunc": event(t, "t", {}, (3, 5), BASE_TS + 2 * S),
        "c1b": event(t, "c", k1, (4, 6), BASE_TS + 3 * S, {"plan": "again"}),
    }
    apply(warehouse, t, [events[n] for n in ("c1", "c2", "c3", "d3", "trunc", "c1b")])
    rows = history(warehouse, t)
    assert short(rows, "id", "_op", "_is_current") == [
        (1, "c", False),
        (1, "t", False),
        (1, "c", True),
        (2, "c", False),
        (2, "t", True),
        (3, "c", False),
        (3, "d", True),  # deleted before the truncate: no second tombstone
    ]
    assert [r["id"] for r in warehouse.current(t)] == [1]

    # late: key 4 was inserted before the truncate; key 2 was deleted before it
    c4 = event(t, "c", k4, (1, 7), BASE_TS, {"plan": "late"})
    d2 = event(t, "d", k2, (2, 8), BASE_TS + S)
    [result] = apply(warehouse, t, [c4, d2])
    assert result.deleted == 1  # key 2's truncate tombstone is withdrawn: it was already gone
    assert short(history(warehouse, t, id=4), "_op", "_is_current") == [("c", False), ("t", True)]
    assert short(history(warehouse, t, id=2), "_op", "_is_current") == [("c", False), ("d", True)]
    assert_matches_fold(warehouse, t, [*events.values(), c4, d2])


def test_new_columns_are_added_and_widenings_applied_before_the_merge(warehouse):
    t = TableDef("billing.public.payments", table_def().state_table, "postgres", ("id",), None)
    schema = {
        "id": "int64",
        "amount": "org.apache.kafka.connect.data.Decimal(scale=2,precision=10)",
    }
    first = dataclasses.replace(
        event(t, "c", {"id": 1}, (1, 1), BASE_TS, {"amount": Decimal("12.34")}), source_types=schema
    )
    wider = {**schema, "amount": "org.apache.kafka.connect.data.Decimal(scale=3,precision=14)"}
    second = dataclasses.replace(
        event(
            t, "u", {"id": 1}, (2, 2), BASE_TS + S, {"amount": Decimal("123456.789"), "memo": "x"}
        ),
        source_types={**wider, "memo": "string"},
    )
    [r1] = apply(warehouse, t, [first])
    [r2] = apply(warehouse, t, [second])
    assert r1.rejected == r2.rejected == []
    assert "widen column amount to decimal(14,3)" in r2.schema_changes
    assert "add column memo string" in r2.schema_changes
    assert short(history(warehouse, t), "amount", "memo") == [
        ("12.340", None),
        ("123456.789", "x"),
    ]


def test_a_registry_type_the_table_cannot_widen_to_stops_the_batch(warehouse):
    t = table_def()
    apply(warehouse, t, [event(t, "c", {"id": 1}, (1, 1), BASE_TS, {"plan": "a"})])
    narrowed = dataclasses.replace(t, declared={**t.declared, "plan": "bigint"})
    with pytest.raises(SchemaChangeError, match=r"'plan'.*not a safe widening"):
        apply(warehouse, narrowed, [event(t, "u", {"id": 1}, (2, 2), BASE_TS, {"plan": "b"})])


def test_values_that_do_not_fit_their_column_are_refused_one_by_one(warehouse):
    t = table_def()
    good = event(t, "c", {"id": 1}, (1, 1), BASE_TS, {"amount": Decimal("1.00")})
    bad = event(t, "c", {"id": 2}, (1, 2), BASE_TS, {"amount": Decimal("1.001")})
    [result] = apply(warehouse, t, [good, bad])
    assert [r.event.seq for r in result.rejected] == [bad.seq]
    assert "more than 2 decimal places" in str(result.rejected[0].error)
    assert [r["id"] for r in warehouse.current(t)] == [1]


# --------------------------------------------------------------------------- real Debezium output

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "debezium"


def _golden_tables(suffix: str) -> dict[str, TableDef]:
    return {
        "billing.public.subscriptions": TableDef(
            "billing.public.subscriptions", f"subs_{suffix}", "postgres", ("id",), SUBSCRIPTIONS
        ),
        "billing.public.plan_prices": TableDef(
            "billing.public.plan_prices",
            f"prices_{suffix}",
            "postgres",
            ("plan", "currency"),
            {"plan": "text", "currency": "text", "price": "numeric(10,2)"},
        ),
    }


def _golden_events(variant: str) -> list[ChangeEvent]:
    tables = [
        TableInfo(d.table_id, d.primary_key, d.declared) for d in _golden_tables("x").values()
    ]
    resolve = resolver_for(tables, "billing")
    out = []
    for line in (GOLDEN / f"pg_{variant}.jsonl").read_text().splitlines():
        decoded = decode_debezium(json.loads(line)["value"], resolve)
        if decoded is not TOMBSTONE:
            assert isinstance(decoded, ChangeEvent)
            out.append(decoded)
    return out


@pytest.mark.parametrize("variant", ["schemas_precise", "noschemas_string"])
def test_real_debezium_capture_in_any_order_gives_one_history(warehouse, variant):
    events = _golden_events(variant)
    runs = []
    for suffix, order, size in (("a", events, 100), ("b", events[::-1], 3)):
        tables = _golden_tables(f"{variant}_{suffix}_{table_def().state_table}")
        for table_id, table in tables.items():
            mine = [e for e in order if e.table == table_id]
            for i in range(0, len(mine), size):
                result = warehouse.apply(table, mine[i : i + size], INGESTED)
                assert result.rejected == []
        runs.append({tid: without_ingested_at(history(warehouse, d)) for tid, d in tables.items()})
    assert runs[0] == runs[1]

    subs = runs[0]["billing.public.subscriptions"]
    toasted = [r for r in subs if r["_unavailable"] == ["notes"]]
    assert toasted and all(r["notes"].startswith("long note long note") for r in toasted)
    assert [r["_op"] for r in subs if r["id"] == 2][-1] == "d"
    prices = runs[0]["billing.public.plan_prices"]
    assert {(r["plan"], r["currency"]) for r in prices if r["_is_current"]} == {
        (r["plan"], r["currency"]) for r in prices
    }
    assert all(r["_op"] == "t" for r in prices if r["_is_current"])  # the truncate closed them
    first = subs[0]
    assert first["renews_at"] == "2026-12-01T00:00:00.000000Z"
    assert first["meta"] == {"src": "web"} and first["amount"] == "9.99"

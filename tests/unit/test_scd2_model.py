"""The state table model: its shape, how a batch evolves it, and the rows a batch stages."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from state_models.errors import SchemaChangeError
from state_models.oracle import fold
from state_models.scd2 import (
    Column,
    StateTable,
    TableDef,
    plan_evolution,
    render_version,
    stage_columns,
)
from state_models.types import INT64, JSON, STRING, decimal
from tests.scd2_histories import BASE_TS, INGESTED, event

TABLE = TableDef("billing.public.subs", "billing_subs", "postgres", ("id",), {"id": "bigint"})


def test_a_new_table_takes_declared_types_then_event_types():
    e = dataclasses.replace(
        event(TABLE, "c", {"id": 1}, (1, 1), BASE_TS, {"amount": Decimal("1.5"), "meta": {"a": 1}}),
        source_types={"id": "int64", "amount": "org.apache.kafka.connect.data.Decimal(scale=2)"},
    )
    evo = plan_evolution(TABLE, None, [e])
    assert evo.create and evo.rejected == []
    assert evo.table.columns == (
        Column("id", INT64),
        Column("amount", decimal(38, 2)),
        Column("meta", JSON),  # no schema for it: from the value
    )
    assert evo.table.carry == ()  # nothing was ever sent as unavailable


def test_the_carry_set_grows_with_unavailable_columns_and_never_shrinks():
    declared = dataclasses.replace(TABLE, declared={"id": "bigint", "a": "text", "b": "text"})
    toast = event(declared, "u", {"id": 1}, (1, 1), BASE_TS, {"a": "x"}, unavailable=("b",))
    first = plan_evolution(declared, None, [toast])
    assert first.table.carry == ("b",) and first.carry_grew
    plain = event(declared, "u", {"id": 1}, (1, 2), BASE_TS, {"a": "x", "b": "y"})
    again = plan_evolution(declared, first.table, [plain])
    assert again.table.carry == ("b",) and not again.carry_grew


def test_only_null_values_add_no_column_yet():
    e = event(TABLE, "c", {"id": 1}, (1, 1), BASE_TS, {"gone": None})
    assert [c.name for c in plan_evolution(TABLE, None, [e]).table.columns] == ["id"]


def test_existing_tables_gain_columns_and_widen_but_never_narrow():
    existing = StateTable(
        TABLE.table_id,
        "billing_subs",
        ("id",),
        (Column("id", INT64), Column("amt", decimal(10, 2))),
    )
    wider = dataclasses.replace(
        event(TABLE, "u", {"id": 1}, (1, 1), BASE_TS, {"amt": 1, "new": "x"}),
        source_types={"amt": "org.apache.kafka.connect.data.Decimal(scale=3,precision=12)"},
    )
    narrower = dataclasses.replace(
        wider, source_types={"amt": "org.apache.kafka.connect.data.Decimal(scale=1,precision=4)"}
    )
    evo = plan_evolution(TABLE, existing, [wider, narrower])
    assert evo.add == [Column("new", STRING)]
    assert evo.widen == [Column("amt", decimal(12, 3))]
    assert evo.rejected == []  # decimal(4,1) fits the column as it is


def test_incompatible_event_types_reject_that_event_only():
    existing = StateTable(
        TABLE.table_id, "billing_subs", ("id",), (Column("id", INT64), Column("n", INT64))
    )
    ok = event(TABLE, "u", {"id": 1}, (1, 1), BASE_TS, {"n": 1})
    bad = dataclasses.replace(
        event(TABLE, "u", {"id": 1}, (1, 2), BASE_TS, {"n": "x"}), source_types={"n": "string"}
    )
    evo = plan_evolution(TABLE, existing, [ok, bad])
    assert [r.event for r in evo.rejected] == [bad]
    assert "not a safe widening" in str(evo.rejected[0].error)


def test_key_problems_are_rejected():
    wrong_key = event(TABLE, "c", {"other": 1}, (1, 1), BASE_TS, {})
    null_key = event(TABLE, "c", {"id": None}, (1, 2), BASE_TS, {})
    evo = plan_evolution(TABLE, None, [wrong_key, null_key])
    reasons = [str(r.error) for r in evo.rejected]
    assert "differ from the state table's key" in reasons[0]
    assert "are null" in reasons[1]


def test_business_columns_may_not_shadow_metadata():
    with pytest.raises(SchemaChangeError, match="clash"):
        StateTable("a.b.c", "c", ("id",), (Column("id", INT64), Column("_seq", STRING)))


def test_staged_columns_per_op():
    table = plan_evolution(
        dataclasses.replace(TABLE, declared={"id": "bigint", "note": "text"}), None, []
    ).table
    events = [
        event(TABLE, "u", {"id": 1}, (1, 1), BASE_TS, {"note": None}),
        event(TABLE, "u", {"id": 1}, (1, 2), BASE_TS + 1, {}, unavailable=("note", "other")),
        event(TABLE, "d", {"id": 1}, (1, 3), BASE_TS + 2),
        event(TABLE, "t", {}, (1, 4), BASE_TS + 3),
    ]
    staged = stage_columns(table, events, INGESTED)
    c = staged.columns
    assert list(
        zip(c["id"], c["_op"], c["_is_deleted"], c["_unavailable"], c["_ord"], strict=True)
    ) == [
        (1, "u", False, None, 0),
        (1, "u", False, ",note,", 1),
        (1, "d", True, None, 2),
        (None, "t", True, None, 3),
    ]
    assert c["_valid_from"] == [BASE_TS, BASE_TS + 1, BASE_TS + 2, BASE_TS + 3]
    assert set(c["_ingested_at"]) == {int(INGESTED.timestamp()) * 1_000_000}
    assert staged.truncates == 1 and staged.since_seq == events[0].seq
    with pytest.raises(ValueError, match="timezone-aware"):
        stage_columns(table, events, INGESTED.replace(tzinfo=None))


def test_the_oracle_folds_a_small_history_by_hand():
    table = plan_evolution(
        dataclasses.replace(TABLE, declared={"id": "bigint", "note": "text"}), None, []
    ).table
    c = event(TABLE, "c", {"id": 1}, (1, 1), BASE_TS, {"note": "a"})
    u = event(TABLE, "u", {"id": 1}, (2, 2), BASE_TS + 5, {}, unavailable=("note",))
    t = event(TABLE, "t", {}, (3, 3), BASE_TS + 9)
    t_again = event(TABLE, "t", {}, (4, 4), BASE_TS + 10)
    rows = [render_version(table, r) for r in fold(table, [t_again, u, c, t, c], INGESTED)]
    assert [(r["_op"], r["note"], r["_is_current"], r["_next_seq"] is None) for r in rows] == [
        ("c", "a", False, False),
        ("u", "a", False, False),  # carried
        ("t", None, True, True),  # the second truncate finds nothing live
    ]
    assert rows[0]["_valid_to"] == rows[1]["_valid_from"]


def test_a_first_batch_whose_every_event_is_rejected_creates_no_table():
    """The key's type comes from the first event that is applied: a table made from a batch of
    rejected events only would have guessed it (as text) and refused the good events after."""
    untyped = TableDef("billing.public.people", "billing_people", "postgres", ("id",), None)
    bad = event(untyped, "r", {"id": 1}, (0, 1), BASE_TS, {"name": "a", "NAME": "A"})
    evo = plan_evolution(untyped, None, [bad])
    assert [r.event for r in evo.rejected] == [bad] and evo.table.key == ()
    good = event(untyped, "r", {"id": 1}, (0, 1), BASE_TS, {"name": "a"})
    assert plan_evolution(untyped, None, [good]).table.columns[0] == Column("id", INT64)


def test_renamed_columns_are_stored_under_their_new_names():
    from state_models.scd2 import rename_columns

    renamed = dataclasses.replace(
        TABLE, primary_key=("id",), renames={"NAME": "name_2"}, declared=None
    )
    e = event(renamed, "u", {"id": 1}, (1, 1), BASE_TS, {"name": "a", "NAME": "A"})
    stored = renamed.as_stored([e])
    assert stored[0].after == {"id": 1, "name": "a", "name_2": "A"}
    assert stored[0].event_id == e.event_id and stored[0].seq == e.seq
    plain = event(renamed, "u", {"id": 2}, (1, 2), BASE_TS, {"name": "b"})
    assert rename_columns(plain, {"NAME": "name_2"}) is plain
    assert [c.name for c in plan_evolution(renamed, None, stored).table.columns] == [
        "id",
        "name",
        "name_2",
    ]

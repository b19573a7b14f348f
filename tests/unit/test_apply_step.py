"""The shared apply step: grouping, batching, counts, and dead letters with reason and raw."""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal

import pytest

from connectors.deadletter import DeadLetterStore
from connectors.warehouse.duckdb import DuckDBWarehouse
from merge_jobs.apply import apply_events
from state_models.debezium import decode_debezium
from state_models.errors import TransientError
from state_models.tables import TableInfo, resolver_for
from tests.scd2_histories import BASE_TS, INGESTED, event, table_def


@pytest.fixture
def warehouse():
    wh = DuckDBWarehouse()
    yield wh
    wh.close()


def test_batches_counts_and_dead_letters(warehouse, tmp_path):
    subs, prices = table_def(), table_def(composite=True)
    tables = {subs.table_id: subs, prices.table_id: prices}
    events = [
        event(subs, "c", {"id": i}, (1, i), BASE_TS, {"amount": Decimal("1.00")}) for i in range(5)
    ]
    events.append(event(subs, "u", {"id": 1}, (2, 9), BASE_TS, {"amount": Decimal("0.001")}))
    events.append(event(prices, "c", {"plan": "a", "currency": "b"}, (1, 7), BASE_TS, {}))
    stray = dataclasses.replace(events[0], table="billing.public.nope")
    store = DeadLetterStore(tmp_path)

    report = apply_events(
        warehouse,
        tables,
        [*events, events[0], stray],
        ingested_at=INGESTED,
        dead_letters=store,
        batch_size=2,
        context_of=lambda e: {"line": 42},
    )
    s = report.tables[subs.table_id]
    assert (s.events, s.batches, s.inserted, s.dead_lettered, s.unchanged) == (7, 4, 5, 1, 1)
    assert report.tables[prices.table_id].inserted == 1
    letters = {d.error_type: d for d in store.list()}
    assert set(letters) == {"SchemaChangeError", "UnknownTableError"}
    bad = letters["SchemaChangeError"]
    assert "more than 2 decimal places" in bad.reason and bad.context["line"] == 42
    assert bad.table == subs.table_id and bad.source == "billing"
    # no original message was kept with this event, so the dead letter holds its Debezium form,
    # which decodes back to the same change
    resolve = resolver_for([TableInfo(subs.table_id, ("id",), subs.declared)], "billing")
    assert decode_debezium(bad.raw, resolve).event_id == events[5].event_id
    assert letters["UnknownTableError"].reason.startswith("table billing.public.nope")
    assert len(report.dead_letters) == 2


def test_a_batch_the_table_cannot_take_is_dead_lettered_whole(warehouse, tmp_path):
    t = table_def()
    apply_events(
        warehouse,
        {t.table_id: t},
        [event(t, "c", {"id": 1}, (1, 1), BASE_TS, {"plan": "a"})],
        ingested_at=INGESTED,
        dead_letters=DeadLetterStore(tmp_path),
    )
    narrowed = dataclasses.replace(t, declared={**t.declared, "plan": "bigint"})
    batch = [
        dataclasses.replace(
            event(t, "u", {"id": 1}, (2, i), BASE_TS, {"plan": "b"}), raw=json.dumps({"n": i})
        )
        for i in range(3)
    ]
    store = DeadLetterStore(tmp_path / "dl")
    report = apply_events(
        warehouse, {t.table_id: narrowed}, batch, ingested_at=INGESTED, dead_letters=store
    )
    assert report.tables[t.table_id].dead_lettered == 3
    assert sorted(d.raw for d in store.list()) == [json.dumps({"n": i}) for i in range(3)]


def test_transient_errors_propagate_so_nothing_is_acknowledged(warehouse, tmp_path, monkeypatch):
    t = table_def()

    def busy(*args, **kwargs):
        raise TransientError("warehouse busy")

    monkeypatch.setattr(warehouse, "apply", busy)
    with pytest.raises(TransientError):
        apply_events(
            warehouse,
            {t.table_id: t},
            [event(t, "c", {"id": 1}, (1, 1), BASE_TS, {})],
            ingested_at=INGESTED,
            dead_letters=DeadLetterStore(tmp_path),
        )
    assert DeadLetterStore(tmp_path).list() == []


def test_a_value_the_warehouse_refuses_is_found_by_halves_and_only_its_event_dead_lettered(
    warehouse, tmp_path, monkeypatch
):
    from state_models.errors import ValueRejectedError

    t = table_def()
    events = [event(t, "c", {"id": i}, (1, i), BASE_TS, {"note": f"n{i}"}) for i in range(13)]
    poisoned = {events[4].event_id, events[11].event_id}
    real_apply = warehouse.apply
    calls: list[int] = []

    def refusing(table, batch, ingested_at):
        calls.append(len(batch))
        if any(e.event_id in poisoned for e in batch):
            raise ValueRejectedError("DuckDB refused a value: Conversion Error: out of range")
        return real_apply(table, batch, ingested_at)

    monkeypatch.setattr(warehouse, "apply", refusing)
    report = apply_events(
        warehouse,
        {t.table_id: t},
        events,
        ingested_at=INGESTED,
        dead_letters=DeadLetterStore(tmp_path),
    )
    letters = DeadLetterStore(tmp_path).list()
    assert {d.context["event_id"] for d in letters} == poisoned
    assert all("out of range" in d.reason for d in letters)
    counts = report.tables[t.table_id]
    assert (counts.events, counts.inserted, counts.dead_lettered) == (13, 11, 2)
    assert len(warehouse.history(t)) == 11
    assert len(calls) < 2 * len(events)  # halving, not one call per event


def test_a_warehouse_that_cannot_be_written_stops_the_apply_and_blames_no_event(
    warehouse, tmp_path, monkeypatch
):
    from state_models.errors import WarehouseError

    t = table_def()

    def full(*args, **kwargs):
        raise WarehouseError("cannot write DuckDB warehouse w.duckdb: No space left on device")

    monkeypatch.setattr(warehouse, "apply", full)
    with pytest.raises(WarehouseError, match="No space left"):
        apply_events(
            warehouse,
            {t.table_id: t},
            [event(t, "c", {"id": 1}, (1, 1), BASE_TS, {})],
            ingested_at=INGESTED,
            dead_letters=DeadLetterStore(tmp_path),
        )
    assert DeadLetterStore(tmp_path).list() == []

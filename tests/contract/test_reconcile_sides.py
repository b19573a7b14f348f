"""`cdc reconcile`'s plans on every warehouse: the state side's segment digests, cuts, leaf rows
and column hashes run on DuckDB and BigQuery alike, so a state table compared with an identical
one (kept in DuckDB) is equal, and a changed value, a phantom key and a missing key are found.
Composite text keys exercise the lexicographic segment bounds."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from connectors.reconcile import Compared, QuerySide, state_shape
from connectors.warehouse.duckdb import DuckDBWarehouse
from state_models.reconcile import compare
from state_models.seq import make_seq
from tests.scd2_histories import BASE_TS, INGESTED, event, table_def

S = 1_000_000
LAST = make_seq((1 << 64) - 1, (1 << 64) - 1)


def side(warehouse: Any, table: Any) -> QuerySide:
    state = warehouse.state_table(table)
    compared = Compared([c.name for c in state.columns], {})
    shape = state_shape(state, warehouse.names(state.name), warehouse.caps, LAST, compared)
    return QuerySide(shape, warehouse.query)


@pytest.mark.parametrize("composite", [False, True], ids=["bigint key", "text key pair"])
def test_state_sides_compare_on_every_warehouse(warehouse, composite: bool) -> None:
    table = table_def(composite=composite)

    def key(i: int) -> dict[str, Any]:
        return {"plan": f"p{i % 13}", "currency": f"c{i}é"} if composite else {"id": i}

    def row(i: int, note: str) -> dict[str, Any]:
        if composite:
            return {"price": Decimal(i) / 4, "note": note}
        return {"plan": f"plan {i % 5}", "amount": Decimal(i) / 4, "note": note, "n": i}

    events = [event(table, "c", key(i), (i, 1), BASE_TS + i * S, row(i, "")) for i in range(300)]
    events += [
        event(table, "u", key(i), (1000 + i, 1), BASE_TS + (1000 + i) * S, row(i, "x"))
        for i in range(0, 300, 7)
    ]
    reference = DuckDBWarehouse()
    try:
        assert not reference.apply(table, events, INGESTED).rejected
        assert not warehouse.apply(table, events, INGESTED).rejected
        diff = compare(side(reference, table), side(warehouse, table), fanout=8, leaf_rows=16)
        assert diff.equal and diff.segments == 8, diff
        changes = [
            event(table, "u", key(5), (5000, 1), BASE_TS + 5000 * S, row(5, "changed")),
            event(table, "c", key(1000), (5001, 1), BASE_TS + 5001 * S, row(1000, "")),
            event(table, "d", key(77), (5002, 1), BASE_TS + 5002 * S),
        ]
        assert not warehouse.apply(table, changes, INGESTED).rejected
        diff = compare(side(reference, table), side(warehouse, table), fanout=8, leaf_rows=16)
        as_key = lambda i: tuple(key(i).values())  # noqa: E731
        assert diff.extra == [as_key(1000)]
        assert diff.missing == [as_key(77)]
        assert diff.different == {as_key(5): ["note"]}
        assert diff.rows_transferred < 300
    finally:
        reference.close()

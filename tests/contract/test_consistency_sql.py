"""The consistent as-of functions (DuckDB table macros, BigQuery table functions) answer at one
transaction boundary of the source, capped at its watermark: two tables written by the same
transactions, read through them."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Any

import sqlglot

from state_models.progress import Progress
from state_models.seq import make_seq
from tests.scd2_histories import BASE_TS, INGESTED, event, table_def


def ids(warehouse: Any, state_table: str, suffix: str, argument: str) -> list[int]:
    fn = warehouse.names(f"{state_table}{suffix}").state.sql(dialect=warehouse.caps.dialect)
    sql = f"SELECT id FROM {fn}({argument}) ORDER BY id"
    return [r["id"] for r in warehouse.query(sqlglot.parse_one(sql, read=warehouse.caps.dialect))]


def test_the_functions_answer_through_a_transaction_capped_at_the_watermark(warehouse):
    source = f"src{uuid.uuid4().hex[:8]}"  # one source per run: the warehouse is shared
    subs = dataclasses.replace(table_def(name=f"{source}_subs"), source=source)
    invoices = dataclasses.replace(table_def(name=f"{source}_invoices"), source=source)
    invoices = dataclasses.replace(invoices, table_id=f"{source}.public.invoices")
    subs = dataclasses.replace(subs, table_id=f"{source}.public.subs")
    # transaction n (ordered by LSN n*10) inserts subscription n and its invoice n
    for table in (subs, invoices):
        warehouse.apply(
            table,
            [
                event(table, "c", {"id": n}, (n * 10, n * 10 + i), BASE_TS + n, tx=f"tx{n}")
                for i, n in enumerate((1, 2, 3))
            ],
            INGESTED,
        )
    at = dt.datetime.fromtimestamp((BASE_TS + 2) / 1e6, dt.UTC)
    # no watermark yet: nothing, never half a transaction
    assert warehouse.ensure_consistency(source, [subs, invoices])
    assert ids(warehouse, subs.state_table, "_consistent_tx", "'tx1'") == []
    # every transaction through tx2 applied in both tables
    warehouse.record_progress(
        [
            Progress(source, t.table_id, t.state_table, watermark_seq=make_seq(25, 0))
            for t in (subs, invoices)
        ],
        INGESTED,
    )
    for table in (subs, invoices):
        assert ids(warehouse, table.state_table, "_consistent_tx", "'tx1'") == [1]
        assert ids(warehouse, table.state_table, "_consistent_tx", "'tx2'") == [1, 2]
        assert ids(warehouse, table.state_table, "_consistent_tx", "'tx3'") == [1, 2]  # capped
        assert ids(warehouse, table.state_table, "_consistent_tx", "'none'") == []
        stamp = f"TIMESTAMP '{at.strftime('%Y-%m-%d %H:%M:%S.%f')}+00'"
        assert ids(warehouse, table.state_table, "_consistent_at", stamp) == [1, 2]

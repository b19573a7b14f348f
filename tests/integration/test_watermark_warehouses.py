"""What the streaming job's watermark asks the state tables, on DuckDB and the BigQuery emulator.

``applied_of`` (``plan_tx_changes``) counts each transaction's distinct changes per table,
truncates that closed no row included, and tells a fresh engine's first transaction (its changes
ordered by their own LSN) from one that follows a commit; ``record_watermark`` keeps the cut in
``cdc_progress`` forward only.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from typing import Any

import pytest

from connectors.warehouse import open_warehouse
from merge_jobs.watermark import applied_of, record_watermark
from state_models.events import ChangeEvent, Op
from state_models.progress import recorded_watermarks
from state_models.scd2 import TableDef
from state_models.seq import make_seq
from state_models.watermark import Applied, TransactionEnd, chain_cut

pytestmark = pytest.mark.integration


def change(table: str, key: int, seq: str, tx: str, op: Op = Op.INSERT) -> ChangeEvent:
    after = None if op in (Op.DELETE, Op.TRUNCATE) else {"id": key, "v": f"v{key}"}
    return ChangeEvent(
        table=table,
        op=op,
        key={} if op is Op.TRUNCATE else {"id": key},
        before={"id": key} if op is Op.DELETE else None,
        after=after,
        seq=seq,
        commit_ts=1_790_000_000_000_000,
        tx_id=tx,
    )


@pytest.fixture(params=["duckdb", "bigquery"])
def url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "duckdb":
        return f"duckdb:///{tmp_path / 'w.duckdb'}"
    dataset = request.getfixturevalue("bigquery_dataset")
    if not os.environ.get("CDC_TEST_BIGQUERY_PROJECT"):
        emulator = request.getfixturevalue("bigquery_emulator")
        request.getfixturevalue("monkeypatch").setenv(
            "BIGQUERY_EMULATOR_HOST", emulator.api_endpoint
        )
    project, name = dataset.split(".", 1)
    return f"bigquery://{project}/{name}"


def test_the_state_tables_say_what_they_hold_of_each_transaction(url: str) -> None:
    source = f"wm{uuid.uuid4().hex[:8]}"
    a, b = (
        TableDef(
            f"{source}.public.{n}",
            f"{source}_{n}",
            "postgres",
            ("id",),
            {"id": "bigint", "v": "text"},
        )
        for n in ("a", "b")
    )
    fresh = [  # a fresh engine's first transaction: each change ordered by its own LSN
        change(a.table_id, 1, make_seq(100, 100), "7"),
        change(a.table_id, 2, make_seq(130, 130), "7"),
        change(b.table_id, 1, make_seq(160, 160), "7"),
    ]
    second = [
        change(a.table_id, 3, make_seq(200, 210), "8"),
        change(b.table_id, 1, make_seq(200, 220), "8", Op.DELETE),
    ]
    # a truncate of a table that is empty by then closes no row: it still counts as applied
    third = [
        change(b.table_id, 0, make_seq(300, 310), "9", Op.TRUNCATE),
        change(a.table_id, 4, make_seq(300, 320), "9"),
    ]
    wh = open_warehouse(url)
    try:
        ingested = dt.datetime.now(dt.UTC)
        for table in (a, b):
            events = [e for e in fresh + second + third if e.table == table.table_id]
            wh.apply(table, events + events[:1], ingested)  # one delivered twice
        ends = [
            TransactionEnd(source, "7", 190, ((a.table_id, 2), (b.table_id, 1))),
            TransactionEnd(source, "8", 290, ((a.table_id, 1), (b.table_id, 1))),
            TransactionEnd(source, "9", 390, ((a.table_id, 1), (b.table_id, 1))),
        ]
        assert applied_of(wh, [a, b], ends) == {
            ("7", a.table_id): Applied(2, 0),  # two own LSNs: follows no commit
            ("7", b.table_id): Applied(1, 160),  # one change alone cannot tell
            ("8", a.table_id): Applied(1, 200),
            ("8", b.table_id): Applied(1, 200),
            ("9", a.table_id): Applied(1, 300),
            ("9", b.table_id): Applied(1, 300),
        }
        record_watermark(wh, source, [a, b], chain_cut(290))
        record_watermark(wh, source, [a, b], chain_cut(190))  # never back
        assert recorded_watermarks(wh.progress())[source][0] == chain_cut(290)
    finally:
        wh.close()

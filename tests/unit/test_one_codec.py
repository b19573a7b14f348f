"""The same Debezium messages give the same state table whatever path they take (issue 17).

`cdc apply` decodes the messages and merges them; `cdc run` lands the decoded events in its
journal and merges what it reads back; a replay merges what the changelog gives back. A column the
registry does not declare, added mid-stream, must get the same type and the same values on every
path: the journal and the changelog keep the types the message stated.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from connectors.changelog.reader import ChangelogReader
from connectors.changelog.writer import write_events
from connectors.deadletter import DeadLetterStore
from connectors.journal import Journal
from connectors.warehouse.duckdb import DuckDBWarehouse
from merge_jobs.apply import apply_events
from merge_jobs.replay import replay
from state_models.debezium import decode_debezium
from state_models.events import ChangeEvent, event_from_record, event_to_record
from state_models.scd2 import TableDef
from state_models.tables import TableInfo, resolver_for

TABLE = "billing.public.subs"
DECLARED = {"id": "bigint", "plan": "text"}
INGESTED = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)

_FIELDS: dict[str, dict[str, Any]] = {
    "id": {"type": "int64", "optional": False},
    "plan": {"type": "string", "optional": True},
    "amount": {
        "type": "bytes",
        "optional": True,
        "name": "org.apache.kafka.connect.data.Decimal",
        "parameters": {"scale": "2", "connect.decimal.precision": "12"},
    },
    "renews_at": {"type": "string", "optional": True, "name": "io.debezium.time.ZonedTimestamp"},
    "seen_at": {"type": "int64", "optional": True, "name": "io.debezium.time.MicroTimestamp"},
    "started_on": {"type": "int32", "optional": True, "name": "io.debezium.time.Date"},
    "meta": {"type": "string", "optional": True, "name": "io.debezium.data.Json"},
    "ratio": {"type": "float64", "optional": True},
}


def _decimal(value: str) -> str:
    unscaled = int(Decimal(value).scaleb(2))
    return base64.b64encode(unscaled.to_bytes(8, "big", signed=True).lstrip(b"\x00")).decode()


def _message(op: str, lsn: int, before: dict | None, after: dict | None) -> str:
    columns = sorted({*(before or {}), *(after or {})}, key=list(_FIELDS).index)
    row = {"type": "struct", "optional": True, "fields": [
        {"field": c, **_FIELDS[c]} for c in columns
    ]}  # fmt: skip
    schema = {"type": "struct", "fields": [
        {"field": "before", **row}, {"field": "after", **row},
        {"field": "op", "type": "string"}, {"field": "ts_ms", "type": "int64"},
    ]}  # fmt: skip
    payload = {
        "before": before,
        "after": after,
        "op": op,
        "ts_ms": 1_790_000_000_000 + lsn,
        "source": {"connector": "postgresql", "db": "app", "schema": "public", "table": "subs",
                   "lsn": lsn, "txId": lsn, "ts_ms": 1_790_000_000_000 + lsn,
                   "sequence": json.dumps([None, str(lsn)])},
    }  # fmt: skip
    return json.dumps({"schema": schema, "payload": payload})


def _messages() -> list[str]:
    grown = {
        "id": 1,
        "plan": "pro",
        "amount": _decimal("12.50"),
        "renews_at": "2027-01-01T10:00:00.123456Z",
        "seen_at": 1_790_000_000_123_456,
        "started_on": 20_000,
        "meta": '{"b": [1, 2], "a": "x"}',
        "ratio": 0.1,
    }
    return [
        _message("c", 100, None, {"id": 1, "plan": "basic"}),
        _message("c", 200, None, {"id": 2, "plan": "basic"}),
        # the source gained columns: the registry does not declare them
        _message("u", 300, {"id": 1, "plan": "basic"}, grown),
        _message("c", 400, None, {**grown, "id": 3, "amount": _decimal("-0.01"), "ratio": None}),
        _message("d", 500, {"id": 2, "plan": "basic"}, None),
    ]


def _decoded() -> list[ChangeEvent]:
    resolve = resolver_for([TableInfo(TABLE, ("id",), DECLARED)], "billing")
    return [decode_debezium(m, resolve) for m in _messages()]


def _merge(wh: DuckDBWarehouse, events: list[ChangeEvent], dead: Path) -> None:
    table = TableDef(TABLE, "subs", "postgres", ("id",), DECLARED)
    store = DeadLetterStore(dead)
    report = apply_events(wh, {TABLE: table}, events, ingested_at=INGESTED, dead_letters=store)
    assert not report.dead_letters, [d.reason for d in report.dead_letters]


def _state(events: list[ChangeEvent], tmp_path: Path) -> tuple[list[Any], list[Any]]:
    """Merge ``events`` into a fresh DuckDB; its state table's columns and rows."""
    wh = DuckDBWarehouse()
    try:
        _merge(wh, events, tmp_path / "dead")
        return _snapshot(wh)
    finally:
        wh.close()


def _snapshot(wh: DuckDBWarehouse) -> tuple[list[Any], list[Any]]:
    columns = wh.con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = 'subs' ORDER BY ordinal_position"
    ).fetchall()
    names = [c for c, _ in columns if c != "_ingested_at"]
    rows = wh.con.execute(f"SELECT {', '.join(names)} FROM subs ORDER BY id, _seq").fetchall()
    return columns, rows


def test_apply_journal_and_replay_give_the_same_state_table(tmp_path: Path) -> None:
    applied = _state(_decoded(), tmp_path / "apply")
    types = dict(applied[0])
    assert types["amount"] == "DECIMAL(12,2)" and types["renews_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["started_on"] == "DATE" and types["ratio"] == "DOUBLE", types

    journal = Journal(tmp_path / "journal")  # what `cdc run` merges: the events read back
    journal.sink("billing").write(_decoded())
    from_journal = [e for s in journal.segments("billing") for e in Journal.read(s)]
    assert _state(from_journal, tmp_path / "journal-merge") == applied

    root = tmp_path / "changelog"
    write_events(str(root), _decoded())
    table = TableDef(TABLE, "subs", "postgres", ("id",), DECLARED)
    wh = DuckDBWarehouse()
    try:
        report = replay(
            ChangelogReader(str(root)), wh, table, dead_letters=DeadLetterStore(tmp_path / "d")
        )
        assert report.applied.dead_letters == []
        assert _snapshot(wh) == applied
    finally:
        wh.close()


def test_the_beam_merge_gives_the_same_state_table_as_apply(tmp_path: Path) -> None:
    beam = pytest.importorskip("apache_beam", reason="needs apache-beam (pip install -e '.[gcp]')")
    from apache_beam.io.gcp.pubsub import PubsubMessage
    from apache_beam.options.pipeline_options import PipelineOptions

    from merge_jobs.pool import POOL
    from merge_jobs.transforms import DecodeMessages, MergeIntoWarehouse, WarehouseConnector
    from state_models.pubsub import message_for

    applied = _state(_decoded(), tmp_path / "apply")
    messages = []
    for e in _decoded():
        m = message_for(e, "postgres")
        assert e.raw is not None and m.data == e.raw.encode()  # the message as it came
        messages.append(PubsubMessage(m.data, m.attributes, message_id=e.event_id))
    url = f"duckdb:///{tmp_path / 'beam.duckdb'}"
    table = TableDef(TABLE, "subs", "postgres", ("id",), DECLARED)
    pipeline = beam.Pipeline(options=PipelineOptions([], streaming=False))
    decoded = (
        pipeline
        | beam.Create(messages)
        | "Decode" >> DecodeMessages((TableInfo(TABLE, ("id",), DECLARED),))
    )
    _ = decoded.events | "Merge" >> MergeIntoWarehouse(
        WarehouseConnector(url), {TABLE: table}, batch_size=100, max_latency_s=None
    )
    pipeline.run().wait_until_finish()
    POOL.close_idle()
    wh = DuckDBWarehouse(url)
    try:
        assert _snapshot(wh) == applied
    finally:
        wh.close()


def test_a_string_column_made_before_types_were_kept_takes_typed_values_as_text(
    tmp_path: Path,
) -> None:
    """A journal written before it kept the stated types made undeclared columns strings; the
    same table keeps merging (values as their exact text) until `cdc rebuild` types it."""
    events = _decoded()
    untyped = [  # as the journal gave them back then: no types, exact numbers as text
        event_from_record({**json.loads(json.dumps(event_to_record(e))), "source_types": None})
        for e in events[:3]
    ]
    wh = DuckDBWarehouse()
    try:
        _merge(wh, untyped, tmp_path / "dead")
        _merge(wh, events[3:], tmp_path / "dead")
        columns, rows = _snapshot(wh)
    finally:
        wh.close()
    assert dict(columns)["seen_at"] == "VARCHAR"  # an untyped guess: text
    assert dict(columns)["ratio"] == "DOUBLE"
    assert [r[2] for r in rows if r[0] == 3] == ["-0.01"]  # exact text of the typed decimal

"""One logical history, captured by Debezium and by Datastream, decodes to the same versions.

The Datastream files arrive out of order (a late file) and one file arrives twice; an update comes
as an UPDATE-DELETE/UPDATE-INSERT pair. After deduplication by event id and ordering by seq, both
engines give every key the same versions: same ops, same row images, same commit times; merged
into DuckDB state tables, they give the same tables.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from decimal import Decimal

from connectors.datastream_files import read_datastream_bytes
from state_models.debezium import decode_debezium
from state_models.events import ChangeEvent, Op
from tests.scenario_orders import ORDERS, RESOLVE, datastream_files, debezium_messages


def versions(events: list[ChangeEvent]) -> dict[object, list[tuple[Op, object, int]]]:
    """Per key, in seq order, one entry per distinct change: what the state table is built from."""
    unique = {e.event_id: e for e in events}
    out: dict[object, list[tuple[Op, object, int]]] = defaultdict(list)
    for e in sorted(unique.values(), key=lambda e: e.seq):
        out[e.key["id"]].append((e.op, e.image, e.commit_ts))
    return dict(out)


def debezium_events() -> list[ChangeEvent]:
    out = []
    for m in debezium_messages():
        ev = decode_debezium(m, RESOLVE)
        assert isinstance(ev, ChangeEvent)
        out.append(ev)
    return out


def datastream_events(delivery: list[int]) -> list[ChangeEvent]:
    files = datastream_files()
    out: list[ChangeEvent] = []
    for n in delivery:
        batch = read_datastream_bytes(files[n].encode(), f"file-{n}.jsonl", RESOLVE)
        assert batch.rejected == []
        out.extend(batch.events)
    return out


def test_debezium_and_datastream_give_the_same_versions_despite_late_and_duplicate_files():
    expected = versions(debezium_events())
    # file 2 arrives before file 1 (late), file 0 arrives twice (duplicate)
    delivered = datastream_events([0, 2, 1, 0])

    assert versions(delivered) == expected
    # and the history is the scripted one, not merely equal
    assert [(op, img["status"] if img else None) for op, img, _ in expected[1]] == [
        (Op.INSERT, "placed"),
        (Op.UPDATE, "paid"),
        (Op.DELETE, None),
    ]
    assert [img["status"] for _, img, _ in expected[2]] == ["placed", "shipped", "refunded"]
    assert expected[3][-1][1]["total"] == Decimal("8.50")


def test_the_update_pair_is_one_version_not_a_delete_and_an_insert():
    events = datastream_events([2])
    refund = [e for e in events if e.key == {"id": 2}]
    assert [e.op for e in refund] == [Op.UPDATE]
    assert refund[0].before["status"] == "shipped" and refund[0].after["status"] == "refunded"


def test_every_delivery_order_gives_the_same_versions():
    expected = versions(debezium_events())
    for delivery in ([0, 1, 2], [2, 1, 0], [1, 0, 2, 2], [2, 0, 1, 1, 0]):
        assert versions(datastream_events(delivery)) == expected


# --------------------------------------------------------------------------- state tables

_PER_DELIVERY = ("_seq", "_event_id", "_ingested_at", "_next_seq")


def state_table_rows(batches: list[list[ChangeEvent]]) -> tuple[list[dict], list[dict]]:
    """Merge each batch into a fresh DuckDB state table; return its history and current rows."""
    from connectors.warehouse import open_warehouse
    from state_models.scd2 import TableDef

    table = TableDef(ORDERS.id, "shop_orders", "mysql", ORDERS.primary_key, dict(ORDERS.columns))
    wh = open_warehouse("duckdb:///:memory:")
    try:
        for n, batch in enumerate(batches):
            result = wh.apply(table, batch, ingested_at=dt.datetime(2026, 3, 1, n, tzinfo=dt.UTC))
            assert result.rejected == []
        history = [
            {k: v for k, v in row.items() if k not in _PER_DELIVERY} for row in wh.history(table)
        ]
        return history, wh.current(table)
    finally:
        wh.close()


def test_debezium_and_datastream_build_identical_state_tables():
    dbz = debezium_events()
    # Debezium: the update of id 1 to "paid" arrives late, after id 1's delete; one batch again
    dbz_history, dbz_current = state_table_rows(
        [[dbz[0], dbz[1], dbz[3], dbz[4]], [dbz[5], dbz[6], dbz[7]], [dbz[2]], [dbz[0], dbz[3]]]
    )
    files = datastream_files()
    # Datastream: one MERGE per file; file 2 before file 1 (late), file 0 twice (duplicate)
    ds_batches = [
        read_datastream_bytes(files[n].encode(), f"file-{n}.jsonl", RESOLVE).events
        for n in (0, 2, 1, 0)
    ]
    ds_history, ds_current = state_table_rows(ds_batches)

    assert ds_history == dbz_history
    assert [{k: r[k] for k in ("id", "status")} for r in ds_current] == [
        {"id": 2, "status": "refunded"},
        {"id": 3, "status": "placed"},
    ]
    assert [{k: r[k] for k in ("id", "status")} for r in dbz_current] == [
        {"id": 2, "status": "refunded"},
        {"id": 3, "status": "placed"},
    ]
    one = [r for r in ds_history if r["id"] == 1]
    assert [(r["_op"], r["status"], r["_is_current"], r["_is_deleted"]) for r in one] == [
        ("c", "placed", False, False),
        ("u", "paid", False, False),  # the late update is spliced in, not resurrecting the row
        ("d", None, True, True),
    ]
    assert len(ds_history) == 8  # the UPDATE-DELETE/UPDATE-INSERT pair is one version

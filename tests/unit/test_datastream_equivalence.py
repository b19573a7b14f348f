"""One logical history, captured by Debezium and by Datastream, decodes to the same versions.

The Datastream files arrive out of order (a late file) and one file arrives twice; an update comes
as an UPDATE-DELETE/UPDATE-INSERT pair. After deduplication by event id and ordering by seq, both
engines give every key the same versions: same ops, same row images, same commit times.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from connectors.datastream_files import read_datastream_bytes
from state_models.debezium import decode_debezium
from state_models.events import ChangeEvent, Op
from tests.scenario_orders import RESOLVE, datastream_files, debezium_messages


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

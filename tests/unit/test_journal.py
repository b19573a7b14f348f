from __future__ import annotations

from connectors.capture.base import EventSink
from connectors.journal import ARCHIVED, MERGED, Journal
from state_models.events import ChangeEvent, Op
from state_models.seq import make_seq


def ev(i: int, table: str = "billing.public.t") -> ChangeEvent:
    return ChangeEvent(
        table=table,
        op=Op.UPDATE,
        key={"id": i},
        before=None,
        after={"id": i, "v": f"x{i}"},
        seq=make_seq(i, i),
        commit_ts=1_000_000 + i,
    )


def test_batches_become_durable_segments_in_order(tmp_path):
    j = Journal(tmp_path)
    sink = j.sink("billing")
    assert isinstance(sink, EventSink)
    sink.write([ev(1), ev(2)])
    sink.write([])  # not a write
    sink.write([ev(3)])
    segs = j.segments()
    assert [s.number for s in segs] == [1, 2]
    assert [e.key["id"] for s in segs for e in Journal.read(s)] == [1, 2, 3]
    assert [e.event_id for e in Journal.read(segs[0])] == [ev(1).event_id, ev(2).event_id]


def test_each_consumer_marks_independently_and_prune_needs_both(tmp_path):
    j = Journal(tmp_path)
    j.sink("a").write([ev(1)])
    j.sink("b").write([ev(2)])
    first, second = j.segments()
    Journal.mark([first], MERGED)
    assert [s.name for s in j.pending(MERGED)] == [second.name]
    assert len(j.pending(ARCHIVED)) == 2
    assert j.prune() == 0
    Journal.mark([first], ARCHIVED)
    assert j.prune() == 1
    assert [s.name for s in j.segments()] == [second.name]


def test_reopening_continues_numbering_and_drops_unfinished_writes(tmp_path):
    j = Journal(tmp_path)
    j.sink("a").write([ev(1)])
    (tmp_path / "a" / "000000000002.tmp").write_text("half a batch that was never acknowledged")
    j2 = Journal(tmp_path)
    j2.sink("a").write([ev(2)])
    assert [s.number for s in j2.segments()] == [1, 2]
    assert not list((tmp_path / "a").glob("*.tmp"))


def test_segments_an_older_version_wrote_as_json_lines_are_still_read(tmp_path):
    import json

    from state_models.events import event_to_record

    old = tmp_path / "billing" / "000000000007.jsonl"  # left by `cdc run` before the upgrade
    old.parent.mkdir(parents=True)
    old.write_text("".join(json.dumps(event_to_record(ev(i))) + "\n" for i in (1, 2)))
    j = Journal(tmp_path)
    j.sink("billing").write([ev(3)])
    segs = j.segments()
    assert [(s.number, s.path.suffix) for s in segs] == [(7, ".jsonl"), (8, ".arrow")]
    read = [e for s in segs for e in Journal.read(s)]
    assert [e.event_id for e in read] == [ev(i).event_id for i in (1, 2, 3)]
    assert read == [ev(1), ev(2), ev(3)]
    Journal.mark(segs, MERGED)
    Journal.mark(segs, ARCHIVED)
    assert j.prune() == 2 and not list(old.parent.iterdir())

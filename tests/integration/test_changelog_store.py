"""The changelog writer and reader, on a local folder and on GCS (gcp-storage-emulator): same tests."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

import pyarrow.parquet as pq
import pytest

from connectors.changelog import ChangelogWriter, write_events
from connectors.changelog.reader import ChangelogReader, ReadStats
from connectors.changelog.records import COLUMNS, UnstorableEventError
from connectors.changelog.storage import open_root
from state_models.changelog import TMP_DIR, ChangeRange, partition_of
from state_models.events import ChangeEvent, Op, image_to_json
from state_models.seq import make_seq

TABLE = "billing.public.subscriptions"
HOUR = 3_600_000_000
T0 = 1_714_550_400_000_000  # 2024-05-01T08:00:00Z


def events(n, *, start=0, table=TABLE, spacing_us=1_000_000, keys=50):
    """``n`` updates with increasing seq and commit time (one per second by default)."""
    return [
        ChangeEvent(
            table=table,
            op=Op.INSERT if i < keys else Op.UPDATE,
            key={"id": i % keys},
            before=None if i < keys else {"id": i % keys, "amount": Decimal(i - 1)},
            after={"id": i % keys, "amount": Decimal(i), "plan": "pro"},
            seq=make_seq(1000 + i, i),
            commit_ts=T0 + i * spacing_us,
            tx_id=str(i),
            raw=f'{{"n":{i}}}',
        )
        for i in range(start, start + n)
    ]


def norm(e):
    """Every contract field, with images as their changelog text (decimals read back as strings)."""
    return (
        e.event_id,
        e.table,
        e.op,
        e.seq,
        e.commit_ts,
        e.tx_id,
        image_to_json(e.key),
        image_to_json(e.before),
        image_to_json(e.after),
        e.unavailable,
        e.raw,
    )


def read_all(reader, table=TABLE, rng=None, stats=None):
    return [e for batch in reader.events(table, rng, stats=stats, columns=None) for e in batch]


def layout_files(root):
    r = open_root(root)
    r.refresh()
    return sorted(p for p in r.fs.find(r.base) if f"/{TMP_DIR}/" not in p)


def test_written_events_read_back_exactly(changelog_root):
    evs = events(300, spacing_us=30_000_000)  # 2.5 hours: three partitions
    sink = ChangelogWriter(changelog_root)
    sink.write(evs)

    assert sink.pending_events == 0
    assert {f.partition.path for f in sink.published} == {
        "dt=2024-05-01/hour=08",
        "dt=2024-05-01/hour=09",
        "dt=2024-05-01/hour=10",
    }
    reader = ChangelogReader(changelog_root)
    assert reader.tables() == [TABLE]
    stats = ReadStats()
    back = read_all(reader, stats=stats)
    assert [norm(e) for e in sorted(back, key=lambda e: e.seq)] == [norm(e) for e in evs]
    assert stats.rows == 300 and stats.files == 3 and not stats.unreadable
    for f in sink.published:
        assert partition_of(T0).path in f.path or f.partition.path in f.path
        meta = pq.ParquetFile(open_root(f.path).fs.open(f.path, "rb")).metadata
        assert meta.row_group(0).column(0).compression == "ZSTD"
        assert meta.schema.to_arrow_schema().names == list(COLUMNS)


def test_rolls_by_row_groups_and_size(changelog_root):
    w = ChangelogWriter(changelog_root, row_group_rows=100, max_file_bytes=1)
    done = w.append(events(250))
    # 2 full row groups got encoded, each filled the (tiny) file: two files already published
    assert [f.rows for f in done] == [100, 100]
    assert w.pending_events == 50
    done += w.flush()
    assert [f.rows for f in done] == [100, 100, 50]
    assert [f.first_seq for f in done] == [
        make_seq(1000, 0),
        make_seq(1100, 100),
        make_seq(1200, 200),
    ]
    assert len(read_all(ChangelogReader(changelog_root))) == 250


def test_rolls_by_age(changelog_root):
    now = [0.0]
    w = ChangelogWriter(changelog_root, max_file_age_s=60, clock=lambda: now[0])
    assert w.append(events(10)) == []
    now[0] = 59
    assert w.poll() == []
    assert w.append(events(5, start=10)) == []
    now[0] = 60
    (f,) = w.poll()
    assert f.rows == 15 and w.pending_events == 0
    assert len(layout_files(changelog_root)) == 1


def test_nothing_is_visible_before_a_file_is_complete(changelog_root):
    w = ChangelogWriter(changelog_root, row_group_rows=10)
    w.append(events(95))
    assert w.pending_events == 95
    assert layout_files(changelog_root) == []  # nine row groups encoded, nothing published
    w.flush()
    assert len(layout_files(changelog_root)) == 1


def test_a_failed_batch_leaves_nothing_under_the_layout(changelog_root):
    w = ChangelogWriter(changelog_root)
    bad = events(3)
    bad.append(
        ChangeEvent(
            table=TABLE,
            op=Op.INSERT,
            key={"id": 1},
            before=None,
            after={"id": 1, "x": object()},  # not storable: the batch fails before publishing
            seq=make_seq(5000),
            commit_ts=T0,
        )
    )
    with pytest.raises(UnstorableEventError, match=r"field 'after' cannot be stored"):
        w.write(bad)
    assert w.pending_events == 0
    assert layout_files(changelog_root) == []
    w.write(events(3))  # the writer is usable again afterwards
    assert len(read_all(ChangelogReader(changelog_root))) == 3


def test_writing_the_same_events_twice_adds_files_and_replaces_none(changelog_root):
    evs = events(40)
    w = ChangelogWriter(changelog_root, writer_id="capture1")
    w.write(evs)
    w.write(evs)  # same writer, same first/last seq: a second name, never an overwrite
    w.write(evs[:1] + evs[-1:])  # same first/last seq again, different content
    write_events(changelog_root, evs)  # another writer
    files = layout_files(changelog_root)
    assert len(files) == 4
    assert any(p.endswith("-capture1~1.parquet") for p in files)
    assert any(p.endswith("-capture1~2.parquet") for p in files)
    back = read_all(ChangelogReader(changelog_root))
    counts = Counter(e.event_id for e in back)
    assert len(back) == 40 * 3 + 2
    assert set(counts) == {e.event_id for e in evs}  # nothing lost, nothing invented


def test_tables_and_sources_are_separate_folders(changelog_root):
    w = ChangelogWriter(changelog_root)
    w.write(events(5) + events(7, table="shop.inventory.items"))
    reader = ChangelogReader(changelog_root)
    assert reader.tables() == ["billing.public.subscriptions", "shop.inventory.items"]
    assert len(read_all(reader, "shop.inventory.items")) == 7
    assert read_all(reader, "billing.public.nothing") == []


def test_time_range_prunes_partitions(changelog_root):
    w = ChangelogWriter(changelog_root)
    w.write(events(600, spacing_us=30_000_000))  # 5 hours, 120 events per hour
    reader = ChangelogReader(changelog_root)
    stats = ReadStats()
    rng = ChangeRange(since_us=T0 + HOUR + 15 * 60_000_000, until_us=T0 + 2 * HOUR)
    got = read_all(reader, rng=rng, stats=stats)
    assert len(got) == 90  # 45 minutes at 2 a minute
    assert all(rng.since_us <= e.commit_ts < rng.until_us for e in got)
    assert stats.files == 1 and stats.files_read == 1


def test_seq_range_prunes_files_and_row_groups(changelog_root):
    w = ChangelogWriter(changelog_root, row_group_rows=100, max_file_bytes=10_000)
    w.write(events(1000))
    assert [f.rows for f in w.published] == [300, 300, 300, 100]
    reader = ChangelogReader(changelog_root)
    stats = ReadStats()
    rng = ChangeRange(from_seq=make_seq(1000 + 250, 0), to_seq=make_seq(1000 + 449, 10**6))
    got = read_all(reader, rng=rng, stats=stats)
    assert sorted(e.seq for e in got) == [make_seq(1000 + i, i) for i in range(250, 450)]
    assert stats.files == 2  # pruned by file name
    assert stats.row_groups_read == 3 and stats.rows_read == 300  # pruned by statistics


def test_unreadable_files_are_reported_and_the_rest_is_read(changelog_root):
    w = ChangelogWriter(changelog_root, row_group_rows=50, max_file_bytes=1)
    w.write(events(200))
    root = open_root(changelog_root)
    good = [f.path for f in w.published]
    # a truncated copy of a real file, under a valid name
    data = root.fs.cat_file(root.fs._strip_protocol(good[0]))
    base = root.fs._strip_protocol(good[0]).rsplit("/", 1)[0]
    truncated = f"{base}/{make_seq(1)}-{make_seq(2)}-truncated.parquet".replace(
        "/0000", "_0000"
    ).replace(f"{base}_", f"{base}/")
    root.fs.pipe_file(truncated, data[: len(data) // 2])
    root.fs.pipe_file(f"{base}/notes.txt", b"hello")
    root.fs.pipe_file(f"{base}/{make_seq(3).replace('/', '_')}-{make_seq(4)}-junk.parquet", b"x")

    stats = ReadStats()
    back = read_all(ChangelogReader(changelog_root), stats=stats)
    assert len(back) == 200
    reasons = {u.path.rsplit("/", 1)[-1]: u.reason for u in stats.unreadable}
    assert len(reasons) == 3, reasons
    assert "not a changelog file name" in reasons["notes.txt"]
    assert any(k.endswith("-truncated.parquet") for k in reasons)
    assert any(k.endswith("-junk.parquet") for k in reasons)
    assert all(u.path.startswith(changelog_root.split("://")[0]) for u in stats.unreadable)


def test_the_writer_is_a_capture_event_sink(changelog_root):
    from connectors.capture.base import EventSink

    sink = ChangelogWriter(changelog_root)
    assert isinstance(sink, EventSink)
    sink.write([])  # an empty batch is durable at once and writes nothing
    assert layout_files(changelog_root) == []


def test_rows_appended_as_arrow_make_the_same_files_as_their_events(tmp_path):
    """`append_rows` (the archiver's path for journal segments) and `append` of the same events
    give byte-identical files: same partitions (an hour before 1970 floors too), row groups in
    arrival order, each sorted by seq, same seq bounds."""
    from connectors.changelog.records import to_batch

    evs = events(230, spacing_us=40_000_000)  # three hour partitions
    evs += events(20, start=500, table="billing.public.invoices")
    evs += [
        ChangeEvent(
            table=TABLE,
            op=Op.UPDATE,
            key={"id": k},
            before=None,
            after={"id": k, "plan": "old"},
            seq=make_seq(10 + k, k),
            commit_ts=-HOUR - k,  # 1969-12-31T23:00 exactly (k=0), else in the hour before
        )
        for k in range(3)
    ]
    evs = evs[::7] + [e for i, e in enumerate(evs) if i % 7]  # seqs out of order in a batch

    def write(root, feed):
        w = ChangelogWriter(
            str(root), writer_id="wsame", row_group_rows=64, now_us=lambda: T0, clock=lambda: 0.0
        )
        for i in range(0, len(evs), 50):
            feed(w, evs[i : i + 50])
        w.flush()
        return w.published

    by_events = write(tmp_path / "a", lambda w, chunk: w.append(chunk))
    by_rows = write(
        tmp_path / "b", lambda w, chunk: w.append_rows(to_batch(chunk, [0] * len(chunk)))
    )
    assert len(by_events) == 6
    assert any("dt=1969-12-31/hour=22" in f.path for f in by_rows)
    assert any("dt=1969-12-31/hour=23" in f.path for f in by_rows)
    for a, b in zip(by_events, by_rows, strict=True):
        assert (a.table, a.partition, a.first_seq, a.last_seq, a.rows) == (
            b.table,
            b.partition,
            b.first_seq,
            b.last_seq,
            b.rows,
        )
        ta, tb = pq.read_table(a.path), pq.read_table(b.path)
        assert ta.equals(tb)
        assert ta.column("seq").to_pylist() == sorted(ta.column("seq").to_pylist()) or (
            pq.ParquetFile(a.path).num_row_groups > 1
        )
    with pytest.raises(ValueError, match="changelog rows of the current schema"):
        ChangelogWriter(str(tmp_path / "c")).append_rows(
            to_batch(evs[:2], [0, 0]).drop_columns(["raw"])
        )


def test_wide_rows_close_a_row_group_by_bytes_before_it_has_its_rows(changelog_root):
    evs = events(300)
    for e in evs:
        object.__setattr__(e, "raw", "x" * 2000)  # a native capture's envelope: ~2 KiB each
    w = ChangelogWriter(changelog_root, row_group_rows=1000, row_group_bytes=100_000)
    w.append(evs)
    [f] = w.flush()
    meta = pq.ParquetFile(open_root(f.path).fs.open(f.path, "rb")).metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert sum(sizes) == 300 and len(sizes) >= 6 and max(sizes) <= 60, sizes
    back = read_all(ChangelogReader(changelog_root))
    assert sorted(norm(e)[0] for e in back) == sorted(e.event_id for e in evs)

"""The capture contracts: sinks, progress counters, durable offset files."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from connectors.capture import CaptureStats, CountingSink, EventSink, MemorySink, make_capture
from connectors.capture.base import Capture, CaptureError
from connectors.capture.offsets import OffsetStore, write_atomically
from state_models.errors import ConfigError
from state_models.events import ChangeEvent, Op
from state_models.registry import Source
from state_models.seq import pg_seq


def _event(i: int) -> ChangeEvent:
    return ChangeEvent(
        table="billing.public.t",
        op=Op.INSERT,
        key={"id": i},
        before=None,
        after={"id": i},
        seq=pg_seq(100 + i, 200 + i),
        commit_ts=1_700_000_000_000_000 + i,
    )


def test_sinks_satisfy_the_protocol() -> None:
    assert isinstance(MemorySink(), EventSink)
    assert isinstance(CountingSink(), EventSink)


def test_memory_sink_refuses_the_chosen_write_and_keeps_the_others() -> None:
    sink = MemorySink(fail_on_write=2)
    sink.write([_event(1)])
    with pytest.raises(OSError, match="write #2"):
        sink.write([_event(2)])
    sink.write([_event(3)])
    assert [e.key["id"] for e in sink.events] == [1, 3]


class _ListCapture(Capture):
    engine = "test"

    def __init__(self, batches: Sequence[Sequence[ChangeEvent]], state_dir: Path):
        source = Source(kind="postgres", engine="pgoutput", dsn="postgresql://x@h/db")
        super().__init__("billing", source, [], state_dir)
        self.batches = batches

    def _run(self, sink: object, stop: threading.Event) -> None:
        for batch in self.batches:
            sink.write(batch)  # type: ignore[attr-defined]
            self._acknowledged(batch)


def test_stats_count_only_acknowledged_batches(tmp_path: Path) -> None:
    cap = _ListCapture([[_event(1), _event(2)], [_event(3)]], tmp_path)
    cap.run(MemorySink(), threading.Event())
    s = cap.stats()
    assert (s.events, s.batches, s.phase) == (3, 2, "stopped")
    assert s.last_seq == _event(3).seq
    assert s.last_commit_ts == _event(3).commit_ts

    failing = _ListCapture([[_event(1)], [_event(2)]], tmp_path)
    with pytest.raises(OSError):
        failing.run(MemorySink(fail_on_write=2), threading.Event())
    s = failing.stats()
    assert (s.events, s.phase) == (1, "failed")
    assert "write #2" in (s.last_error or "")


def test_lag_is_measured_from_the_last_commit_time() -> None:
    s = CaptureStats(source="b", engine="e", last_commit_ts=10_000_000)
    assert s.lag_seconds(now=12.5) == pytest.approx(2.5)
    assert CaptureStats(source="b", engine="e").lag_seconds() is None


def test_offset_store_round_trip_and_atomic_replace(tmp_path: Path) -> None:
    store = OffsetStore(tmp_path, "billing", "pgoutput")
    assert store.load() is None
    store.save({"lsn": 1})
    store.save({"lsn": 2, "last_commit": None})
    assert store.load() == {"lsn": 2, "last_commit": None}
    assert store.path == tmp_path / "offsets" / "billing.json"
    assert [p.name for p in store.path.parent.iterdir()] == ["billing.json"]  # no temp files left
    assert json.loads(store.path.read_text())["engine"] == "pgoutput"


def test_offset_store_refuses_another_engines_position(tmp_path: Path) -> None:
    OffsetStore(tmp_path, "billing", "pgoutput").save({"lsn": 1})
    with pytest.raises(ConfigError, match=r"captured with engine 'pgoutput'.*now says 'binlog'"):
        OffsetStore(tmp_path, "billing", "binlog").load()


def test_offset_store_names_a_corrupt_file(tmp_path: Path) -> None:
    store = OffsetStore(tmp_path, "billing", "pgoutput")
    write_atomically(store.path, b"{not json")
    with pytest.raises(CaptureError, match=r"billing\.json is unreadable"):
        store.load()


def test_make_capture_refuses_engines_without_a_local_capture(tmp_path: Path) -> None:
    mysql = Source(kind="mysql", engine="debezium", dsn="mysql://root@h/db")
    with pytest.raises(ConfigError, match="use engine: binlog"):
        make_capture("shop", mysql, [], tmp_path)
    ds = Source(kind="postgres", engine="datastream", dsn="postgresql://x@h/db")
    with pytest.raises(ConfigError, match="Datastream"):
        make_capture("billing", ds, [], tmp_path)


def test_make_capture_renders_no_envelopes_for_the_native_readers_unless_asked(
    tmp_path: Path,
) -> None:
    """cdc run's captures (make_capture) leave raw empty: a sink that needs Debezium JSON encodes
    it from the event (Pub/Sub, dead letters)."""
    pg = Source(kind="postgres", engine="pgoutput", dsn="postgresql://x@127.0.0.1:1/db")
    my = Source(kind="mysql", engine="binlog", dsn="mysql://root@127.0.0.1:1/db", server_id=7)
    for source in (pg, my):
        assert make_capture("s", source, [], tmp_path).keep_raw is False  # type: ignore[attr-defined]
        asked = make_capture("s", source, [], tmp_path, keep_raw=True)
        assert asked.keep_raw is True  # type: ignore[attr-defined]

"""The native pgoutput capture against a real PostgreSQL: snapshot, streaming, restarts, bad situations."""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from connectors.capture import MemorySink, PositionLostError
from connectors.capture.base import CaptureError
from connectors.capture.pgoutput import PgoutputCapture
from state_models.debezium import decode_debezium
from state_models.errors import SourceUnavailableError
from state_models.events import Op
from state_models.registry import TableSpec
from state_models.tables import resolver_for
from tests.integration.capture_support import drop_slots, pg_capture, running, sql

pytestmark = pytest.mark.integration


def _capture(dsn: str, state_dir: Path, *specs: TableSpec, **options: Any) -> PgoutputCapture:
    options.setdefault("keep_raw", True)  # these tests check the envelopes too
    capture = pg_capture("pgoutput", dsn, state_dir, *specs, **options)
    assert isinstance(capture, PgoutputCapture)
    return capture


@pytest.fixture
def db(pg_database: str) -> Any:
    with psycopg.connect(pg_database, autocommit=True) as c:
        c.execute(
            "CREATE TABLE public.subs (id bigint PRIMARY KEY, plan text NOT NULL, "
            "amount numeric(12,2), renews_at timestamptz)"
        )
        c.execute(
            "INSERT INTO public.subs VALUES (1, 'basic', 9.99, '2026-12-01 00:00:00+00'), "
            "(2, 'pro', 29.00, NULL)"
        )
    yield pg_database
    drop_slots(pg_database)


def test_snapshot_then_streaming_then_restart_without_loss_or_duplicates(
    db: str, tmp_path: Path
) -> None:
    with running(_capture(db, tmp_path)) as r:
        r.wait_events(2)
        r.wait_streaming()
        sql(
            db,
            "UPDATE public.subs SET plan = 'pro' WHERE id = 1",
            "INSERT INTO public.subs VALUES (3, 'basic', 1.5, NULL)",
            "DELETE FROM public.subs WHERE id = 2",
        )
        r.wait_events(5)
        r.stop()
    first = r.sink.events
    assert [(e.op, e.key["id"]) for e in first] == [
        (Op.READ, 1),
        (Op.READ, 2),
        (Op.UPDATE, 1),
        (Op.INSERT, 3),
        (Op.DELETE, 2),
    ]
    assert first[2].after == {
        "id": 1,
        "plan": "pro",
        "amount": Decimal("9.99"),
        "renews_at": "2026-12-01T00:00:00.000000Z",
    }
    seqs = [e.seq for e in first]
    assert seqs == sorted(seqs) and len(set(seqs[2:])) == 3
    # every event carries its Debezium envelope, which decodes back to the same event (the record
    # key travels beside the value, as with Debezium: here the event's own key)
    resolve = resolver_for(r.capture.tables, "billing")
    back = [decode_debezium(e.raw, resolve, record_key=dict(e.key)) for e in first]
    assert back == first
    assert [e.source_types for e in first] == [e.source_types for e in back]
    assert first[0].source_types is not None and first[0].source_types["amount"] == (
        "org.apache.kafka.connect.data.Decimal(scale=2,precision=12)"
    )

    # changes made while the capture is down arrive after the restart, exactly once
    sql(
        db,
        "UPDATE public.subs SET amount = 10 WHERE id = 1",
        "INSERT INTO public.subs VALUES (4, 'pro', 2, NULL)",
    )
    with running(_capture(db, tmp_path)) as r2:
        r2.wait_events(2)
        time.sleep(0.5)
        r2.stop()
    again = r2.sink.events
    assert [(e.op, e.key["id"]) for e in again] == [(Op.UPDATE, 1), (Op.INSERT, 4)]
    assert again[0].seq > first[-1].seq
    assert r2.capture.stats().snapshot_rows == 0


def test_a_refused_batch_is_redelivered_and_a_half_delivered_transaction_resumes_exactly(
    db: str, tmp_path: Path
) -> None:
    capture = _capture(db, tmp_path, snapshot="never", batch_size=3)
    with running(capture, MemorySink(fail_on_write=3)) as r:
        r.wait_streaming()
        sql(db, "UPDATE public.subs SET amount = amount + 1")  # batch 1: a 2-row transaction
        r.wait_events(2)
        # one transaction of 10 inserts, delivered in batches of 3: batch 2 is its first three
        # rows, batch 3 (its next three) is refused by the sink
        sql(db, "INSERT INTO public.subs SELECT g, 'bulk', g, NULL FROM generate_series(10, 19) g")
        r.thread.join(30)
    assert isinstance(r.error, OSError) and "write #3" in str(r.error)
    assert [e.key["id"] for e in r.sink.events] == [1, 2, 10, 11, 12]
    assert capture.stats().phase == "failed"

    # PostgreSQL resends the whole transaction; the three rows already acknowledged are skipped
    with running(_capture(db, tmp_path, snapshot="never", batch_size=3)) as r2:
        r2.wait_events(7)
        time.sleep(0.5)
        r2.stop()
    assert [e.key["id"] for e in r2.sink.events] == list(range(13, 20))
    both = r.sink.events + r2.sink.events
    assert len({e.event_id for e in both}) == len(both) == 12


def test_the_slot_advances_only_after_the_sink_acknowledged(db: str, tmp_path: Path) -> None:
    gate = threading.Event()

    class SlowSink(MemorySink):
        def write(self, events: Any) -> None:
            gate.wait(30)
            super().write(events)

    capture = _capture(db, tmp_path, snapshot="never")
    with running(capture, SlowSink()) as r:
        r.wait_streaming()
        gate.set()
        time.sleep(0.3)
        before = _confirmed(db, capture.slot)
        gate.clear()
        sql(db, "UPDATE public.subs SET plan = 'held' WHERE id = 1")
        time.sleep(1.0)  # the sink holds the batch: nothing may be confirmed yet
        assert _confirmed(db, capture.slot) == before
        assert capture.stats().events == 0
        gate.set()
        r.wait_events(1)
        r.wait(lambda: _confirmed(db, capture.slot) > before, "the slot to advance")
        r.stop()
    stored = capture.offsets.load()
    assert stored is not None and stored["flushed"] >= _confirmed(db, capture.slot)


def _confirmed(dsn: str, slot: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute(
            "SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
            (slot,),
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("how", ["dropped", "recreated"])
def test_a_slot_dropped_or_recreated_behind_our_back_stops_the_capture(
    db: str, tmp_path: Path, how: str
) -> None:
    with running(_capture(db, tmp_path)) as r:
        r.wait_events(2)
        r.wait_streaming()
        r.stop()
    sql(db, "UPDATE public.subs SET plan = 'lost' WHERE id = 1")
    sql(db, "SELECT pg_drop_replication_slot('cdc_billing')")
    if how == "recreated":
        sql(db, "UPDATE public.subs SET plan = 'lost again' WHERE id = 1")
        sql(db, "SELECT pg_create_logical_replication_slot('cdc_billing', 'pgoutput')")
    capture = _capture(db, tmp_path)
    with pytest.raises(PositionLostError, match="re-snapshot the source") as err:
        capture.run(MemorySink(), threading.Event())
    assert ("is gone" if how == "dropped" else "recreated") in str(err.value)


def test_columns_added_and_dropped_mid_stream_flow_through(db: str, tmp_path: Path) -> None:
    with running(_capture(db, tmp_path, snapshot="never")) as r:
        r.wait_streaming()
        sql(
            db,
            "ALTER TABLE public.subs ADD COLUMN coupon text",
            "UPDATE public.subs SET coupon = 'XMAS' WHERE id = 1",
            "ALTER TABLE public.subs ADD COLUMN discount numeric(5,2) NOT NULL DEFAULT 0",
            "INSERT INTO public.subs (id, plan, discount) VALUES (5, 'basic', 1.25)",
            "ALTER TABLE public.subs DROP COLUMN coupon",
            "UPDATE public.subs SET plan = 'x' WHERE id = 5",
        )
        r.wait_events(3)
        r.stop()
    upd, ins, last = r.sink.events
    assert upd.after is not None and upd.after["coupon"] == "XMAS" and "discount" not in upd.after
    assert (
        ins.after is not None
        and str(ins.after["discount"]) == "1.25"
        and ins.after["coupon"] is None
    )
    assert (
        last.after is not None
        and "coupon" not in last.after
        and str(last.after["discount"]) == "1.25"
    )


def test_a_table_without_a_primary_key(db: str, tmp_path: Path) -> None:
    sql(
        db,
        "CREATE TABLE public.events (ref text, n int)",
        "INSERT INTO public.events VALUES ('a', 1)",
    )
    with pytest.raises(
        CaptureError, match=r"public\.events .* has no primary key: declare primary_key"
    ):
        _capture(db, tmp_path, TableSpec(name="public.events")).run(MemorySink(), threading.Event())

    # with a declared key and REPLICA IDENTITY FULL, updates and deletes carry the whole row
    sql(db, "ALTER TABLE public.events REPLICA IDENTITY FULL")
    spec = TableSpec(name="public.events", primary_key=["ref"])
    with running(_capture(db, tmp_path, spec)) as r:
        r.wait_events(1)
        r.wait_streaming()
        sql(db, "UPDATE public.events SET n = 2 WHERE ref = 'a'", "DELETE FROM public.events")
        r.wait_events(3)
        r.stop()
    snap, upd, dele = r.sink.events
    assert (snap.op, snap.key) == (Op.READ, {"ref": "a"})
    assert (upd.key, upd.before, upd.after) == (
        {"ref": "a"},
        {"ref": "a", "n": 1},
        {"ref": "a", "n": 2},
    )
    assert (dele.op, dele.key, dele.before) == (Op.DELETE, {"ref": "a"}, {"ref": "a", "n": 2})


def test_an_unreachable_source_is_retried_with_backoff_then_given_up(tmp_path: Path) -> None:
    capture = _capture(
        "postgresql://postgres@127.0.0.1:9/nowhere",
        tmp_path,
        max_retry_seconds=1.5,
        retry_initial_seconds=0.2,
    )
    t0 = time.monotonic()
    with pytest.raises(SourceUnavailableError, match=r"unreachable .*giving up"):
        capture.run(MemorySink(), threading.Event())
    assert 1.5 <= time.monotonic() - t0 < 10
    assert capture.stats().retries >= 3


@pytest.mark.slow
def test_capture_survives_a_source_restart(postgres_factory: Any, tmp_path: Path) -> None:
    server = postgres_factory()
    server.execute("CREATE TABLE public.subs (id bigint PRIMARY KEY, plan text NOT NULL)")
    capture = _capture(server.dsn(), tmp_path, snapshot="never", retry_initial_seconds=0.2)
    with running(capture) as r:
        r.wait_streaming()
        server.execute("INSERT INTO public.subs VALUES (1, 'a')")
        r.wait_events(1)
        server.stop()
        r.wait(lambda: capture.stats().retries >= 1, "a retry")
        assert "unreachable" in (capture.stats().last_error or "") or "broke" in (
            capture.stats().last_error or ""
        )
        server.start()
        server.execute("INSERT INTO public.subs VALUES (2, 'b')")
        r.wait_events(2, timeout=60)
        r.stop()
    assert [e.key["id"] for e in r.sink.events] == [1, 2]


def test_slot_lag_and_an_inactive_slot_show_in_status_and_preflight(
    db: str, tmp_path: Path
) -> None:
    from connectors.capture.slots import slot_status
    from connectors.preflight import preflight

    capture = _capture(db, tmp_path, snapshot="never")
    with running(capture) as r:
        r.wait_streaming()
        running_status = slot_status("billing", capture.source)
        assert running_status.exists and running_status.active and not running_status.warnings()
        check = next(
            c for c in preflight("billing", capture.source) if c.name == "replication slot"
        )
        assert check.status == "ok" and "active" in check.detail
        r.stop()
    sql(db, "INSERT INTO public.subs SELECT g, 'x', g, NULL FROM generate_series(100, 2000) g")
    stopped = slot_status("billing", capture.source)
    assert not stopped.active and (stopped.lag_bytes or 0) > 100_000
    assert (stopped.retained_bytes or 0) >= (stopped.lag_bytes or 0)
    assert any("inactive" in w for w in stopped.warnings())
    check = next(c for c in preflight("billing", capture.source) if c.name == "replication slot")
    assert check.status == "warn" and "inactive" in check.detail and "MiB behind" in check.detail


class _StopAfter(MemorySink):
    """Sets ``stop`` once it holds ``n`` events (from the capture's own thread, mid-snapshot)."""

    def __init__(self, n: int, stop: threading.Event):
        super().__init__()
        self.n, self.stop = n, stop

    def write(self, events: Any) -> None:
        super().write(events)
        if len(self.events) >= self.n:
            self.stop.set()


def test_stop_during_the_snapshot_returns_and_the_next_start_snapshots_again(
    db: str, tmp_path: Path
) -> None:
    sql(db, "INSERT INTO public.subs (id, plan) SELECT g, 'bulk' FROM generate_series(3, 3000) g")
    stop = threading.Event()
    sink = _StopAfter(1000, stop)
    capture = _capture(db, tmp_path, batch_size=500)
    capture.run(sink, stop)  # stopped inside the COPY: returns, no "command in progress" error
    assert capture.stats().phase == "stopped" and 1000 <= len(sink.events) < 3000
    with running(_capture(db, tmp_path)) as r:
        r.wait_events(3000)
        r.wait_streaming()
        r.stop()
    assert {e.key["id"] for e in r.sink.events} == set(range(1, 3001))


def test_a_value_the_reader_cannot_read_sets_that_change_aside_and_the_capture_goes_on(
    db: str, tmp_path: Path
) -> None:
    from connectors.deadletter import DeadLetterStore, default_folder

    # unreadable rows already there for the snapshot, and more once it streams
    sql(
        db,
        "INSERT INTO public.subs VALUES (10, 'nan', 'NaN', NULL)",
        "INSERT INTO public.subs VALUES (11, 'bc', 1, '0044-03-15 12:00:00+00 BC')",
    )
    with running(_capture(db, tmp_path)) as r:
        r.wait_events(2)
        r.wait_streaming()
        sql(
            db,
            "INSERT INTO public.subs VALUES (20, 'nan', 'NaN', NULL)",
            "INSERT INTO public.subs VALUES (21, 'ok', 5, NULL)",
            "UPDATE public.subs SET renews_at = '0001-01-01 00:00:00+00 BC' WHERE id = 2",
            "UPDATE public.subs SET plan = 'team' WHERE id = 1",
        )
        r.wait_events(4)
        time.sleep(0.5)
        r.stop()
    assert [(e.op, e.key["id"]) for e in r.sink.events] == [
        (Op.READ, 1),
        (Op.READ, 2),
        (Op.INSERT, 21),
        (Op.UPDATE, 1),
    ]
    letters = DeadLetterStore(default_folder(tmp_path)).list()
    assert r.capture.stats().set_aside == len(letters) == 4
    assert {d.error_type for d in letters} == {"UnreadableChange"}
    reasons = " | ".join(d.reason for d in letters)
    assert reasons.count("is not a number any warehouse decimal can hold") == 2
    assert all(d.table == "billing.public.subs" for d in letters)
    streamed = [d for d in letters if not d.context.get("snapshot")]
    # the pgoutput messages exactly as the server sent them
    assert sorted((d.raw_bytes() or b"")[:1] for d in streamed) == [b"I", b"U"]
    assert {d.context["message"] for d in streamed} == {"I", "U"}
    # each holds the watermark just before its own transaction: after the snapshot and the
    # transactions before it, before the ones after it
    hold = {d.context["message"]: d.context["watermark_hold"] for d in streamed}
    seqs = [e.seq for e in r.sink.events]
    assert seqs[1] < hold["I"] < seqs[2] < hold["U"] < seqs[3], (hold, seqs)
    # the position moved past them: a restart neither repeats nor loses anything
    sql(db, "INSERT INTO public.subs VALUES (22, 'after', 1, NULL)")
    with running(_capture(db, tmp_path)) as r2:
        r2.wait_events(1)
        time.sleep(0.5)
        r2.stop()
    assert [(e.op, e.key["id"]) for e in r2.sink.events] == [(Op.INSERT, 22)]
    assert len(DeadLetterStore(default_folder(tmp_path)).list()) == 4


#: types whose PostgreSQL text is the value; point and box have a typelem (their coordinates can
#: be subscripted) without being arrays, and box[] separates its elements with ';'
TEXT_COLUMNS = {
    "pt": ("point", "'(1.5,-2)'"),
    "bx": ("box", "'((2,2),(0,0))'"),
    "ln": ("line", "'{1,-1,0}'"),
    "pts": ("point[]", "ARRAY['(1,2)'::point, '(0.1,3e300)']"),
    "bxs": ("box[]", "ARRAY['((2,2),(0,0))'::box, '((1,1),(0.1,0))']"),
    "rng": ("int4range", "'[1,5)'"),
    "tsr": ("tstzrange", "'[2024-01-01 10:00+02,2024-02-01)'"),
    "rngs": ("int4range[]", "ARRAY['[1,2)'::int4range, 'empty']"),
    "doc": ("xml", "'<doc a=\"é\">  Grüße <b/>\n</doc>'"),
    "tsv": ("tsvector", "'a fat cat'"),
    "lsn": ("pg_lsn", "'16/B374D848'"),
    "jp": ("jsonpath", "'$.a[*] ? (@ > 1)'"),
}


def test_types_whose_text_is_the_value_arrive_as_that_text(db: str, tmp_path: Path) -> None:
    columns = ", ".join(f"{c} {t}" for c, (t, _) in TEXT_COLUMNS.items())
    values = ", ".join(v for _, v in TEXT_COLUMNS.values())
    insert = f"INSERT INTO public.shapes VALUES (%s, {values})"
    sql(db, f"CREATE TABLE public.shapes (id int PRIMARY KEY, {columns})", insert % 1)
    spec = TableSpec(name="public.shapes", primary_key=["id"])
    with running(_capture(db, tmp_path, spec)) as r:
        r.wait_events(1)
        r.wait_streaming()
        sql(db, insert % 2)
        r.wait_events(2)
        r.stop()
    with psycopg.connect(db, autocommit=True) as c:
        c.execute("SET TimeZone = 'UTC'")
        row = c.execute(
            "SELECT " + ", ".join(f"{c}::text" for c in TEXT_COLUMNS) + " FROM public.shapes"
            " WHERE id = 1"
        ).fetchone()
    assert row is not None
    expected = dict(zip(TEXT_COLUMNS, row, strict=True))
    expected["pts"] = ["(1,2)", "(0.1,3e+300)"]
    expected["bxs"] = ["(2,2),(0,0)", "(1,1),(0.1,0)"]
    expected["rngs"] = ["[1,2)", "empty"]
    snapshot, streamed = r.sink.events
    for event in (snapshot, streamed):
        assert event.after is not None
        assert {c: event.after[c] for c in TEXT_COLUMNS} == expected, event.op

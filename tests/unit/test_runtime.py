"""The embedded runtime's loops (journal -> merge / archive), with a scripted capture.

The capture engines themselves are tested against real databases elsewhere; here a scripted
capture stands in so that crash points of the runtime's own logic can be placed exactly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

from cdc.config import load_config
from cdc.runtime import Runtime, RuntimeOptions, read_status
from connectors.capture.base import Capture, EventSink
from connectors.changelog.reader import ChangelogReader
from connectors.journal import ARCHIVED, MERGED, Journal
from connectors.warehouse import open_warehouse
from state_models.events import ChangeEvent, Op
from state_models.scd2 import TableDef
from state_models.seq import make_seq

TABLE = "billing.public.subscriptions"


def registry(tmp_path: Path) -> Path:
    p = tmp_path / "cdc.yaml"
    p.write_text("""
changelog: ./changelog
warehouse: duckdb:///warehouse.duckdb
state_dir: ./state
sources:
  billing:
    kind: postgres
    engine: pgoutput
    dsn: postgresql://nobody@127.0.0.1:1/none
    tables:
      - name: public.subscriptions
        primary_key: [id]
        columns: {id: bigint, plan: text}
""")
    return p


def change(n: int, key: int, plan: str | None, op: Op = Op.UPDATE) -> ChangeEvent:
    after = None if op is Op.DELETE else {"id": key, "plan": plan}
    before = {"id": key} if op is Op.DELETE else None
    return ChangeEvent(
        TABLE, op, {"id": key}, before, after, make_seq(n, n), 1_790_000_000_000_000 + n * 1000
    )


class ScriptedCapture(Capture):
    engine = "scripted"

    def __init__(self, batches: Sequence[Sequence[ChangeEvent]], *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = batches

    def _run(self, sink: EventSink, stop: threading.Event) -> None:
        for batch in self.batches:
            if stop.is_set():
                return
            sink.write(batch)
            self._acknowledged(batch)
            time.sleep(0.01)
        stop.wait()


def factory(batches):
    def make(name, source, tables, state_dir, **_):
        return ScriptedCapture(batches, name, source, tables, state_dir)

    return make


def run_until(rt: Runtime, cond, timeout: float = 20.0):
    stop = threading.Event()
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("summary", rt.run(stop)))
    t.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and t.is_alive() and not cond(rt):
        time.sleep(0.02)
    stop.set()
    t.join(30)
    assert not t.is_alive()
    return out["summary"]


def history(cfg):
    wh = open_warehouse(cfg.warehouse_url)
    try:
        table = TableDef.from_registered(cfg.registry.table(TABLE))
        return [(r["id"], r["plan"], r["_op"], r["_is_current"]) for r in wh.history(table)]
    finally:
        wh.close()


def test_captured_batches_are_merged_archived_and_pruned(tmp_path):
    cfg = load_config(registry(tmp_path))
    batches = [
        [change(1, 1, "basic", Op.INSERT), change(2, 2, "pro", Op.INSERT)],
        [change(3, 1, "pro"), change(4, 2, None, Op.DELETE)],
        [change(3, 1, "pro")],
    ]  # a re-delivered event
    rt = Runtime(
        cfg,
        RuntimeOptions(max_latency_s=0.05, archive_interval_s=3600),
        capture_factory=factory(batches),
    )
    summary = run_until(rt, lambda r: r.summary.events_merged >= 5)
    assert summary.exit_code == 0
    assert summary.events_merged == 5 and summary.events_archived == 5
    assert history(cfg) == [
        (1, "basic", "c", False),
        (1, "pro", "u", True),
        (2, "pro", "c", False),
        (2, None, "d", True),
    ]
    events = [e for b in ChangelogReader(cfg.changelog_root).events(TABLE) for e in b]
    assert sorted(e.seq for e in events) == sorted(e.seq for b in batches for e in b)
    assert Journal(cfg.state_dir / "journal").segments() == []  # merged + archived -> pruned
    status = read_status(cfg.state_dir)
    assert status["running"] is False and status["tables"][TABLE]["events"] == 5
    assert status["tables"][TABLE]["last_seq"] == make_seq(4, 4)


def test_restart_finishes_what_the_journal_holds(tmp_path):
    """A crash after the journal writes, with one segment archived but nothing merged: the next
    start merges both segments and archives the second."""
    cfg = load_config(registry(tmp_path))
    journal = Journal(cfg.state_dir / "journal")
    journal.sink("billing").write([change(1, 7, "basic", Op.INSERT), change(2, 7, "team")])
    journal.sink("billing").write([change(3, 8, "pro", Op.INSERT)])
    first = journal.segments()[:1]
    from connectors.changelog.writer import write_events

    write_events(cfg.changelog_root, list(Journal.read(first[0])))
    Journal.mark(first, ARCHIVED)  # crashed after archiving the first, before merging anything
    rt = Runtime(cfg, RuntimeOptions(archive_interval_s=3600), capture_factory=factory([]))
    summary = run_until(rt, lambda r: False, timeout=0.3)
    assert summary.exit_code == 0
    assert history(cfg) == [(7, "basic", "c", False), (7, "team", "u", True), (8, "pro", "c", True)]
    assert sum(len(b) for b in ChangelogReader(cfg.changelog_root).events(TABLE)) == 3
    assert journal.pending(ARCHIVED) == [] and journal.segments() == []


def test_a_stop_during_journal_recovery_ends_the_run_and_leaves_the_rest_journaled(tmp_path):
    """SIGTERM while a large journal is being recovered: the run stops between batches, starts no
    capture, and the next start merges what is left, exactly once."""
    cfg = load_config(registry(tmp_path))
    journal = Journal(cfg.state_dir / "journal")
    for n in range(1, 6):
        journal.sink("billing").write([change(n, n, "basic", Op.INSERT)])
    started: list[str] = []

    def make(name, source, tables, state_dir, **_):
        started.append(name)
        return ScriptedCapture([], name, source, tables, state_dir)

    rt = Runtime(cfg, RuntimeOptions(batch_size=1, archive_interval_s=3600), capture_factory=make)
    stop = threading.Event()
    original = rt._record

    def record_then_stop(events, report):  # the signal arrives after the first batch
        original(events, report)
        stop.set()

    rt._record = record_then_stop  # type: ignore[method-assign]
    summary = rt.run(stop)
    assert summary.exit_code == 0 and started == []
    assert len(history(cfg)) == 1 and len(journal.pending(MERGED)) == 4
    rt = Runtime(cfg, RuntimeOptions(archive_interval_s=3600), capture_factory=factory([]))
    assert run_until(rt, lambda r: False, timeout=0.3).exit_code == 0
    assert sorted(h[0] for h in history(cfg)) == [1, 2, 3, 4, 5]
    assert journal.segments() == []


def test_a_failed_capture_stops_the_run_with_its_reason(tmp_path):
    cfg = load_config(registry(tmp_path))

    class Failing(Capture):
        engine = "failing"

        def _run(self, sink, stop):
            sink.write([change(1, 1, "basic", Op.INSERT)])
            raise RuntimeError("slot cdc_billing was dropped")

    rt = Runtime(cfg, RuntimeOptions(max_latency_s=0), capture_factory=lambda *a, **k: Failing(*a))
    summary = run_until(rt, lambda r: False, timeout=10)
    assert summary.exit_code == 1
    assert (
        "capture of source 'billing' failed" in summary.error
        and "slot cdc_billing was dropped" in summary.error
    )
    assert history(cfg) == [
        (1, "basic", "c", True)
    ]  # what was journaled before the failure is kept


def test_unapplicable_events_go_to_dead_letters_and_the_rest_applies(tmp_path):
    cfg = load_config(registry(tmp_path))
    bad = ChangeEvent(
        "billing.public.unknown", Op.INSERT, {"id": 1}, None, {"id": 1}, make_seq(1, 1), 1
    )
    rt = Runtime(
        cfg,
        RuntimeOptions(max_latency_s=0),
        capture_factory=factory([[bad, change(2, 1, "basic", Op.INSERT)]]),
    )
    summary = run_until(rt, lambda r: r.summary.events_merged >= 2)
    assert summary.dead_letters == 1
    assert history(cfg) == [(1, "basic", "c", True)]
    (letter,) = rt.dead_letters.list()
    assert letter.table == "billing.public.unknown" and "not registered" in letter.reason


def test_a_slow_changelog_write_does_not_hold_up_the_merges(tmp_path, monkeypatch):
    # the archiver rolls the journal into Parquet beside the merge loop: a slow write (a big
    # backlog, a slow bucket) must not stall freshness
    from connectors.changelog.writer import ChangelogWriter

    release = threading.Event()
    writing = threading.Event()
    original = ChangelogWriter.append_rows  # the archiver rolls journal rows as Arrow

    def slow_append(self, rows):
        writing.set()
        release.wait(20)
        return original(self, rows)

    cfg = load_config(registry(tmp_path))
    batches = [[change(1, 1, "basic", Op.INSERT)]] + [
        [change(n, 1, f"plan{n}")] for n in range(2, 40)
    ]
    rt = Runtime(
        cfg,
        RuntimeOptions(max_latency_s=0.02, archive_interval_s=0.2),
        capture_factory=factory(batches),
    )
    rt._last_archive = -1e9  # type: ignore[attr-defined]  # archive at once
    monkeypatch.setattr(ChangelogWriter, "append_rows", slow_append)

    merged_during_write: list[int] = []

    def merged_while_writing(r: Runtime) -> bool:
        done = writing.is_set() and not release.is_set() and r.summary.events_merged >= len(batches)
        if done:
            merged_during_write.append(r.summary.events_merged)
            release.set()  # every change merged while the changelog write was still stuck
        return done

    try:
        summary = run_until(rt, merged_while_writing)
    finally:
        release.set()
    assert merged_during_write == [len(batches)] and summary.events_merged == len(batches)
    assert summary.exit_code == 0 and summary.events_archived == len(batches)
    assert Journal(cfg.state_dir / "journal").segments() == []


def test_a_second_cdc_run_on_the_same_state_folder_is_refused_naming_the_pid(
    tmp_path, capsys, monkeypatch
):
    import subprocess
    import sys

    from cdc.cli import main

    monkeypatch.chdir(tmp_path)
    config = registry(tmp_path)
    state = tmp_path / "state"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from cdc.runtime import "
            "exclusive_state_folder\nwith exclusive_state_folder(Path(sys.argv[1])):\n"
            "    print('held', flush=True); time.sleep(60)",
            str(state),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        code = main(["run", "--config", str(config), "--duration", "30"])
        err = capsys.readouterr().err
        assert code == 1 and time.monotonic() - started < 10
        assert f"another `cdc run` (pid {holder.pid}) is already running" in err
        assert str(state) in err
    finally:
        holder.kill()
        holder.wait()
    # once the holder is gone (killed: the kernel let go of its lock) the folder is free again
    rt = Runtime(
        load_config(config), RuntimeOptions(), capture_factory=factory([[change(1, 1, "a")]])
    )
    summary = run_until(rt, lambda r: r.summary.events_merged >= 1)
    assert summary.exit_code == 0 and summary.events_merged == 1


def test_dead_letters_retry_uses_the_state_tables_key_when_the_registry_names_none(
    tmp_path, capsys
):
    from cdc.cli import main
    from connectors.deadletter import DeadLetterStore, NewDeadLetter, default_folder
    from state_models.debezium import encode_debezium

    config = registry(tmp_path)
    config.write_text(config.read_text().replace("        primary_key: [id]\n", ""))
    cfg = load_config(config)
    assert cfg.registry.table(TABLE).primary_key is None  # the capture reads it from the database
    # the runtime's capture knew the key (as pgoutput and Debezium do): the table is keyed by id
    rt = Runtime(
        cfg, RuntimeOptions(), capture_factory=factory([[change(1, 1, "basic", Op.INSERT)]])
    )
    assert run_until(rt, lambda r: r.summary.events_merged >= 1).exit_code == 0
    # a stored message is a Debezium value without its record key
    late = change(2, 1, "pro")
    store = DeadLetterStore(default_folder(cfg.state_dir))
    store.put_many(
        [
            NewDeadLetter(
                reason="warehouse was read-only",
                error_type="TestError",
                raw=encode_debezium(late, "postgres"),
                source="billing",
                table=TABLE,
            )
        ]
    )
    code = main(["dead-letters", "retry", "--config", str(config)])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "") and "1 applied and removed, 0 still failing" in out
    assert history(cfg) == [(1, "basic", "c", False), (1, "pro", "u", True)]
    assert store.list() == []


def test_cdc_progress_holds_the_applied_seq_and_a_caught_up_time_that_advances_while_idle(
    tmp_path,
):
    """The capture attests it has read everything (as a keepalive does); once the journal holds
    nothing unmerged, the table's `caught_up_at` in `cdc_progress` follows it, idle or not."""
    cfg = load_config(registry(tmp_path))

    class CaughtUp(ScriptedCapture):
        def _run(self, sink, stop):
            sink.write(self.batches[0])
            self._acknowledged(self.batches[0])
            while not stop.wait(0.1):  # idle: the source keeps answering, nothing to read
                self._update(source_contact_at=time.time(), caught_up_at=time.time())

    def make(name, source, tables, state_dir, **_):
        return CaughtUp(
            [[change(1, 1, "basic", Op.INSERT), change(2, 1, "pro")]],
            name,
            source,
            tables,
            state_dir,
        )

    rt = Runtime(
        cfg,
        RuntimeOptions(max_latency_s=0.05, archive_interval_s=3600, progress_interval_s=0.2),
        capture_factory=make,
    )
    first: dict = {}

    def caught_twice(r):
        at = r.progress[TABLE].caught_up_at
        if at is not None and "at" not in first and r._progress_written.get(TABLE):
            first["at"] = at
        return "at" in first and at is not None and at > first["at"] + 1.0

    started = time.time()
    assert run_until(rt, caught_twice).exit_code == 0
    wh = open_warehouse(cfg.warehouse_url)
    try:
        [row] = wh.progress()
    finally:
        wh.close()
    assert (row["source"], row["table_id"], row["state_table"]) == (
        "billing",
        TABLE,
        "billing_subscriptions",
    )
    assert row["applied_seq"] == make_seq(2, 2) and row["writer"] == "cdc run"
    assert row["applied_commit_at"].timestamp() == (1_790_000_000_000_000 + 2000) / 1e6
    caught = row["caught_up_at"].timestamp()
    assert caught >= first["at"] + 1.0 and started < caught <= time.time()
    assert row["commit_to_visible_s"] > 0


def test_a_tables_freshness_is_its_sources_state_with_its_own_caught_up_time():
    import datetime as dt

    from cdc.commands.runtime import table_freshness

    now = 1_800_000_000.0

    def capture(state: str, text: str, stalled: float | None = None) -> dict:
        return {"freshness": text, "freshness_detail": {"state": state, "stalled_for_s": stalled}}

    at = dt.datetime.fromtimestamp(now - 4, dt.UTC)
    idle = table_freshness(
        capture("idle", "idle (caught up 1.0s ago)"),
        {"caught_up_at": at, "writer": "cdc run", "commit_to_visible_s": 0.4},
        {"caught_up_at": now - 9, "commit_to_visible_s": None},
        now,
    )
    # the newer of the warehouse's and the run's figure; the stored latency when the run has none
    assert idle["text"] == "idle (caught up 4.0s ago)" and idle["caught_up_age_s"] == 4.0
    assert idle["commit_to_visible_s"] == 0.4 and idle["state"] == "idle"
    stalled = table_freshness(capture("stalled", "STALLED 40.0s", 40.0), None, {}, now)
    assert (stalled["state"], stalled["text"], stalled["stalled_for_s"]) == (
        "stalled",
        "STALLED 40.0s",
        40.0,
    )
    # merged by the Beam job: no `cdc run` here, so its recorded progress speaks
    beam = table_freshness(
        capture("down", "down (cdc run is not running)"),
        {
            "writer": "beam",
            "applied_commit_at": dt.datetime.fromtimestamp(now - 30, dt.UTC),
            "updated_at": dt.datetime.fromtimestamp(now - 5, dt.UTC),
        },
        {},
        now,
    )
    assert beam["state"] == "beam"
    assert beam["text"] == "Beam job: newest change 30.0s old, progress 5.0s ago"


def test_the_watermark_stops_before_a_transaction_holding_a_dead_letter(tmp_path):
    from dataclasses import replace

    from state_models.watermark import seq_before

    def tx(n: int, *events: ChangeEvent) -> list[ChangeEvent]:
        return [replace(e, tx_id=str(n)) for e in events]

    bad = ChangeEvent(
        "billing.public.unknown", Op.INSERT, {"id": 9}, None, {"id": 9}, make_seq(20, 22), 1
    )
    first = tx(1, change(10, 1, "a", Op.INSERT))
    # the transaction with the change that cannot be applied starts at (20, 21)
    held = tx(2, replace(change(20, 2, "b", Op.INSERT), seq=make_seq(20, 21)), bad)
    later_ones = [tx(3, change(30, 3, "c", Op.INSERT)), tx(4, change(40, 4, "d", Op.INSERT))]
    cfg = load_config(registry(tmp_path))
    rt = Runtime(
        cfg,
        RuntimeOptions(max_latency_s=0, status_interval_s=0.05),
        capture_factory=factory([first, held, *later_ones]),
    )
    run_until(rt, lambda r: r.summary.events_merged >= 5)
    (letter,) = rt.dead_letters.list()
    mark = rt.watermarks["billing"]
    assert mark.through == seq_before(make_seq(20, 21))
    assert mark.held() == (letter.id, seq_before(make_seq(20, 21)))
    wh = open_warehouse(cfg.warehouse_url)
    try:
        (row,) = wh.progress()
    finally:
        wh.close()
    assert row["watermark_seq"] == mark.through and row["watermark_held_by"] == letter.id

    # the letter is dealt with (removed): a restart lets the watermark go on
    rt.dead_letters.remove([letter.id])
    rt = Runtime(
        cfg,
        RuntimeOptions(max_latency_s=0, status_interval_s=0.05),
        capture_factory=factory([*later_ones, tx(5, change(50, 5, "e", Op.INSERT))]),
    )
    run_until(rt, lambda r: r.summary.events_merged >= 3)
    assert rt.watermarks["billing"].held() is None
    assert rt.watermarks["billing"].through == seq_before(make_seq(50, 50))

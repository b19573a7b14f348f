"""The embedded runtime behind ``cdc run``: capture → journal → (merge | changelog), on one machine.

::

    capture (one thread per source) ──write──► journal segment (fsynced) ──► offset advances
                                                   │
                   merge loop (main thread) ◄──────┤  woken by each journal write: merges what
                   apply_events → warehouse        │  waits (≤ batch_size events)
                                                   │
                   archiver (own thread)   ◄───────┘  every archive_interval_s: the changelog
                   ChangelogWriter → Parquet files     (few large immutable files; merges go on
                                                        meanwhile, so freshness does not stall)

Nothing is lost at any crash point: a batch is acknowledged to the capture only once its journal
segment is on disk, and a segment is deleted only once it is both merged and archived. On start
the runtime first finishes whatever the journal still holds (the merge is idempotent and the
changelog tolerates duplicates), then starts the captures. Stopping (``stop`` set by Ctrl-C or
SIGTERM) makes each capture flush its last batch and save its position, then merges and archives
everything journaled, and returns.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from cdc.config import LoadedConfig
from cdc.metrics import LatencyHistogram
from connectors.capture import Capture, CaptureStats, make_capture, prepare_engines
from connectors.changelog.writer import ChangelogWriter
from connectors.deadletter import DeadLetterStore, Sealing, default_folder
from connectors.journal import ARCHIVED, MERGED, Journal, Segment
from connectors.warehouse import Warehouse, open_warehouse
from merge_jobs.apply import applied_only, apply_events
from state_models.errors import CdcError, TransientError
from state_models.registry import Registry, table_infos
from state_models.scd2 import TableDef
from state_models.watermark import TransactionCuts, hold_for, later

#: in the state folder: the tables whose online store may lack merged changes (JSON list of ids)
ONLINE_UNSYNCED = "online_unsynced.json"

log = logging.getLogger("cdc.run")

STATUS_FILE = "status.json"
#: Held (flock) by the one `cdc run` of a state folder; holds its pid. The kernel lets go of it
#: when the process ends, however it ends, so a crash never leaves a stale lock behind.
RUN_LOCK_FILE = "run.lock"

CaptureFactory = Callable[..., Capture]
RELEASE_EVERY_S = 0.5  # a busy merge loop lets go of the DuckDB file this often...
RELEASE_PAUSE_S = 0.03  # ...for this long (a reader waiting on the file retries every 20 ms)


@dataclass
class RuntimeOptions:
    batch_size: int = 10_000  # events per MERGE, at most
    #: how long a journaled event may wait for more to merge with it; 0: merge at once (events
    #: that arrive during a merge make the next one larger, so a busy source still merges in
    #: large batches)
    max_latency_s: float = 0.0
    archive_interval_s: float = 60.0  # how often journaled events are rolled into the changelog
    status_interval_s: float = 1.0
    #: how often cdc_progress is written (None: every second on DuckDB, every 10 s on BigQuery,
    #: where each write is a DML statement)
    progress_interval_s: float | None = None
    poll_s: float = 0.05


class _Waking:
    """A capture's journal sink that wakes the merge loop once a batch is durable."""

    def __init__(self, sink: Any, event: threading.Event):
        self.sink, self.event = sink, event

    def write(self, events: Sequence[Any]) -> None:
        self.sink.write(events)
        self.event.set()


@dataclass
class TableProgress:
    table_id: str
    state_table: str
    events: int = 0  # events merged by this run
    versions_written: int = 0
    dead_letters: int = 0
    last_seq: str | None = None  # highest seq merged by this run
    last_commit_ts: int | None = None  # newest commit time merged (µs)
    last_merged_at: float | None = None
    #: seconds from the newest merged change's source commit to the end of its MERGE
    commit_to_visible_s: float | None = None
    #: the table held every change its source had written up to this time (the capture attests
    #: it, and everything captured before it was merged): advances while the source is idle
    caught_up_at: float | None = None
    source: str = ""

    def lag_s(self, now: float) -> float | None:
        return None if self.last_commit_ts is None else max(0.0, now - self.last_commit_ts / 1e6)


@dataclass
class SourceWatermark:
    """A source's watermark as this run keeps it (``state_models.watermark``)."""

    through: str | None = None  # the cut; never moves back
    #: dead letters holding it: letter id -> the cut just before its transaction
    holds: dict[str, str] = field(default_factory=dict)

    def held(self) -> tuple[str, str] | None:
        """(letter id, cut) of the lowest hold."""
        return min(self.holds.items(), key=lambda kv: kv[1]) if self.holds else None

    def advance(self, cut: str | None) -> bool:
        """Move to ``cut`` (not past a hold, never back); whether it moved."""
        held = self.held()
        if cut is not None and held is not None:
            cut = min(cut, held[1])
        moved = later(self.through, cut)
        if moved == self.through:
            return False
        self.through = moved
        return True


@dataclass
class RunSummary:
    exit_code: int = 0
    events_merged: int = 0
    events_archived: int = 0
    dead_letters: int = 0
    error: str | None = None
    tables: dict[str, TableProgress] = field(default_factory=dict)


class StateFolderBusyError(CdcError):
    """Another ``cdc run`` holds the state folder (two would fight over slots, journal and offsets)."""


@contextlib.contextmanager
def exclusive_state_folder(state_dir: Path) -> Any:
    """Hold the state folder for this process, or raise ``StateFolderBusyError`` naming the pid."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / RUN_LOCK_FILE
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise StateFolderBusyError(
                f"another `cdc run` (pid {holder}) is already running on the state folder "
                f"{state_dir}; stop it first (kill {holder}), or give this registry its own "
                "state folder"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Runtime:
    """Runs every registered source's capture and the merge/archive loops until ``stop`` is set."""

    def __init__(
        self,
        cfg: LoadedConfig,
        options: RuntimeOptions | None = None,
        *,
        registry: Registry | None = None,
        capture_factory: CaptureFactory = make_capture,
        on_status: Callable[[Runtime], None] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.cfg = cfg
        self.registry = registry or cfg.registry
        self.options = options or RuntimeOptions()
        self.capture_factory = capture_factory
        self.on_status = on_status
        self.clock = clock
        self.state_dir = cfg.state_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(self.state_dir / "journal")
        self.dead_letters = DeadLetterStore(
            default_folder(self.state_dir), sealing=Sealing.of(self.registry)
        )
        self.tables: dict[str, TableDef] = {
            t.id: TableDef.from_registered(t) for t in self.registry.tables()
        }
        self.progress: dict[str, TableProgress] = {
            t.id: TableProgress(t.id, t.state_table, source=t.source_name)
            for t in self.registry.tables()
        }
        self._progress_written: dict[str, tuple[Any, ...]] = {}  # what cdc_progress holds
        #: per source: where its transactions are complete (the merge follows them in log order)
        self._cuts: dict[str, TransactionCuts] = {
            name: TransactionCuts() for name in self.registry.sources
        }
        self.watermarks: dict[str, SourceWatermark] = {
            name: SourceWatermark() for name in self.registry.sources
        }
        self._holds_read = -1e9
        self._consistency_made: dict[str, frozenset[str]] = {}
        self._reshaped = False  # a table's columns changed since the functions were made
        self._set_aside_seen = 0  # changes the captures set aside, when the holds were read
        #: table id -> the syncer of the online store that keeps it (started by run)
        self.online: dict[str, Any] = {}
        #: tables whose merged changes may not all be in their online store yet, kept durably in
        #: ONLINE_UNSYNCED: a run that stops or dies before its store has them refills them next time
        self._unsynced: set[str] = set()
        self._next_progress = 0.0
        self.captures: dict[str, Capture] = {}
        self.summary = RunSummary(tables=self.progress)
        self._threads: dict[str, threading.Thread] = {}
        self._capture_errors: dict[str, BaseException] = {}
        self._warehouse: Warehouse | None = None
        self._writer: ChangelogWriter | None = None
        self._last_archive = self.clock()
        self._started = time.monotonic()
        self._merged_window: list[tuple[float, int]] = []
        self._postponed_said = -1e9
        self._archive_error: BaseException | None = None
        # the merge lists and reads segments while the archiver may prune finished ones
        self._journal_lock = threading.Lock()
        self._journaled = threading.Event()  # set by every journal write: the merge loop wakes
        # commit-to-visible latency of recently merged events (seconds), for status and the demo
        self.latencies: deque[float] = deque(maxlen=200_000)
        self.latency_histogram = LatencyHistogram()  # cumulative, for /metrics

    # ------------------------------------------------------------------ lifecycle

    def prepare(self) -> None:
        """Start what the captures share per process (the JVM for Debezium). ``run`` does it too;
        a caller that runs ``run`` on a worker thread calls this on the main thread first."""
        prepare_engines(s for s in self.registry.sources.values())

    def run(self, stop: threading.Event) -> RunSummary:
        """Block until ``stop`` is set or a capture fails; returns what happened (``exit_code``).

        Raises ``StateFolderBusyError`` at once when another ``cdc run`` holds the state folder."""
        with exclusive_state_folder(self.state_dir):
            return self._run(stop)

    def _run(self, stop: threading.Event) -> RunSummary:
        self.prepare()
        # another process (`cdc status`, `cdc history`) may be reading the file this moment: wait
        # a little (opening and reopening after `release`), then a merge is postponed, not lost
        self._warehouse = open_warehouse(self.cfg.warehouse_url, lock_wait_s=2.0)
        self._writer = ChangelogWriter(self.cfg.changelog_root)
        capture_stop = threading.Event()
        archive_stop = threading.Event()
        archiver: threading.Thread | None = None
        self._start_online()
        try:
            self._read_holds()
            # a stop while recovering a large journal is honoured between batches: the rest
            # stays journaled for the next start (captures were never started, so nothing new)
            recovered = self._merge_pending(drain=True, until=stop)
            archived = 0 if stop.is_set() else self._archive_pending()
            if recovered or archived:
                log.info("recovered journal: merged %d events, archived %d", recovered, archived)
            if not stop.is_set():
                self._start_captures(capture_stop)
            archiver = threading.Thread(
                target=self._archive_loop, args=(archive_stop,), name="archiver", daemon=True
            )
            archiver.start()
            next_status = 0.0
            released = time.monotonic()
            while not stop.is_set():
                merged = self._merge_pending()
                failed = self._failed_part()
                if failed is not None:
                    name, exc = failed
                    self.summary.exit_code = 1
                    self.summary.error = f"{name} failed: {exc}"
                    log.error("%s", self.summary.error)
                    break
                now = time.monotonic()
                if now >= next_status:
                    self._refill_online()
                    self._note_caught_up()
                    self._write_progress(now)
                    self._write_status()
                    if self.on_status is not None:
                        self.on_status(self)
                    next_status = now + self.options.status_interval_s
                # the DuckDB file is let go whenever the loop is idle, and while merges follow each
                # other at least every RELEASE_EVERY_S for a moment, so `cdc history` & co. (which
                # retry every 20 ms) can read it; reopening it for every merge would cost more
                # than a small merge itself
                if not merged or now - released >= RELEASE_EVERY_S:
                    self._warehouse.release()
                    released = now
                    if merged:
                        stop.wait(RELEASE_PAUSE_S)
                # woken by the next journal write (or stop), else it looks again after poll_s
                self._journaled.wait(self.options.poll_s)
                self._journaled.clear()
        finally:
            capture_stop.set()
            for name, t in self._threads.items():
                t.join(timeout=120)
                if t.is_alive():
                    log.error("capture of source %r did not stop within 120 s", name)
            archive_stop.set()
            if archiver is not None:
                archiver.join(timeout=300)
            try:
                if self._threads:  # what the captures of this run journaled
                    self._merge_pending(drain=True)
                    self._archive_pending()
                self._note_caught_up()
                self._write_progress(None)
            finally:
                self._write_status(stopped=True)
                self._stop_online()
                if self._warehouse is not None:
                    self._warehouse.close()
        return self.summary

    def _start_captures(self, capture_stop: threading.Event) -> None:
        for name, source in self.registry.sources.items():
            if not source.tables:
                continue
            capture = self.capture_factory(
                name, source, table_infos(self.registry, name), self.state_dir
            )
            self.captures[name] = capture

            sink = _Waking(self.journal.sink(name), self._journaled)
            t = threading.Thread(
                target=self._capture_body,
                args=(name, capture, sink, capture_stop),
                name=f"capture-{name}",
                daemon=True,
            )
            t.start()
            self._threads[name] = t

    def _capture_body(self, name: str, capture: Capture, sink: Any, stop: threading.Event) -> None:
        try:
            capture.run(sink, stop)
        except BaseException as exc:  # reported by the main loop, which stops the run
            self._capture_errors[name] = exc

    def _failed_part(self) -> tuple[str, BaseException] | None:
        """The first background part (a capture, the archiver) that stopped with an error."""
        for name, exc in self._capture_errors.items():
            return f"capture of source {name!r}", exc
        if self._archive_error is not None:
            return "the changelog archiver", self._archive_error
        return None

    def _archive_loop(self, stop: threading.Event) -> None:
        """Roll the journal into the changelog every ``archive_interval_s``, beside the merges."""
        while not stop.wait(
            max(0.0, self._last_archive + self.options.archive_interval_s - self.clock())
        ):
            try:
                self._archive_pending()
            except BaseException as exc:  # reported by the main loop, which stops the run
                self._archive_error = exc
                return

    # ------------------------------------------------------------------ merge

    def _merge_pending(self, drain: bool = False, until: threading.Event | None = None) -> int:
        """Merge journaled segments: when enough events wait, or the oldest waited long enough.

        With ``drain`` everything pending is merged now (start-up recovery, shutdown), batch by
        batch until ``until`` is set.
        """
        assert self._warehouse is not None
        total = 0
        while until is None or not until.is_set():
            with self._journal_lock:
                pending = self.journal.pending(MERGED)
                if not pending:
                    return total
                if not drain and not self._due(pending):
                    return total
                take, events = self._take(pending)
            by_source: dict[str, list[Any]] = {}
            for e in events:  # one pass: each source's changes, in their log order
                by_source.setdefault(e.source, []).append(e)
            starts: dict[str, str | None] = {}
            for name, changes in by_source.items():
                if name in self._cuts:
                    starts.update(self._cuts[name].observe(changes))
            self._mark_unsynced({e.table for e in events})
            try:
                report = apply_events(
                    self._warehouse,
                    self.tables,
                    events,
                    ingested_at=dt.datetime.fromtimestamp(self.clock(), dt.UTC),
                    dead_letters=self.dead_letters,
                    batch_size=self.options.batch_size,
                    context_of=partial(self._hold_context, starts=starts),
                )
            except TransientError as exc:
                now = time.monotonic()
                if now - self._postponed_said >= 30:  # e.g. `cdc replay` holds the DuckDB file
                    log.warning("merge postponed, will retry: %s", exc)
                    self._postponed_said = now
                return total
            Journal.mark(take, MERGED)
            self._record(events, report)
            self._feed_online(events)
            self._advance_watermarks(report)
            if any(c.schema_changes for c in report.tables.values()):
                self._reshaped = True
            total += len(events)
            if not drain and len(take) == len(pending):
                return total
        return total

    # ------------------------------------------------------------------ online store

    def _start_online(self) -> None:
        """A syncer per ``online:`` store of the registry (``connectors.online``)."""
        from connectors.online import OnlineSyncer
        from connectors.online_stores import open_online

        syncers: dict[int, Any] = {}
        for t in self.registry.tables():
            store = self.registry.online_for(t)
            if store is None:
                continue
            if id(store) not in syncers:
                syncers[id(store)] = OnlineSyncer(open_online(store))
            self.online[t.id] = syncers[id(store)]
            syncers[id(store)].tables.add(t.id)
        # the last run stopped or died before its stores had everything it merged: refill those
        # tables from their state tables (through the fence) once the store answers
        try:
            owed = json.loads((self.state_dir / ONLINE_UNSYNCED).read_text())
        except FileNotFoundError:
            owed = []
        except ValueError:  # torn by hand: refill every kept table
            owed = list(self.online)
        for table_id in owed:
            if table_id in self.online:
                self.online[table_id].stale.add(table_id)
                self._unsynced.add(table_id)

    def _feed_online(self, events: Sequence[Any]) -> None:
        """Hand the current version of each key the merge touched to its online store."""
        from connectors.online import current_online_rows, touched_keys

        if not self.online:
            return
        assert self._warehouse is not None
        for table_id, keys in touched_keys(events).items():
            if table_id in self.online:
                rows = current_online_rows(self._warehouse, self.tables[table_id], keys)
                self.online[table_id].put(rows)

    def _refill_online(self) -> None:
        """Tables an online store fell too far behind on: refilled from their state table once
        the store answers again."""
        from connectors.online import current_online_rows

        assert self._warehouse is not None
        for syncer in {id(s): s for s in self.online.values()}.values():
            if not syncer.stale or syncer.pending():
                continue
            try:
                syncer.store.ping()
            except Exception:  # still down: next time
                continue
            for table_id in sorted(syncer.stale):
                syncer.put(current_online_rows(self._warehouse, self.tables[table_id]))
                syncer.stale.discard(table_id)
        self._clear_synced()

    def _mark_unsynced(self, table_ids: set[str]) -> None:
        """Before a merge of these tables: note durably that their store may lack changes."""
        kept = {t for t in table_ids if t in self.online} - self._unsynced
        if kept:
            self._unsynced |= kept
            self._write_unsynced()

    def _clear_synced(self) -> None:
        """Once every store has written all it was handed (and needs no refill), nothing is owed."""
        if not self._unsynced:
            return
        syncers = {id(self.online[t]): self.online[t] for t in self._unsynced}.values()
        if all(s.idle() and not s.stale for s in syncers):
            self._unsynced.clear()
            self._write_unsynced()

    def _write_unsynced(self) -> None:
        from connectors.capture.offsets import write_atomically

        path = self.state_dir / ONLINE_UNSYNCED
        if self._unsynced:
            write_atomically(path, json.dumps(sorted(self._unsynced)).encode())
        else:
            path.unlink(missing_ok=True)

    def _stop_online(self) -> None:
        syncers = {id(s): s for s in self.online.values()}.values()
        for syncer in syncers:
            syncer.flush(10.0)  # what is not written by then is refilled at the next start
        self._clear_synced()
        for syncer in syncers:
            syncer.close()

    def _hold_context(self, event: Any, starts: dict[str, str | None]) -> dict[str, Any]:
        """What a dead letter keeps of its transaction: where it holds the source's watermark."""
        mark = self.watermarks.get(event.source)
        tx_start = starts.get(event.event_id)
        through = mark.through if mark is not None else None
        return {"watermark_hold": hold_for(tx_start, through)}  # (the letter keeps tx_id)

    def _advance_watermarks(self, report: Any) -> None:
        """After a merge: each source's watermark moves to just before its open transaction,
        except past a change of its that was dead-lettered (that holds it), here or by its capture
        (which stores a change it cannot read before the changes after it reach the journal)."""
        set_aside = sum(c.stats().set_aside for c in self.captures.values())
        if set_aside != self._set_aside_seen:
            self._set_aside_seen = set_aside
            self._read_holds()
        for letter in report.dead_letters:
            mark = self.watermarks.get(letter.source or "")
            hold = letter.context.get("watermark_hold")
            if mark is not None and isinstance(hold, str):
                mark.holds[letter.id] = hold
        for name, cuts in self._cuts.items():
            self.watermarks[name].advance(cuts.complete_through())

    def _read_holds(self) -> None:
        """The dead letters in the store that hold a watermark (a restart keeps them; a letter
        replayed or removed lets go)."""
        holds: dict[str, dict[str, str]] = {name: {} for name in self.watermarks}
        for letter in self.dead_letters.list():
            hold = letter.context.get("watermark_hold")
            if letter.source in holds and isinstance(hold, str):
                holds[letter.source][letter.id] = hold
        for name, found in holds.items():
            self.watermarks[name].holds = found

    def _due(self, pending: Sequence[Segment]) -> bool:
        oldest = min(s.path.stat().st_mtime for s in pending)
        if self.clock() - oldest >= self.options.max_latency_s:
            return True
        # a rough count: enough waiting to fill a MERGE is worth merging now
        return sum(s.size for s in pending) >= self.options.batch_size * 200

    def _take(self, pending: Sequence[Segment]) -> tuple[list[Segment], list[Any]]:
        take: list[Segment] = []
        events: list[Any] = []
        for seg in pending:
            if events and len(events) >= self.options.batch_size:
                break
            take.append(seg)
            events.extend(Journal.read(seg))
        return take, events

    def _record(self, events: Sequence[Any], report: Any) -> None:
        now = self.clock()
        for e in applied_only(events, report.dead_letters):  # a refused event's time may be wild
            p = self.progress.get(e.table)
            if p is None:
                continue
            p.events += 1
            if p.last_seq is None or e.seq > p.last_seq:
                p.last_seq = e.seq
            seconds = max(0.0, now - e.commit_ts / 1e6)
            if p.last_commit_ts is None or e.commit_ts >= p.last_commit_ts:
                p.last_commit_ts = e.commit_ts
                p.commit_to_visible_s = seconds
            p.last_merged_at = now
            self.latencies.append(seconds)
            self.latency_histogram.observe(seconds)
        for tid, counts in report.tables.items():
            if tid in self.progress:
                self.progress[tid].versions_written += counts.inserted
                self.progress[tid].dead_letters += counts.dead_lettered
        self.summary.events_merged += len(events)
        self.summary.dead_letters += len(report.dead_letters)
        for letter in report.dead_letters:
            log.warning("dead letter %s (%s): %s", letter.id, letter.table, letter.reason)
        self._merged_window.append((time.monotonic(), len(events)))

    # ------------------------------------------------------------------ progress

    def _note_caught_up(self) -> None:
        """A source's tables are caught up as of the time its capture last was, once nothing it
        captured before then waits in the journal (read that time first, then the journal)."""
        now = time.monotonic()
        if now - self._holds_read >= 30.0:
            self._holds_read = now
            self._read_holds()
        for name, capture in self.captures.items():
            stats = capture.stats()
            caught = stats.caught_up_at
            if self.journal.pending(MERGED, source=name):
                continue
            if name in self.watermarks:  # everything handed over is merged: complete through
                self.watermarks[name].advance(stats.complete_through)
            if caught is None:
                continue
            for p in self.progress.values():
                if p.source == name and (p.caught_up_at is None or caught > p.caught_up_at):
                    p.caught_up_at = caught

    def _write_progress(self, now: float | None) -> None:
        """Upsert the tables' rows of ``cdc_progress`` that changed, every
        ``progress_interval_s`` (``now`` None: at once). Written after the MERGEs it reports
        committed, so it is never ahead of the state tables; a busy warehouse postpones it."""
        from state_models.progress import Progress

        assert self._warehouse is not None
        if now is not None and now < self._next_progress:
            return
        if now is not None:
            every = self.options.progress_interval_s
            if every is None:
                every = 1.0 if self.cfg.warehouse_url.startswith("duckdb:") else 10.0
            self._next_progress = now + every

        def at(seconds: float | None) -> dt.datetime | None:
            return None if seconds is None else dt.datetime.fromtimestamp(seconds, dt.UTC)

        rows, marks = [], {}
        for p in self.progress.values():
            water = self.watermarks.get(p.source, SourceWatermark())
            held = water.held()
            mark = (p.last_seq, p.caught_up_at, p.commit_to_visible_s, water.through, held)
            if p.last_seq is None and p.caught_up_at is None:
                continue
            if self._progress_written.get(p.table_id) == mark:
                continue
            marks[p.table_id] = mark
            rows.append(
                Progress(
                    source=p.source,
                    table_id=p.table_id,
                    state_table=p.state_table,
                    applied_seq=p.last_seq,
                    applied_commit_at=None
                    if p.last_commit_ts is None
                    else dt.datetime.fromtimestamp(p.last_commit_ts / 1e6, dt.UTC),
                    caught_up_at=at(p.caught_up_at),
                    commit_to_visible_s=p.commit_to_visible_s,
                    writer="cdc run",
                    watermark_seq=water.through,
                    watermark_held_by=None if held is None else held[0],
                )
            )
        if not rows:
            return
        try:
            self._warehouse.record_progress(rows, dt.datetime.fromtimestamp(self.clock(), dt.UTC))
            self._make_consistency_objects()
        except TransientError as exc:  # e.g. `cdc replay` holds the DuckDB file: next time
            log.debug("cdc_progress not written now: %s", exc)
            return
        self._progress_written.update(marks)

    def _make_consistency_objects(self) -> None:
        """The sources' consistent as-of view and functions (``state_models.consistency``),
        (re-)made when a source's set of merged tables or a table's columns changed."""
        assert self._warehouse is not None
        for name in self.watermarks:
            merged = frozenset(
                p.table_id for p in self.progress.values() if p.source == name and p.last_seq
            )
            if not merged or (self._consistency_made.get(name) == merged and not self._reshaped):
                continue
            tables = [t for t in self.tables.values() if t.source == name]
            self._warehouse.ensure_consistency(name, tables)
            self._consistency_made[name] = merged
        self._reshaped = False

    # ------------------------------------------------------------------ archive

    def _archive_pending(self) -> int:
        """Roll every journaled, not yet archived segment into the changelog; prune finished ones."""
        assert self._writer is not None
        self._last_archive = self.clock()
        pending = self.journal.pending(ARCHIVED)
        total = 0
        for chunk in _chunks(pending, 64):
            for seg in chunk:  # one segment at a time: memory stays bounded whatever the backlog
                rows = Journal.rows(seg)
                if rows is None:  # an older segment format: through its events
                    events = list(Journal.read(seg))
                    self._writer.append(events)
                    total += len(events)
                else:
                    self._writer.append_rows(rows)
                    total += rows.num_rows
            self._writer.flush()
            Journal.mark(chunk, ARCHIVED)
        with self._journal_lock:
            self.journal.prune()
        self.summary.events_archived += total
        return total

    # ------------------------------------------------------------------ status

    def events_per_second(self, window_s: float = 5.0) -> float:
        now = time.monotonic()
        self._merged_window = [(t, n) for t, n in self._merged_window if now - t <= window_s]
        if not self._merged_window:
            return 0.0
        span = max(now - min(t for t, _ in self._merged_window), 1e-3)
        return sum(n for _, n in self._merged_window) / max(
            span, min(window_s, now - self._started)
        )

    def freshness(self) -> dict[str, float] | None:
        """p50 / p99 / max seconds from source commit to merged, over recently merged events."""
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)

        def pct(q: float) -> float:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

        return {"p50": pct(0.50), "p99": pct(0.99), "max": ordered[-1], "n": float(len(ordered))}

    def capture_stats(self) -> dict[str, CaptureStats]:
        return {name: c.stats() for name, c in self.captures.items()}

    def status(self, stopped: bool = False) -> dict[str, Any]:
        now = self.clock()
        return {
            "pid": os.getpid(),
            "running": not stopped,
            "updated_at": now,
            "events_merged": self.summary.events_merged,
            "events_archived": self.summary.events_archived,
            "events_per_second": round(self.events_per_second(), 1),
            "dead_letters": len(self.dead_letters),
            "journal_segments": len(self.journal.segments()),
            "tables": {
                tid: {**asdict(p), "lag_s": p.lag_s(now)} for tid, p in self.progress.items()
            },
            "captures": {
                name: {**asdict(s), "lag_s": s.lag_seconds(now)}
                for name, s in self.capture_stats().items()
            },
            "watermarks": {
                name: {
                    "through": w.through,
                    "held_by": None if w.held() is None else w.held()[0],  # type: ignore[index]
                }
                for name, w in self.watermarks.items()
            },
            "error": self.summary.error,
        }

    def _write_status(self, stopped: bool = False) -> None:
        path = self.state_dir / STATUS_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.status(stopped), indent=1, default=str))
        tmp.replace(path)

    def status_line(self) -> str:
        now = self.clock()
        lags = []
        for p in self.progress.values():
            lag = p.lag_s(now)
            if lag is not None:
                lags.append(f"{p.state_table} {lag:.1f}s")
        captured = sum(s.events for s in self.capture_stats().values())
        phases = ",".join(sorted({s.phase for s in self.capture_stats().values()})) or "-"
        return (
            f"captured {captured:,} | merged {self.summary.events_merged:,} "
            f"({self.events_per_second():,.0f}/s) | lag {', '.join(lags) or '-'} | "
            f"dead letters {len(self.dead_letters)} | capture {phases}"
        )


def read_status(state_dir: Path) -> dict[str, Any] | None:
    """The last status a running (or stopped) ``cdc run`` wrote, if any, with ``running`` set to
    whether a ``cdc run`` holds the state folder now: a run killed with SIGKILL wrote ``running:
    true`` last, but the kernel released its lock (``down``: it says so)."""
    try:
        doc = json.loads((state_dir / STATUS_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if not isinstance(doc, dict):
        return None
    alive = state_folder_held(state_dir)
    doc["down"] = bool(doc.get("running")) and not alive
    doc["running"] = alive
    return doc


def state_folder_held(state_dir: Path) -> bool:
    """Whether a ``cdc run`` holds ``state_dir`` now (its lock is taken). A shared, non-blocking
    test of the lock: if nobody holds it, it is released again at once."""
    try:
        handle = open(state_dir / RUN_LOCK_FILE, encoding="utf-8")  # noqa: SIM115
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def _chunks(items: Sequence[Segment], size: int) -> list[list[Segment]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


__all__ = ["CdcError", "RunSummary", "Runtime", "RuntimeOptions", "read_status"]

"""The contracts every capture engine and every sink share.

A *capture* turns one registered source into batches of ``ChangeEvent`` read from the database log
(after an initial snapshot when asked). It hands each batch to an ``EventSink`` and only after
``write`` has returned does it make the batch's position durable (offset file, Debezium offset store)
and tell the database it may discard the log up to there (PostgreSQL: confirm the slot LSN). So
delivery is **at least once**: a crash between ``write`` and the offset save re-delivers that batch
(same ``seq``, same ``event_id``), and nothing a sink acknowledged is ever asked for again, nor is
anything lost.

::

    capture = make_capture("billing", source, table_infos, state_dir)
    stop = threading.Event()
    capture.run(sink, stop)   # blocks; set `stop` from another thread to flush and return

``run`` returns when ``stop`` is set (after the pending batch is written and its position saved) or
raises on a fatal error: ``PositionLostError`` (the source can no longer serve our position:
re-snapshot), ``CaptureError`` (the engine failed, with the engine's reason), ``ConfigError``. A
source that cannot be reached is retried with backoff inside ``run`` (each attempt is logged and
counted in ``stats().retries``); it is not an error until ``max_retry_seconds`` have passed.

Sinks own durability: ``write`` returns only once the batch is durable (fsynced file, Pub/Sub
publish futures resolved, ...) and raises otherwise; the capture then stops without advancing its
position. Events inside a batch are in source commit order (``seq`` ascending, except that the rows
of one snapshot share the snapshot's seq). Across restarts a sink may see a suffix of what it
already acknowledged again, never a gap.

Native readers (pgoutput, binlog) can also render the Debezium JSON envelope of every event into
``ChangeEvent.raw`` (``keep_raw=True``, their constructors' default); ``make_capture``, which
``cdc run`` uses, turns it off: a sink that needs Debezium JSON encodes it from the event.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from connectors.capture.errors import CaptureError as CaptureError
from connectors.capture.errors import PositionLostError as PositionLostError
from state_models.events import ChangeEvent
from state_models.pii import TablePolicy, protect_all
from state_models.registry import Source
from state_models.tables import TableInfo

if TYPE_CHECKING:
    from connectors.deadletter import NewDeadLetter

log = logging.getLogger("cdc.capture")


@runtime_checkable
class EventSink(Protocol):
    """Where a capture delivers its batches.

    ``write`` must return only once the whole batch is durable, and raise otherwise. A capture calls
    it from one thread at a time, with batches in source order; the same events may come again after
    a crash or a failed ``write`` (at-least-once), identified by their ``event_id``.
    """

    def write(self, events: Sequence[ChangeEvent]) -> None: ...


@dataclass(frozen=True)
class CaptureStats:
    """Progress of a capture, as a consistent snapshot (see ``Capture.stats``)."""

    source: str
    engine: str
    phase: str = "starting"  # starting | snapshot | streaming | retrying | stopped | failed
    events: int = 0  # change events handed to the sink and acknowledged
    batches: int = 0
    snapshot_rows: int = 0
    last_seq: str | None = None
    last_commit_ts: int | None = None  # microseconds, UTC, of the last acknowledged event
    last_batch_at: float | None = None  # time.time() of the last acknowledged batch
    retries: int = 0
    last_error: str | None = None
    set_aside: int = 0  # changes the capture could not read, in the dead-letter store
    #: time.time() the source last answered (a change, or a keepalive we asked for): a source that
    #: stops answering while the service runs is stalled, however idle our tables are
    source_contact_at: float | None = None
    #: time.time() the capture last knew it had read everything the source had written
    caught_up_at: float | None = None
    #: a cut (``state_models.watermark``): every change of every transaction at or before this
    #: seq has been handed to the sink (None: not known, e.g. while snapshotting)
    complete_through: str | None = None

    def lag_seconds(self, now: float | None = None) -> float | None:
        """Seconds between now and the commit time of the last acknowledged change."""
        if self.last_commit_ts is None:
            return None
        return max(0.0, (now if now is not None else time.time()) - self.last_commit_ts / 1e6)


#: What reading one change's values can raise when a value is outside what a reader handles (a BC
#: timestamp, NaN in a numeric, a TIME beyond a day): that change is set aside. Anything else is a
#: bug of ours or the stream's, and stops the capture.
UNREADABLE = (ValueError, TypeError, ArithmeticError, LookupError, UnicodeDecodeError)


def unreadable_change(
    what: str,
    exc: Exception,
    raw: str | bytes,
    *,
    source: str,
    table: str | None,
    **context: object,
) -> NewDeadLetter:
    """A change a reader could not read, as the dead letter ``Capture.set_aside`` stores."""
    from connectors.deadletter import NewDeadLetter  # see set_aside

    return NewDeadLetter(
        reason=f"{what} cannot read this change: {type(exc).__name__}: {exc}",
        error_type="UnreadableChange",
        raw=raw,
        source=source,
        table=table,
        context=context,
    )


class Capture(ABC):
    """One capture engine reading one source. Subclasses implement ``_run``."""

    engine: str = ""

    def __init__(
        self,
        source_name: str,
        source: Source,
        tables: Sequence[TableInfo],
        state_dir: str | Path,
    ):
        self.source_name = source_name
        self.source = source
        self.tables = list(tables)
        self.state_dir = Path(state_dir)
        self._stats = CaptureStats(source=source_name, engine=self.engine)
        self._stats_lock = threading.Lock()

    def set_aside(self, letters: list[NewDeadLetter]) -> None:
        """Store the changes this capture could not read (a value it cannot parse or render) in
        the dead-letter store, durably, before the position moves past them; empties ``letters``.
        The capture goes on: one unreadable change affects only itself."""
        if not letters:
            return
        # here, not at the top: the dead-letter store writes files with the offsets' helper
        from connectors.deadletter import DeadLetterStore, Sealing, default_folder

        stored = DeadLetterStore(
            default_folder(self.state_dir), sealing=Sealing.of_tables(self.tables)
        ).put_many(letters)
        for letter in stored:
            log.warning(
                "source %r: set aside an unreadable change of %s (dead letter %s): %s",
                self.source_name,
                letter.table,
                letter.id,
                letter.reason,
            )
        letters.clear()
        with self._stats_lock:
            self._stats = replace(self._stats, set_aside=self._stats.set_aside + len(stored))

    def run(self, sink: EventSink, stop: threading.Event) -> None:
        """Capture until ``stop`` is set (flush, save the position, return) or a fatal error.
        Tables with ``pii:`` columns reach ``sink`` protected: no clear value leaves the capture."""
        policies = {t.id: t.pii for t in self.tables if t.pii is not None}
        if policies:
            sink = ProtectingSink(sink, policies)
        try:
            self._run(sink, stop)
        except BaseException as exc:
            if isinstance(exc, PositionLostError) and exc.window_id is None:
                self._record_loss(exc)
            self._update(phase="failed", last_error=f"{type(exc).__name__}: {exc}")
            raise
        self._update(phase="stopped")

    def _record_loss(self, exc: PositionLostError) -> None:
        """Changes after our stored position may be gone: a loss window, reported by `cdc status`
        and `cdc check` until `cdc reconcile` proves the tables whole (the pgoutput capture records
        its own, with its LSN, and may snapshot again)."""
        from connectors.capture.offsets import OffsetStore
        from connectors.loss_windows import LossWindows

        try:
            stored = OffsetStore(self.state_dir, self.source_name, self.engine).load() or {}
        except Exception:  # an unreadable offset: the window is still worth recording
            stored = {}
        position = ", ".join(
            f"{k}={stored[k]}" for k in ("file", "pos", "gtid", "lsn", "flushed") if stored.get(k)
        )
        LossWindows(self.state_dir).record(
            self.source_name,
            [t.id for t in self.tables],
            str(exc).split(". ")[0],
            position or "the stored position",
        )

    @abstractmethod
    def _run(self, sink: EventSink, stop: threading.Event) -> None: ...

    def stats(self) -> CaptureStats:
        """A consistent copy of the progress counters; safe to call from any thread."""
        with self._stats_lock:
            return self._stats

    def _update(self, **changes: object) -> None:
        with self._stats_lock:
            self._stats = replace(self._stats, **changes)  # type: ignore[arg-type]

    def _acknowledged(self, events: Sequence[ChangeEvent], *, snapshot: bool = False) -> None:
        """Count a batch the sink acknowledged and whose position is saved."""
        if not events:
            return
        last = events[-1]
        with self._stats_lock:
            s = self._stats
            self._stats = replace(
                s,
                events=s.events + len(events),
                batches=s.batches + 1,
                snapshot_rows=s.snapshot_rows + (len(events) if snapshot else 0),
                last_seq=last.seq,
                last_commit_ts=last.commit_ts,
                last_batch_at=time.time(),
            )


def deliver(sink: EventSink, events: Sequence[ChangeEvent]) -> None:
    """Hand a batch to the sink; an empty batch is not a write."""
    if events:
        sink.write(events)


class ProtectingSink:
    """Hands each batch on with the ``pii:`` policies of its tables applied."""

    def __init__(self, sink: EventSink, policies: Mapping[str, TablePolicy]):
        self.sink = sink
        self.policies = policies

    def write(self, events: Sequence[ChangeEvent]) -> None:
        self.sink.write(protect_all(events, self.policies))


# --------------------------------------------------------------------------- sinks for tests and tools


class MemorySink:
    """Keeps every acknowledged batch in memory. ``fail_on_write=n`` makes the n-th write (1-based)
    raise, to test that a capture never advances past a batch its sink refused."""

    def __init__(self, fail_on_write: int | None = None):
        self.batches: list[list[ChangeEvent]] = []
        self.writes = 0
        self.fail_on_write = fail_on_write
        self._lock = threading.Lock()

    def write(self, events: Sequence[ChangeEvent]) -> None:
        with self._lock:
            self.writes += 1
            if self.fail_on_write is not None and self.writes == self.fail_on_write:
                raise OSError(f"MemorySink: write #{self.writes} refused on purpose")
            self.batches.append(list(events))

    @property
    def events(self) -> list[ChangeEvent]:
        with self._lock:
            return [e for batch in self.batches for e in batch]


class CountingSink:
    """Counts events and remembers nothing else: the cheapest sink, for benchmarks."""

    def __init__(self) -> None:
        self.count = 0
        self.last_seq: str | None = None

    def write(self, events: Sequence[ChangeEvent]) -> None:
        self.count += len(events)
        self.last_seq = events[-1].seq

"""The Beam steps of the merge jobs, shared by the streaming job and the replay job.

Each composite transform only wires labelled steps; the work is in DoFns that wrap what already
exists outside Beam (``decode_debezium``, the changelog writer, ``merge_jobs.apply``, the dead-letter
store), so the jobs and the local runtime apply events the same way.

::

    Pub/Sub messages ─ DecodeMessages ─┬─ events ─┬─ WriteChangelog ─ changelog files (per window, table)
                                       │          └─ MergeIntoWarehouse ─ one MERGE per table batch
                                       └─ dead letters ◄──────────────────────┘ (what cannot be applied)
                                              └─ StoreDeadLetters ─ dead-letter store + dead-letter topic

Bad input never raises: it becomes a ``NewDeadLetter`` on the ``dead_letters`` output, with the
reason and the message exactly as it arrived. ``TransientError`` (warehouse busy, storage timeout)
is retried in place with backoff, then raised so that the runner retries the bundle (the Pub/Sub
messages stay unacknowledged, nothing is lost). Anything else is a bug and stops the job loudly.

Connections (warehouse, Pub/Sub publisher) are made in ``setup`` from small picklable factories that
tests replace, and borrowed from ``merge_jobs.pool`` (see there why).

Metrics (namespace ``cdc``): counters ``events_decoded``, ``tombstones``, ``dead_letters``,
``events_merged``, ``merges``, ``versions_inserted``, ``changelog_files``, ``changelog_events``,
``transient_retries``; distributions ``batch_size`` (events per MERGE), ``merge_ms`` (time of one
MERGE) and ``commit_to_merge_lag_ms`` (source commit to MERGE committed, per event).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import FixedWindows

from connectors.changelog import write_events
from connectors.deadletter import DeadLetter, DeadLetterStore, NewDeadLetter, Sealing
from connectors.warehouse import Warehouse, open_warehouse
from merge_jobs.apply import applied_only, apply_events
from merge_jobs.pool import POOL
from state_models.debezium import Tombstone, decode_debezium
from state_models.errors import TerminalError, TransientError, UnknownTableError
from state_models.events import ChangeEvent
from state_models.progress import Progress
from state_models.scd2 import TableDef
from state_models.tables import TableInfo

log = logging.getLogger(__name__)

NAMESPACE = "cdc"
#: Tag of the dead-letter output of the steps that can reject input.
DEAD_LETTERS = "dead_letters"
PROGRESS = "progress"
ONLINE = "online"
#: (source, ("applied", table id, ((tx_id, seq), ...))): what a MERGE applied, for the watermark
APPLIED = "applied"
#: how often (seconds of event time) the streaming job writes ``cdc_progress``: one MERGE of every
#: table's row per window, so BigQuery sees one small DML statement per window, whatever the tables
PROGRESS_WINDOW_S = 10.0
EVENTS = "events"

T = TypeVar("T")
#: What a DoFn's ``process`` returns when it outputs nothing now (it buffers for its bundle's end).
#: Annotated ``Iterable``, not ``None``: Beam 2.78 resolves the postponed annotation ``None`` to
#: ``NoneType`` and then refuses it as "Return value not iterable".
NOTHING: tuple[()] = ()


# --------------------------------------------------------------------------- factories


@dataclass(frozen=True)
class WarehouseConnector:
    """Opens the warehouse a job merges into (``duckdb:///…`` or ``bigquery://project/dataset``)."""

    url: str

    def __call__(self) -> Warehouse:
        return open_warehouse(self.url)


@dataclass(frozen=True)
class PublisherConnector:
    """Makes a Pub/Sub publisher (``PUBSUB_EMULATOR_HOST`` is honoured by the client itself)."""

    def __call__(self) -> Any:
        from google.cloud import pubsub_v1

        return pubsub_v1.PublisherClient()


@dataclass(frozen=True)
class RetryPolicy:
    """How long a step retries a ``TransientError`` in place before the runner retries the bundle."""

    attempts: int = 5
    first_delay_s: float = 0.5
    max_delay_s: float = 10.0

    def run(self, what: str, fn: Callable[[], T], on_retry: Callable[[], None]) -> T:
        """``fn()``, retried on ``TransientError``; the last error is raised."""
        delay = self.first_delay_s
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except TransientError as exc:
                if attempt == self.attempts:
                    raise
                on_retry()
                log.warning(
                    "%s failed (attempt %d of %d), retrying: %s", what, attempt, self.attempts, exc
                )
                time.sleep(delay)
                delay = min(delay * 2, self.max_delay_s)
        raise AssertionError("unreachable")


# --------------------------------------------------------------------------- decode


def combined_resolver(
    tables: Sequence[TableInfo],
) -> Callable[[str | None], Callable[[str, str], TableInfo]]:
    """``for_source(name)`` -> a resolver of (schema, table) among the registered tables.

    With a source name (from the message's ``table`` attribute) only that source's tables match;
    without one, a (schema, table) that exactly one source registers.
    """
    by_source: dict[str | None, dict[tuple[str, str], list[TableInfo]]] = {}
    for t in tables:
        for src in (t.source, None):
            by_source.setdefault(src, {}).setdefault(t.schema_table, []).append(t)
    registered = ", ".join(sorted(t.id for t in tables)) or "none"

    def for_source(source: str | None) -> Callable[[str, str], TableInfo]:
        known = by_source.get(source, {})

        def resolve(schema: str, table: str) -> TableInfo:
            found = known.get((schema, table), [])
            if len(found) == 1:
                return found[0]
            where = f" for source {source!r}" if source else ""
            if found:
                raise UnknownTableError(
                    f"table {schema}.{table} is registered by several sources "
                    f"({', '.join(t.id for t in found)}) and the message has no 'table' attribute"
                )
            raise UnknownTableError(
                f"table {schema}.{table} is not registered{where} (registered: {registered})"
            )

        return resolve

    return for_source


class _DecodeFn(beam.DoFn):
    """A Pub/Sub message (``PubsubMessage``, with attributes) -> ``ChangeEvent`` | dead letter."""

    def __init__(self, tables: Sequence[TableInfo]):
        self._tables = list(tables)
        self._decoded = Metrics.counter(NAMESPACE, "events_decoded")
        self._tombstones = Metrics.counter(NAMESPACE, "tombstones")
        self._rejected = Metrics.counter(NAMESPACE, "dead_letters")

    def setup(self) -> None:
        self._for_source = combined_resolver(self._tables)

    def process(self, message: Any) -> Iterator[Any]:
        attributes = dict(message.attributes or {})
        table_attr = attributes.get("table")
        source = table_attr.split(".", 1)[0] if table_attr else None
        try:
            decoded = decode_debezium(
                message.data, self._for_source(source), record_key=attributes.get("key")
            )
        except TerminalError as exc:
            self._rejected.inc()
            yield pvalue.TaggedOutput(
                DEAD_LETTERS,
                undecoded_letter(
                    exc,
                    message,
                    source,
                    table_attr,
                    # which transaction it held back, when the JSON says (the watermark names
                    # the letter that holds it)
                    {"attributes": attributes, "tx_id": _stated_tx_id(message.data)},
                ),
            )
            return
        if isinstance(decoded, Tombstone):
            self._tombstones.inc()
            return
        self._decoded.inc()
        yield decoded.table, decoded


def undecoded_letter(
    error: TerminalError,
    message: Any,
    source: str | None,
    table: str | None,
    extra: Mapping[str, Any] | None = None,
) -> NewDeadLetter:
    """The dead letter of a Pub/Sub message that did not decode: its exact bytes, and where it
    came from (message id, publish time, and ``extra``)."""
    return NewDeadLetter.from_error(
        error,
        raw=bytes(message.data) if message.data is not None else None,
        source=source,
        table=table,
        context={
            "stage": "decode",
            "message_id": getattr(message, "message_id", None),
            "publish_time": _iso(getattr(message, "publish_time", None)),
            **(extra or {}),
        },
    )


def _stated_tx_id(data: Any) -> str | None:
    """The transaction a message that did not decode says it belongs to, if its JSON says."""
    try:
        doc = json.loads(data)
        doc = doc.get("payload", doc) if isinstance(doc, dict) else None
        source = doc.get("source") if isinstance(doc, dict) else None
        tx = source.get("txId") or source.get("gtid") if isinstance(source, dict) else None
    except (ValueError, TypeError, RecursionError):
        return None
    return str(tx) if isinstance(tx, (int, str)) and not isinstance(tx, bool) else None


class DecodeMessages(beam.PTransform):
    """Pub/Sub messages -> ``events`` keyed by table id, and ``dead_letters``.

    Events leave keyed (``(table id, ChangeEvent)``), the key every later step groups by, so no
    step only adds a key: on the DirectRunner each step costs about a millisecond per bundle.
    """

    def __init__(self, tables: Sequence[TableInfo]):
        super().__init__()
        self._tables = list(tables)

    def expand(self, messages: Any) -> Any:
        decode = beam.ParDo(_DecodeFn(self._tables)).with_output_types(tuple[str, ChangeEvent])
        return messages | "DecodeDebezium" >> decode.with_outputs(DEAD_LETTERS, main=EVENTS)


# --------------------------------------------------------------------------- changelog


class _WriteChangelogFn(beam.DoFn):
    """(table, events of one window) -> the changelog files written for them."""

    def __init__(self, root: str, storage_options: Mapping[str, Any] | None, retry: RetryPolicy):
        self._root = root
        self._storage_options = dict(storage_options or {})
        self._retry = retry
        self._files = Metrics.counter(NAMESPACE, "changelog_files")
        self._events = Metrics.counter(NAMESPACE, "changelog_events")
        self._retries = Metrics.counter(NAMESPACE, "transient_retries")
        self._rejected = Metrics.counter(NAMESPACE, "dead_letters")

    def process(self, element: tuple[str, Iterable[ChangeEvent]]) -> Iterator[Any]:
        table, grouped = element
        events = list(grouped)
        try:
            # Each call publishes complete files under a fresh writer id: a retried bundle adds
            # files beside the first attempt's and never replaces one; readers dedupe by event_id.
            files = self._retry.run(
                f"writing the changelog of {table}",
                lambda: write_events(
                    self._root, events, storage_options=self._storage_options or None
                ),
                self._retries.inc,
            )
        except TerminalError as exc:
            self._rejected.inc(len(events))
            for e in events:
                yield pvalue.TaggedOutput(DEAD_LETTERS, _letter(exc, e, "changelog"))
            return
        self._events.inc(len(events))
        for f in files:
            self._files.inc()
            yield f


class WriteChangelog(beam.PTransform):
    """Keyed events -> immutable changelog files (docs/architecture.md §6). Output: (files, dead letters).

    Each table's events are cut into windows of processing time: a table's files are written when
    its oldest buffered event has waited ``window_s``, or when ``max_events`` are buffered. Windows
    of event time would wait for the watermark, and a backlog read by a runner whose watermark is
    the wall clock (the DirectRunner's Pub/Sub read) would make every event late: one file each.
    The writer sorts each file by ``seq`` and splits it by commit hour (the layout's partitions).
    """

    def __init__(
        self,
        root: str,
        *,
        window_s: float = 60.0,
        max_events: int = 500_000,
        storage_options: Mapping[str, Any] | None = None,
        retry: RetryPolicy = RetryPolicy(),
    ):
        super().__init__()
        self._root = root
        self._window_s = window_s
        self._max_events = max_events
        self._storage_options = storage_options
        self._retry = retry

    def expand(self, events: Any) -> Any:
        written = (
            events
            | "Window"
            >> beam.GroupIntoBatches(self._max_events, max_buffering_duration_secs=self._window_s)
            | "WriteFiles"
            >> beam.ParDo(
                _WriteChangelogFn(self._root, self._storage_options, self._retry)
            ).with_outputs(DEAD_LETTERS, main="files")
        )
        return written.files, written[DEAD_LETTERS]


# --------------------------------------------------------------------------- merge


@dataclass
class _Collected:
    """A ``DeadLetterSink`` that keeps the letters so the step can emit them downstream."""

    letters: list[NewDeadLetter] = field(default_factory=list)

    def put_many(self, letters: Iterable[NewDeadLetter]) -> list[DeadLetter]:
        self.letters.extend(letters)
        return []


class _ApplyBatchFn(beam.DoFn):
    """(table, batch of events) -> one MERGE into its state table; what it cannot apply -> dead letters."""

    def __init__(
        self,
        warehouse: Callable[[], Warehouse],
        tables: Mapping[str, TableDef],
        batch_size: int,
        retry: RetryPolicy,
        clock: Callable[[], float] = time.time,
        *,
        serialize: bool = False,
        online: Iterable[str] = (),
        notify_applied: Iterable[str] = (),
    ):
        self._notify_applied = frozenset(notify_applied)  # sources whose watermark the job keeps
        self._connect = warehouse
        self._tables = dict(tables)
        self._online = frozenset(online)  # tables an online store keeps
        self._batch_size = batch_size
        self._retry = retry
        self._clock = clock
        self._serialize = serialize  # one MERGE per table at a time in this process
        self._merges = Metrics.counter(NAMESPACE, "merges")
        self._merged = Metrics.counter(NAMESPACE, "events_merged")
        self._inserted = Metrics.counter(NAMESPACE, "versions_inserted")
        self._rejected = Metrics.counter(NAMESPACE, "dead_letters")
        self._retries = Metrics.counter(NAMESPACE, "transient_retries")
        self._batch_sizes = Metrics.distribution(NAMESPACE, "batch_size")
        self._merge_ms = Metrics.distribution(NAMESPACE, "merge_ms")
        self._lag_ms = Metrics.distribution(NAMESPACE, "commit_to_merge_lag_ms")

    def setup(self) -> None:
        self._warehouse: Warehouse | None = None

    def _borrowed(self) -> Warehouse:
        if self._warehouse is None:
            self._warehouse = POOL.acquire(self._connect, self._connect)
        return self._warehouse

    def process(self, element: tuple[str, Iterable[ChangeEvent]]) -> Iterator[Any]:
        table_id, grouped = element
        batch: list[ChangeEvent] = []
        for e in grouped:
            batch.append(e)
            if len(batch) == self._batch_size:
                yield from self._merge(table_id, batch)
                batch = []
        if batch:
            yield from self._merge(table_id, batch)

    def _merge(self, table_id: str, events: list[ChangeEvent]) -> Iterator[Any]:
        collected = _Collected()

        def apply() -> Any:
            collected.letters.clear()
            try:
                return apply_events(
                    self._borrowed(),
                    self._tables,
                    events,
                    ingested_at=dt.datetime.now(dt.UTC),
                    dead_letters=collected,
                    batch_size=len(events),
                )
            except TransientError:
                # a connection that failed may be unusable: make a new one for the next attempt
                if self._warehouse is not None:
                    POOL.discard(self._warehouse)
                    self._warehouse = None
                raise

        what = f"merging {len(events)} events into {table_id}"
        if self._serialize:
            with POOL.lock((self._connect, table_id)):
                started = self._clock()
                report = self._retry.run(what, apply, self._retries.inc)
                done = self._clock()
        else:
            started = self._clock()
            report = self._retry.run(what, apply, self._retries.inc)
            done = self._clock()
        counts = report.tables.get(table_id)
        self._merges.inc(counts.batches if counts else 0)
        self._batch_sizes.update(len(events))
        self._merge_ms.update(int((done - started) * 1000))
        self._merged.inc(len(events) - len(collected.letters))
        if counts:
            self._inserted.inc(counts.inserted)
        done_us = int(done * 1_000_000)
        # lag, progress and the watermark are about what was applied: a refused event's own
        # fields (a commit time in year 33658) are what may be wrong
        applied = applied_only(events, collected.letters)
        for e in applied:
            self._lag_ms.update(max(0, (done_us - e.commit_ts) // 1000))
        self._rejected.inc(len(collected.letters))
        for letter in collected.letters:
            yield pvalue.TaggedOutput(DEAD_LETTERS, _with_context(letter, {"stage": "merge"}))
        if table_id in self._online:  # the keys this MERGE touched, for the online store
            from connectors.online import touched_keys

            yield pvalue.TaggedOutput(ONLINE, (table_id, touched_keys(events).get(table_id, [])))
        table = self._tables.get(table_id)
        if table is not None and table.source in self._notify_applied:
            pairs = tuple((e.tx_id, e.seq) for e in applied if e.tx_id is not None)
            if pairs:
                yield pvalue.TaggedOutput(APPLIED, (table.source, ("applied", table_id, pairs)))
        if table is not None and applied:
            newest = max(applied, key=lambda e: e.commit_ts)
            yield pvalue.TaggedOutput(
                PROGRESS,
                (
                    table_id,
                    Progress(
                        source=table.source,
                        table_id=table_id,
                        state_table=table.state_table,
                        applied_seq=max(e.seq for e in applied),
                        applied_commit_at=dt.datetime.fromtimestamp(newest.commit_ts / 1e6, dt.UTC),
                        commit_to_visible_s=max(0.0, done - newest.commit_ts / 1e6),
                        writer="beam",
                    ),
                ),
            )
        yield report

    def teardown(self) -> None:
        if getattr(self, "_warehouse", None) is not None:
            POOL.release(self._connect, self._warehouse)
            self._warehouse = None


def _newest_progress(rows: Iterable[Progress]) -> Progress:
    """One table's progress rows -> one: the highest seq, the newest commit (and its latency)."""
    rows = list(rows)
    newest = max(rows, key=lambda p: p.applied_commit_at or dt.datetime.min.replace(tzinfo=dt.UTC))
    return dataclasses.replace(newest, applied_seq=max(p.applied_seq or "" for p in rows) or None)


class _WriteProgressFn(beam.DoFn):
    """All tables' progress of one window -> one upsert of ``cdc_progress``."""

    def __init__(self, warehouse: Callable[[], Warehouse], retry: RetryPolicy):
        self._connect = warehouse
        self._retry = retry
        self._retries = Metrics.counter(NAMESPACE, "transient_retries")

    def process(self, element: tuple[None, Iterable[Progress]]) -> Iterable[None]:
        rows = sorted(element[1], key=lambda p: p.table_id)
        if not rows:
            return ()

        def write() -> None:
            warehouse = POOL.acquire(self._connect, self._connect)
            try:
                warehouse.record_progress(rows, dt.datetime.now(dt.UTC))
            except BaseException:
                POOL.discard(warehouse)  # a connection that failed may be unusable
                raise
            POOL.release(self._connect, warehouse)

        self._retry.run(f"recording the progress of {len(rows)} tables", write, self._retries.inc)
        return ()


class _WriteOnlineFn(beam.DoFn):
    """(table, keys a MERGE touched) -> each key's current version, read back from the state
    table, written to the table's online store through the ``_seq`` fence
    (``connectors.online``): a retried bundle, a late batch or another writer can never put an
    older row in place of a newer one. Redis unreachable: retried in place, then the bundle fails
    and the runner retries it (Dataflow retries a streaming bundle until it succeeds, so the
    store catches up once Redis answers; the MERGEs upstream go on, past a fusion break)."""

    def __init__(
        self,
        warehouse: Callable[[], Warehouse],
        tables: Mapping[str, TableDef],
        online: Mapping[str, Any],
        retry: RetryPolicy,
    ):
        self._connect = warehouse
        self._tables = dict(tables)
        self._online = dict(online)  # table id -> OnlineStore
        self._retry = retry
        self._written = Metrics.counter(NAMESPACE, "online_rows_written")
        self._fenced = Metrics.counter(NAMESPACE, "online_rows_fenced")
        self._retries = Metrics.counter(NAMESPACE, "transient_retries")

    def setup(self) -> None:
        self._stores: dict[int, Any] = {}

    def _store(self, table_id: str) -> Any:
        from connectors.online_stores import open_online

        config = self._online[table_id]
        if id(config) not in self._stores:
            self._stores[id(config)] = open_online(config)
        return self._stores[id(config)]

    def process(self, element: tuple[str, list[dict[str, Any]]]) -> Iterable[None]:
        from connectors.online import current_online_rows

        table_id, keys = element
        table = self._tables[table_id]

        def write() -> tuple[int, int]:
            warehouse = POOL.acquire(self._connect, self._connect)
            try:
                online = current_online_rows(warehouse, table, keys)
            except BaseException:
                POOL.discard(warehouse)
                raise
            POOL.release(self._connect, warehouse)
            written = self._store(table_id).write(online)  # TransientError when unreachable
            return written, len(online) - written

        written, fenced = self._retry.run(
            f"writing {len(keys)} keys of {table_id} to the online store", write, self._retries.inc
        )
        self._written.inc(written)
        self._fenced.inc(fenced)
        return ()

    def teardown(self) -> None:
        for store in getattr(self, "_stores", {}).values():
            store.close()
        self._stores = {}


class _BatchPerBundleFn(beam.DoFn):
    """Keyed events -> one (table, events) per table and window of each bundle, at its end.

    The cheap batching for the local DirectRunner (see ``MergeIntoWarehouse``): no state, no
    timers; a bundle is what one Pub/Sub pull brought (``merge_jobs.direct_runner``).
    """

    def start_bundle(self) -> None:
        self._groups: dict[tuple[Any, str], tuple[list[ChangeEvent], Any]] = {}

    def process(
        self,
        element: tuple[str, ChangeEvent],
        window: Any = beam.DoFn.WindowParam,
        timestamp: Any = beam.DoFn.TimestampParam,
    ) -> Iterable[Any]:
        table, event = element
        events, latest = self._groups.setdefault((window, table), ([], timestamp))
        events.append(event)
        if timestamp > latest:
            self._groups[(window, table)] = (events, timestamp)
        return NOTHING

    def finish_bundle(self) -> Iterator[Any]:
        from apache_beam.transforms.window import WindowedValue

        groups, self._groups = self._groups, {}
        for (window, table), (events, latest) in groups.items():
            yield WindowedValue((table, events), latest, (window,))


class MergeIntoWarehouse(beam.PTransform):
    """Keyed events -> per-table batches -> one MERGE per batch. Output: (reports, dead letters).

    Batches are keyed by table, so a table's MERGEs run one at a time in one job (BigQuery allows
    two concurrent mutating DML statements per table); correctness never depends on it, because
    the MERGE is idempotent and order-free.

    - Streaming (``max_latency_s`` set): ``GroupIntoBatches`` emits a table's batch when it holds
      ``batch_size`` events or its oldest event has waited ``max_latency_s``; the batch is merged
      in the same fused step, and a key's batches come from one stateful step at a time.
    - Bounded input (``max_latency_s=None``, the replay): one ``GroupByKey`` per table, cut into
      ``batch_size`` MERGEs in order by the one worker that holds the table's group.
    - ``per_bundle=True`` (the streaming job on the local DirectRunner): each bundle's events of a
      table are one batch (cut at ``batch_size``), merged at the end of the bundle; MERGEs into
      one table are serialized by a lock of the process (the DirectRunner runs the whole job in
      one process). Stateful ``GroupIntoBatches`` costs that runner a state write and read per
      event and holds every batch for its timer; its bundles are already micro-batches (one
      Pub/Sub pull each), so ``max_latency_s`` is not used. Nothing is lost by it: the
      DirectRunner acknowledges messages when it pulls them and keeps state in memory anyway.
    - ``notify_applied`` (source names): a third output, what each MERGE applied of those sources'
      tables (``APPLIED``), for their watermark (``merge_jobs.watermark``).
    """

    def __init__(
        self,
        warehouse: Callable[[], Warehouse],
        tables: Mapping[str, TableDef],
        *,
        batch_size: int = 5000,
        max_latency_s: float | None = 1.0,
        per_bundle: bool = False,
        retry: RetryPolicy = RetryPolicy(),
        online: Mapping[str, Any] | None = None,
        notify_applied: Iterable[str] = (),
    ):
        super().__init__()
        self._notify_applied = tuple(sorted(notify_applied))
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self._online = dict(online or {})  # table id -> its online store (OnlineStore)
        self._warehouse = warehouse
        self._tables = dict(tables)
        self._batch_size = batch_size
        self._max_latency_s = max_latency_s
        self._per_bundle = per_bundle
        self._retry = retry

    def expand(self, events: Any) -> Any:
        if self._max_latency_s is None:
            batched = events | "GroupByTable" >> beam.GroupByKey()
        elif self._per_bundle:
            batched = events | "BatchPerBundle" >> beam.ParDo(_BatchPerBundleFn())
        else:
            batched = events | "Batch" >> beam.GroupIntoBatches(
                self._batch_size, max_buffering_duration_secs=self._max_latency_s
            )
        apply = _ApplyBatchFn(
            self._warehouse,
            self._tables,
            self._batch_size,
            self._retry,
            serialize=self._per_bundle,
            online=self._online,
            notify_applied=self._notify_applied,
        )
        merged = batched | "Merge" >> beam.ParDo(apply).with_outputs(
            DEAD_LETTERS, PROGRESS, ONLINE, APPLIED, main="reports"
        )
        if self._online:
            touched = merged[ONLINE]
            if not self._per_bundle:
                # a fusion break: a Redis outage retries the online writes, not the MERGEs
                touched = touched | "OnlineBreak" >> beam.Reshuffle()
            _ = touched | "WriteOnline" >> beam.ParDo(
                _WriteOnlineFn(self._warehouse, self._tables, self._online, self._retry)
            )
        progress = merged[PROGRESS]
        if self._max_latency_s is not None:  # streaming: once per window, not per merge
            progress = progress | "ProgressWindows" >> beam.WindowInto(
                FixedWindows(PROGRESS_WINDOW_S)
            )
        _ = (
            progress
            | "NewestPerTable" >> beam.CombinePerKey(_newest_progress)
            | "AllTables" >> beam.Map(lambda kv: (None, kv[1]))
            | "OneWrite" >> beam.GroupByKey()
            | "WriteProgress" >> beam.ParDo(_WriteProgressFn(self._warehouse, self._retry))
        )
        if self._notify_applied:  # (reports, dead letters, applied)
            return merged.reports, merged[DEAD_LETTERS], merged[APPLIED]
        return merged.reports, merged[DEAD_LETTERS]


# --------------------------------------------------------------------------- dead letters


class _StoreDeadLettersFn(beam.DoFn):
    """Dead letters -> the dead-letter store (one file per bundle) and the dead-letter topic."""

    def __init__(
        self,
        folder: str,
        topic: str | None,
        publisher: Callable[[], Any],
        sealing: Sealing | None = None,
    ):
        self._folder = folder
        self._sealing = sealing
        self._topic = topic
        self._connect = publisher
        self._stored = Metrics.counter(NAMESPACE, "dead_letters_stored")

    def setup(self) -> None:
        self._store = DeadLetterStore(self._folder, sealing=self._sealing)
        self._publisher = POOL.acquire(self._connect, self._connect) if self._topic else None

    def start_bundle(self) -> None:
        self._pending: list[NewDeadLetter] = []

    def process(self, letter: NewDeadLetter) -> Iterable[Any]:
        self._pending.append(letter)
        return NOTHING

    def finish_bundle(self) -> None:
        if not self._pending:
            return
        # Stored and published before the bundle commits, so before its messages are acknowledged.
        stored = self._store.put_many(self._pending)
        self._pending = []
        self._stored.inc(len(stored))
        if self._publisher is None or self._topic is None:
            return
        futures = [
            self._publisher.publish(self._topic, _payload(letter), **_attributes(letter))
            for letter in stored
        ]
        for f in futures:
            f.result(timeout=60)

    def teardown(self) -> None:
        if getattr(self, "_publisher", None) is not None:
            POOL.release(self._connect, self._publisher)
            self._publisher = None


class StoreDeadLetters(beam.PTransform):
    """Dead letters -> the dead-letter store (``folder``) and, when given, the dead-letter topic."""

    def __init__(
        self,
        folder: str,
        topic: str | None = None,
        publisher: Callable[[], Any] | None = None,
        sealing: Sealing | None = None,
    ):
        super().__init__()
        self._folder = folder
        self._topic = topic
        self._publisher = publisher or PublisherConnector()
        self._sealing = sealing

    def expand(self, letters: Any) -> Any:
        return letters | "Store" >> beam.ParDo(
            _StoreDeadLettersFn(self._folder, self._topic, self._publisher, self._sealing)
        )


def _payload(letter: DeadLetter) -> bytes:
    """A letter's message as the dead-letter topic carries it: a sealed one stays sealed."""
    if letter.sealed:
        return (letter.raw or "").encode("ascii")
    return letter.raw_bytes() or b""


#: Pub/Sub refuses attribute values over 1024 bytes.
_MAX_ATTRIBUTE = 1024


def _attributes(letter: DeadLetter) -> dict[str, str]:
    out = {
        "dead_letter_id": letter.id,
        "fingerprint": letter.fingerprint or "",
        "reason": letter.reason,
        "error_type": letter.error_type,
        "source": letter.source or "",
        "table": letter.table or "",
        "stage": str(letter.context.get("stage", "")),
    }
    return {k: v.encode()[:_MAX_ATTRIBUTE].decode(errors="ignore") for k, v in out.items() if v}


def _letter(error: TerminalError, event: ChangeEvent, stage: str) -> NewDeadLetter:
    return NewDeadLetter.from_error(
        error,
        raw=event.raw,
        source=event.source,
        table=event.table,
        context={
            "stage": stage,
            "seq": event.seq,
            "event_id": event.event_id,
            "op": event.op.value,
        },
    )


def _with_context(letter: NewDeadLetter, extra: Mapping[str, Any]) -> NewDeadLetter:
    return NewDeadLetter(
        reason=letter.reason,
        error_type=letter.error_type,
        raw=letter.raw,
        source=letter.source,
        table=letter.table,
        context={**letter.context, **extra},
    )


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)

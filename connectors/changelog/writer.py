"""Append change events to the raw changelog as immutable zstd Parquet files.

One open *part* per (table, commit hour). Events accumulate in a part; every ``row_group_rows``
events (or fewer, once they hold ``row_group_bytes`` of Arrow data: wide rows) become one Parquet
row group (sorted by ``seq``, so its min/max statistics prune seq-range
replays), encoded into an in-memory file. A part is published as one file when it reaches
``max_file_bytes``, when its oldest event has waited ``max_file_age_s``, or on ``flush()``.

Two ways to use it:

- as a capture ``EventSink``: ``write(events)`` returns only once every event is in a published
  file (closed, synced, listed). Each call is one commit point, so file sizes follow the capture's
  batch sizes;
- buffered (a Pub/Sub consumer, a Beam DoFn): ``append()`` as events arrive, ``poll()`` now and then
  for the age limit, ``flush()`` before acknowledging (``finish_bundle`` in Beam). Each returns the
  files it published. Create the writer in ``DoFn.setup``: it holds a filesystem client.

After an exception nothing that was not returned as published is durable, and the buffers are
dropped: re-send those events. Writing an event twice is harmless; readers and the merge dedupe by
``event_id``, and no file is ever replaced.

Sizes (why): a 64 MiB file holds roughly half a million to a million events, so a replay of a busy
hour is a handful of GETs and a quiet table still gets at most one file per minute per hour
partition. 64k-event row groups are a few MiB compressed: big enough that a ranged read from GCS is
efficient, small enough that seq-range replays skip most of a file and a reader holds one row group
(tens of MiB decoded) at a time.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from connectors.changelog.records import SCHEMA, to_batch
from connectors.changelog.storage import Root, open_root, publish
from state_models.changelog import (
    Partition,
    check_writer_id,
    file_name,
    partition_of_hour,
    table_dir,
)
from state_models.events import ChangeEvent

_HOUR_US = 3_600_000_000
DEFAULT_ROW_GROUP_ROWS = 65_536
#: Arrow bytes that close a row group before it has ``row_group_rows`` rows: a native capture's
#: event carries its Debezium envelope with the schema block (~3 KiB), so 65,536 of them would be
#: ~200 MiB held, copied and encoded at once by the writer and by every reader of the group.
DEFAULT_ROW_GROUP_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_FILE_AGE_S = 60.0
#: Measured on Debezium-like rows (benchmarks/replay_throughput.py): level 1 files were smaller
#: than level 3 (59 vs 63 bytes per event) and no slower to write.
DEFAULT_ZSTD_LEVEL = 1


@dataclass(frozen=True)
class PublishedFile:
    """A complete changelog file, visible to readers."""

    path: str  # as a user would type it: /abs/path or gs://bucket/...
    table: str
    partition: Partition
    first_seq: str
    last_seq: str
    rows: int
    bytes: int


@dataclass
class _Part:
    table: str
    hour: int
    opened_at: float
    pending: list[pa.Table] = field(default_factory=list)  # changelog rows in arrival order
    pending_rows: int = 0
    pending_bytes: int = 0
    sink: pa.BufferOutputStream | None = None
    writer: pq.ParquetWriter | None = None
    rows: int = 0
    first_seq: str = ""
    last_seq: str = ""


def new_writer_id() -> str:
    """A writer id unique to this writer instance (files of two writers never share a name)."""
    return "w" + secrets.token_hex(6)


class ChangelogWriter:
    """Writes change events into ``<root>/<source>/<schema>.<table>/dt=…/hour=…/`` files."""

    def __init__(
        self,
        root: str,
        *,
        writer_id: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
        fs: Any = None,
        row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
        row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        max_file_age_s: float = DEFAULT_MAX_FILE_AGE_S,
        zstd_level: int = DEFAULT_ZSTD_LEVEL,
        clock: Callable[[], float] = time.monotonic,
        now_us: Callable[[], int] = lambda: time.time_ns() // 1000,
    ):
        if row_group_rows < 1 or row_group_bytes < 1 or max_file_bytes < 1 or max_file_age_s < 0:
            raise ValueError(
                "row_group_rows, row_group_bytes and max_file_bytes must be positive, "
                "max_file_age_s not negative"
            )
        self.root: Root = open_root(root, storage_options=storage_options, fs=fs)
        self.writer_id = check_writer_id(writer_id or new_writer_id())
        self.row_group_rows = row_group_rows
        self.row_group_bytes = row_group_bytes
        self.max_file_bytes = max_file_bytes
        self.max_file_age_s = max_file_age_s
        self.zstd_level = zstd_level
        self._clock = clock
        self._now_us = now_us
        self._parts: dict[tuple[str, int], _Part] = {}
        self._lock = threading.Lock()
        self.published: list[PublishedFile] = []  # every file this writer published, in order

    # ------------------------------------------------------------------ public API

    def write(self, events: Sequence[ChangeEvent]) -> None:
        """Capture ``EventSink``: store ``events``; returns once every one is in a published file."""
        with self._lock:
            try:
                self._append(events)
                self._publish(list(self._parts))
            except BaseException:
                self._parts.clear()
                raise

    def append(self, events: Sequence[ChangeEvent]) -> list[PublishedFile]:
        """Buffer ``events``; publish the parts that are full or too old. Returns what was published."""
        with self._lock:
            try:
                done = self._append(events)
                return done + self._publish(self._due())
            except BaseException:
                self._parts.clear()
                raise

    def append_rows(self, rows: pa.RecordBatch | pa.Table) -> list[PublishedFile]:
        """``append`` for events that are already changelog rows (``SCHEMA``, e.g. a journal
        segment): they go to their files as Arrow, never as Python objects, so a backlog of any
        size is rolled in bounded memory. Each row's ``ingested_at`` is this writer's clock, as in
        ``append``."""
        if rows.schema.remove_metadata() != SCHEMA.remove_metadata():
            raise ValueError(
                f"append_rows expects changelog rows of the current schema; got {rows.schema}"
            )
        with self._lock:
            try:
                done = self._append_rows(
                    pa.Table.from_batches([rows]) if isinstance(rows, pa.RecordBatch) else rows
                )
                return done + self._publish(self._due())
            except BaseException:
                self._parts.clear()
                raise

    def poll(self) -> list[PublishedFile]:
        """Publish the parts whose oldest event has waited ``max_file_age_s``."""
        with self._lock:
            try:
                return self._publish(self._due())
            except BaseException:
                self._parts.clear()
                raise

    def flush(self) -> list[PublishedFile]:
        """Publish everything buffered. Returns once it is durable."""
        with self._lock:
            try:
                return self._publish(list(self._parts))
            except BaseException:
                self._parts.clear()
                raise

    close = flush

    @property
    def pending_events(self) -> int:
        return sum(p.rows + p.pending_rows for p in self._parts.values())

    def __enter__(self) -> ChangelogWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.flush()
        else:
            self._parts.clear()

    # ------------------------------------------------------------------ internals

    def _append(self, events: Sequence[ChangeEvent]) -> list[PublishedFile]:
        if not events:
            return []
        groups: dict[tuple[str, int], list[ChangeEvent]] = {}
        for e in events:
            groups.setdefault((e.table, e.commit_ts // _HOUR_US), []).append(e)
        now_us = self._now_us()
        return self._add_parts(
            {k: to_batch(group, [now_us] * len(group)) for k, group in groups.items()}
        )

    def _append_rows(self, rows: pa.Table) -> list[PublishedFile]:
        if not rows.num_rows:
            return []
        rows = rows.replace_schema_metadata(SCHEMA.metadata)
        at = SCHEMA.get_field_index("ingested_at")
        now = pa.array([self._now_us()] * rows.num_rows, pa.int64()).cast(SCHEMA.field(at).type)
        rows = rows.set_column(at, SCHEMA.field(at), now)
        ts = rows.column("commit_ts").cast(pa.int64())
        hour = pc.divide(ts, _HOUR_US)  # truncates toward zero; the hour floors, as in _append
        inexact = pc.and_(pc.less(ts, 0), pc.not_equal(pc.multiply(hour, _HOUR_US), ts))
        hour = pc.if_else(inexact, pc.subtract(hour, 1), hour)
        tables = rows.column("table")
        keys = list(dict.fromkeys(zip(tables.to_pylist(), hour.to_pylist(), strict=True)))
        if len(keys) == 1:  # in the order they first appear, as in _append
            return self._add_parts({keys[0]: rows})
        return self._add_parts(
            {(t, h): rows.filter(pc.and_(pc.equal(tables, t), pc.equal(hour, h))) for t, h in keys}
        )

    def _add_parts(
        self, groups: Mapping[tuple[str, int], pa.RecordBatch | pa.Table]
    ) -> list[PublishedFile]:
        parts = self._parts
        for k in groups:
            if k not in parts:
                table_dir(k[0])  # reject a malformed table id before buffering anything
        done: list[PublishedFile] = []
        for k, rows in groups.items():
            part = parts.get(k)
            if part is None:
                part = parts[k] = _Part(k[0], k[1], self._clock())
            if isinstance(rows, pa.RecordBatch):
                rows = pa.Table.from_batches([rows])
            part.pending.append(rows)
            part.pending_rows += rows.num_rows
            part.pending_bytes += rows.nbytes
            while (
                part.pending_rows >= self.row_group_rows
                or part.pending_bytes >= self.row_group_bytes
            ):
                # rows of about row_group_bytes, at most row_group_rows
                per_row = part.pending_bytes / part.pending_rows
                n = min(self.row_group_rows, max(1, int(self.row_group_bytes / per_row)))
                self._encode_row_group(part, min(n, part.pending_rows))
                if part.sink is not None and part.sink.tell() >= self.max_file_bytes:
                    done.append(self._close_file(part))
                    part.opened_at = self._clock()
        return done

    def _due(self) -> list[tuple[str, int]]:
        if not self._parts:
            return []
        cutoff = self._clock() - self.max_file_age_s
        return [k for k, p in self._parts.items() if p.opened_at <= cutoff]

    def _encode_row_group(self, part: _Part, n: int) -> None:
        """The first ``n`` pending rows (in arrival order) as one row group, sorted by ``seq``."""
        pending = pa.concat_tables(part.pending) if len(part.pending) > 1 else part.pending[0]
        rows, rest = pending.slice(0, n), pending.slice(n)
        part.pending = [rest] if rest.num_rows else []
        part.pending_rows = rest.num_rows
        part.pending_bytes = rest.nbytes
        rows = rows.take(pc.sort_indices(rows, [("seq", "ascending")]))  # stable
        batch = rows.combine_chunks().to_batches()[0]
        seqs = batch.column("seq")
        first, last = seqs[0].as_py(), seqs[-1].as_py()
        if part.writer is None:
            part.sink = pa.BufferOutputStream()
            part.writer = pq.ParquetWriter(
                part.sink,
                SCHEMA,
                compression="zstd",
                compression_level=self.zstd_level,
                write_statistics=["seq", "commit_ts", "ingested_at"],
                use_dictionary=["table", "op", "tx_id", "source_types"],
            )
            part.first_seq, part.last_seq = first, last
        else:
            part.first_seq, part.last_seq = min(part.first_seq, first), max(part.last_seq, last)
        part.writer.write_batch(batch, row_group_size=batch.num_rows)
        part.rows += batch.num_rows

    def _publish(self, keys: list[tuple[str, int]]) -> list[PublishedFile]:
        done = []
        for k in keys:
            part = self._parts[k]
            if part.pending_rows:
                self._encode_row_group(part, part.pending_rows)
            if part.writer is not None:
                done.append(self._close_file(part))
            del self._parts[k]
        return done

    def _close_file(self, part: _Part) -> PublishedFile:
        """Publish the row groups encoded so far as one file; the part starts a new file."""
        assert part.writer is not None and part.sink is not None
        part.writer.close()
        data = part.sink.getvalue()
        first, last, rows = part.first_seq, part.last_seq, part.rows
        part.writer = part.sink = None
        part.rows = 0
        partition = partition_of_hour(part.hour)
        rel_dir = f"{table_dir(part.table)}/{partition.path}"

        def name(attempt: int) -> str:
            wid = self.writer_id if attempt == 0 else f"{self.writer_id}~{attempt}"
            return file_name(first, last, wid)

        path, size = publish(self.root, rel_dir, name, memoryview(data))
        published = PublishedFile(
            path=self.root.display(path),
            table=part.table,
            partition=partition,
            first_seq=first,
            last_seq=last,
            rows=rows,
            bytes=size,
        )
        self.published.append(published)
        return published


def write_events(root: str, events: Sequence[ChangeEvent], **options: Any) -> list[PublishedFile]:
    """Write ``events`` as complete files and return them: one call, one commit point.

    For a Beam sink after a ``GroupByKey``/window: each call uses a fresh writer id, so a retried
    bundle writes new files next to the old ones instead of replacing them.
    """
    writer = ChangelogWriter(root, **options)
    writer.append(events)
    return writer.flush()

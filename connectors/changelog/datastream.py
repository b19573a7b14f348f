"""An ``engine: datastream`` source's GCS output, read as its raw changelog.

Datastream's files ARE the raw changelog of such a source: nothing copies them into Parquet.
``cdc replay``, ``cdc rebuild`` and ``cdc changelog ls|show`` read them through this reader, which
answers the same calls as ``ChangelogReader`` (``tables``, ``events``, ``summarize``), so the replay
pushes them through the same merge.

Layout (Google's "Configure a Cloud Storage destination" page)::

    <root>/<object>/YYYY/MM/DD/HH/mm/<file>.jsonl.gz | .jsonl | .avro

``<root>`` is ``gs://<bucket>/<prefix>/<source>`` (what ``cdc datastream apply`` configures) or the
registry's ``datastream.output``. ``<object>`` is ``<schema>_<table>`` (``<database>_<table>`` for
MySQL). The folder time is the source time of the changes (for a backfill, the time the backfill
started), in UTC, and several files may share a minute.

Pruning by time range works on the folders, widened by ``margin_s`` on both sides: a file is
named after the minute it was started in, holds events up to its rotation interval later, and
Datastream does not promise order inside a file. Events are then filtered exactly by commit time
and seq. A backfill that runs longer than the margin writes rows whose time is later than their
folder: replay a range that starts mid-backfill with a larger margin, or without ``--since``.

Memory is bounded by one file (Datastream rotates them at ``file_rotation_mb``, 50 MB by default):
a file is decoded whole, because an ``UPDATE-DELETE``/``UPDATE-INSERT`` pair is folded into one
version per file, then handed out in batches. Nothing fails or disappears silently: a file that
cannot be opened, or an entry outside the layout, is listed in ``ReadStats.unreadable``; a record
that cannot be decoded goes to the dead-letter store with its file and byte offset (and counts in
``ReadStats.rejected``), or, without a store, to ``ReadStats.unreadable``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from connectors.changelog.reader import (
    DEFAULT_BATCH_ROWS,
    PartitionSummary,
    ReadStats,
    Unreadable,
    list_dirs,
)
from connectors.changelog.storage import Root, open_root
from connectors.datastream_files import read_datastream_stream
from connectors.deadletter import DeadLetterSink
from state_models.changelog import ChangeRange, Partition, partition_of
from state_models.datastream import SourceKind
from state_models.events import ChangeEvent
from state_models.tables import TableInfo, resolver_for

#: Datastream's default file rotation interval (15 min) plus five minutes of clock and ordering slack.
DEFAULT_MARGIN_S = 20 * 60
#: What Datastream names its files (the content is sniffed; the name only keeps strays out).
FILE_SUFFIXES = (".avro", ".jsonl", ".jsonl.gz", ".json", ".json.gz")
_MINUTE_US = 60_000_000
_NUMBER = re.compile(r"^\d+$")


@dataclass(frozen=True)
class DatastreamFile:
    """One file Datastream wrote, as listed (nothing read yet)."""

    path: str  # inside the filesystem (no protocol)
    display: str  # as a user would type it
    table: str
    minute_us: int  # start of its folder's minute, µs since the epoch (UTC)
    bytes: int

    @property
    def partition(self) -> Partition:
        return partition_of(self.minute_us)


class DatastreamChangelogReader:
    """Lists and reads the files of one Datastream source under ``root``."""

    def __init__(
        self,
        root: str,
        source_name: str,
        tables: Sequence[TableInfo],
        *,
        kind: SourceKind,
        dead_letters: DeadLetterSink | None = None,
        margin_s: float = DEFAULT_MARGIN_S,
        storage_options: Mapping[str, Any] | None = None,
        fs: Any = None,
    ):
        self.root: Root = open_root(root, storage_options=storage_options, fs=fs)
        self.source_name = source_name
        self._tables = {t.id: t for t in tables if t.source == source_name}
        self._resolve = resolver_for(self._tables.values(), source_name)
        self.kind: SourceKind = kind
        self._dead_letters = dead_letters
        self._margin_us = int(margin_s * 1_000_000)

    # ------------------------------------------------------------------ listing

    def tables(self) -> list[str]:
        """Registered table ids of this source that have a folder."""
        self.root.refresh()
        present = {name.lower() for name in self._ls_dirs(self.root.base)}
        return sorted(t for t in self._tables if _object_name(t).lower() in present)

    def files(
        self, table: str, rng: ChangeRange | None = None, stats: ReadStats | None = None
    ) -> list[DatastreamFile]:
        """Files of ``table`` whose folder time may hold events in ``rng``, oldest first."""
        rng = rng or ChangeRange()
        stats = stats if stats is not None else ReadStats()
        out: list[DatastreamFile] = []
        self.root.refresh()
        wanted = _object_name(table).lower()
        for folder in self._ls_dirs(self.root.base):
            if folder.lower() == wanted:
                out.extend(self._files_under(table, f"{self.root.base}/{folder}", rng, stats))
        out.sort(key=lambda f: (f.minute_us, f.path))
        stats.files += len(out)
        stats.bytes_listed += sum(f.bytes for f in out)
        return out

    def _files_under(
        self, table: str, base: str, rng: ChangeRange, stats: ReadStats
    ) -> Iterator[DatastreamFile]:
        for year in self._dated(base, (), rng, stats):
            for month in self._dated(f"{base}/{year}", (year,), rng, stats):
                for day in self._dated(f"{base}/{year}/{month}", (year, month), rng, stats):
                    yield from self._files_in_day(
                        table, f"{base}/{year}/{month}/{day}", (year, month, day), rng, stats
                    )

    def _dated(
        self, path: str, parents: tuple[str, ...], rng: ChangeRange, stats: ReadStats
    ) -> Iterator[str]:
        """Sub-folders of a date folder that are dates inside the range (widened by the margin)."""
        for name in self._ls_dirs(path, files_as=stats):
            span = _span((*parents, name))
            if span is None:
                stats.unreadable.append(
                    Unreadable(self.root.display(f"{path}/{name}"), _NOT_LAYOUT)
                )
            elif self._overlaps(rng, *span):
                yield name

    def _files_in_day(
        self,
        table: str,
        day_path: str,
        day: tuple[str, str, str],
        rng: ChangeRange,
        stats: ReadStats,
    ) -> Iterator[DatastreamFile]:
        for path, info in sorted(self.root.fs.find(day_path, detail=True).items()):
            rel = path[len(day_path) + 1 :].split("/")
            span = _span((*day, *rel[:2])) if len(rel) == 3 else None
            if span is None or not rel[2].endswith(FILE_SUFFIXES):
                stats.unreadable.append(Unreadable(self.root.display(path), _NOT_LAYOUT))
                continue
            if self._overlaps(rng, *span):
                yield DatastreamFile(
                    path=path,
                    display=self.root.display(path),
                    table=table,
                    minute_us=span[0],
                    bytes=int(info.get("size") or 0),
                )

    def _overlaps(self, rng: ChangeRange, start_us: int, end_us: int) -> bool:
        return rng.overlaps_time(start_us - self._margin_us, end_us - 1 + self._margin_us)

    def _ls_dirs(self, path: str, files_as: ReadStats | None = None) -> list[str]:
        return list_dirs(self.root, path, files_as, _NOT_LAYOUT)

    # ------------------------------------------------------------------ reading

    def events(
        self,
        table: str,
        rng: ChangeRange | None = None,
        *,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        stats: ReadStats | None = None,
    ) -> Iterator[list[ChangeEvent]]:
        """The events of ``table`` inside ``rng``, file by file, in lists of ``batch_rows``."""
        rng = rng or ChangeRange()
        stats = stats if stats is not None else ReadStats()
        for f in self.files(table, rng, stats):
            events = [
                e
                for e in self._read(f, stats)
                if e.table == table
                and rng.covers_seqs(e.seq, e.seq)
                and rng.covers_time(e.commit_ts, e.commit_ts)
            ]
            stats.rows += len(events)
            for start in range(0, len(events), batch_rows):
                yield events[start : start + batch_rows]

    def _read(self, f: DatastreamFile, stats: ReadStats) -> list[ChangeEvent]:
        try:
            with self.root.fs.open(f.path, "rb") as handle:
                batch = read_datastream_stream(handle, f.display, self._resolve, kind=self.kind)
        except Exception as exc:  # gcsfs, aiohttp and OS errors share no base class
            stats.unreadable.append(Unreadable(f.display, f"{type(exc).__name__}: {exc}"))
            return []
        stats.files_read += 1
        stats.rows_read += batch.records
        if batch.rejected:
            stats.rejected += len(batch.rejected)
            if self._dead_letters is not None:
                self._dead_letters.put_many(
                    r.dead_letter(self.source_name, table=f.table) for r in batch.rejected
                )
            else:
                stats.unreadable.extend(
                    Unreadable(f"{r.file} ({r.where})", r.reason) for r in batch.rejected
                )
        return batch.events

    # ------------------------------------------------------------------ summaries

    def summarize(
        self, table: str, rng: ChangeRange | None = None, *, stats: ReadStats | None = None
    ) -> tuple[list[DatastreamFile], list[PartitionSummary]]:
        """Files and per-hour totals from the listing alone (events are not counted: that would
        mean reading every file); the times are the folders' minutes."""
        files = self.files(table, rng, stats)
        parts: dict[Partition, PartitionSummary] = {}
        for f in files:
            p = parts.setdefault(f.partition, PartitionSummary(table, f.partition, counted=False))
            p.files += 1
            p.bytes += f.bytes
            lo, hi = p.min_commit_us, p.max_commit_us
            p.min_commit_us = f.minute_us if lo is None else min(lo, f.minute_us)
            p.max_commit_us = f.minute_us if hi is None else max(hi, f.minute_us)
        return files, [parts[p] for p in sorted(parts)]


_NOT_LAYOUT = "not a Datastream file (expected <object>/YYYY/MM/DD/HH/mm/<file>.avro|.jsonl[.gz])"


def _object_name(table_id: str) -> str:
    """``shop.shop.orders`` -> ``shop_orders``: Datastream's folder for a database table."""
    _, schema, table = table_id.split(".", 2)
    return f"{schema}_{table}"


def _span(parts: tuple[str, ...]) -> tuple[int, int] | None:
    """``("2026", "02", "17", "14", "05")`` (a prefix of it) -> [start, end) in µs; None if not a
    date folder path."""
    widths = (4, 2, 2, 2, 2)
    if not parts or len(parts) > 5:
        return None
    if any(len(p) != w or not _NUMBER.match(p) for p, w in zip(parts, widths, strict=False)):
        return None
    n = [int(p) for p in parts]
    try:
        year, month, day, hour, minute = (*n, *[1] * (3 - len(n)), 0, 0)[:5]
        start = dt.datetime(year, month, day, hour, minute, tzinfo=dt.UTC)
    except ValueError:
        return None
    if len(n) == 1:
        end = start.replace(year=start.year + 1)
    elif len(n) == 2:
        end = (start + dt.timedelta(days=32)).replace(day=1)
    else:
        step = {3: dt.timedelta(days=1), 4: dt.timedelta(hours=1), 5: dt.timedelta(minutes=1)}
        end = start + step[len(n)]
    return _us(start), _us(end)


def _us(t: dt.datetime) -> int:
    return (t - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)

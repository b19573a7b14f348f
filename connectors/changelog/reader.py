"""Read one table's changelog over a commit-time or seq range, in bounded memory.

Pruning happens at three levels, cheapest first:
1. partitions: ``dt=`` folders outside the time range are never listed, ``hour=`` folders outside
   it never opened;
2. file names: ``<first seq>-<last seq>-…`` outside the seq range are never opened;
3. row groups: min/max statistics of ``seq`` and ``commit_ts`` skip row groups, and rows of the
   row groups that straddle a bound are filtered exactly.

Batches stream one row group at a time. A file that cannot be read (truncated, not Parquet, wrong
columns, a name that does not follow the layout) never stops the read and is never skipped
silently: it is recorded in ``ReadStats.unreadable`` with its path and the reason, and the caller
decides (``cdc replay`` reports them and exits 1).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from connectors.changelog.records import MERGE_COLUMNS, from_batch
from connectors.changelog.storage import Root, open_root
from state_models.changelog import (
    ChangeRange,
    Partition,
    parse_date_dir,
    parse_file_name,
    parse_partition,
    table_dir,
    table_id_of_dir,
)
from state_models.events import ChangeEvent

DEFAULT_BATCH_ROWS = 65_536
_REQUIRED = ("event_id", "table", "op", "seq", "commit_ts", "key")
#: columns a file may lack (written before they existed): read as null
_OPTIONAL = ("source_types",)


@dataclass(frozen=True)
class ChangelogFile:
    """One published file, as listed (nothing read yet)."""

    path: str  # inside the filesystem (no protocol)
    display: str  # as a user would type it
    table: str
    partition: Partition
    first_seq: str
    last_seq: str
    writer_id: str
    bytes: int


@dataclass(frozen=True)
class Unreadable:
    """A file the reader could not use, and why."""

    path: str
    reason: str


@dataclass
class ReadStats:
    """What a read did: how much was pruned, read and returned, and what could not be read."""

    files: int = 0  # files left after partition and name pruning
    files_read: int = 0
    bytes_listed: int = 0
    row_groups_read: int = 0
    row_groups_skipped: int = 0
    rows_read: int = 0  # rows decoded
    rows: int = 0  # rows returned (inside the range)
    unreadable: list[Unreadable] = field(default_factory=list)
    rejected: int = 0  # records that could not be decoded (Datastream files): dead-lettered


@dataclass(frozen=True)
class FileSummary:
    """What a file's footer says, without reading its rows."""

    file: ChangelogFile
    rows: int
    row_groups: int
    min_commit_us: int | None
    max_commit_us: int | None


class EventReader(Protocol):
    """What a replay reads a table's raw changelog through: our Parquet files (``ChangelogReader``)
    or, for an ``engine: datastream`` source, Datastream's own files
    (``connectors.changelog.datastream``)."""

    def tables(self) -> list[str]: ...

    def events(
        self,
        table: str,
        rng: ChangeRange | None = None,
        *,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        stats: ReadStats | None = None,
    ) -> Iterator[list[ChangeEvent]]: ...


class ChangelogReader:
    """Lists and reads ``<root>/<source>/<schema>.<table>/dt=…/hour=…/*.parquet``."""

    def __init__(
        self, root: str, *, storage_options: Mapping[str, Any] | None = None, fs: Any = None
    ):
        self.root: Root = open_root(root, storage_options=storage_options, fs=fs)

    # ------------------------------------------------------------------ listing

    def tables(self) -> list[str]:
        """Table ids that have a folder in the changelog."""
        self.root.refresh()
        out = []
        for source in self._ls_dirs(self.root.base):
            for st in self._ls_dirs(f"{self.root.base}/{source}"):
                tid = table_id_of_dir(source, st)
                if tid:
                    out.append(tid)
        return sorted(out)

    def files(
        self, table: str, rng: ChangeRange | None = None, stats: ReadStats | None = None
    ) -> list[ChangelogFile]:
        """Files of ``table`` that may hold events in ``rng``, in (partition, first seq) order.

        Entries that do not follow the layout are recorded in ``stats.unreadable``.
        """
        rng = rng or ChangeRange()
        stats = stats if stats is not None else ReadStats()
        base = f"{self.root.base}/{table_dir(table)}"
        self.root.refresh(base)
        out: list[ChangelogFile] = []
        for date_name in self._ls_dirs(base, files_as=stats):
            date = parse_date_dir(date_name)
            if date is None:
                stats.unreadable.append(
                    Unreadable(
                        self.root.display(f"{base}/{date_name}"),
                        "not a dt=YYYY-MM-DD partition folder",
                    )
                )
                continue
            if not rng.overlaps_date(date):
                continue
            out.extend(self._files_in_date(table, f"{base}/{date_name}", date_name, rng, stats))
        out.sort(key=lambda f: (f.partition, f.first_seq, f.path))
        stats.files += len(out)
        stats.bytes_listed += sum(f.bytes for f in out)
        return out

    def _files_in_date(
        self, table: str, date_path: str, date_name: str, rng: ChangeRange, stats: ReadStats
    ) -> Iterator[ChangelogFile]:
        found = self.root.fs.find(date_path, detail=True)
        for path, info in sorted(found.items()):
            rel = path[len(date_path) + 1 :].split("/")
            name = rel[-1]
            partition = parse_partition(date_name, rel[0]) if len(rel) == 2 else None
            parsed = parse_file_name(name) if partition else None
            if partition is None or parsed is None:
                stats.unreadable.append(
                    Unreadable(
                        self.root.display(path),
                        "not a changelog file name (expected hour=HH/<first seq>-<last seq>-<writer id>.parquet)",
                    )
                )
                continue
            if not (
                rng.overlaps_partition(partition)
                and rng.overlaps_seqs(parsed.first_seq, parsed.last_seq)
            ):
                continue
            yield ChangelogFile(
                path=path,
                display=self.root.display(path),
                table=table,
                partition=partition,
                first_seq=parsed.first_seq,
                last_seq=parsed.last_seq,
                writer_id=parsed.writer_id,
                bytes=int(info.get("size") or 0),
            )

    def first_partition(self, table: str) -> Partition | None:
        """The table's first hour in the changelog (lists only its first day)."""
        base = f"{self.root.base}/{table_dir(table)}"
        self.root.refresh(base)
        dates = sorted(d for d in map(parse_date_dir, self._ls_dirs(base)) if d is not None)
        if not dates:
            return None
        start = Partition(dates[0], 0).start_us
        files = self.files(table, ChangeRange(since_us=start, until_us=start + 86_400_000_000))
        return min((f.partition for f in files), default=None)

    def _ls_dirs(self, path: str, files_as: ReadStats | None = None) -> list[str]:
        return list_dirs(self.root, path, files_as, "a file outside any partition")

    # ------------------------------------------------------------------ reading

    def batches(
        self,
        table: str,
        rng: ChangeRange | None = None,
        *,
        columns: Sequence[str] | None = MERGE_COLUMNS,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        stats: ReadStats | None = None,
        files: Iterable[ChangelogFile] | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Record batches of ``table`` inside ``rng`` (``columns=None``: every column)."""
        rng = rng or ChangeRange()
        stats = stats if stats is not None else ReadStats()
        for f in self.files(table, rng, stats) if files is None else files:
            yield from self._read_file(f, rng, columns, batch_rows, stats)

    def events(
        self,
        table: str,
        rng: ChangeRange | None = None,
        *,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        stats: ReadStats | None = None,
        columns: Sequence[str] | None = MERGE_COLUMNS,
    ) -> Iterator[list[ChangeEvent]]:
        """Like ``batches``, as lists of ``ChangeEvent``."""
        for batch in self.batches(table, rng, columns=columns, batch_rows=batch_rows, stats=stats):
            yield from_batch(batch)

    def _read_file(
        self,
        f: ChangelogFile,
        rng: ChangeRange,
        columns: Sequence[str] | None,
        batch_rows: int,
        stats: ReadStats,
    ) -> Iterator[pa.RecordBatch]:
        rows_before = stats.rows_read
        try:
            handle = self.root.fs.open(f.path, "rb")
        except Exception as exc:
            stats.unreadable.append(Unreadable(f.display, f"cannot open: {_reason(exc)}"))
            return
        with handle:
            try:
                # source_types repeats a few texts: read as a dictionary, parsed once per entry
                pf = pq.ParquetFile(handle, read_dictionary=["source_types"])
                groups = self._row_groups(pf, rng, stats)
                names = pf.schema_arrow.names
                missing = [
                    c
                    for c in (*_REQUIRED, *(columns or ()))
                    if c not in names and c not in _OPTIONAL
                ]
                if missing:
                    raise ValueError(f"missing columns {missing} (has {names})")
                wanted = None
                if columns:  # the range filter needs seq and commit_ts whatever the caller asked
                    wanted = [
                        c for c in dict.fromkeys([*columns, "seq", "commit_ts"]) if c in names
                    ]
                    columns = [c for c in columns if c in names]
                it = pf.iter_batches(
                    batch_size=batch_rows, row_groups=[i for i, _ in groups], columns=wanted
                )
            except Exception as exc:
                stats.unreadable.append(Unreadable(f.display, _reason(exc)))
                return
            stats.files_read += 1
            stats.row_groups_read += len(groups)
            exact = all(covered for _, covered in groups)
            while True:
                try:
                    batch = next(it)
                except StopIteration:
                    return
                except Exception as exc:
                    done = stats.rows_read - rows_before
                    stats.unreadable.append(
                        Unreadable(f.display, f"{_reason(exc)} (after {done} rows were read)")
                    )
                    return
                stats.rows_read += batch.num_rows
                if not exact:
                    batch = _filter(batch, rng)
                if columns and batch.num_columns != len(columns):
                    batch = batch.select(list(columns))
                stats.rows += batch.num_rows
                if batch.num_rows:
                    yield batch

    def _row_groups(
        self, pf: pq.ParquetFile, rng: ChangeRange, stats: ReadStats
    ) -> list[tuple[int, bool]]:
        """(row group index, wholly inside the range) for the row groups that may match."""
        meta = pf.metadata
        idx = {meta.schema.column(i).name: i for i in range(meta.num_columns)}
        out = []
        for i in range(meta.num_row_groups):
            rg = meta.row_group(i)
            seq = _min_max(rg, idx.get("seq"), raw=False)
            ts = _min_max(rg, idx.get("commit_ts"), raw=True)
            if rng.is_everything:
                out.append((i, True))
                continue
            if seq is None or ts is None:  # no statistics: read it and filter
                out.append((i, False))
                continue
            if rng.overlaps_seqs(*seq) and rng.overlaps_time(*ts):
                out.append((i, rng.covers_seqs(*seq) and rng.covers_time(*ts)))
            else:
                stats.row_groups_skipped += 1
        return out

    # ------------------------------------------------------------------ summaries

    def summary(self, f: ChangelogFile) -> FileSummary | Unreadable:
        """Row count and commit-time range of one file, from its footer."""
        try:
            with self.root.fs.open(f.path, "rb") as handle:
                meta = pq.ParquetFile(handle).metadata
                idx = {meta.schema.column(i).name: i for i in range(meta.num_columns)}
                lo = hi = None
                for i in range(meta.num_row_groups):
                    ts = _min_max(meta.row_group(i), idx.get("commit_ts"), raw=True)
                    if ts:
                        lo = ts[0] if lo is None else min(lo, ts[0])
                        hi = ts[1] if hi is None else max(hi, ts[1])
                return FileSummary(f, meta.num_rows, meta.num_row_groups, lo, hi)
        except Exception as exc:
            return Unreadable(f.display, _reason(exc))


def list_dirs(root: Root, path: str, files_as: ReadStats | None, stray: str) -> list[str]:
    """Names of the folders in ``path`` (none if it does not exist), sorted; a file found there is
    recorded in ``files_as.unreadable`` with the reason ``stray``, when given."""
    if not root.fs.exists(path):
        return []
    names = []
    for info in root.fs.ls(path, detail=True):
        name = info["name"].rstrip("/").rsplit("/", 1)[-1]
        if info.get("type") == "directory":
            names.append(name)
        elif files_as is not None:
            files_as.unreadable.append(Unreadable(root.display(info["name"]), stray))
    return sorted(names)


def _min_max(rg: Any, col: int | None, *, raw: bool) -> tuple[Any, Any] | None:
    if col is None:
        return None
    st = rg.column(col).statistics
    if st is None or not st.has_min_max:
        return None
    return (st.min_raw, st.max_raw) if raw else (st.min, st.max)


def _filter(batch: pa.RecordBatch, rng: ChangeRange) -> pa.RecordBatch:
    conds = []
    seq = batch.column("seq")
    if rng.from_seq is not None:
        conds.append(pc.greater_equal(seq, rng.from_seq))
    if rng.to_seq is not None:
        conds.append(pc.less_equal(seq, rng.to_seq))
    if rng.since_us is not None or rng.until_us is not None:
        ts = batch.column("commit_ts").cast(pa.int64())
        if rng.since_us is not None:
            conds.append(pc.greater_equal(ts, rng.since_us))
        if rng.until_us is not None:
            conds.append(pc.less(ts, rng.until_us))
    if not conds:
        return batch
    mask = conds[0]
    for c in conds[1:]:
        mask = pc.and_(mask, c)
    return batch.filter(mask)


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def to_micros(value: dt.datetime) -> int:
    """µs since the epoch; a naive datetime is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass
class PartitionSummary:
    """What one hour of one table holds (from the file names and footers)."""

    table: str
    partition: Partition | None  # None: the total over a table
    files: int = 0
    rows: int = 0
    bytes: int = 0
    first_seq: str | None = None
    last_seq: str | None = None
    min_commit_us: int | None = None
    max_commit_us: int | None = None
    counted: bool = True  # False: events not counted (Datastream files are listed, not read)

    def add(self, s: FileSummary) -> None:
        f = s.file
        self.files += 1
        self.rows += s.rows
        self.bytes += f.bytes
        self.first_seq = f.first_seq if self.first_seq is None else min(self.first_seq, f.first_seq)
        self.last_seq = f.last_seq if self.last_seq is None else max(self.last_seq, f.last_seq)
        if s.min_commit_us is not None:
            lo = self.min_commit_us
            self.min_commit_us = s.min_commit_us if lo is None else min(lo, s.min_commit_us)
        if s.max_commit_us is not None:
            hi = self.max_commit_us
            self.max_commit_us = s.max_commit_us if hi is None else max(hi, s.max_commit_us)


def summarize(
    reader: ChangelogReader,
    table: str,
    rng: ChangeRange | None = None,
    *,
    stats: ReadStats | None = None,
    threads: int = 8,
) -> tuple[list[FileSummary], list[PartitionSummary]]:
    """Per-file and per-partition summaries of a table, reading only footers (in parallel, since
    on GCS each footer is a round trip). Unreadable files land in ``stats.unreadable``."""
    stats = stats if stats is not None else ReadStats()
    files = reader.files(table, rng, stats)
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(files)))) as pool:
        results = list(pool.map(reader.summary, files))
    summaries: list[FileSummary] = []
    partitions: dict[Partition, PartitionSummary] = {}
    for r in results:
        if isinstance(r, Unreadable):
            stats.unreadable.append(r)
            continue
        summaries.append(r)
        p = r.file.partition
        partitions.setdefault(p, PartitionSummary(table, p)).add(r)
    return summaries, [partitions[p] for p in sorted(partitions)]

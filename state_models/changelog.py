"""Where things live in the raw changelog (docs/architecture.md §6). Pure: names in, names out.

::

    <root>/<source>/<schema>.<table>/dt=YYYY-MM-DD/hour=HH/<first seq>-<last seq>-<writer id>.parquet

Partitions are the events' commit time in UTC. A seq contains ``/`` between its sections, which
cannot appear in a file name, so in names the sections are joined by ``_`` instead
(``0000000000000001_000000000000002a``); ``parse_file_name`` turns them back into seqs. Seqs and
the separator ``-`` never overlap, so the writer id is everything after the second ``-``.

Anything under the root whose name starts with ``_`` (the writers' ``_tmp/`` folder) is outside the
layout: source names start with a letter, so no table lives there.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from state_models.seq import is_seq

SUFFIX = ".parquet"
#: Writers stage files here (outside the layout) before publishing them under their final name.
TMP_DIR = "_tmp"
_HOUR_US = 3_600_000_000
_WRITER_ID_RE = re.compile(r"^[A-Za-z0-9_.~]+$")
_DT_RE = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$")
_HOUR_RE = re.compile(r"^hour=(\d{2})$")


@dataclass(frozen=True, order=True)
class Partition:
    """One hour of one table: ``dt=YYYY-MM-DD/hour=HH``."""

    date: dt.date
    hour: int

    @property
    def start_us(self) -> int:
        """First microsecond (UTC, since the epoch) inside this partition."""
        start = dt.datetime(
            self.date.year, self.date.month, self.date.day, self.hour, tzinfo=dt.UTC
        )
        return int(start.timestamp()) * 1_000_000

    @property
    def end_us(self) -> int:
        """First microsecond after this partition."""
        return self.start_us + _HOUR_US

    @property
    def path(self) -> str:
        return f"dt={self.date.isoformat()}/hour={self.hour:02d}"


def partition_of(commit_ts_us: int) -> Partition:
    """The partition an event with this commit time (µs since the epoch, UTC) belongs to."""
    return partition_of_hour(commit_ts_us // _HOUR_US)


def partition_of_hour(hour_index: int) -> Partition:
    """The partition of the ``hour_index``-th hour since the epoch (commit_ts // 3600e6)."""
    t = dt.datetime.fromtimestamp(hour_index * 3600, tz=dt.UTC)
    return Partition(t.date(), t.hour)


def parse_partition(dt_part: str, hour_part: str) -> Partition | None:
    """``("dt=2024-05-01", "hour=07")`` -> Partition; None when either is not a layout name."""
    d, h = _DT_RE.match(dt_part), _HOUR_RE.match(hour_part)
    if not d or not h:
        return None
    try:
        date = dt.date.fromisoformat(d.group(1))
    except ValueError:
        return None
    hour = int(h.group(1))
    return Partition(date, hour) if hour < 24 else None


def parse_date_dir(name: str) -> dt.date | None:
    """``dt=2024-05-01`` -> date; None when it is not a layout name."""
    m = _DT_RE.match(name)
    if not m:
        return None
    try:
        return dt.date.fromisoformat(m.group(1))
    except ValueError:
        return None


def table_dir(table_id: str) -> str:
    """``billing.public.subscriptions`` -> ``billing/public.subscriptions``."""
    parts = table_id.split(".")
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"table id must be source.schema.table, got {table_id!r}")
    return f"{parts[0]}/{parts[1]}.{parts[2]}"


def table_id_of_dir(source: str, schema_table: str) -> str | None:
    """Inverse of ``table_dir``; None for names that are not a table folder."""
    if source.startswith("_") or schema_table.count(".") != 1:
        return None
    return f"{source}.{schema_table}"


def check_writer_id(writer_id: str) -> str:
    if not _WRITER_ID_RE.match(writer_id):
        raise ValueError(
            f"writer id must be letters, digits, '_', '.' or '~' (it ends file names), got {writer_id!r}"
        )
    return writer_id


def file_name(first_seq: str, last_seq: str, writer_id: str) -> str:
    """``<first seq>-<last seq>-<writer id>.parquet`` with ``/`` in the seqs written as ``_``."""
    return f"{first_seq.replace('/', '_')}-{last_seq.replace('/', '_')}-{check_writer_id(writer_id)}{SUFFIX}"


@dataclass(frozen=True)
class FileName:
    first_seq: str
    last_seq: str
    writer_id: str


def parse_file_name(name: str) -> FileName | None:
    """Inverse of ``file_name``; None when the name does not follow the layout."""
    if not name.endswith(SUFFIX):
        return None
    parts = name[: -len(SUFFIX)].split("-", 2)
    if len(parts) != 3:
        return None
    first, last = parts[0].replace("_", "/"), parts[1].replace("_", "/")
    if not (is_seq(first) and is_seq(last)) or first > last or not _WRITER_ID_RE.match(parts[2]):
        return None
    return FileName(first, last, parts[2])


def file_path(table_id: str, partition: Partition, name: str) -> str:
    """Path of a file relative to the changelog root."""
    return f"{table_dir(table_id)}/{partition.path}/{name}"


@dataclass(frozen=True)
class ChangeRange:
    """A slice of one table's changelog: commit time in ``[since_us, until_us)``, seq in
    ``[from_seq, to_seq]``. Each bound is optional; the default range is everything."""

    since_us: int | None = None
    until_us: int | None = None
    from_seq: str | None = None
    to_seq: str | None = None

    def __post_init__(self) -> None:
        for name in ("from_seq", "to_seq"):
            v = getattr(self, name)
            if v is not None and not is_seq(v):
                raise ValueError(
                    f"{name} must be a seq (16-hex-digit sections joined by '/'): {v!r}"
                )
        if self.from_seq and self.to_seq and self.from_seq > self.to_seq:
            raise ValueError(f"from_seq {self.from_seq} is after to_seq {self.to_seq}")
        if (
            self.since_us is not None
            and self.until_us is not None
            and self.since_us >= self.until_us
        ):
            raise ValueError("since must be before until")

    @property
    def is_everything(self) -> bool:
        return self == ChangeRange()

    def overlaps_date(self, date: dt.date) -> bool:
        day = Partition(date, 0)
        return self.overlaps_time(day.start_us, day.start_us + 24 * _HOUR_US - 1)

    def overlaps_partition(self, p: Partition) -> bool:
        return self.overlaps_time(p.start_us, p.end_us - 1)

    def overlaps_time(self, lo_us: int, hi_us: int) -> bool:
        """Whether commit times in ``[lo_us, hi_us]`` (inclusive) can fall inside the range."""
        if self.since_us is not None and hi_us < self.since_us:
            return False
        return not (self.until_us is not None and lo_us >= self.until_us)

    def overlaps_seqs(self, lo: str, hi: str) -> bool:
        """Whether seqs in ``[lo, hi]`` can fall inside the range."""
        if self.from_seq is not None and hi < self.from_seq:
            return False
        return not (self.to_seq is not None and lo > self.to_seq)

    def covers_time(self, lo_us: int, hi_us: int) -> bool:
        return (self.since_us is None or lo_us >= self.since_us) and (
            self.until_us is None or hi_us < self.until_us
        )

    def covers_seqs(self, lo: str, hi: str) -> bool:
        return (self.from_seq is None or lo >= self.from_seq) and (
            self.to_seq is None or hi <= self.to_seq
        )

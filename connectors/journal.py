"""A durable local journal: where ``cdc run`` lands captured batches before anything else.

Each batch a capture hands over becomes one segment file: an Arrow IPC file of the changelog's own
rows (``connectors.changelog.records``: the same schema and codec as the changelog's Parquet
files, so an event reads back from the journal exactly as it will from the changelog), written to
a temporary name, fsynced, and renamed into place; only then does ``write`` return, so
the capture may advance its offset. Two consumers work from the segments independently:

- the merge loop applies them to the warehouse within a second (freshness), then marks them
  ``merged``;
- the archiver rolls many of them into a few large immutable changelog files (cheap storage and
  replays), then marks them ``archived``.

A segment is deleted once it is both. After a crash, whatever is not marked is simply done again:
the merge is idempotent and the changelog tolerates duplicates (readers dedupe by ``event_id``), so
the journal turns at-least-once delivery into a state with nothing lost and nothing doubled.

Layout: ``<root>/<source>/<number>.arrow`` plus marker files ``<number>.merged`` and
``<number>.archived``; numbers increase with arrival order. Segments an older version wrote as
JSON lines (``<number>.jsonl``, records of ``event_to_record``) are still read, so an upgrade
finishes whatever the journal held.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from connectors.changelog.records import SCHEMA, from_batch, to_batch
from state_models.events import ChangeEvent, event_from_record

#: segment files: the current format first; older ones are read, never written
SUFFIXES = (".arrow", ".jsonl")

MERGED = "merged"
ARCHIVED = "archived"


@dataclass(frozen=True, order=True)
class Segment:
    source: str
    number: int
    path: Path

    @property
    def name(self) -> str:
        return f"{self.source}/{self.number:012d}"

    def marked(self, marker: str) -> bool:
        return self.path.with_suffix(f".{marker}").exists()

    @property
    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SourceJournal:
    """The journal of one source; it is the ``EventSink`` the source's capture writes to."""

    def __init__(self, root: str | Path, source: str):
        self.source = source
        self.dir = Path(root) / source
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        existing = [s.number for s in self.segments()]
        self._next = (max(existing) + 1) if existing else 1
        for tmp in self.dir.glob("*.tmp"):  # a write that never completed was never acknowledged
            tmp.unlink()

    def write(self, events: Sequence[ChangeEvent]) -> None:
        """Durably append one batch as a new segment (fsync file and directory before returning)."""
        if not events:
            return
        with self._lock:
            number = self._next
            self._next += 1
            final = self.dir / f"{number:012d}{SUFFIXES[0]}"
            tmp = final.with_suffix(".tmp")
            now_us = time.time_ns() // 1000  # the changelog stamps its own ingested_at
            batch = to_batch(events, [now_us] * len(events))
            with tmp.open("wb") as fh:
                with pa.ipc.new_file(fh, SCHEMA) as writer:
                    writer.write_batch(batch)
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(final)
            _fsync_dir(self.dir)

    def segments(self) -> list[Segment]:
        out = []
        for p in self.dir.iterdir():
            if p.suffix in SUFFIXES and p.stem.isdigit():
                out.append(Segment(self.source, int(p.stem), p))
        return sorted(out)


class Journal:
    """All sources' journals under one root (``<state_dir>/journal``)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._sources: dict[str, SourceJournal] = {}

    def sink(self, source: str) -> SourceJournal:
        if source not in self._sources:
            self._sources[source] = SourceJournal(self.root, source)
        return self._sources[source]

    def segments(self, source: str | None = None) -> list[Segment]:
        names = [source] if source else sorted(p.name for p in self.root.iterdir() if p.is_dir())
        return [s for n in names for s in self.sink(n).segments()]

    def pending(self, marker: str, source: str | None = None) -> list[Segment]:
        """Segments not yet marked ``marker`` (merged / archived), oldest first."""
        return [s for s in self.segments(source) if not s.marked(marker)]

    @staticmethod
    def read(segment: Segment) -> Iterator[ChangeEvent]:
        if segment.path.suffix == ".jsonl":  # written by an older version
            with segment.path.open(encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        yield event_from_record(json.loads(line))
            return
        with pa.memory_map(str(segment.path)) as source:
            reader = pa.ipc.open_file(source)
            for i in range(reader.num_record_batches):
                yield from from_batch(reader.get_batch(i))

    @staticmethod
    def rows(segment: Segment) -> pa.Table | None:
        """The segment's changelog rows as Arrow (read into memory: one capture batch), or None
        when it is not in the current format (an older JSON-lines segment, or Arrow of another
        schema: read its events)."""
        if segment.path.suffix != ".arrow":
            return None
        with pa.OSFile(str(segment.path)) as source:
            reader = pa.ipc.open_file(source)
            if reader.schema.remove_metadata() != SCHEMA.remove_metadata():
                return None
            return reader.read_all()

    @staticmethod
    def mark(segments: Sequence[Segment], marker: str) -> None:
        """Record that ``segments`` are done for one consumer (durably: marker files, dir fsync)."""
        dirs = set()
        for s in segments:
            s.path.with_suffix(f".{marker}").touch()
            dirs.add(s.path.parent)
        for d in dirs:
            _fsync_dir(d)

    def prune(self) -> int:
        """Delete segments that are both merged and archived. Returns how many were removed."""
        removed = 0
        for s in self.segments():
            if s.marked(MERGED) and s.marked(ARCHIVED):
                s.path.unlink(missing_ok=True)
                s.path.with_suffix(f".{MERGED}").unlink(missing_ok=True)
                s.path.with_suffix(f".{ARCHIVED}").unlink(missing_ok=True)
                removed += 1
        return removed

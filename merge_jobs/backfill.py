"""The replay job on Beam (a backfill): a bounded range of the raw changelog -> the same MERGE.

::

    changelog files of each table in the range (listed and pruned by the changelog reader)
        ─ Create ─ ReadAllFromParquetBatched ─ ToEvents (exact range filter)
        ─ MergeIntoWarehouse ─ dead letters ─ StoreDeadLetters

Files are chosen when the pipeline is built, with the changelog reader's partition and file-name
pruning; each worker then reads whole files with Beam's Parquet IO and keeps the rows inside the
range. The MERGE is idempotent and order-free, so a replay of any range, any number of times, into
a table that already holds some or all of it, gives the same history. A backfill on Dataflow is
``python -m merge_jobs.replay ... --runner DataflowRunner`` (the options of ``cdc job replay``);
``cdc replay`` (``merge_jobs.replay``) runs the same merge in-process, without Beam.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.io.parquetio import ReadAllFromParquetBatched
from apache_beam.metrics import Metrics

from connectors.changelog.reader import ChangelogReader, ReadStats
from connectors.changelog.records import MERGE_COLUMNS, from_batch
from connectors.warehouse import Warehouse
from merge_jobs.settings import JobSettings
from merge_jobs.transforms import (
    NAMESPACE,
    MergeIntoWarehouse,
    StoreDeadLetters,
    WarehouseConnector,
)
from state_models.changelog import ChangeRange
from state_models.events import ChangeEvent


@dataclass(frozen=True)
class ReplayPlan:
    """The files a replay reads: what the changelog reader listed after pruning."""

    files: list[str]  # as Beam opens them: /abs/path or gs://bucket/...
    stats: ReadStats

    @property
    def unreadable(self) -> list[str]:
        return [f"{u.path}: {u.reason}" for u in self.stats.unreadable]


def plan_replay(
    changelog_root: str,
    tables: Sequence[str],
    rng: ChangeRange,
    storage_options: dict[str, Any] | None = None,
) -> ReplayPlan:
    """List the changelog files of ``tables`` that may hold events in ``rng``."""
    reader = ChangelogReader(changelog_root, storage_options=storage_options)
    stats = ReadStats()
    files = [f.display for table in tables for f in reader.files(table, rng, stats)]
    return ReplayPlan(files, stats)


class _ToEventsFn(beam.DoFn):
    """A record batch of changelog rows -> the change events inside the range."""

    def __init__(self, rng: ChangeRange):
        self._rng = rng
        self._read = Metrics.counter(NAMESPACE, "changelog_rows_read")
        self._kept = Metrics.counter(NAMESPACE, "events_replayed")

    def process(self, table: Any) -> Iterator[tuple[str, ChangeEvent]]:
        events = from_batch(table)
        self._read.inc(len(events))
        rng = self._rng
        for e in events:
            if rng.covers_seqs(e.seq, e.seq) and rng.covers_time(e.commit_ts, e.commit_ts):
                self._kept.inc()
                yield e.table, e


class ReadChangelog(beam.PTransform):
    """Changelog files -> the change events in ``rng``, keyed by table (a bounded PCollection)."""

    def __init__(self, files: Sequence[str], rng: ChangeRange):
        super().__init__()
        self._files = list(files)
        self._rng = rng

    def expand(self, pbegin: Any) -> Any:
        return (
            pbegin
            | "Files" >> beam.Create(self._files)
            | "ReadParquet" >> ReadAllFromParquetBatched(columns=list(MERGE_COLUMNS))
            | "ToEvents" >> beam.ParDo(_ToEventsFn(self._rng))
        )


@dataclass
class ReplayOutputs:
    events: Any
    merge_reports: Any
    dead_letters: Any


def build_replay(
    pipeline: beam.Pipeline,
    settings: JobSettings,
    files: Sequence[str],
    rng: ChangeRange,
    *,
    warehouse: Callable[[], Warehouse] | None = None,
    publisher: Callable[[], Any] | None = None,
) -> ReplayOutputs:
    """Add the replay job's steps to ``pipeline`` (batch mode)."""
    events = pipeline | "Changelog" >> ReadChangelog(files, rng)
    # No buffering timer: a bounded input flushes every batch when it ends.
    reports, rejects = events | "Merge" >> MergeIntoWarehouse(
        warehouse or WarehouseConnector(settings.warehouse_url),
        settings.table_defs,
        batch_size=settings.batch_size,
        max_latency_s=None,
    )
    _ = rejects | "DeadLetters" >> StoreDeadLetters(
        settings.dead_letter_folder, settings.dead_letter_topic, publisher, settings.sealing
    )
    return ReplayOutputs(events, reports, rejects)

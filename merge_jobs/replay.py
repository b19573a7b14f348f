"""Replay a range of the raw changelog through the merge, or rebuild a state table from all of it.

Events stream from the changelog reader in bounded batches straight into ``merge_jobs.apply``, the
step every runner shares, so a replay is the same MERGE as live ingestion. The merge is idempotent
and order-free: replaying a range that is already applied changes nothing, and replaying any range
any number of times is safe. Duplicates inside the changelog (a writer retried, a capture
re-delivered) are deduped by the merge by ``(key, seq)``.

A rebuild drops and re-creates a *shadow* state table (``<state table>__shadow`` unless named),
then replays the whole changelog into it. ``cdc verify`` compares it with the live table, and
``cdc rebuild --swap`` puts it in the live table's place when they match.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from connectors.changelog.reader import EventReader, ReadStats
from connectors.deadletter import DeadLetterStore
from connectors.warehouse import Warehouse
from merge_jobs.apply import ApplyReport, apply_events
from state_models.changelog import ChangeRange
from state_models.events import ChangeEvent
from state_models.scd2 import TableDef

#: Events per MERGE during a replay: large batches amortise the MERGE's fixed cost (one scan of
#: the key columns); 50k keeps decoded and staged events to a few hundred MB (measured, 2M events).
DEFAULT_REPLAY_BATCH = 50_000
SHADOW_SUFFIX = "__shadow"

Progress = Callable[[int], None]


@dataclass
class ReplayReport:
    table: str
    state_table: str
    read: ReadStats = field(default_factory=ReadStats)
    applied: ApplyReport = field(default_factory=ApplyReport)
    seconds: float = 0.0

    @property
    def events(self) -> int:
        return self.read.rows

    @property
    def ok(self) -> bool:
        """Everything in the range was read and applied."""
        return not (self.read.unreadable or self.read.rejected or self.applied.dead_letters)


def shadow_of(table: TableDef, name: str | None = None) -> TableDef:
    """The same table, kept in another state table (a rebuild target)."""
    return replace(table, state_table=name or f"{table.state_table}{SHADOW_SUFFIX}")


def rebatch(batches: Iterable[list[ChangeEvent]], size: int) -> Iterator[list[ChangeEvent]]:
    """Regroup event lists (one per file or row group) into lists of ``size`` (the last smaller)."""
    pending: list[ChangeEvent] = []
    for batch in batches:
        pending.extend(batch)
        while len(pending) >= size:
            yield pending[:size]
            pending = pending[size:]
    if pending:
        yield pending


def replay(
    reader: EventReader,
    warehouse: Warehouse,
    table: TableDef,
    rng: ChangeRange | None = None,
    *,
    dead_letters: DeadLetterStore,
    batch_size: int = DEFAULT_REPLAY_BATCH,
    ingested_at: dt.datetime | None = None,
    progress: Progress | None = None,
) -> ReplayReport:
    """Apply the changelog of ``table`` inside ``rng`` to its state table."""
    report = ReplayReport(table.table_id, table.state_table)
    stamp = ingested_at or dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    events = reader.events(table.table_id, rng, stats=report.read, batch_rows=batch_size)
    for batch in rebatch(events, batch_size):
        report.applied.merge(
            apply_events(
                warehouse,
                {table.table_id: table},
                batch,
                ingested_at=stamp,
                dead_letters=dead_letters,
                batch_size=batch_size,
            )
        )
        if progress is not None:
            progress(len(batch))
    report.seconds = time.perf_counter() - started
    return report


def rebuild(
    reader: EventReader,
    warehouse: Warehouse,
    table: TableDef,
    *,
    into: TableDef,
    dead_letters: DeadLetterStore,
    batch_size: int = DEFAULT_REPLAY_BATCH,
    ingested_at: dt.datetime | None = None,
    progress: Progress | None = None,
) -> ReplayReport:
    """Re-create ``into`` (a shadow of ``table``) from the whole changelog of ``table``."""
    if into.state_table == table.state_table:
        raise ValueError("a rebuild writes into a shadow table, not into the live one")
    warehouse.drop_state(into)
    return replay(
        reader,
        warehouse,
        into,
        ChangeRange(),
        dead_letters=dead_letters,
        batch_size=batch_size,
        ingested_at=ingested_at,
        progress=progress,
    )


@dataclass
class Settled:
    """What :func:`settle_watermark` found for a source."""

    source: str
    watermark: str | None
    held_by: str | None = None
    reason: str = ""  # why there is none


def unordered_changelog(registry: Any, source: str) -> str | None:
    """Why a source's changelog may not be in log order across its tables (then a replay cannot
    settle a watermark from it), or None. ``cdc run`` archives a source's changes in log order, all
    tables at once; the streaming job archives each table's changes from Pub/Sub in its own
    windows, so at the tail one table's file may hold a transaction whose other changes are not
    archived yet. A Debezium source with a ``pubsub:`` section is read by that job."""
    spec = registry.sources.get(source)
    if spec is None:
        return None
    if spec.engine == "debezium" and registry.pubsub is not None:
        return (
            "its changelog is written by the streaming job from Pub/Sub, table by table, not in "
            "log order; the job keeps the watermark itself (merge_jobs/watermark.py)"
        )
    return None


def settle_watermark(
    warehouse: Warehouse,
    source: str,
    tables: Iterable[TableDef],
    changelog_last: Callable[[str], str | None],
    dead_letters: Iterable[Any] = (),
    writer: str = "replay",
) -> Settled:
    """After a replay: the source's watermark from its state tables, recorded in ``cdc_progress``.

    Only when every table of the source holds its changelog's last change (``changelog_last``:
    table id -> the last seq its changelog holds); then every transaction before the last one in
    the source's log order is applied in full (the changelog is archived in log order, all tables
    at once), and the watermark is just before that last transaction's first change, or before the
    transaction of a change ``dead_letters`` holds (their ``seq`` and ``tx_id``), if earlier."""
    from state_models.plans import plan_last_version, plan_tx_bounds
    from state_models.progress import Progress
    from state_models.watermark import seq_before

    present: list[tuple[TableDef, Any, str]] = []
    for t in tables:
        state = warehouse.state_table(t)
        last_logged = changelog_last(t.table_id)
        if state is None:
            if last_logged is not None:
                return Settled(source, None, reason=f"{t.table_id} has no state table yet")
            continue
        names = warehouse.names(state.name)
        # "g" sorts after every seq (lower-case hex digits): the table's last version
        top = warehouse.query(plan_last_version(names, warehouse.caps, seq="g"))
        applied = top[0]["_seq"] if top else None
        if last_logged is not None and (applied is None or applied < last_logged):
            return Settled(
                source,
                None,
                reason=f"{t.table_id} is applied up to {applied}, its changelog "
                f"holds up to {last_logged}: replay it too",
            )
        if applied is not None:
            present.append((t, names, applied))
    if not present:
        return Settled(source, None, reason="nothing applied")

    def tx_start(tx_id: str | None, seq: str) -> str:
        if tx_id is None:
            return seq
        bounds = [
            r["first_seq"]
            for _, names, _ in present
            for r in warehouse.query(plan_tx_bounds(names, [tx_id]))
            if r.get("first_seq") is not None
        ]
        return min([seq, *bounds])

    _, last_names, last_seq = max(present, key=lambda p: p[2])
    (row,) = warehouse.query(plan_last_version(last_names, warehouse.caps, seq=last_seq))
    if row["_tx_id"] is None:
        return Settled(source, None, reason=f"the last change ({last_seq}) names no transaction")
    mark = seq_before(tx_start(row["_tx_id"], last_seq))
    held_by = None
    ids = {t.table_id for t, _, _ in present}
    for letter in dead_letters:
        context = getattr(letter, "context", {}) or {}
        if letter.table not in ids or not isinstance(context.get("seq"), str):
            continue
        hold = seq_before(tx_start(context.get("tx_id"), context["seq"]))
        if hold < mark:
            mark, held_by = hold, letter.id
    warehouse.record_progress(
        [
            Progress(
                source=source,
                table_id=t.table_id,
                state_table=t.state_table,
                applied_seq=applied,
                writer=writer,
                watermark_seq=mark,
                watermark_held_by=held_by,
            )
            for t, _, applied in present
        ],
        dt.datetime.now(dt.UTC),
    )
    warehouse.ensure_consistency(source, [t for t, _, _ in present])
    return Settled(source, mark, held_by)


if __name__ == "__main__":
    # `python -m merge_jobs.replay ...` runs the replay as a Beam job (merge_jobs.backfill), locally
    # or with --runner DataflowRunner: the command line of `cdc job replay`, one option parser.
    import sys

    from cdc.cli import main

    sys.exit(main(["job", "replay", *sys.argv[1:]]))

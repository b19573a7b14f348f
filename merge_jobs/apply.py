"""Apply decoded change events to their state tables: the one step every runner shares.

``cdc apply``, the changelog replay, the local runtime and the Beam job all end here: group the
events by table, cut each table's events (in arrival order) into batches, run one MERGE per batch,
and send whatever cannot be applied to the dead-letter store with its reason and raw message.
Because the MERGE is idempotent and order-free, callers may hand in duplicates, late events and
any batching; a caller that crashed simply hands the same events in again.

Errors: a ``TransientError`` (the warehouse is busy or unreachable) propagates, so the caller can
retry without acknowledging anything, and so does a ``WarehouseError`` (read-only, disk full: not
the data's fault, nothing is dead-lettered); a ``ValueRejectedError`` (the warehouse refused a
value) is narrowed down by applying halves of the batch until the one event holding it is
dead-lettered alone; any other ``TerminalError`` for a whole batch (the registry declares a type
the table cannot widen to) dead-letters that batch's events and carries on.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from connectors.deadletter import DeadLetter, DeadLetterSink, NewDeadLetter
from connectors.warehouse import Warehouse
from state_models.debezium import encode_debezium
from state_models.errors import TerminalError, UnknownTableError, ValueRejectedError
from state_models.events import ChangeEvent
from state_models.scd2 import TableDef

DEFAULT_BATCH_SIZE = 10_000

#: Extra facts to keep with a dead letter (e.g. the file and line an event came from).
ContextOf = Callable[[ChangeEvent], Mapping[str, Any]]

log = logging.getLogger("cdc.merge")


@dataclass
class TableCounts:
    """What happened to one table."""

    table_id: str
    state_table: str
    events: int = 0
    batches: int = 0
    inserted: int = 0  # new versions
    updated: int = 0  # versions whose validity (or carried TOAST value) was repaired
    deleted: int = 0  # truncate tombstones withdrawn by a late delete
    dead_lettered: int = 0
    schema_changes: list[str] = field(default_factory=list)

    @property
    def unchanged(self) -> int:
        """Events that added nothing: duplicates of what the table already held."""
        return max(0, self.events - self.dead_lettered - self.inserted)


@dataclass
class ApplyReport:
    tables: dict[str, TableCounts] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)

    @property
    def events(self) -> int:
        return sum(t.events for t in self.tables.values())

    def merge(self, other: ApplyReport) -> None:
        """Add another report's counts to this one (several calls, one summary)."""
        for table_id, theirs in other.tables.items():
            mine = self.tables.setdefault(
                table_id, TableCounts(theirs.table_id, theirs.state_table)
            )
            for name in ("events", "batches", "inserted", "updated", "deleted", "dead_lettered"):
                setattr(mine, name, getattr(mine, name) + getattr(theirs, name))
            mine.schema_changes.extend(theirs.schema_changes)
        self.dead_letters.extend(other.dead_letters)


def applied_only(events: Sequence[ChangeEvent], letters: Iterable[Any]) -> list[ChangeEvent]:
    """The events of a merged batch that were not dead-lettered (``letters``: what the merge set
    aside, each naming its event's ``event_id``). Progress, lag and the watermark are about these:
    a refused event's own fields (a commit time in year 33658) are exactly what may be wrong."""
    refused = {letter.context.get("event_id") for letter in letters}
    return [e for e in events if e.event_id not in refused] if refused else list(events)


def apply_events(
    warehouse: Warehouse,
    tables: Mapping[str, TableDef],
    events: Iterable[ChangeEvent],
    *,
    ingested_at: dt.datetime,
    dead_letters: DeadLetterSink,
    batch_size: int = DEFAULT_BATCH_SIZE,
    context_of: ContextOf | None = None,
) -> ApplyReport:
    """Apply ``events`` to the registered ``tables`` (keyed by table id), ``batch_size`` per MERGE.

    ``ingested_at`` stamps every version written. Returns counts per table and the dead letters
    written; the caller decides what a dead letter means for its exit status.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    report = ApplyReport()
    by_table: dict[str, list[ChangeEvent]] = {}
    unknown: list[NewDeadLetter] = []
    for event in events:
        if event.table in tables:
            by_table.setdefault(event.table, []).append(event)
            continue
        error = UnknownTableError(
            f"table {event.table} is not registered (registered: {', '.join(tables) or 'none'})"
        )
        unknown.append(_letter(error, event, None, context_of))
    report.dead_letters.extend(dead_letters.put_many(unknown))

    for table_id, table_events in by_table.items():
        table = tables[table_id]
        counts = report.tables.setdefault(table_id, TableCounts(table_id, table.state_table))
        for start in range(0, len(table_events), batch_size):
            batch = table_events[start : start + batch_size]
            _apply_batch(
                warehouse, table, batch, ingested_at, dead_letters, counts, report, context_of
            )
    return report


def _apply_batch(
    warehouse: Warehouse,
    table: TableDef,
    batch: Sequence[ChangeEvent],
    ingested_at: dt.datetime,
    dead_letters: DeadLetterSink,
    counts: TableCounts,
    report: ApplyReport,
    context_of: ContextOf | None,
) -> None:
    counts.events += len(batch)
    counts.batches += 1
    try:
        result = warehouse.apply(table, batch, ingested_at)
    except ValueRejectedError as exc:
        if len(batch) > 1:
            # one event's value: find it by halves, so that only it is dead-lettered
            counts.events -= len(batch)
            counts.batches -= 1
            half = len(batch) // 2
            for part in (batch[:half], batch[half:]):
                _apply_batch(
                    warehouse, table, part, ingested_at, dead_letters, counts, report, context_of
                )
            return
        letters = [_letter(exc, e, table, context_of) for e in batch]
    except TerminalError as exc:
        letters = [_letter(exc, e, table, context_of) for e in batch]
    else:
        counts.inserted += result.inserted
        counts.updated += result.updated
        counts.deleted += result.deleted
        counts.schema_changes.extend(result.schema_changes)
        letters = [_letter(r.error, r.event, table, context_of) for r in result.rejected]
        if log.isEnabledFor(logging.DEBUG):
            # one line per MERGE: how far each table got, MERGE by MERGE (`cdc run --debug`)
            log.debug(
                "merged %d events into %s through %s",
                len(batch),
                table.table_id,
                max(e.seq for e in batch),
            )
    counts.dead_lettered += len(letters)
    report.dead_letters.extend(dead_letters.put_many(letters))


def _letter(
    error: TerminalError, event: ChangeEvent, table: TableDef | None, context_of: ContextOf | None
) -> NewDeadLetter:
    """A dead letter keeping the message as it arrived, or else its Debezium re-encoding."""
    raw: str | None = event.raw
    if raw is None and table is not None:
        raw = encode_debezium(event, table.source_kind)
    context = {
        "seq": event.seq,
        "event_id": event.event_id,
        "op": event.op.value,
        "tx_id": event.tx_id,
    }
    if context_of is not None:
        context.update(context_of(event))
    return NewDeadLetter.from_error(
        error, raw=raw, source=event.source, table=event.table, context=context
    )

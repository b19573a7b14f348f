"""Re-drive dead letters through the merge once their cause is fixed (``cdc dead-letters retry``).

Each dead letter keeps the message as it arrived (Debezium JSON: captured, or re-encoded by the
native readers). Retrying decodes it again with the *current* registry — so a table registered
since, or a declared type corrected since, now applies — and runs the same merge. A letter is
removed only when its event was applied; one that fails again stays, with the new reason reported.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field

from connectors.deadletter import DeadLetter, DeadLetterStore
from connectors.warehouse import Warehouse
from merge_jobs.apply import apply_events
from state_models.debezium import TOMBSTONE, decode_debezium
from state_models.errors import TerminalError
from state_models.events import ChangeEvent
from state_models.registry import Registry, table_infos
from state_models.scd2 import TableDef
from state_models.tables import resolver_for


@dataclass
class RedriveResult:
    applied: int = 0
    still_failing: dict[str, str] = field(default_factory=dict)  # letter id -> reason


def redrive(
    registry: Registry,
    warehouse: Warehouse,
    store: DeadLetterStore,
    letters: Sequence[DeadLetter],
    *,
    ingested_at: dt.datetime,
) -> RedriveResult:
    """Decode and apply ``letters`` again; remove the ones that now apply."""
    result = RedriveResult()
    resolvers = {name: resolver_for(table_infos(registry, name), name) for name in registry.sources}
    tables = {t.id: TableDef.from_registered(t) for t in registry.tables()}
    decoded: dict[str, ChangeEvent] = {}  # letter id -> event
    for letter in letters:
        source = letter.source or (letter.table or "").split(".", 1)[0]
        if source not in resolvers:
            result.still_failing[letter.id] = f"source {source!r} is not in the registry"
            continue
        try:
            event = decode_debezium(letter.raw_text(), resolvers[source])
        except TerminalError as exc:
            result.still_failing[letter.id] = exc.reason
            continue
        if event is TOMBSTONE:
            # nothing to apply; the letter was a tombstone that should never have been kept
            store.remove([letter.id])
            result.applied += 1
            continue
        assert isinstance(event, ChangeEvent)
        decoded[letter.id] = event
    if decoded:
        with tempfile.TemporaryDirectory(prefix="cdc-redrive-") as scratch:
            # failures of this attempt go to a scratch store: the original letters stay the record
            attempt = DeadLetterStore(scratch)
            report = apply_events(
                warehouse,
                tables,
                list(decoded.values()),
                ingested_at=ingested_at,
                dead_letters=attempt,
            )
            failed = {str(x.context.get("event_id")): x.reason for x in report.dead_letters}
        done = []
        for letter_id, event in decoded.items():
            if event.event_id in failed:
                result.still_failing[letter_id] = failed[event.event_id]
            else:
                done.append(letter_id)
        store.remove(done)
        result.applied += len(done)
    return result

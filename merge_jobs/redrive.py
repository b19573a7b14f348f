"""Re-drive dead letters through the merge once their cause is fixed (``cdc dead-letters retry``).

Each dead letter keeps the message as it arrived (Debezium JSON: captured, or re-encoded by the
native readers). Retrying decodes it again with the *current* registry — so a table registered
since, or a declared type corrected since, now applies — and runs the same merge. A letter is
removed only when its event was applied; one that fails again stays, with the new reason reported.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from connectors.deadletter import DeadLetter, DeadLetterStore
from connectors.warehouse import Warehouse
from merge_jobs.apply import apply_events
from state_models.debezium import TOMBSTONE, decode_debezium
from state_models.errors import TerminalError
from state_models.events import ChangeEvent
from state_models.registry import Registry, table_infos
from state_models.scd2 import TableDef
from state_models.tables import TableInfo, resolver_for


def _with_state_keys(
    infos: Sequence[TableInfo], tables: Mapping[str, TableDef], warehouse: Warehouse
) -> list[TableInfo]:
    """Tables registered without ``primary_key`` (the capture read it from the database) take the
    key their state table was created with: a stored message (a Debezium value without its record
    key) names no key of its own."""
    out = []
    for info in infos:
        if info.primary_key is None:
            state = warehouse.state_table(tables[info.id])
            if state is not None and state.key:
                info = replace(info, primary_key=tuple(state.key))
        out.append(info)
    return out


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
    tables = {t.id: TableDef.from_registered(t) for t in registry.tables()}
    resolvers = {
        name: resolver_for(_with_state_keys(table_infos(registry, name), tables, warehouse), name)
        for name in registry.sources
    }
    decoded: dict[str, ChangeEvent] = {}  # letter id -> event
    for letter in letters:
        source = letter.source or (letter.table or "").split(".", 1)[0]
        if source not in resolvers:
            result.still_failing[letter.id] = f"source {source!r} is not in the registry"
            continue
        raw = letter.raw_bytes() or b""
        try:
            # strictly: a message that is not UTF-8 must not apply with its bytes replaced
            event = decode_debezium(raw.decode("utf-8"), resolvers[source])
        except UnicodeDecodeError as exc:
            result.still_failing[letter.id] = f"not UTF-8 text: byte 0x{raw[exc.start]:02x}"
            continue
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

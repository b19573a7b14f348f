"""Rewrite what is already stored under a table's ``pii:`` policy (``cdc pii apply``), or without
one person's personal values (``cdc erase``): the changelog files that hold them and the state
table's versions.

The changelog is immutable except here. Each file is rewritten into a new file beside it (same
partition, a new writer id), the new file is read back and checked (same rows, same positions,
nothing clear left), and only then is the old file removed: a crash leaves both files, and the
next run rewrites the old one again (the policy changes nothing twice; a replay meanwhile applies
two copies of a change, which the merge makes one).

The state table is rebuilt into a shadow from its own versions (each version is the change that
made it: its key, image, op, position and commit time), transformed the same way, checked to hold
the same versions, and swapped in. Its history keeps its shape: every version, its validity, its
op.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from connectors.changelog.reader import ChangelogReader, ReadStats
from connectors.changelog.records import from_batch
from connectors.changelog.writer import ChangelogWriter
from connectors.warehouse import Warehouse
from merge_jobs.replay import shadow_of
from state_models.errors import CdcError, ConfigError
from state_models.events import ChangeEvent, Op
from state_models.scd2 import (
    EVENT_ID,
    IS_DELETED,
    OP,
    SEQ,
    TX_ID,
    UNAVAILABLE,
    VALID_FROM,
    TableDef,
)
from state_models.types import decode_names

#: One change in, one change out: the policy, or an erasure.
Transform = Callable[[list[ChangeEvent]], list[ChangeEvent]]


class RewriteError(CdcError):
    """A rewrite could not be checked; nothing was removed."""


@dataclass
class RewriteReport:
    table: str
    files: list[tuple[str, str]] = field(default_factory=list)  # (old, new) changelog files
    changelog_events: int = 0
    versions: int = 0
    touched_versions: int = 0


# --------------------------------------------------------------------------- transforms


def policy_transform(table: TableDef) -> Transform:
    """The table's ``pii:`` applied (a no-op on what is protected already)."""
    if table.pii is None:
        raise ConfigError(f"{table.table_id} has no pii: columns in the registry")
    return lambda events: list(table.pii.protect_many(events))


def erase_transform(
    table: TableDef, key: Mapping[str, Any], columns: Sequence[str]
) -> tuple[Transform, list[int]]:
    """Each change of the row whose key is ``key`` (as stored: hashed key columns hashed) with
    ``columns`` (source names) made null; the other rows' changes as they are. The second value
    counts the changes erased."""
    erased = [0]
    wanted = {k: str(v) for k, v in key.items()}

    def matches(event: ChangeEvent) -> bool:
        return bool(event.key) and all(str(event.key.get(k)) == v for k, v in wanted.items())

    def image(values: dict[str, Any] | None) -> dict[str, Any] | None:
        if values is None:
            return None
        return {n: (None if n in columns else v) for n, v in values.items()}

    def transform(events: list[ChangeEvent]) -> list[ChangeEvent]:
        out = []
        for e in events:
            if matches(e):
                erased[0] += 1
                e = replace(
                    e,
                    before=image(e.before),
                    after=image(e.after),
                    unavailable=tuple(n for n in e.unavailable if n not in columns),
                    raw=None,  # the original message held the values
                )
            out.append(e)
        return out

    return transform, erased


def erasable_columns(table: TableDef, state_names: Sequence[str]) -> list[str]:
    """What an erasure nulls: the table's ``pii:`` columns, or, when it declares none, every
    column but the key (source names)."""
    if table.pii is not None:
        return [n for n, p in table.pii.columns.items() if p != "drop"]
    key = set(table.primary_key or ())
    return [table.source_column(n) for n in state_names if n not in key]


# --------------------------------------------------------------------------- changelog


def rewrite_changelog(
    root: str,
    table_id: str,
    transform: Transform,
    report: RewriteReport,
    *,
    only: Callable[[list[ChangeEvent]], bool] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Rewrite each changelog file of ``table_id`` through ``transform``: new file written and
    checked, then the old one removed. ``only``: rewrite a file only when its events need it."""
    reader = ChangelogReader(root, storage_options=storage_options)
    stats = ReadStats()
    files = list(reader.files(table_id, stats=stats))
    if stats.unreadable:
        raise RewriteError(
            f"{len(stats.unreadable)} changelog files of {table_id} cannot be listed: "
            + "; ".join(f"{u.path}: {u.reason}" for u in stats.unreadable[:3])
        )
    for f in files:
        read = ReadStats()
        events = [
            e
            for b in reader.batches(table_id, files=[f], columns=None, stats=read)
            for e in from_batch(b)
        ]
        if read.unreadable:
            raise RewriteError(f"cannot read {f.display}: {read.unreadable[0].reason}")
        if only is not None and not only(events):
            continue
        rewritten = transform(events)
        writer = ChangelogWriter(root, storage_options=storage_options)
        writer.write(rewritten)
        written = {p.path for p in writer.published}
        reader.root.refresh()
        new_files = [n for n in reader.files(table_id) if n.display in written]
        check = ReadStats()
        again = [
            e
            for b in reader.batches(table_id, files=new_files, columns=None, stats=check)
            for e in from_batch(b)
        ]
        if (
            len(new_files) != len(written)
            or check.unreadable
            or sorted(e.seq for e in again) != sorted(e.seq for e in events)
            or [e for e in again if e.raw is not None]
            != [e for e in rewritten if e.raw is not None]
        ):
            raise RewriteError(
                f"the rewrite of {f.display} did not read back as the same changes; the old "
                f"file is kept ({', '.join(sorted(written))} may be removed)"
            )
        reader.root.fs.rm(f.path)
        report.files.extend((f.display, n.display) for n in new_files)
        report.changelog_events += len(events)


# --------------------------------------------------------------------------- state table


def versions_as_events(
    table: TableDef,
    rows: Sequence[Mapping[str, Any]],
    truncates: Sequence[Mapping[str, Any]],
    business: Sequence[str],
) -> list[ChangeEvent]:
    """The changes that made a state table's versions (source column names), and its truncates.
    Truncate tombstones (``_op = 't'``) are not changes: the truncates make them again."""
    source = table.source_column
    key_names = list(table.primary_key or ())
    out = []
    for r in rows:
        op = Op(r[OP])
        if op is Op.TRUNCATE:
            continue
        unavailable = decode_names(r.get(UNAVAILABLE))
        key = {source(k): r[k] for k in key_names}
        image = {source(n): r[n] for n in business if n not in unavailable}
        deleted = bool(r[IS_DELETED])
        out.append(
            ChangeEvent(
                table=table.table_id,
                op=op,
                key=key,
                before=dict(key) if deleted else None,
                after=None if deleted else image,
                seq=r[SEQ],
                commit_ts=_micros(r[VALID_FROM]),
                tx_id=r.get(TX_ID),
                event_id=r[EVENT_ID],
                unavailable=tuple(source(n) for n in unavailable),
            )
        )
    for t in truncates:
        out.append(
            ChangeEvent(
                table=table.table_id,
                op=Op.TRUNCATE,
                key={},
                before=None,
                after=None,
                seq=t[SEQ],
                commit_ts=_micros(t[VALID_FROM]),
                tx_id=t.get(TX_ID),
                event_id=t[EVENT_ID],
            )
        )
    return out


def rewrite_state(
    warehouse: Warehouse,
    table: TableDef,
    transform: Transform,
    report: RewriteReport,
    *,
    batch_size: int = 50_000,
    ingested_at: dt.datetime | None = None,
) -> None:
    """Rebuild ``table``'s state table from its own versions through ``transform`` into a shadow,
    check it holds as many versions at the same positions, and swap it in."""
    state = warehouse.state_table(table)
    if state is None:
        return
    rows = warehouse.history(table)
    truncates = warehouse.truncates(table)
    # (a hashed key column gives the changes new ids, as a capture under the policy would)
    events = transform(versions_as_events(table, rows, truncates, state.business_names))
    shadow = shadow_of(table, f"{table.state_table}__rewrite")
    warehouse.drop_state(shadow)
    stamp = ingested_at or dt.datetime.now(dt.UTC)
    for i in range(0, len(events), batch_size):
        result = warehouse.apply(shadow, events[i : i + batch_size], stamp)
        if result.rejected:
            warehouse.drop_state(shadow)
            first = result.rejected[0]
            raise RewriteError(
                f"{len(result.rejected)} versions of {table.table_id} did not apply to the "
                f"rewritten table (first: {first.error.reason}); the state table is unchanged"
            )
    rewritten = warehouse.history(shadow)
    if sorted(r[SEQ] for r in rewritten) != sorted(r[SEQ] for r in rows):
        warehouse.drop_state(shadow)
        raise RewriteError(
            f"the rewritten {table.state_table} holds {len(rewritten)} versions, the live one "
            f"{len(rows)}; the state table is unchanged"
        )
    warehouse.replace_state(table, shadow)
    report.versions = len(rows)


def _micros(value: Any) -> int:
    if isinstance(value, dt.datetime):
        when = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        delta = when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return int(value)


# --------------------------------------------------------------------------- audit


AUDIT_FILE = "audit.jsonl"


def record(state_dir: Path, entry: Mapping[str, Any]) -> None:
    """Append what was rewritten to ``<state_dir>/audit.jsonl`` (one JSON object per line)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"at": dt.datetime.now(dt.UTC).isoformat(), **entry}, default=str)
    with (state_dir / AUDIT_FILE).open("a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()

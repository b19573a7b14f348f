"""The reference fold: docs/architecture.md §5 written as plain Python, for tests to compare against.

It takes every event ever delivered (in any order, with duplicates) and returns the state table
that must result. Nothing here is clever on purpose: the warehouses' single MERGE statement must
give the same rows however the same events are ordered, duplicated and split into batches.

The rules, in the order they apply:
1. One change per (key, seq): the first delivery wins, later ones are duplicates.
2. A key's changes are ordered by seq, together with every truncate of the table.
3. Insert, update and snapshot read make a version holding the ``after`` image; a column the
   source did not send (TOAST) takes the previous version's value (null if there is none).
4. A delete makes a tombstone version (key columns only, ``_is_deleted``).
5. A truncate makes a tombstone version (op ``t``) for the key if the key is live just before it.
6. ``_valid_from`` is the change's commit time, or the previous version's ``_valid_from`` when
   that is later: commit times need not rise in log order (binlog times are whole seconds while a
   snapshot's come from the clock), and a validity window may be empty but never inverted.
7. ``_valid_to`` is the next version's ``_valid_from``, ``_next_seq`` its ``_seq``; the last
   version is current.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from state_models.events import ChangeEvent, Op
from state_models.scd2 import (
    EVENT_ID,
    INGESTED_AT,
    IS_CURRENT,
    IS_DELETED,
    NEXT_SEQ,
    OP,
    SEQ,
    TX_ID,
    UNAVAILABLE,
    VALID_FROM,
    VALID_TO,
    StateTable,
    sort_versions,
)
from state_models.types import coerce_value, micros_to_datetime


def fold(
    table: StateTable, events: Iterable[ChangeEvent], ingested_at: dt.datetime
) -> list[dict[str, Any]]:
    """Every version the state table must hold after ``events``, ordered by key then seq."""
    changes: dict[tuple[Any, ...], dict[str, ChangeEvent]] = {}
    truncates: dict[str, ChangeEvent] = {}
    for event in events:
        if event.op is Op.TRUNCATE:
            truncates.setdefault(event.seq, event)
            continue
        key = tuple(coerce_value(event.key[k], table.column_type(k)) for k in table.key)
        changes.setdefault(key, {}).setdefault(event.seq, event)

    versions: list[dict[str, Any]] = []
    for key, by_seq in changes.items():
        timeline = sorted([*by_seq.values(), *truncates.values()], key=lambda e: e.seq)
        chain: list[dict[str, Any]] = []
        live = False
        for event in timeline:
            if event.op is Op.TRUNCATE:
                if live:
                    chain.append(_tombstone(table, key, event, ingested_at))
                live = False
            elif event.op is Op.DELETE:
                chain.append(_tombstone(table, key, event, ingested_at))
                live = False
            else:
                chain.append(_version(table, key, event, chain[-1] if chain else None, ingested_at))
                live = True
        for version, earlier in zip(chain[1:], chain, strict=False):
            version[VALID_FROM] = max(version[VALID_FROM], earlier[VALID_FROM])
        for version, following in zip(chain, [*chain[1:], None], strict=True):
            version[VALID_TO] = following[VALID_FROM] if following else None
            version[NEXT_SEQ] = following[SEQ] if following else None
            version[IS_CURRENT] = following is None
        versions.extend(chain)
    return sort_versions(table, versions)


def _metadata(event: ChangeEvent, ingested_at: dt.datetime) -> dict[str, Any]:
    return {
        VALID_FROM: micros_to_datetime(event.commit_ts),
        VALID_TO: None,
        IS_CURRENT: False,
        IS_DELETED: event.op in (Op.DELETE, Op.TRUNCATE),
        OP: event.op.value,
        SEQ: event.seq,
        EVENT_ID: event.event_id,
        TX_ID: event.tx_id,
        INGESTED_AT: ingested_at,
        NEXT_SEQ: None,
        UNAVAILABLE: [],
    }


def _tombstone(
    table: StateTable, key: tuple[Any, ...], event: ChangeEvent, ingested_at: dt.datetime
) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(table.business_names)
    row.update(zip(table.key, key, strict=True))
    row.update(_metadata(event, ingested_at))
    return row


def _version(
    table: StateTable,
    key: tuple[Any, ...],
    event: ChangeEvent,
    previous: dict[str, Any] | None,
    ingested_at: dt.datetime,
) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(table.business_names)
    row.update(zip(table.key, key, strict=True))
    after = event.after or {}
    for name in table.value_names:
        if name in after:
            row[name] = coerce_value(after[name], table.column_type(name))
    unavailable = sorted(n for n in event.unavailable if n in table.value_names)
    for name in unavailable:
        row[name] = previous[name] if previous is not None else None
    row.update(_metadata(event, ingested_at))
    row[UNAVAILABLE] = unavailable
    return row

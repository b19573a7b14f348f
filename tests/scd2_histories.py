"""Source histories for the SCD2 tests: hand-written events and a hypothesis strategy.

A *history* is what happened at the source, in commit order: transactions of changes to a few keys
(inserts, updates with and without unchanged TOAST values, deletes, re-inserts, truncates), with
commit times that are often equal. Alongside the events it records the true table contents after
each transaction, so that tests can check the warehouse against the source itself, not only
against the oracle.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from state_models.events import ChangeEvent, Op
from state_models.scd2 import INGESTED_AT, TableDef
from state_models.seq import make_seq

TABLE_ID = "billing.public.subscriptions"
COLUMNS = {"id": "bigint", "plan": "text", "amount": "numeric(12,2)", "note": "text", "n": "int"}
COMPOSITE_COLUMNS = {"plan": "text", "currency": "text", "price": "numeric(10,2)", "note": "text"}
BASE_TS = 1_780_000_000_000_000  # µs, 2026-05-28
INGESTED = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)

_names = itertools.count()


def table_def(composite: bool = False, name: str | None = None) -> TableDef:
    """A registered table; each call gets a fresh state table name (tests share a warehouse)."""
    name = name or f"t{next(_names)}"
    if composite:
        return TableDef(
            "billing.public.plan_prices", name, "postgres", ("plan", "currency"), COMPOSITE_COLUMNS
        )
    return TableDef(TABLE_ID, name, "postgres", ("id",), COLUMNS)


def event(
    table: TableDef,
    op: str,
    key: dict[str, Any],
    seq: tuple[int, ...],
    ts: int,
    after: dict[str, Any] | None = None,
    unavailable: tuple[str, ...] = (),
    tx: str | None = None,
) -> ChangeEvent:
    """One decoded change; ``after`` gets the key merged in for c/u/r."""
    the_op = Op(op)
    image = {**key, **(after or {})} if the_op in (Op.INSERT, Op.UPDATE, Op.READ) else None
    return ChangeEvent(
        table=table.table_id,
        op=the_op,
        key={} if the_op is Op.TRUNCATE else dict(key),
        before=dict(key) if the_op is Op.DELETE else None,
        after=image,
        seq=make_seq(*seq),
        commit_ts=ts,
        tx_id=tx or str(seq[0]),
        unavailable=tuple(unavailable),
    )


@dataclass
class History:
    table: TableDef
    events: list[ChangeEvent]
    #: (seq of the transaction's last change, {key tuple: full row}) after each transaction
    snapshots: list[tuple[str, dict[tuple[Any, ...], dict[str, Any]]]] = field(default_factory=list)


SINGLE_KEYS = [{"id": 1}, {"id": 2}, {"id": 3}]
#: Keys whose values collide when concatenated: "ab"+"c" == "a"+"bc".
COMPOSITE_KEYS = [
    {"plan": "ab", "currency": "c"},
    {"plan": "a", "currency": "bc"},
    {"plan": "abc", "currency": ""},
]


@st.composite
def histories(
    draw: st.DrawFn, composite: bool | None = None, rising_times: bool = False
) -> History:
    """A random but legal source history (every change is possible in the source state).

    ``rising_times``: commit times never fall back in log order (otherwise they sometimes do)."""
    if composite is None:
        composite = draw(st.booleans())
    table = table_def(composite)
    keys = COMPOSITE_KEYS if composite else SINGLE_KEYS
    value_col = "price" if composite else "amount"
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    events: list[ChangeEvent] = []
    snapshots: list[tuple[str, dict[tuple[Any, ...], dict[str, Any]]]] = []
    ts = BASE_TS
    lsn = 0
    for tx in range(1, draw(st.integers(1, 7)) + 1):
        # equal commit times are common, and a commit time may fall back in log order (the binlog
        # has whole seconds while a snapshot's come from the clock)
        steps = [0, 0, 1, 1_000_000] + ([] if rising_times else [-700_000])
        ts += draw(st.sampled_from(steps))
        if draw(st.integers(0, 11)) == 0:
            lsn += 1
            events.append(event(table, "t", {}, (tx, lsn), ts))
            rows = {}
            snapshots.append((events[-1].seq, {}))
            continue
        for _ in range(draw(st.integers(1, 3))):
            key = draw(st.sampled_from(keys))
            k = tuple(key.values())
            lsn += 1
            seq = (tx, lsn)
            if k not in rows:
                op = draw(st.sampled_from(["c", "c", "r"]))
                values = {
                    value_col: draw(_amounts),
                    "note": draw(_notes),
                    **({} if composite else {"plan": draw(_plans), "n": draw(_ints)}),
                }
                events.append(event(table, op, key, seq, ts, values))
                rows[k] = {**key, **values}
            elif draw(st.integers(0, 3)) == 0:
                events.append(event(table, "d", key, seq, ts))
                del rows[k]
            else:
                changed = {value_col: draw(_amounts)}
                if not composite:
                    changed["plan"] = draw(_plans)
                toast = draw(st.booleans())  # the note was not sent: unchanged TOAST value
                if not toast:
                    changed["note"] = draw(_notes)
                rows[k] = {**rows[k], **changed}
                after = {c: v for c, v in rows[k].items() if not (toast and c == "note")}
                events.append(event(table, "u", key, seq, ts, after, ("note",) if toast else ()))
        snapshots.append((events[-1].seq, {k: dict(v) for k, v in rows.items()}))
    return History(table, events, snapshots)


_amounts = st.decimals(min_value=-1000, max_value=1000, places=2, allow_nan=False)
_notes = st.one_of(st.none(), st.sampled_from(["", "n1", "long " * 50, "ü"]))
_plans = st.sampled_from(["basic", "pro", "team", None])
_ints = st.integers(-(2**40), 2**40)


@st.composite
def deliveries(draw: st.DrawFn, events: list[ChangeEvent]) -> list[list[ChangeEvent]]:
    """The events as a transport might deliver them: duplicated, reordered, split into batches."""
    duplicated = events + draw(st.lists(st.sampled_from(events), max_size=len(events)))
    shuffled = draw(st.permutations(duplicated))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(shuffled) - 1)), max_size=5)))
    bounds = [0, *cuts, len(shuffled)]
    return [shuffled[a:b] for a, b in itertools.pairwise(bounds) if a < b]


def without_ingested_at(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != INGESTED_AT} for r in rows]


def canonical(value: Any) -> Any:
    """Source-side values in the rendered (JSON) form, for comparing with as-of results."""
    if isinstance(value, Decimal):
        return format(value, "f")
    return value


def dumps(rows: list[dict[str, Any]]) -> str:
    return "\n".join(json.dumps(r, sort_keys=True) for r in rows)

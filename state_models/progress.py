"""How far each state table has applied its source's log: the warehouse table ``cdc_progress``.

One row per (source, table), kept by whatever merges into the table (``cdc run``, the Beam jobs):

- ``applied_seq``: the highest ``_seq`` applied into the state table. Written only after the MERGE
  that applied it committed, so it is never ahead of the table (it may trail it by a few seconds).
- ``applied_commit_at``: the newest source commit time applied.
- ``caught_up_at``: the table held every change its source had committed up to this time. The
  capture attests it from the source's own answers (a keepalive, a heartbeat with nothing left to
  read) and ``cdc run`` writes it once everything captured before that moment is merged, so it
  keeps advancing while the source is idle and stops when the source, the capture or the merge is
  stuck. NULL where the writer cannot know it (the Beam jobs read Pub/Sub, not the source).
- ``commit_to_visible_s``: for the newest applied change, seconds from its source commit to the end
  of the MERGE that made it visible.
- ``updated_at``, ``writer`` (``cdc run`` | ``beam``).
- ``watermark_seq``: the source's watermark, a cut (``state_models.watermark``): every transaction
  of the source at or before it is applied in full in every registered table of the source. The
  same value in each of the source's rows (read the greatest); ``watermark_held_by``: the dead
  letter whose transaction holds it back, NULL when none does.

Every value only moves forward (``applied_seq``, ``applied_commit_at``, ``caught_up_at`` keep the
greatest of stored and new), so two writers, a restart or a replay of old progress never move it
back. Later work (reconcile, cross-table watermarks, dbt freshness) reads and extends this table.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlglot import exp

from state_models.plans import _col, _ident, plan_create_service_table, qualified

PROGRESS_TABLE = "cdc_progress"
#: (column, type): the table's shape; the first two are its key
COLUMNS = (
    ("source", "TEXT"),
    ("table_id", "TEXT"),
    ("state_table", "TEXT"),
    ("applied_seq", "TEXT"),
    ("applied_commit_at", "TIMESTAMPTZ"),
    ("caught_up_at", "TIMESTAMPTZ"),
    ("commit_to_visible_s", "DOUBLE"),
    ("updated_at", "TIMESTAMPTZ"),
    ("writer", "TEXT"),
    ("watermark_seq", "TEXT"),
    ("watermark_held_by", "TEXT"),
)
#: columns added after the table's first version: added to an older table when first written
ADDED = ("watermark_seq", "watermark_held_by")
KEY = ("source", "table_id")
#: kept as the greatest of stored and new
FORWARD_ONLY = ("applied_seq", "applied_commit_at", "caught_up_at", "watermark_seq")


@dataclass(frozen=True)
class Progress:
    source: str
    table_id: str
    state_table: str
    applied_seq: str | None = None
    applied_commit_at: dt.datetime | None = None
    caught_up_at: dt.datetime | None = None
    commit_to_visible_s: float | None = None
    writer: str = "cdc run"
    #: the source's watermark (``state_models.watermark``), the same in each of its tables' rows,
    #: and the dead letter holding it back (its id), if one does
    watermark_seq: str | None = None
    watermark_held_by: str | None = None


def recorded_watermarks(
    rows: Iterable[Mapping[str, Any]],
) -> dict[str, tuple[str | None, str | None]]:
    """Per source, from ``cdc_progress`` rows: (its watermark, the dead letter holding it), the
    row with the greatest watermark deciding (each was valid when written)."""
    out: dict[str, tuple[str | None, str | None]] = {}
    for row in rows:
        source, seq = row["source"], row.get("watermark_seq")
        have = out.get(source)
        if have is None or (seq is not None and (have[0] is None or seq > have[0])):
            out[source] = (seq, row.get("watermark_held_by"))
    return out


def progress_table(dataset: str | None = None, project: str | None = None) -> exp.Table:
    return qualified(PROGRESS_TABLE, dataset, project)


def plan_create_progress(table: exp.Table) -> list[exp.Expr]:
    """Create the table if it is missing, and add the columns later versions added to an older
    one (``ADD COLUMN IF NOT EXISTS``: safe to repeat)."""
    types = dict(COLUMNS)
    return [
        plan_create_service_table(table, COLUMNS),
        *[
            exp.Alter(
                this=table.copy(),
                kind="TABLE",
                actions=[
                    exp.ColumnDef(this=_ident(n), kind=exp.DataType.build(types[n]), exists=True)
                ],
            )
            for n in ADDED
        ],
    ]


def _typed(value: object, kind: str) -> exp.Expr:
    if value is None:
        literal: exp.Expr = exp.Null()
    elif isinstance(value, dt.datetime):
        literal = exp.Literal.string(value.astimezone(dt.UTC).isoformat())
    elif isinstance(value, float | int):
        literal = exp.Literal.number(repr(float(value)))
    else:
        literal = exp.Literal.string(str(value))
    return exp.cast(literal, kind)


def _greatest(name: str) -> exp.Expr:
    """The stored or the new value, whichever is greater (a NULL loses)."""
    new, old = _col(name, "s"), _col(name, "t")
    return (
        exp.Case()
        .when(new.is_(exp.Null()), old.copy())
        .when(exp.or_(old.is_(exp.Null()), exp.GT(this=new.copy(), expression=old.copy())), new)
        .else_(old)
    )


def plan_record_progress(table: exp.Table, rows: Sequence[Progress], at: dt.datetime) -> exp.Merge:
    """Upsert one row per (source, table), each value moving only forward (see the module doc)."""
    selects = []
    for r in rows:
        values = {**r.__dict__, "updated_at": at}
        selects.append(
            exp.select(*[exp.alias_(_typed(values[n], t), n, quoted=True) for n, t in COLUMNS])
        )
    source: exp.Query = selects[0]
    for s in selects[1:]:
        source = exp.union(source, s, distinct=False)
    names = [n for n, _ in COLUMNS]
    updates = [
        exp.EQ(
            this=_col(n),
            expression=_greatest(n)
            if n in FORWARD_ONLY
            else (
                exp.Coalesce(this=_col(n, "s"), expressions=[_col(n, "t")])
                if n == "commit_to_visible_s"
                else _col(n, "s")
            ),
        )
        for n in names
        if n not in KEY
    ]
    return exp.Merge(
        this=table.copy().as_("t", copy=False),
        using=exp.Subquery(this=source, alias=exp.TableAlias(this=_ident("s"))),
        on=exp.and_(*[exp.EQ(this=_col(k, "t"), expression=_col(k, "s")) for k in KEY]),
        whens=exp.Whens(
            expressions=[
                exp.When(matched=True, then=exp.Update(expressions=updates)),
                exp.When(
                    matched=False,
                    then=exp.Insert(
                        this=exp.Tuple(expressions=[_col(n) for n in names]),
                        expression=exp.Tuple(expressions=[_col(n, "s") for n in names]),
                    ),
                ),
            ]
        ),
    )


def plan_select_progress(table: exp.Table) -> exp.Select:
    return (
        exp.select(*[_col(n) for n, _ in COLUMNS])
        .from_(table.copy())
        .order_by(*[_col(k) for k in KEY])
    )

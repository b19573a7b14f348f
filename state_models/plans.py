"""SQL plans for the state tables, as sqlglot expressions rendered per dialect (docs/architecture.md §5).

The heart is :func:`plan_merge`: ONE statement per (table, batch) that leaves the table exactly as
the reference fold (``state_models.oracle``) says, whatever the order, duplication or batching of
the events. Its steps, as CTEs inside the MERGE source:

1. ``batch``: the staged versions, one row per (key, ``_seq``); the first delivery wins.
2. ``touched``: per touched key, the earliest ``_seq`` the batch brings (``__from_seq``).
3. ``existing``: of the touched keys only, the versions a change at ``__from_seq`` or later can
   affect: those whose next version comes after it (``_next_seq > __from_seq``) or that are
   current. That is the predecessor of the earliest new version (the *anchor*, whose values are
   final) and everything after it; older history is never read.
4. ``fresh``: batch versions that are not stored yet (a redelivery of a stored version falls in
   ``existing`` because its ``_seq`` is at or after ``__from_seq``).
5. ``chain``: existing + fresh (+ with truncates: one candidate tombstone per key and truncate
   after the anchor; a candidate is kept only when the version before it is live).
6. ``versions``: over (key ORDER BY ``_seq``), ``_valid_from`` becomes the latest commit time so
   far (a running ``MAX``: commit times may fall back in log order, a window may be empty but is
   never inverted) and ``LEAD`` recomputes ``_valid_to``/``_next_seq``;
   ``LAST_VALUE(... IGNORE NULLS)`` carries each unavailable (TOAST) value forward from the nearest
   earlier version that had it: this also repairs a later version when its predecessor arrives late.
7. ``changes``: the rows to write: new versions, and stored versions whose validity or carried
   values changed. ``MERGE ... ON key AND _seq`` updates the latter and inserts the former.

Every user-supplied name is an identifier node (quoted), never text pasted into SQL.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlglot import exp

from state_models.dialects import SINCE_SEQ_PARAM, TOUCHED_BUCKETS_PARAM, Capabilities
from state_models.scd2 import (
    EVENT_ID,
    INGESTED_AT,
    IS_CURRENT,
    IS_DELETED,
    KEY_BUCKET,
    METADATA_COLUMNS,
    NEXT_SEQ,
    OP,
    ORD,
    SEQ,
    TRUNCATE_COLUMNS,
    TX_ID,
    UNAVAILABLE,
    VALID_FROM,
    VALID_TO,
    Column,
    StateTable,
    current_view_name,
    truncate_table_name,
)
from state_models.seq import SEQ_SECTION_WIDTH
from state_models.types import INT64, NAME_LIST, STRING, TIMESTAMP, Kind, WarehouseType, name_token

# Internal column names of the merge plan. They start with "__" so that they cannot be mistaken
# for a business column; StateTable refuses business columns with these names.
FROM_SEQ = "__from_seq"
FIRST_SEQ = "__first_seq"
ANCHOR = "__anchor"
STORED = "__stored"
CANDIDATE = "__candidate"
KEEP = "__keep"
OLD_VALID_TO = "__old_valid_to"
OLD_NEXT_SEQ = "__old_next_seq"
NEW_VALID_TO = "__new_valid_to"
OLD_VALID_FROM = "__old_valid_from"
NEW_VALID_FROM = "__new_valid_from"
NEW_NEXT_SEQ = "__new_next_seq"
ROW_NUMBER = "__rn"
CARRY_PREFIX = "__carry_"
#: Parameters of the BigQuery table functions ``<table>_as_of`` and ``<table>_as_of_seq``; named
#: so that they do not shadow a business column.
AS_OF_TIME = "cdc_as_of_time"
AS_OF_SEQ = "cdc_as_of_seq"
CARRIED = "v"


@dataclass(frozen=True)
class TableNames:
    """Where the plan's tables live (already qualified for the warehouse)."""

    state: exp.Table
    truncates: exp.Table
    staging: exp.Table | None = None
    current_view: exp.Table | None = None


def qualified(name: str, dataset: str | None = None, project: str | None = None) -> exp.Table:
    """A table reference with every part a quoted identifier."""
    return exp.Table(
        this=_ident(name),
        db=_ident(dataset) if dataset else None,
        catalog=_ident(project) if project else None,
    )


def table_names(
    state_table: str,
    dataset: str | None = None,
    project: str | None = None,
    staging: str | None = None,
) -> TableNames:
    """The names of a state table and its companions (truncate log, ``_current`` view)."""
    return TableNames(
        state=qualified(state_table, dataset, project),
        truncates=qualified(truncate_table_name(state_table), dataset, project),
        staging=qualified(staging, dataset, project) if staging else None,
        current_view=qualified(current_view_name(state_table), dataset, project),
    )


# --------------------------------------------------------------------------- tiny builders


def _ident(name: str) -> exp.Identifier:
    return exp.Identifier(this=name, quoted=True)


def _col(name: str, table: str | None = None) -> exp.Column:
    return exp.Column(this=_ident(name), table=_ident(table) if table else None)


def _alias(expression: exp.Expr, name: str) -> exp.Alias:
    return exp.Alias(this=expression, alias=_ident(name))


def _null(wtype: WarehouseType, caps: Capabilities) -> exp.Expr:
    return exp.cast(exp.Null(), wtype.to_sql(caps.dialect))


def _bool(value: bool) -> exp.Boolean:
    return exp.Boolean(this=value)


def _keys_equal(key: Sequence[str], left: str, right: str) -> exp.Expr:
    conditions = [_col(k, left).eq(_col(k, right)) for k in key]
    return exp.and_(*conditions) if conditions else _bool(True)


def _window(
    func: exp.Expr, key: Sequence[str], frame: bool = False, desc: bool = False
) -> exp.Window:
    spec = (
        exp.WindowSpec(kind="ROWS", start="UNBOUNDED", start_side="PRECEDING", end="CURRENT ROW")
        if frame
        else None
    )
    return exp.Window(
        this=func,
        partition_by=[_col(k) for k in key],
        order=exp.Order(expressions=[exp.Ordered(this=_col(SEQ), desc=desc, nulls_first=False)]),
        spec=spec,
    )


def _cte(name: str, query: exp.Expr) -> exp.CTE:
    return exp.CTE(this=query, alias=exp.TableAlias(this=_ident(name)))


def _select(fields: Sequence[tuple[str, exp.Expr]]) -> exp.Select:
    return exp.select(*[_alias(e, n) if _needs_alias(e, n) else e for n, e in fields])


def _needs_alias(expression: exp.Expr, name: str) -> bool:
    return not (isinstance(expression, exp.Column) and expression.name == name)


def _union_all(*selects: exp.Query) -> exp.Query:
    out: exp.Query = selects[0]
    for s in selects[1:]:
        out = exp.Union(this=out, expression=s, distinct=False)
    return out


def _touched_buckets(caps: Capabilities, alias: str, truncating: bool) -> exp.Expr | None:
    """``<alias>._key_bucket IN UNNEST(@touched_buckets)``: a constant filter, so BigQuery prunes.

    Not for a batch holding a truncate, which touches every key."""
    if not caps.key_buckets or truncating:
        return None
    return exp.In(
        this=_col(KEY_BUCKET, alias),
        unnest=exp.Unnest(expressions=[exp.Parameter(this=exp.Var(this=TOUCHED_BUCKETS_PARAM))]),
    )


def _and(*conditions: exp.Expr | None) -> exp.Expr:
    present = [c for c in conditions if c is not None]
    return exp.and_(*present) if present else _bool(True)


def _available(name: str, caps: Capabilities) -> exp.Expr:
    """The version carries its own value of ``name`` (or it is the anchor, whose values are final).

    ``_unavailable`` lists names as ``,a,b,`` (see ``state_models.types.encode_names``), so a
    substring test for ``,<name>,`` is exact.
    """
    listed = exp.GT(
        this=exp.StrPosition(
            this=_col(UNAVAILABLE), substr=exp.Literal.string(f",{name_token(name)},")
        ),
        expression=exp.Literal.number(0),
    )
    return exp.or_(_col(ANCHOR), _col(UNAVAILABLE).is_(exp.Null()), exp.not_(listed))


def _carried(i: int) -> exp.Expr:
    return exp.Dot(this=_col(f"{CARRY_PREFIX}{i}"), expression=_ident(CARRIED))


def _comparable(value: exp.Expr, wtype: WarehouseType, caps: Capabilities) -> exp.Expr:
    """A form of the value that ``IS DISTINCT FROM`` accepts (BigQuery cannot compare JSON)."""
    if wtype.kind is Kind.JSON and not caps.json_equality:
        return exp.JSONFormat(this=value)
    return value


# --------------------------------------------------------------------------- the merge


@dataclass(frozen=True)
class _MergeShape:
    """What every step of :func:`plan_merge` needs: the table, its names and the batch's flags."""

    table: StateTable
    names: TableNames
    caps: Capabilities
    truncating: bool
    with_truncates: bool

    @property
    def staging(self) -> exp.Table:
        assert self.names.staging is not None
        return self.names.staging

    @property
    def key(self) -> list[str]:
        return list(self.table.key)

    @property
    def biz(self) -> list[str]:
        return list(self.table.business_names)

    @property
    def bucket(self) -> list[str]:
        return [KEY_BUCKET] if self.caps.key_buckets else []

    @property
    def carry(self) -> list[str]:
        return list(self.table.carry)

    @property
    def version(self) -> list[str]:
        """A version's own columns: business values, metadata, key bucket."""
        return [*self.biz, *_VERSION_META, *self.bucket]

    @property
    def chain_fields(self) -> list[str]:
        return [
            *self.version,
            ANCHOR,
            STORED,
            CANDIDATE,
            OLD_VALID_FROM,
            OLD_VALID_TO,
            OLD_NEXT_SEQ,
        ]


_VERSION_META = [VALID_FROM, OP, IS_DELETED, SEQ, EVENT_ID, TX_ID, INGESTED_AT, UNAVAILABLE]


def plan_merge(
    table: StateTable,
    names: TableNames,
    caps: Capabilities,
    *,
    truncating: bool = False,
    with_truncates: bool = False,
) -> exp.Merge:
    """The one MERGE that applies a staged batch (see the module docstring; one function below
    per step).

    Parameters at run time: ``since_seq``, the earliest ``_seq`` in the batch: a stored version
    whose next version comes at or before it cannot change, so ``_next_seq IS NULL OR _next_seq >
    @since_seq`` is added as a filter on a constant, which the warehouse evaluates while scanning
    (DuckDB prunes row groups by it and reads whole rows only of the versions that pass), so a
    merge does not slow down as the history grows; and, where the capabilities partition by key
    bucket, ``touched_buckets``. The plan itself depends only on the table's shape and the flags,
    so a warehouse can render it once and reuse it for every batch.

    ``with_truncates``: the table's truncate log or the batch holds truncates, so tombstones must be
    spliced in. ``truncating``: the batch itself holds a truncate, so every key may be touched (a
    truncate closes every live key). Both are decided by the caller from the batch and the (tiny)
    truncate log; without them the plan skips that work entirely.
    """
    if names.staging is None:
        raise ValueError("plan_merge needs the staging table")
    m = _MergeShape(table, names, caps, truncating, with_truncates or truncating)
    ctes = [_cte("batch", _step_batch(m))]
    if m.with_truncates:
        ctes.append(_cte("new_truncates", _new_truncates(names, caps)))
    ctes += [
        _cte("touched", _step_touched(m)),
        _cte("existing", _step_existing(m)),
        _cte("fresh", _step_fresh(m)),
    ]
    if m.with_truncates:
        ctes += [_cte("truncates", _all_truncates(names)), _cte("bounds", _bounds(m.key, m.bucket))]
    ctes.append(_cte("chain", _step_chain(m)))
    source = "chain"
    if m.with_truncates:
        ctes.append(_cte("flagged", _step_flagged(m)))
        source = "flagged"
    ctes.append(_cte("versions", _step_versions(m, source)))
    source_query = exp.select("*").from_(
        exp.Subquery(this=_step_changes(m), alias=exp.TableAlias(this=_ident("c"))), copy=False
    )
    source_query.set("with_", exp.With(expressions=ctes))
    return _merge(
        table,
        names,
        caps,
        source_query,
        m.carry,
        m.bucket,
        m.with_truncates,
        _since("t"),
        _touched_buckets(caps, "t", truncating),
    )


def _step_batch(m: _MergeShape) -> exp.Select:
    """1. One row per (key, seq): the first delivery wins (no earlier delivery of it)."""
    earlier = (
        exp.select("1")
        .from_(m.staging.copy().as_("d", copy=False), copy=False)
        .where(
            exp.and_(
                _keys_equal(m.key, "d", "s"),
                _col(SEQ, "d").eq(_col(SEQ, "s")),
                exp.LT(this=_col(ORD, "d"), expression=_col(ORD, "s")),
            ),
            copy=False,
        )
    )
    return (
        _select([(c, _col(c, "s")) for c in m.version])
        .from_(m.staging.copy().as_("s", copy=False), copy=False)
        .where(
            exp.and_(
                _col(OP, "s").neq(exp.Literal.string("t")), exp.not_(exp.Exists(this=earlier))
            ),
            copy=False,
        )
    )


def _step_touched(m: _MergeShape) -> exp.Select:
    """2. The touched keys and where their change starts (a truncate in the batch: every key)."""
    key, bucket = m.key, m.bucket
    sources: list[exp.Select] = [
        _select(
            [(k, _col(k)) for k in key] + [(FROM_SEQ, _col(SEQ))] + [(b, _col(b)) for b in bucket]
        ).from_("batch", copy=False)
    ]
    if m.truncating:
        first_new = (
            exp.select(exp.Min(this=_col(SEQ)))
            .from_("new_truncates", copy=False)
            .subquery(copy=False)
        )
        sources.append(
            _select(
                [(k, _col(k, "x")) for k in key]
                + [(FROM_SEQ, first_new)]
                + [(b, _col(b, "x")) for b in bucket]
            )
            .from_(m.names.state.copy().as_("x"), copy=False)
            .where(exp.Exists(this=exp.select("1").from_("new_truncates")), copy=False)
        )
    return (
        _select(
            [(k, _col(k)) for k in key]
            + [(FROM_SEQ, exp.Min(this=_col(FROM_SEQ)))]
            + [(b, exp.Max(this=_col(b))) for b in bucket]
        )
        .from_(_union_all(*sources).subquery("a"), copy=False)
        .group_by(*[_col(k) for k in key], copy=False)
    )


def _step_existing(m: _MergeShape) -> exp.Select:
    """3. Of the touched keys, the anchor and every later version."""
    state_cols = [*m.biz, *[n for n, _ in METADATA_COLUMNS], *m.bucket]
    return (
        _select(
            [(c, _col(c, "x")) for c in state_cols]
            + [(ANCHOR, exp.LTE(this=_col(SEQ, "x"), expression=_col(FROM_SEQ, "u")))]
        )
        .from_(m.names.state.copy().as_("x"), copy=False)
        .join(
            exp.to_table("touched").as_("u"),
            on=_keys_equal(m.key, "x", "u"),
            join_type="inner",
            copy=False,
        )
        .where(
            _and(
                exp.or_(
                    _col(NEXT_SEQ, "x").is_(exp.Null()),
                    exp.GT(this=_col(NEXT_SEQ, "x"), expression=_col(FROM_SEQ, "u")),
                ),
                _since("x"),
                _touched_buckets(m.caps, "x", m.truncating),
            ),
            copy=False,
        )
    )


def _step_fresh(m: _MergeShape) -> exp.Select:
    """4. The batch's versions that are not stored yet."""
    stored_copy = exp.select("1").from_(exp.to_table("existing").as_("e"), copy=False)
    stored_copy = stored_copy.where(
        exp.and_(_keys_equal(m.key, "e", "b"), _col(SEQ, "e").eq(_col(SEQ, "b"))), copy=False
    )
    return (
        _select([(c, _col(c, "b")) for c in m.version])
        .from_(exp.to_table("batch").as_("b"), copy=False)
        .where(exp.not_(exp.Exists(this=stored_copy)), copy=False)
    )


def _step_chain(m: _MergeShape) -> exp.Query:
    """5. The versions whose validity is recomputed: existing + fresh (+ candidate tombstones)."""
    caps = m.caps
    from_existing = _select(
        [(c, _col(c)) for c in [*m.version, ANCHOR]]
        + [
            (STORED, _bool(True)),
            (CANDIDATE, _bool(False)),
            (OLD_VALID_FROM, _col(VALID_FROM)),
            (OLD_VALID_TO, _col(VALID_TO)),
            (OLD_NEXT_SEQ, _col(NEXT_SEQ)),
        ]
    ).from_("existing", copy=False)
    if m.with_truncates:
        # stored truncate tombstones after the anchor are recomputed from the candidates
        from_existing = from_existing.where(
            exp.not_(exp.and_(_col(OP).eq(exp.Literal.string("t")), exp.not_(_col(ANCHOR)))),
            copy=False,
        )
    from_fresh = _select(
        [(c, _col(c)) for c in m.version]
        + [
            (ANCHOR, _bool(False)),
            (STORED, _bool(False)),
            (CANDIDATE, _bool(False)),
            (OLD_VALID_FROM, _null(TIMESTAMP, caps)),
            (OLD_VALID_TO, _null(TIMESTAMP, caps)),
            (OLD_NEXT_SEQ, _null(STRING, caps)),
        ]
    ).from_("fresh", copy=False)
    parts = [from_existing, from_fresh]
    if m.with_truncates:
        parts.append(_candidates(m.table, caps, m.names, m.bucket))
    return _union_all(*parts)


def _step_flagged(m: _MergeShape) -> exp.Select:
    """5b. With truncates: a candidate tombstone is kept only when the version before it is live."""
    previous_deleted = _window(exp.func("LAG", _col(IS_DELETED)), m.key)
    keep = exp.or_(
        exp.not_(_col(CANDIDATE)),
        exp.func("COALESCE", exp.not_(previous_deleted), _bool(False)),
    )
    return _select([(c, _col(c)) for c in m.chain_fields] + [(KEEP, keep)]).from_(
        "chain", copy=False
    )


def _step_versions(m: _MergeShape, source: str) -> exp.Select:
    """6. Validity and carried values, recomputed over (key ORDER BY _seq).

    A version starts at the latest commit time so far in log order (commit times need not rise
    with the log: binlog times are whole seconds, a snapshot's are the clock's), so that a window
    may be empty but never inverted. The anchor's stored start is already the latest before it."""
    key, caps = m.key, m.caps
    started = _window(exp.Max(this=_col(VALID_FROM)), key, frame=True)
    next_commit = _window(exp.func("LEAD", _col(VALID_FROM)), key)
    fields: list[tuple[str, exp.Expr]] = [(c, _col(c)) for c in m.chain_fields]
    fields += [
        (NEW_VALID_FROM, started),
        (
            NEW_VALID_TO,
            exp.Case(
                ifs=[exp.If(this=next_commit.is_(exp.Null()), true=_null(TIMESTAMP, caps))],
                default=exp.Greatest(this=next_commit.copy(), expressions=[started.copy()]),
            ),
        ),
        (NEW_NEXT_SEQ, _window(exp.func("LEAD", _col(SEQ)), key)),
    ]
    for i, name in enumerate(m.carry):
        wrapped = exp.Case(
            ifs=[
                exp.If(
                    this=_available(name, caps),
                    true=exp.Struct(
                        expressions=[exp.PropertyEQ(this=_ident(CARRIED), expression=_col(name))]
                    ),
                )
            ]
        )
        last = exp.IgnoreNulls(this=exp.LastValue(this=wrapped))
        fields.append((f"{CARRY_PREFIX}{i}", _window(last, key, frame=True)))
    versions = _select(fields).from_(source, copy=False)
    if m.with_truncates:
        versions = versions.where(_col(KEEP), copy=False)
    return versions


def _step_changes(m: _MergeShape) -> exp.Expr:
    """7. What the MERGE writes: new versions, stored ones whose validity or carried values changed
    (and, with truncates, withdrawn tombstones)."""
    caps, carry = m.caps, m.carry

    def resolved(name: str) -> exp.Expr:
        if name not in carry:
            return _col(name)
        return exp.Case(
            ifs=[exp.If(this=_available(name, caps), true=_col(name))],
            default=_carried(carry.index(name)),
        )

    fields: list[tuple[str, exp.Expr]] = [(c, resolved(c)) for c in m.biz]
    fields += [
        (c, _col(NEW_VALID_FROM) if c == VALID_FROM else _col(c))
        for c in [*_VERSION_META, *m.bucket, NEW_VALID_TO, NEW_NEXT_SEQ, STORED]
    ]
    if m.with_truncates:
        fields.append((KEEP, _bool(True)))
    changed = exp.or_(
        exp.not_(_col(STORED)),
        exp.NullSafeNEQ(this=_col(NEW_NEXT_SEQ), expression=_col(OLD_NEXT_SEQ)),
        exp.NullSafeNEQ(this=_col(NEW_VALID_TO), expression=_col(OLD_VALID_TO)),
        exp.NullSafeNEQ(this=_col(NEW_VALID_FROM), expression=_col(OLD_VALID_FROM)),
        *[
            exp.and_(
                exp.not_(_available(name, caps)),
                exp.NullSafeNEQ(
                    this=_comparable(_col(name), m.table.column_type(name), caps),
                    expression=_comparable(_carried(i), m.table.column_type(name), caps),
                ),
            )
            for i, name in enumerate(carry)
        ],
    )
    changes: exp.Expr = _select(fields).from_("versions", copy=False).where(changed, copy=False)
    if not m.with_truncates:
        return changes
    dropped_fields: list[tuple[str, exp.Expr]] = [(c, _col(c)) for c in m.version]
    dropped_fields += [
        (NEW_VALID_TO, _null(TIMESTAMP, caps)),
        (NEW_NEXT_SEQ, _null(STRING, caps)),
        (STORED, _bool(True)),
        (KEEP, _bool(False)),
    ]
    # withdrawn tombstones: a late delete (or an earlier truncate) now precedes them
    dropped = (
        _select(dropped_fields)
        .from_("flagged", copy=False)
        .where(exp.and_(exp.not_(_col(KEEP)), _col(STORED)), copy=False)
    )
    return _union_all(changes, dropped)  # type: ignore[arg-type]


def plan_merge_counts(merge: exp.Merge) -> exp.Select:
    """What a MERGE from :func:`plan_merge` will insert, update and delete, counted from its
    source: for warehouses that do not report a MERGE's counts (bqemulator)."""
    source = merge.args["using"].this.copy()
    with_keep = any(a.alias == KEEP for a in source.find_all(exp.Alias))
    kept: exp.Expr = _col(KEEP) if with_keep else _bool(True)
    return exp.select(
        _alias(exp.func("COUNTIF", exp.and_(exp.not_(_col(STORED)), kept.copy())), "inserted"),
        _alias(exp.func("COUNTIF", exp.and_(_col(STORED), kept.copy())), "updated"),
        _alias(exp.func("COUNTIF", exp.not_(kept.copy())), "deleted"),
    ).from_(exp.Subquery(this=source, alias=exp.TableAlias(this=_ident("m"))), copy=False)


def _since(alias: str) -> exp.Expr:
    """``<alias>._next_seq IS NULL OR <alias>._next_seq > @since_seq``: what a batch can affect."""
    return exp.Paren(
        this=exp.or_(
            _col(NEXT_SEQ, alias).is_(exp.Null()),
            exp.GT(
                this=_col(NEXT_SEQ, alias),
                expression=exp.Parameter(this=exp.Var(this=SINCE_SEQ_PARAM)),
            ),
        )
    )


def _merge(
    table: StateTable,
    names: TableNames,
    caps: Capabilities,
    source_query: exp.Select,
    carry: list[str],
    bucket: list[str],
    with_truncates: bool,
    since: exp.Expr,
    touched_buckets: exp.Expr | None,
) -> exp.Merge:
    key = list(table.key)
    # The target rows a source row can match all pass ``since`` (they are in ``existing``), so the
    # filter only spares the MERGE from reading the rest.
    on = _and(
        _keys_equal(key, "t", "s"),
        _col(SEQ, "t").eq(_col(SEQ, "s")),
        since,
        touched_buckets,
    )
    updates = [
        exp.EQ(this=_col(VALID_FROM), expression=_col(VALID_FROM, "s")),
        exp.EQ(this=_col(VALID_TO), expression=_col(NEW_VALID_TO, "s")),
        exp.EQ(this=_col(NEXT_SEQ), expression=_col(NEW_NEXT_SEQ, "s")),
        exp.EQ(this=_col(IS_CURRENT), expression=_col(NEW_NEXT_SEQ, "s").is_(exp.Null())),
        *[exp.EQ(this=_col(c), expression=_col(c, "s")) for c in carry],
    ]
    insert_values: dict[str, exp.Expr] = {c: _col(c, "s") for c in table.business_names}
    insert_values.update(
        {
            VALID_FROM: _col(VALID_FROM, "s"),
            VALID_TO: _col(NEW_VALID_TO, "s"),
            IS_CURRENT: _col(NEW_NEXT_SEQ, "s").is_(exp.Null()),
            IS_DELETED: _col(IS_DELETED, "s"),
            OP: _col(OP, "s"),
            SEQ: _col(SEQ, "s"),
            EVENT_ID: _col(EVENT_ID, "s"),
            TX_ID: _col(TX_ID, "s"),
            INGESTED_AT: _col(INGESTED_AT, "s"),
            NEXT_SEQ: _col(NEW_NEXT_SEQ, "s"),
            UNAVAILABLE: _col(UNAVAILABLE, "s"),
        }
    )
    for b in bucket:
        insert_values[b] = _col(b, "s")
    insert = exp.Insert(
        this=exp.Tuple(expressions=[_col(c) for c in insert_values]),
        expression=exp.Tuple(expressions=list(insert_values.values())),
    )
    whens: list[exp.When] = []
    if with_truncates:
        whens.append(
            exp.When(matched=True, condition=exp.not_(_col(KEEP, "s")), then=exp.var("DELETE"))
        )
    whens.append(exp.When(matched=True, then=exp.Update(expressions=updates)))
    whens.append(
        exp.When(
            matched=False,
            condition=_col(KEEP, "s") if with_truncates else None,
            then=insert,
        )
    )
    return exp.Merge(
        this=names.state.copy().as_("t", copy=False),
        using=exp.Subquery(this=source_query, alias=exp.TableAlias(this=_ident("s"))),
        on=on,
        whens=exp.Whens(expressions=whens),
    )


def _new_truncates(names: TableNames, caps: Capabilities) -> exp.Select:
    """Truncates in the batch that the log does not hold yet, one per seq (first delivery)."""
    assert names.staging is not None
    fields = [SEQ, VALID_FROM, EVENT_ID, TX_ID, INGESTED_AT]
    numbered = (
        _select(
            [(c, _col(c)) for c in fields]
            + [
                (
                    ROW_NUMBER,
                    exp.Window(
                        this=exp.func("ROW_NUMBER"),
                        partition_by=[_col(SEQ)],
                        order=exp.Order(
                            expressions=[exp.Ordered(this=_col(ORD), nulls_first=False)]
                        ),
                    ),
                )
            ]
        )
        .from_(names.staging.copy().as_("s"), copy=False)
        .where(_col(OP).eq(exp.Literal.string("t")), copy=False)
    )
    logged = (
        exp.select("1")
        .from_(names.truncates.copy().as_("l"), copy=False)
        .where(_col(SEQ, "l").eq(_col(SEQ, "n")), copy=False)
    )
    return (
        _select([(c, _col(c, "n")) for c in fields])
        .from_(numbered.subquery("n"), copy=False)
        .where(exp.and_(_col(ROW_NUMBER, "n").eq(1), exp.not_(exp.Exists(this=logged))), copy=False)
    )


def _all_truncates(names: TableNames) -> exp.Expr:
    fields = [SEQ, VALID_FROM, EVENT_ID, TX_ID]
    return _union_all(
        _select([(c, _col(c)) for c in fields]).from_(names.truncates.copy(), copy=False),
        _select([(c, _col(c)) for c in fields]).from_("new_truncates", copy=False),
    )


def _bounds(key: list[str], bucket: list[str]) -> exp.Select:
    """Per touched key, the first seq of its chain: candidates come only after it."""
    parts = [
        _select(
            [(k, _col(k)) for k in key] + [(SEQ, _col(SEQ))] + [(b, _col(b)) for b in bucket]
        ).from_(src, copy=False)
        for src in ("existing", "fresh")
    ]
    return (
        _select(
            [(k, _col(k)) for k in key]
            + [(FIRST_SEQ, exp.Min(this=_col(SEQ)))]
            + [(b, exp.Max(this=_col(b))) for b in bucket]
        )
        .from_(_union_all(*parts).subquery("p"), copy=False)
        .group_by(*[_col(k) for k in key], copy=False)
    )


def _candidates(
    table: StateTable, caps: Capabilities, names: TableNames, bucket: list[str]
) -> exp.Select:
    """One tombstone per (touched key, truncate after the key's first version in the chain)."""
    assert names.staging is not None
    ingested = (
        exp.select(exp.Max(this=_col(INGESTED_AT)))
        .from_(names.staging.copy(), copy=False)
        .subquery(copy=False)
    )
    fields: list[tuple[str, exp.Expr]] = []
    for c in table.columns:
        fields.append((c.name, _col(c.name, "k") if c.name in table.key else _null(c.type, caps)))
    fields += [
        (VALID_FROM, _col(VALID_FROM, "r")),
        (OP, exp.Literal.string("t")),
        (IS_DELETED, _bool(True)),
        (SEQ, _col(SEQ, "r")),
        (EVENT_ID, _col(EVENT_ID, "r")),
        (TX_ID, _col(TX_ID, "r")),
        (INGESTED_AT, ingested),
        (UNAVAILABLE, _null(NAME_LIST, caps)),
    ]
    fields += [(b, _col(b, "k")) for b in bucket]
    fields += [
        (ANCHOR, _bool(False)),
        (STORED, _col(SEQ, "e").is_(exp.Null()).not_()),
        (CANDIDATE, _bool(True)),
        (OLD_VALID_FROM, _col(VALID_FROM, "e")),
        (OLD_VALID_TO, _col(VALID_TO, "e")),
        (OLD_NEXT_SEQ, _col(NEXT_SEQ, "e")),
    ]
    # the tombstone this candidate would be, if it is stored already (to update or withdraw it)
    stored = exp.and_(
        _keys_equal(table.key, "e", "k"),
        _col(SEQ, "e").eq(_col(SEQ, "r")),
        _col(OP, "e").eq(exp.Literal.string("t")),
    )
    return (
        _select(fields)
        .from_(exp.to_table("bounds").as_("k"), copy=False)
        .join(
            exp.to_table("truncates").as_("r"),
            on=exp.GT(this=_col(SEQ, "r"), expression=_col(FIRST_SEQ, "k")),
            join_type="inner",
            copy=False,
        )
        .join(exp.to_table("existing").as_("e"), on=stored, join_type="left", copy=False)
    )


def plan_record_truncates(names: TableNames, caps: Capabilities) -> exp.Insert:
    """Add the batch's new truncates to the truncate log (runs after the MERGE, same transaction)."""
    fields = [c for c, _ in TRUNCATE_COLUMNS]
    return exp.insert(
        _new_truncates(names, caps),
        names.truncates.copy(),
        columns=[_ident(c) for c in fields],
    )


# --------------------------------------------------------------------------- DDL


def state_columns(table: StateTable, caps: Capabilities) -> list[Column]:
    """Every physical column of the state table in this warehouse."""
    cols = list(table.all_columns())
    if caps.key_buckets:
        cols.append(Column(KEY_BUCKET, INT64))
    return cols


def staging_columns(table: StateTable, caps: Capabilities) -> list[Column]:
    """The columns of a staging table (``state_models.scd2.stage_columns``, typed)."""
    meta = {n: t for n, t in METADATA_COLUMNS}
    cols = list(table.columns)
    cols += [
        Column(n, meta[n])
        for n in (VALID_FROM, OP, IS_DELETED, SEQ, EVENT_ID, TX_ID, INGESTED_AT, UNAVAILABLE)
    ]
    cols.append(Column(ORD, INT64))
    if caps.key_buckets:
        cols.append(Column(KEY_BUCKET, INT64))
    return cols


def _column_defs(columns: Sequence[Column], caps: Capabilities) -> list[exp.ColumnDef]:
    return [exp.ColumnDef(this=_ident(c.name), kind=c.type.to_sql(caps.dialect)) for c in columns]


def plan_create_table(
    name: exp.Table, columns: Sequence[Column], caps: Capabilities, *, replace: bool = False
) -> exp.Create:
    """A plain table (staging tables, the truncate log)."""
    return exp.Create(
        this=exp.Schema(this=name.copy(), expressions=_column_defs(columns, caps)),
        kind="TABLE",
        exists=not replace,
        replace=replace,
    )


def plan_create_service_table(name: exp.Table, columns: Sequence[tuple[str, str]]) -> exp.Create:
    """``CREATE TABLE IF NOT EXISTS`` of one of the service's own tables (``cdc_progress``,
    ``cdc_check_results``) from (name, generic type) pairs; sqlglot renders each dialect's types."""
    return exp.Create(
        this=exp.Schema(
            this=name.copy(),
            expressions=[
                exp.ColumnDef(this=_ident(n), kind=exp.DataType.build(t)) for n, t in columns
            ],
        ),
        kind="TABLE",
        exists=True,
    )


def plan_create_state(table: StateTable, names: TableNames, caps: Capabilities) -> list[exp.Create]:
    """DDL for a new state table, its truncate log, the ``_current`` view and the as-of functions.

    BigQuery layout (why): a MERGE must read only the touched keys, but BigQuery prunes storage
    only on constant filters. So the table is range-partitioned on ``_key_bucket`` (a hash of the
    key, computed when staging) and the MERGE passes the touched buckets as the constant
    ``@touched_buckets``: whole partitions of untouched keys are never read. Inside a partition the
    table is clustered by the key columns, so BigQuery's block pruning narrows the scan further to
    the blocks holding the touched keys. Partitioning by time would not help: a late event needs
    its key's versions whatever their dates.
    """
    properties: list[exp.Expr] = []
    if caps.key_buckets:
        properties.append(
            exp.PartitionedByProperty(
                this=exp.RangeBucket(
                    this=_col(KEY_BUCKET),
                    expression=exp.GenerateSeries(
                        start=exp.Literal.number(0),
                        end=exp.Literal.number(caps.key_buckets),
                        step=exp.Literal.number(1),
                    ),
                )
            )
        )
    if caps.max_cluster_columns and table.key:
        properties.append(
            exp.ClusterProperty(
                expressions=[_col(k) for k in table.key[: caps.max_cluster_columns]]
            )
        )
    state = exp.Create(
        this=exp.Schema(
            this=names.state.copy(), expressions=_column_defs(state_columns(table, caps), caps)
        ),
        kind="TABLE",
        exists=True,
        properties=exp.Properties(expressions=properties) if properties else None,
    )
    truncates = plan_create_table(
        names.truncates, [Column(n, t) for n, t in TRUNCATE_COLUMNS], caps
    )
    return [state, truncates, *plan_views(table, names, caps)]


def plan_views(table: StateTable, names: TableNames, caps: Capabilities) -> list[exp.Create]:
    """The ``<table>_current`` view (and in BigQuery the as-of table functions), re-created after
    a schema change so that they show new columns."""
    out: list[exp.Create] = []
    if names.current_view is not None:
        out.append(
            exp.Create(
                this=names.current_view.copy(),
                kind="VIEW",
                replace=True,
                expression=plan_current(table, names, caps),
            )
        )
    if caps.table_functions:
        for suffix, param, wtype, where in (
            ("_as_of", AS_OF_TIME, TIMESTAMP, _as_of_time_condition(_col(AS_OF_TIME))),
            ("_as_of_seq", AS_OF_SEQ, STRING, _as_of_seq_condition(_col(AS_OF_SEQ))),
        ):
            fn_name = names.state.copy()
            fn_name.set("this", _ident(table.name + suffix))
            out.append(
                exp.Create(
                    this=exp.UserDefinedFunction(
                        this=fn_name,
                        expressions=[
                            exp.ColumnDef(this=_ident(param), kind=wtype.to_sql(caps.dialect))
                        ],
                        wrapped=True,
                    ),
                    kind="TABLE FUNCTION",
                    replace=True,
                    expression=_live_rows(table, names, where),
                )
            )
    return out


def plan_add_column(name: exp.Table, column: Column, caps: Capabilities) -> exp.Alter:
    """``ALTER TABLE ... ADD COLUMN IF NOT EXISTS`` (nullable): safe to repeat."""
    return exp.Alter(
        this=name.copy(),
        kind="TABLE",
        actions=[
            exp.ColumnDef(
                this=_ident(column.name), kind=column.type.to_sql(caps.dialect), exists=True
            )
        ],
    )


def plan_widen_column(name: exp.Table, column: Column, caps: Capabilities) -> exp.Alter:
    """``ALTER TABLE ... ALTER COLUMN ... SET DATA TYPE`` to a wider type."""
    return exp.Alter(
        this=name.copy(),
        kind="TABLE",
        actions=[exp.AlterColumn(this=_ident(column.name), dtype=column.type.to_sql(caps.dialect))],
    )


# --------------------------------------------------------------------------- queries


def _ordered_columns(table: StateTable, caps: Capabilities) -> list[exp.Column]:
    return [_col(c.name) for c in table.all_columns()]


def _order_by_key(table: StateTable, with_seq: bool = True) -> list[exp.Ordered]:
    cols = [*table.key, SEQ] if with_seq else list(table.key)
    return [exp.Ordered(this=_col(c), nulls_first=False) for c in cols]


def literal_for(value: Any, wtype: WarehouseType, caps: Capabilities) -> exp.Expr:
    """A typed literal: ``CAST('text' AS type)`` (the text is escaped by sqlglot)."""
    if value is None:
        return exp.Null()
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        value = value.astimezone(dt.UTC).isoformat()
    return exp.cast(exp.Literal.string(str(value)), wtype.to_sql(caps.dialect))


def plan_history(
    table: StateTable,
    names: TableNames,
    caps: Capabilities,
    key: Mapping[str, Any] | None = None,
) -> exp.Select:
    """Every version (of one key, or of columns matching ``key``), ordered by key then ``_seq``."""
    query = exp.select(*_ordered_columns(table, caps)).from_(names.state.copy(), copy=False)
    conditions = [
        _col(name).eq(literal_for(value, table.column_type(name), caps))
        for name, value in (key or {}).items()
    ]
    if conditions:
        query = query.where(exp.and_(*conditions), copy=False)
    return query.order_by(*_order_by_key(table), copy=False)


def _as_of_time_condition(at: exp.Expr) -> exp.Expr:
    return exp.and_(
        exp.LTE(this=_col(VALID_FROM), expression=at),
        exp.or_(_col(VALID_TO).is_(exp.Null()), exp.GT(this=_col(VALID_TO), expression=at.copy())),
    )


def _as_of_seq_condition(seq: exp.Expr) -> exp.Expr:
    return exp.and_(
        exp.LTE(this=_col(SEQ), expression=seq),
        exp.or_(_col(NEXT_SEQ).is_(exp.Null()), exp.GT(this=_col(NEXT_SEQ), expression=seq.copy())),
    )


def _live_rows(table: StateTable, names: TableNames, condition: exp.Expr) -> exp.Select:
    return (
        exp.select(*[_col(c.name) for c in table.all_columns()])
        .from_(names.state.copy(), copy=False)
        .where(exp.and_(condition, exp.not_(_col(IS_DELETED))), copy=False)
    )


def plan_as_of(
    table: StateTable,
    names: TableNames,
    caps: Capabilities,
    *,
    at: dt.datetime | None = None,
    seq: str | None = None,
    ordered: bool = True,
) -> exp.Select:
    """The live rows at a commit time (``at``) or a source position (``seq``), ordered by key
    unless ``ordered`` is false (for a caller that aggregates them: no sort of the whole table).

    A version is live at T when ``_valid_from <= T < _valid_to`` (or it is current) and it is not
    a tombstone; at seq S when ``_seq <= S < _next_seq``.
    """
    if (at is None) == (seq is None):
        raise ValueError("give exactly one of at= or seq=")
    if at is not None:
        condition = _as_of_time_condition(literal_for(at, TIMESTAMP, caps))
    else:
        condition = _as_of_seq_condition(exp.Literal.string(str(seq)))
    rows = _live_rows(table, names, condition)
    return rows.order_by(*_order_by_key(table, with_seq=False), copy=False) if ordered else rows


def plan_current(table: StateTable, names: TableNames, caps: Capabilities) -> exp.Select:
    """The live rows now: ``_is_current AND NOT _is_deleted``."""
    return (
        exp.select(*[_col(c.name) for c in table.all_columns()])
        .from_(names.state.copy(), copy=False)
        .where(exp.and_(_col(IS_CURRENT), exp.not_(_col(IS_DELETED))), copy=False)
    )


def plan_current_versions(
    table: StateTable,
    names: TableNames,
    caps: Capabilities,
    keys: Sequence[Mapping[str, Any]] | None = None,
) -> exp.Select:
    """Each key's current version, tombstones included (what the online store holds), of every
    key or of ``keys``."""
    where: exp.Expr = _col(IS_CURRENT)
    if keys is not None:
        if not keys:
            where = exp.false()
        elif len(table.key) == 1:  # an IN list: a hash lookup, not a chain of ORs
            (k,) = table.key
            where = exp.and_(
                where,
                _col(k).isin(*[literal_for(key[k], table.column_type(k), caps) for key in keys]),
            )
        else:
            where = exp.and_(
                where,
                exp.or_(
                    *[
                        exp.and_(
                            *[
                                _col(k).eq(literal_for(key[k], table.column_type(k), caps))
                                for k in table.key
                            ]
                        )
                        for key in keys
                    ]
                ),
            )
    return (
        exp.select(*[_col(c.name) for c in table.all_columns()])
        .from_(names.state.copy(), copy=False)
        .where(where, copy=False)
    )


def plan_stats(names: TableNames) -> exp.Select:
    """One row of figures for ``cdc status``: versions, live rows, newest ``_seq`` and commit time."""
    live = exp.and_(_col(IS_CURRENT), exp.not_(_col(IS_DELETED)))
    return exp.select(
        exp.alias_(exp.Count(this=exp.Star()), "versions"),
        exp.alias_(
            exp.Sum(
                this=exp.If(this=live, true=exp.Literal.number(1), false=exp.Literal.number(0))
            ),
            "live_rows",
        ),
        exp.alias_(exp.Max(this=_col(SEQ)), "last_seq"),
        exp.alias_(exp.Max(this=_col(VALID_FROM)), "last_commit"),
    ).from_(names.state.copy(), copy=False)


def plan_has_truncates(names: TableNames) -> exp.Select:
    """Whether the truncate log holds anything (decides ``with_truncates`` for the next MERGE)."""
    return exp.select(exp.Count(this=exp.Star())).from_(names.truncates.copy(), copy=False)


# --------------------------------------------------------------------------- transactions


def plan_tx_versions(
    table: StateTable, names: TableNames, caps: Capabilities, tx_id: str
) -> exp.Select:
    """Every version one transaction wrote into a table, in log order (``cdc history --tx``)."""
    return (
        exp.select(*_ordered_columns(table, caps))
        .from_(names.state.copy(), copy=False)
        .where(_col(TX_ID).eq(exp.Literal.string(tx_id)), copy=False)
        .order_by(_col(SEQ), copy=False)
    )


def plan_tx_bounds(names: TableNames, tx_ids: Sequence[str]) -> exp.Select:
    """The first and last ``_seq`` of the versions of these transactions in a table."""
    return (
        exp.select(
            exp.alias_(exp.Min(this=_col(SEQ)), "first_seq"),
            exp.alias_(exp.Max(this=_col(SEQ)), "last_seq"),
        )
        .from_(names.state.copy(), copy=False)
        .where(_col(TX_ID).isin(*[exp.Literal.string(t) for t in tx_ids]), copy=False)
    )


def plan_tx_changes(names: TableNames, tx_ids: Sequence[str]) -> exp.Select:
    """Per transaction, what a table holds of it: its distinct changes (the versions' ``_seq``,
    with the truncates of its log, which may have closed no row), its first ``_seq`` and how many
    different first sections its ``_seq`` have (``watermark.applied_prev``)."""

    def part(table: exp.Table) -> exp.Select:
        return (
            exp.select(_col(TX_ID), _col(SEQ))
            .from_(table.copy(), copy=False)
            .where(_col(TX_ID).isin(*[exp.Literal.string(t) for t in tx_ids]), copy=False)
        )

    both = exp.union(part(names.state), part(names.truncates), distinct=False)
    return (
        exp.select(
            _col(TX_ID),
            exp.alias_(exp.Min(this=_col(SEQ)), "first_seq"),
            exp.alias_(exp.Count(this=exp.Distinct(expressions=[_col(SEQ)])), "changes"),
            exp.alias_(
                exp.Count(
                    this=exp.Distinct(
                        expressions=[
                            exp.Substring(
                                this=_col(SEQ),
                                start=exp.Literal.number(1),
                                length=exp.Literal.number(SEQ_SECTION_WIDTH),
                            )
                        ]
                    )
                ),
                "first_sections",
            ),
        )
        .from_(both.subquery("tx_changes"), copy=False)
        .group_by(_col(TX_ID), copy=False)
    )


def plan_last_version(
    names: TableNames,
    caps: Capabilities,
    *,
    seq: str | None = None,
    at: dt.datetime | None = None,
) -> exp.Select:
    """The ``_seq`` and ``_tx_id`` of a table's last version at or before ``seq`` (or whose
    commit time is at or before ``at``)."""
    if seq is not None:
        where = exp.LTE(this=_col(SEQ), expression=exp.Literal.string(seq))
    else:
        where = exp.LTE(this=_col(VALID_FROM), expression=literal_for(at, TIMESTAMP, caps))
    return (
        exp.select(_col(SEQ), _col(TX_ID))
        .from_(names.state.copy(), copy=False)
        .where(where, copy=False)
        .order_by(exp.Ordered(this=_col(SEQ), desc=True), copy=False)
        .limit(1, copy=False)
    )

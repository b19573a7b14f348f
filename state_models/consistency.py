"""The consistent as-of queries in SQL: per source a view and per state table two functions.

What ``cdc as-of --consistent`` answers, queryable from the warehouse itself
(``state_models.watermark`` defines cuts and the watermark):

- ``cdc_<source>_transactions`` (view): ``table_id, _seq, _tx_id, _valid_from`` of every version
  of every state table of the source, the log the cuts are taken from;
- ``<state table>_consistent_tx(cdc_tx)``: the table's live rows through transaction ``cdc_tx``
  (the last ``_seq`` of its versions in any table of the source), capped at the source's watermark
  (``cdc_progress.watermark_seq``);
- ``<state table>_consistent_at(cdc_at)``: through the transaction of the source's last version
  committed at or before ``cdc_at`` (a timestamp), capped the same way.

DuckDB gets table macros, BigQuery table functions (``CREATE TABLE FUNCTION``). With no watermark
yet (or no such transaction) they return no rows: never half a transaction. Example, DuckDB::

    SELECT s.id, s.status, i.id AS invoice, i.status AS invoice_status
    FROM billing_subscriptions_consistent_tx('1234') s
    JOIN billing_invoices_consistent_tx('1234') i ON i.subscription_id = s.id;

BigQuery: ``FROM `proj.ds.billing_subscriptions_consistent_at`(TIMESTAMP '2026-12-01 12:00:00')``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlglot import exp

from state_models.dialects import Capabilities
from state_models.plans import TableNames, _col, _ident, _live_rows
from state_models.scd2 import NEXT_SEQ, SEQ, TX_ID, VALID_FROM, StateTable
from state_models.types import STRING, TIMESTAMP

TX_PARAM = "cdc_tx"
AT_PARAM = "cdc_at"


@dataclass(frozen=True)
class SourceTable:
    table_id: str
    state: StateTable
    names: TableNames


def transactions_view_name(source: str) -> str:
    return f"cdc_{source}_transactions"


def _named(table: exp.Table, name: str) -> exp.Table:
    out = table.copy()
    out.set("this", _ident(name))
    return out


def plan_transactions_view(view: exp.Table, tables: Sequence[SourceTable]) -> exp.Create:
    """The source's versions, every state table's in one relation."""
    selects: list[exp.Select] = [
        exp.select(
            exp.alias_(exp.Literal.string(t.table_id), "table_id"),
            _col(SEQ),
            _col(TX_ID),
            _col(VALID_FROM),
        ).from_(t.names.state.copy())
        for t in tables
    ]
    query: exp.Query = selects[0]
    for s in selects[1:]:
        query = exp.union(query, s, distinct=False)
    return exp.Create(this=view.copy(), kind="VIEW", replace=True, expression=query)


def _watermark(progress: exp.Table, source: str) -> exp.Expr:
    return exp.Subquery(
        this=exp.select(exp.Max(this=_col("watermark_seq")))
        .from_(progress.copy())
        .where(_col("source").eq(exp.Literal.string(source)))
    )


def _through_tx(view: exp.Table, tx: exp.Expr) -> exp.Expr:
    return exp.Subquery(
        this=exp.select(exp.Max(this=_col(SEQ))).from_(view.copy()).where(_col(TX_ID).eq(tx))
    )


def _through_at(view: exp.Table, at: exp.Expr) -> exp.Expr:
    """Through the transaction of the last version committed at or before ``at`` (that version
    itself when it names no transaction)."""
    last = (
        exp.select(_col(TX_ID))
        .from_(view.copy())
        .where(exp.LTE(this=_col(VALID_FROM), expression=at.copy()))
        .order_by(exp.Ordered(this=_col(SEQ), desc=True))
        .limit(1)
    )
    last_seq = exp.Subquery(
        this=exp.select(exp.Max(this=_col(SEQ)))
        .from_(view.copy())
        .where(exp.LTE(this=_col(VALID_FROM), expression=at.copy()))
    )
    return exp.Coalesce(this=_through_tx(view, exp.Subquery(this=last)), expressions=[last_seq])


def _capped(cut: exp.Expr, watermark: exp.Expr) -> exp.Expr:
    """The lower of the cut and the watermark; NULL (no rows) when either is missing."""
    return (
        exp.Case()
        .when(exp.or_(cut.copy().is_(exp.Null()), watermark.copy().is_(exp.Null())), exp.Null())
        .when(exp.LT(this=cut.copy(), expression=watermark.copy()), cut)
        .else_(watermark)
    )


def _as_of_cut(table: StateTable, names: TableNames, cut: exp.Expr) -> exp.Select:
    condition = exp.and_(
        exp.LTE(this=_col(SEQ), expression=cut.copy()),
        exp.or_(_col(NEXT_SEQ).is_(exp.Null()), exp.GT(this=_col(NEXT_SEQ), expression=cut.copy())),
    )
    return _live_rows(table, names, condition)


def plan_consistency(
    source: str,
    tables: Sequence[SourceTable],
    view: exp.Table,
    progress: exp.Table,
    caps: Capabilities,
) -> list[exp.Expr]:
    """The view and each table's two functions (see the module doc); re-run when a state table of
    the source appears or changes shape."""
    out: list[exp.Expr] = [plan_transactions_view(view, tables)]
    watermark = _watermark(progress, source)
    for t in tables:
        for suffix, param, wtype, cut in (
            ("_consistent_tx", TX_PARAM, STRING, _through_tx(view, _col(TX_PARAM))),
            ("_consistent_at", AT_PARAM, TIMESTAMP, _through_at(view, _col(AT_PARAM))),
        ):
            # the cut is computed once (a one-row derived table), then the rows at it
            body = _as_of_cut(t.state, t.names, _col("cut", "c")).join(
                exp.select(exp.alias_(_capped(cut, watermark), "cut")).subquery("c"),
                join_type="cross",
                copy=False,
            )
            param_def: exp.Expr = (
                exp.ColumnDef(this=_ident(param), kind=wtype.to_sql(caps.dialect))
                if caps.table_functions
                else _ident(param)
            )
            out.append(
                exp.Create(
                    this=exp.UserDefinedFunction(
                        this=_named(t.names.state, t.state.name + suffix),
                        expressions=[param_def],
                        wrapped=True,
                    ),
                    kind="TABLE FUNCTION" if caps.table_functions else "MACRO",
                    replace=True,
                    expression=body,
                    # DuckDB: ``AS TABLE <select>`` (a table macro)
                    properties=None
                    if caps.table_functions
                    else exp.Properties(
                        expressions=[
                            exp.ReturnsProperty(
                                this=exp.Schema(this=exp.var("TABLE")), is_table=True
                            )
                        ]
                    ),
                )
            )
    return out

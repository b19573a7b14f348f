"""The part of a warehouse that is the same everywhere: evolve, stage, MERGE, query.

Each warehouse subclasses :class:`SqlWarehouse` and fills in a few narrow hooks (run statements,
describe a table, load a staging table); the decisions live here and in ``state_models``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from connectors.warehouse.arrow import staging_table
from connectors.warehouse.base import ApplyResult
from state_models.checks import (
    FOUND,
    INVARIANTS,
    RESULTS_TABLE,
    CheckResult,
    plan_add_detail,
    plan_create_results,
    plan_invariant,
    plan_last_record,
    plan_record_results,
)
from state_models.dialects import SINCE_SEQ_PARAM, TOUCHED_BUCKETS_PARAM, Capabilities
from state_models.errors import ConfigError, SchemaChangeError
from state_models.events import ChangeEvent
from state_models.plans import (
    TableNames,
    plan_add_column,
    plan_as_of,
    plan_create_state,
    plan_current,
    plan_current_versions,
    plan_has_truncates,
    plan_history,
    plan_merge,
    plan_record_truncates,
    plan_stats,
    plan_views,
    plan_widen_column,
    state_columns,
    table_names,
)
from state_models.progress import (
    PROGRESS_TABLE,
    Progress,
    plan_create_progress,
    plan_record_progress,
    plan_select_progress,
)
from state_models.rebuild import (
    NOT_COMPARED,
    Comparison,
    RangeChecksum,
    compared_columns,
    plan_differences,
    plan_drop,
    plan_range_checksums,
    plan_rename,
)
from state_models.scd2 import (
    KEY_BUCKET,
    RESERVED_NAMES,
    SEQ,
    Column,
    Evolution,
    Rejected,
    StateTable,
    TableDef,
    plan_evolution,
    stage_columns,
    truncate_table_name,
)
from state_models.types import (
    UnknownTypeError,
    WarehouseType,
    coerce_value,
    warehouse_type_from_sql,
)

#: What we keep in the table's comment (DuckDB) or description (BigQuery): the parts of the
#: table's shape that its columns alone do not say.
META_MARK = "cdc-history"


@dataclass(frozen=True)
class MergePlan:
    """The statements of one batch (the MERGE, then the truncate-log insert if any), rendered."""

    statements: list[exp.Expr]
    sql: list[str]


@dataclass(frozen=True)
class MergeCounts:
    inserted: int = 0
    updated: int = 0
    deleted: int = 0


class SqlWarehouse:
    """Shared logic; subclasses implement the hooks marked ``NotImplementedError``."""

    url: str
    caps: Capabilities

    def __init__(self) -> None:
        self._tables: dict[str, StateTable] = {}
        self._has_truncates: dict[str, bool] = {}
        self._plans: dict[tuple[Any, ...], MergePlan] = {}
        self._tagged: set[str] = set()  # state tables whose policy tags this process has set
        self._progress_ready = False  # cdc_progress exists (created by this process or found)
        self._results_ready = False  # cdc_check_results exists with every column

    # ----------------------------------------------------------------- hooks

    def _names(self, table_name: str, staging: str | None = None) -> TableNames:
        raise NotImplementedError

    def _describe(self, names: TableNames) -> tuple[list[tuple[str, str]], str | None] | None:
        """(column name, type text) in table order and the table comment, or None if absent."""
        raise NotImplementedError

    def _set_policy_tags(self, names: TableNames, tags: Mapping[str, str]) -> None:
        """Put BigQuery policy tags on the state table's columns; a warehouse without
        column-level security (DuckDB) has nothing to set."""

    def _run(self, statements: Sequence[exp.Expr]) -> None:
        """Run DDL statements in order."""
        raise NotImplementedError

    def _set_comment(self, names: TableNames, comment: str) -> None:
        raise NotImplementedError

    def _stage(self, table: StateTable, staged: pa.Table) -> str:
        """Make the typed staging rows queryable as a table; return its name."""
        raise NotImplementedError

    def _unstage(self, staging: str) -> None:
        raise NotImplementedError

    def _merge(self, plan: MergePlan, params: Mapping[str, Any]) -> MergeCounts:
        """Run the plan's statements atomically with ``params``; count what the MERGE did."""
        raise NotImplementedError

    def _query(self, query: exp.Expr) -> list[dict[str, Any]]:
        raise NotImplementedError

    # ----------------------------------------------------------------- shape

    def state_table(self, table: TableDef) -> StateTable | None:
        cached = self._tables.get(table.state_table)
        if cached is not None:
            return cached
        described = self._describe(self._names(table.state_table))
        if described is None:
            return None
        columns, comment = described
        meta = _parse_meta(comment)
        key = tuple(meta.get("key") or table.primary_key or ())
        business: list[Column] = []
        recorded = {name: text for name, text in meta.get("columns") or ()}
        for name, type_text in columns:
            if name in RESERVED_NAMES:
                continue
            try:
                # the type we recorded when we made the column is exact; a warehouse may report it
                # loosely (bqemulator: JSON as STRING, NUMERIC without precision)
                wtype = (
                    WarehouseType.parse(recorded[name])
                    if name in recorded
                    else warehouse_type_from_sql(type_text, self.caps.dialect)
                )
            except UnknownTypeError as exc:
                raise SchemaChangeError(
                    f"state table {table.state_table}: column {name!r}: {exc}"
                ) from None
            business.append(Column(name, wtype))
        # a column we added but the warehouse does not list yet (bqemulator after ALTER TABLE)
        listed = {name for name, _ in columns}
        business += [
            Column(n, WarehouseType.parse(t)) for n, t in recorded.items() if n not in listed
        ]
        by_name = {c.name: c for c in business}
        ordered = [by_name[k] for k in key if k in by_name] + [
            c for c in business if c.name not in key
        ]
        carry = tuple(c.name for c in ordered if c.name in set(meta.get("carry") or ()))
        state = StateTable(table.table_id, table.state_table, key, tuple(ordered), carry)
        self._tables[table.state_table] = state
        return state

    def ensure_table(self, table: TableDef, events: Sequence[ChangeEvent] = ()) -> StateTable:
        return self._evolve(table, table.as_stored(table.protected(events))).table

    def _evolve(self, table: TableDef, events: Sequence[ChangeEvent]) -> Evolution:
        evolution = self._evolve_schema(table, events)
        state = evolution.table
        tag = evolution.changes_schema or state.name not in self._tagged
        if table.policy_tags and state.key and tag:
            self._set_policy_tags(self._names(state.name), table.policy_tags)
            self._tagged.add(state.name)
        return evolution

    def _evolve_schema(self, table: TableDef, events: Sequence[ChangeEvent]) -> Evolution:
        existing = self.state_table(table)
        if existing is not None and table.primary_key and existing.key != table.primary_key:
            raise SchemaChangeError(
                f"{table.table_id}: the registry's primary_key {list(table.primary_key)} differs "
                f"from the state table's key {list(existing.key)}"
            )
        evolution = plan_evolution(table, existing, events)
        state = evolution.table
        names = self._names(state.name)
        if not evolution.changes_schema:
            if evolution.carry_grew:
                # recorded before the MERGE writes such a version: if the MERGE then fails, the
                # record only costs later merges some needless work
                self._set_comment(names, _format_meta(state))
                self._tables[table.state_table] = state
            return evolution
        if evolution.create:
            if not state.key:
                return evolution  # nothing to create yet: no key known (no events, no registry key)
            self._run(plan_create_state(state, names, self.caps))
            self._set_comment(names, _format_meta(state))
        else:
            self._run(
                [plan_add_column(names.state, c, self.caps) for c in evolution.add]
                + [plan_widen_column(names.state, c, self.caps) for c in evolution.widen]
            )
            self._run(plan_views(state, names, self.caps))
            self._set_comment(names, _format_meta(state))
        self._tables[table.state_table] = state
        return evolution

    # ----------------------------------------------------------------- apply

    def apply(
        self, table: TableDef, events: Sequence[ChangeEvent], ingested_at: dt.datetime
    ) -> ApplyResult:
        result = ApplyResult(table_id=table.table_id, state_table=table.state_table)
        result.events = len(events)
        if not events:
            return result
        # pii: applied whatever path the events came by; rename: the state table's names
        source_events = table.protected(events)
        events = table.as_stored(source_events)
        evolution = self._evolve(table, events)
        state = evolution.table
        result.schema_changes = [f"add column {c.name} {c.type}" for c in evolution.add] + [
            f"widen column {c.name} to {c.type}" for c in evolution.widen
        ]
        rejected_ids = {id(r.event) for r in evolution.rejected}
        accepted = [e for e in events if id(e) not in rejected_ids]
        batch = stage_columns(state, accepted, ingested_at)
        staged, not_fitting = staging_table(state, batch, self.caps)
        result.rejected = [*evolution.rejected, *not_fitting]
        if events is not source_events:  # a dead letter holds the change as the source sent it
            as_sent = {id(e): s for e, s in zip(events, source_events, strict=True)}
            result.rejected = [Rejected(as_sent[id(r.event)], r.error) for r in result.rejected]
        if staged.num_rows == 0:
            return result
        truncating = batch.truncates > 0
        params: dict[str, Any] = {SINCE_SEQ_PARAM: pc.min(staged.column(SEQ)).as_py()}
        if self.caps.key_buckets and not truncating:  # a truncate touches every bucket
            params[TOUCHED_BUCKETS_PARAM] = sorted(set(staged.column(KEY_BUCKET).to_pylist()))
        with_truncates = truncating or self._table_has_truncates(state)
        staging = self._stage(state, staged)
        try:
            plan = self._merge_plan(state, staging, truncating, with_truncates)
            try:
                counts = self._merge(plan, params)
            except BaseException:
                self._plans.clear()  # build it afresh next time
                raise
        finally:
            self._unstage(staging)
        if truncating:
            self._has_truncates[state.name] = True
        result.inserted, result.updated, result.deleted = (
            counts.inserted,
            counts.updated,
            counts.deleted,
        )
        return result

    def _merge_plan(
        self, state: StateTable, staging: str, truncating: bool, with_truncates: bool
    ) -> MergePlan:
        """The batch's statements, built and rendered once per table shape (and staging name)."""
        key = (state, staging, truncating, with_truncates)
        plan = self._plans.get(key)
        if plan is None:
            names = self._names(state.name, staging)
            statements: list[exp.Expr] = [
                plan_merge(
                    state, names, self.caps, truncating=truncating, with_truncates=with_truncates
                )
            ]
            if truncating:
                statements.append(plan_record_truncates(names, self.caps))
            plan = MergePlan(statements, [self._render(s) for s in statements])
            if len(self._plans) > 64:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def _render(self, statement: exp.Expr) -> str:
        return self.caps.render(statement)

    def _table_has_truncates(self, state: StateTable) -> bool:
        known = self._has_truncates.get(state.name)
        if known:
            return True  # a truncate log never shrinks
        rows = self._query(plan_has_truncates(self._names(state.name)))
        has = bool(rows and next(iter(rows[0].values())))
        self._has_truncates[state.name] = has
        return has

    # ----------------------------------------------------------------- queries

    def _require(self, table: TableDef) -> StateTable | None:
        return self.state_table(table)

    def history(
        self, table: TableDef, key: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        state = self._require(table)
        if state is None:
            return []
        unknown = [k for k in (key or {}) if k not in state.business_names]
        if unknown:
            raise SchemaChangeError(
                f"{table.table_id} has no column(s) {unknown} (columns: {', '.join(state.business_names)})"
            )
        typed = {k: coerce_value(v, state.column_type(k)) for k, v in (key or {}).items()}
        return self._query(plan_history(state, self._names(state.name), self.caps, typed))

    def check(self, table: TableDef, *, limit: int = 10) -> list[CheckResult]:
        """The state table's invariants (``state_models.checks``), each passed or failed with how
        many keys break it and the first ``limit`` of them; none when the table does not exist."""
        state = self._require(table)
        if state is None:
            return []
        names = self._names(state.name)
        results = []
        for check in INVARIANTS:
            rows = self._query(plan_invariant(check, state, names, limit))
            found = int(rows[0][FOUND]) if rows else 0
            results.append(
                CheckResult(
                    table=table.table_id,
                    check=check,
                    level="error",
                    status="fail" if found else "pass",
                    observed=found,
                    keys=[{k: r[k] for k in state.key} for r in rows],
                )
            )
        return results

    def check_bytes(self, table: TableDef, *, limit: int = 10) -> dict[str, int | None]:
        """Per invariant, the bytes its query would read (BigQuery's dry run: what it bills);
        None where the warehouse cannot tell (DuckDB reads a local file). Nothing runs."""
        state = self._require(table)
        if state is None:
            return {}
        names = self._names(state.name)
        return {c: self._bytes(plan_invariant(c, state, names, limit)) for c in INVARIANTS}

    def _bytes(self, query: exp.Expr) -> int | None:
        """The bytes ``query`` would read, without running it (None: unknown here)."""
        return None

    def record_checks(self, results: Sequence[CheckResult], at: dt.datetime) -> None:
        """Append results to ``cdc_check_results`` (created on first use)."""
        if not results:
            return
        target = self._names(RESULTS_TABLE).state
        statements: list[exp.Expr] = [plan_record_results(target, results, at)]
        if not self._results_ready:  # made here, or by an older version without `detail`
            statements[:0] = [plan_create_results(target), plan_add_detail(target)]
        self._run(statements)
        self._results_ready = True

    def last_record(self, table_id: str, check: str) -> str | None:
        """What the last recorded result of ``check`` on ``table_id`` kept in ``detail``."""
        names = self._names(RESULTS_TABLE)
        if not self._results_ready:
            shape = self._describe(names)
            if shape is None or "detail" not in [c for c, _ in shape[0]]:
                return None
        rows = self._query(plan_last_record(names.state, table_id, check))
        return str(rows[0]["detail"]) if rows and rows[0]["detail"] is not None else None

    def names(self, state_table: str) -> TableNames:
        """Where a state table and its companions live in this warehouse (qualified)."""
        return self._names(state_table)

    def query(self, plan: exp.Expr) -> list[dict[str, Any]]:
        """Run a read-only plan (``cdc reconcile``'s segment digests) and return its rows."""
        return self._query(plan)

    def record_progress(self, rows: Sequence[Progress], at: dt.datetime) -> None:
        """Upsert rows of ``cdc_progress`` (created on first use); values only move forward."""
        if not rows:
            return
        target = self._names(PROGRESS_TABLE).state
        statements: list[exp.Expr] = [plan_record_progress(target, rows, at)]
        if not self._progress_ready:
            statements[:0] = plan_create_progress(target)
        self._run(statements)
        self._progress_ready = True

    def ensure_consistency(self, source: str, tables: Sequence[TableDef]) -> bool:
        """(Re-)create the source's consistent as-of view and functions
        (``state_models.consistency``) over its tables that have a state table; whether any do."""
        from state_models.consistency import (
            SourceTable,
            plan_consistency,
            transactions_view_name,
        )

        present = []
        for t in tables:
            state = self.state_table(t)
            if state is not None:
                present.append(SourceTable(t.table_id, state, self._names(state.name)))
        if not present:
            return False
        progress = self._names(PROGRESS_TABLE).state
        if not self._progress_ready:
            self._run(plan_create_progress(progress))
            self._progress_ready = True
        view = self._names(transactions_view_name(source)).state
        self._run(plan_consistency(source, present, view, progress, self.caps))
        return True

    def progress(self) -> list[dict[str, Any]]:
        """Every row of ``cdc_progress`` (none before anything recorded progress)."""
        names = self._names(PROGRESS_TABLE)
        if not self._progress_ready and self._describe(names) is None:
            return []
        return self._query(plan_select_progress(names.state))

    def truncates(self, table: TableDef) -> list[dict[str, Any]]:
        """The table's truncate log (``_seq``, ``_valid_from``, ``_event_id``, ``_tx_id``, …)."""
        state = self._require(table)
        if state is None or not self._table_has_truncates(state):
            return []
        names = self._names(state.name)
        return self._query(exp.select(exp.Star()).from_(names.truncates.copy(), copy=False))

    def as_of(
        self, table: TableDef, *, at: dt.datetime | None = None, seq: str | None = None
    ) -> list[dict[str, Any]]:
        state = self._require(table)
        if state is None:
            return []
        return self._query(plan_as_of(state, self._names(state.name), self.caps, at=at, seq=seq))

    def current_versions(
        self, table: TableDef, keys: Sequence[Mapping[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        """Each key's current version, tombstones included (of ``keys``, 2,000 a query)."""
        state = self._require(table)
        if state is None:
            return []
        names = self._names(state.name)
        if keys is None:
            return self._query(plan_current_versions(state, names, self.caps))
        out: list[dict[str, Any]] = []
        for i in range(0, len(keys), 2000):
            out.extend(
                self._query(plan_current_versions(state, names, self.caps, keys[i : i + 2000]))
            )
        return out

    def current(self, table: TableDef) -> list[dict[str, Any]]:
        state = self._require(table)
        if state is None:
            return []
        return self._query(plan_current(state, self._names(state.name), self.caps))

    def release(self) -> None:
        """Let other processes at the warehouse until the next statement; nothing to do for a
        server (DuckDB closes its file)."""

    def stats(self, table: TableDef) -> dict[str, Any] | None:
        """Versions, live rows, newest ``_seq`` and commit time; None when the table does not exist."""
        state = self._require(table)
        if state is None:
            return None
        rows = self._query(plan_stats(self._names(state.name)))
        row = dict(rows[0]) if rows else {}
        row["versions"] = int(row.get("versions") or 0)
        row["live_rows"] = int(row.get("live_rows") or 0)
        return row

    # ----------------------------------------------------------------- rebuilds

    def _run_atomically(self, statements: Sequence[exp.Expr]) -> None:
        """Run statements as one unit where the warehouse can (DuckDB: one transaction)."""
        self._run(statements)

    def _forget(self, *state_tables: str) -> None:
        for name in state_tables:
            self._tables.pop(name, None)
            self._has_truncates.pop(name, None)

    def drop_state(self, table: TableDef) -> None:
        """Drop a state table, its truncate log and its views (a shadow, before a rebuild)."""
        names = self._names(table.state_table)
        views = [v for v in (names.current_view,) if v is not None]
        self._run(plan_drop([names.state, names.truncates], views))
        self._forget(table.state_table)

    def replace_state(self, table: TableDef, source: TableDef) -> None:
        """Make ``source``'s state table (a rebuilt shadow) the state table of ``table``.

        The old table and its truncate log are dropped, the source's are renamed, the views are
        re-created. In one transaction where the warehouse has transactional DDL (DuckDB).
        """
        shadow = self.state_table(source)
        if shadow is None:
            raise ConfigError(f"no state table {source.state_table} to swap in")
        live = self._names(table.state_table)
        other = self._names(source.state_table)
        state = StateTable(
            shadow.table_id, table.state_table, shadow.key, shadow.columns, shadow.carry
        )
        statements: list[exp.Expr] = [
            *plan_drop(
                [live.state, live.truncates],
                [v for v in (live.current_view, other.current_view) if v is not None],
            ),
            plan_rename(other.state, table.state_table),
            plan_rename(other.truncates, truncate_table_name(table.state_table)),
            *plan_views(state, live, self.caps),
        ]
        self._forget(table.state_table, source.state_table)
        self._run_atomically(statements)
        self._forget(table.state_table, source.state_table)

    def compare_states(
        self, table: TableDef, other: TableDef, *, ranges: int = 16, limit: int = 10
    ) -> Comparison:
        """Row counts and content checksums per key range, and the first differing versions."""
        mine, theirs = self.state_table(table), self.state_table(other)
        comparison = Comparison(table.state_table, other.state_table, (), ())
        if mine is None or theirs is None:
            comparison.missing = table.state_table if mine is None else other.state_table
            return comparison
        if mine.key != theirs.key:
            raise SchemaChangeError(
                f"{table.state_table} is keyed by {list(mine.key)}, "
                f"{other.state_table} by {list(theirs.key)}: not comparable"
            )
        a_cols = [c.name for c in state_columns(mine, self.caps)]
        b_cols = [c.name for c in state_columns(theirs, self.caps)]
        columns = compared_columns(a_cols, b_cols)
        comparison.key = mine.key
        comparison.compared_columns = tuple(columns)
        comparison.only_in_table = tuple(
            c for c in a_cols if c not in b_cols and c not in NOT_COMPARED
        )
        comparison.only_in_other = tuple(
            c for c in b_cols if c not in a_cols and c not in NOT_COMPARED
        )
        a, b = self._names(mine.name).state, self._names(theirs.name).state
        n = len(mine.key)
        for row in self._query(plan_range_checksums(mine.key, columns, a, b, self.caps, ranges)):
            comparison.ranges.append(
                RangeChecksum(
                    number=int(row["__range"]),
                    first_key=tuple(row[f"__lo_{i}"] for i in range(n)),
                    last_key=tuple(row[f"__hi_{i}"] for i in range(n)),
                    rows=int(row["__rows_a"]),
                    other_rows=int(row["__rows_b"]),
                    checksum=row["__sum_a"],
                    other_checksum=row["__sum_b"],
                )
            )
        if all(r.equal for r in comparison.ranges):
            return comparison
        for row in self._query(plan_differences(mine.key, columns, a, b, self.caps, limit)):
            key = {k: row[f"__k_{i}"] for i, k in enumerate(mine.key)}
            seq = row["__seq"]

            def version(
                t: TableDef, present: bool, key: dict[str, Any] = key, seq: str = seq
            ) -> dict[str, Any] | None:
                if not present:
                    return None
                return next((v for v in self.history(t, key) if v[SEQ] == seq), None)

            comparison.differences.append(
                (
                    tuple(key.values()),
                    seq,
                    version(table, row["__in_a"]),
                    version(other, row["__in_b"]),
                )
            )
        return comparison


def _format_meta(table: StateTable) -> str:
    return json.dumps(
        {
            META_MARK: 1,
            "table": table.table_id,
            "key": list(table.key),
            "carry": list(table.carry),
            "columns": [[c.name, str(c.type)] for c in table.columns],
        },
        separators=(",", ":"),
    )


def _parse_meta(comment: str | None) -> dict[str, Any]:
    if not comment:
        return {}
    try:
        meta = json.loads(comment)
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) and META_MARK in meta else {}


__all__ = ["MergeCounts", "MergePlan", "SqlWarehouse", "table_names"]

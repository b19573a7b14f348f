"""The invariants every state table must hold (docs/architecture.md §5), as SQL plans that find
the versions breaking them, and the results ``cdc check`` reports and keeps.

Each plan returns at most ``limit`` offending keys, each row carrying ``found``: how many there are
in all (``COUNT(*) OVER ()``, computed before the limit). They run unchanged on DuckDB and
BigQuery (sqlglot renders each dialect) and read only the key, ``_seq`` and validity columns.

- ``one_current``: at most one current version per key.
- ``one_version_per_seq``: one version per (key, ``_seq``).
- ``validity_chained``: in ``_seq`` order, each version's ``_valid_to`` is the next version's
  ``_valid_from`` (no gap, no overlap), never before its own ``_valid_from`` (an empty window is
  allowed, an inverted one is not); the last version is current with an open window, and only the
  last is current.
- ``key_not_null``: no key column is null.

Beside them, from the registry (``sla:`` and ``checks:``, a table's own else its source's), pure
functions over figures the command gathers:

- ``freshness_sla``: how long ago the table last held everything its source had written
  (``cdc_progress.caught_up_at``; where nothing attests it, the newest applied commit), against
  ``sla.freshness.warn`` / ``error``;
- ``volume``: changes in the last complete hour against the median of the ``baseline_hours``
  before it, from the changelog's per-hour counts (hours without a file count as 0; hours before
  the table's first file do not count);
- ``schema_drift``: columns added or widened since the last ``cdc check`` (which recorded the
  table's columns in ``cdc_check_results.detail``).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlglot import exp

from state_models.plans import TableNames, plan_create_service_table, qualified
from state_models.scd2 import IS_CURRENT, SEQ, VALID_FROM, VALID_TO, StateTable

Level = Literal["error", "warn"]
Status = Literal["pass", "fail", "skip"]  # skip: could not be measured here
#: The warehouse table ``cdc check`` appends its results to (a dashboard charts them).
RESULTS_TABLE = "cdc_check_results"
#: the last `cdc check` results, in the state folder (what `/metrics` reports)
LAST_CHECK_FILE = "last_check.json"
INVARIANTS = ("one_current", "one_version_per_seq", "validity_chained", "key_not_null")
FOUND = "found"
HOUR_US = 3_600_000_000
#: how long after an hour ends its changes may still be on their way into the changelog
#: (`cdc run` archives every minute, the Beam job per window)
SETTLE_US = 5 * 60 * 1_000_000


@dataclass
class CheckResult:
    table: str  # table id
    check: str
    level: Level
    status: Status
    observed: int  # offending keys (versions for key_not_null), or the figure the check reads
    keys: list[dict[str, Any]] = field(default_factory=list)  # the first offending keys
    detail: str = ""
    #: kept in cdc_check_results.detail instead of ``detail`` (schema_drift: the columns seen)
    record: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "check": self.check,
            "level": self.level,
            "status": self.status,
            "observed": self.observed,
            "keys": self.keys,
            **({"detail": self.detail} if self.detail else {}),
        }


# --------------------------------------------------------------------------- registry checks


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def freshness_sla(
    table: str,
    warn_s: float | None,
    error_s: float | None,
    caught_up_at: float | None,
    applied_commit_at: float | None,
    now: float,
) -> CheckResult:
    """The table against its ``sla.freshness``: error above ``error_s``, warn above ``warn_s``."""
    attested = caught_up_at is not None
    since = caught_up_at if attested else applied_commit_at
    if since is None:
        return CheckResult(
            table, "freshness_sla", "error" if error_s is not None else "warn", "fail", 0,
            detail="nothing applied yet (no cdc_progress row)",
        )  # fmt: skip
    age = max(0.0, now - since)
    what = "caught up with its source" if attested else "newest applied commit"
    level: Level = "warn"
    status: Status = "pass"
    if error_s is not None and age > error_s:
        level, status = "error", "fail"
    elif warn_s is not None and age > warn_s:
        status = "fail"
    elif error_s is not None:
        level = "error"
    bounds = ", ".join(
        f"{n} {_ago(v)}" for n, v in (("warn", warn_s), ("error", error_s)) if v is not None
    )
    return CheckResult(
        table, "freshness_sla", level, status, int(age), detail=f"{what} {_ago(age)} ago ({bounds})"
    )


def last_complete_hour(now_us: int) -> int:
    """Start (µs) of the newest hour that ended at least ``SETTLE_US`` ago."""
    return ((now_us - SETTLE_US) // HOUR_US - 1) * HOUR_US


def volume(
    table: str,
    level: Level,
    min_ratio: float,
    max_ratio: float,
    baseline_hours: int,
    hourly: dict[int, int],
    first_hour: int | None,
    now_us: int,
) -> CheckResult:
    """Changes of the last complete hour against the median of the ``baseline_hours`` before it.

    ``hourly``: changes per hour start (µs); ``first_hour``: the table's first hour in the
    changelog (hours before it are not part of any baseline)."""
    import statistics

    hour = last_complete_hour(now_us)
    observed = hourly.get(hour, 0)
    start = dt.datetime.fromtimestamp(hour / 1e6, dt.UTC).strftime("%Y-%m-%d %H:00")
    baseline = [
        hourly.get(h, 0)
        for h in range(hour - baseline_hours * HOUR_US, hour, HOUR_US)
        if first_hour is not None and h >= first_hour
    ]
    if len(baseline) < min(3, baseline_hours):
        return CheckResult(
            table, "volume", level, "pass", observed,
            detail=f"{observed} changes in the hour from {start} UTC; not enough history for a "
            f"baseline ({len(baseline)} hour(s))",
        )  # fmt: skip
    median = statistics.median(baseline)
    ratio = observed / median if median else (0.0 if observed == 0 else float("inf"))
    ok = (median == 0 and observed == 0) or min_ratio <= ratio <= max_ratio
    return CheckResult(
        table, "volume", level, "pass" if ok else "fail", observed,
        detail=f"{observed} changes in the hour from {start} UTC; median {median:g}/h over the "
        f"{len(baseline)} h before: ratio {ratio:.2f} (expected {min_ratio:g} to {max_ratio:g})",
    )  # fmt: skip


def schema_drift(
    table: str, level: Level, previous: dict[str, str] | None, current: dict[str, str]
) -> CheckResult:
    """Columns added or widened since the columns ``previous`` (None: the first check)."""
    record = json.dumps({"columns": current}, sort_keys=True)
    if previous is None:
        return CheckResult(
            table, "schema_drift", level, "pass", 0, detail="first check: columns recorded",
            record=record,
        )  # fmt: skip
    changes = [
        {"column": name, "change": f"added {kind}"}
        for name, kind in current.items()
        if name not in previous
    ] + [
        {"column": name, "change": f"{previous[name]} -> {kind}"}
        for name, kind in current.items()
        if name in previous and previous[name] != kind
    ]
    return CheckResult(
        table, "schema_drift", level, "fail" if changes else "pass", len(changes), keys=changes,
        record=record,
    )  # fmt: skip


def _ident(name: str) -> exp.Identifier:
    return exp.Identifier(this=name, quoted=True)


def _col(name: str) -> exp.Column:
    return exp.column(_ident(name))


def _found(query: exp.Select, keys: Sequence[str], limit: int) -> exp.Select:
    """``query``'s key columns with how many rows it has in all, at most ``limit`` of them."""
    return (
        exp.select(
            *[_col(k) for k in keys],
            exp.alias_(exp.Window(this=exp.Count(this=exp.Star())), FOUND, quoted=True),
        )
        .from_(query.subquery("offending"))
        .order_by(*[_col(k) for k in keys])
        .limit(limit)
    )


def plan_invariant(check: str, state: StateTable, names: TableNames, limit: int) -> exp.Select:
    """The offending keys of one invariant (see the module doc)."""
    keys = list(state.key)
    table = names.state.copy()
    if check == "one_current":
        query = (
            exp.select(*[_col(k) for k in keys])
            .from_(table)
            .where(_col(IS_CURRENT))
            .group_by(*[_col(k) for k in keys])
            .having(exp.Count(this=exp.Star()) > 1)
        )
    elif check == "one_version_per_seq":
        query = (
            exp.select(*[_col(k) for k in keys], _col(SEQ))
            .from_(table)
            .group_by(*[_col(k) for k in keys], _col(SEQ))
            .having(exp.Count(this=exp.Star()) > 1)
        )
    elif check == "validity_chained":
        window = exp.Window(
            partition_by=[_col(k) for k in keys], order=exp.Order(expressions=[_col(SEQ)])
        )

        def lead(name: str) -> exp.Window:
            over = window.copy()
            over.set("this", exp.Anonymous(this="LEAD", expressions=[_col(name)]))
            return over

        chain = exp.select(
            *[_col(k) for k in keys],
            _col(VALID_FROM),
            _col(VALID_TO),
            _col(IS_CURRENT),
            exp.alias_(lead(SEQ), "next_seq", quoted=True),
            exp.alias_(lead(VALID_FROM), "next_from", quoted=True),
        ).from_(table)
        last = _col("next_seq").is_(exp.Null())
        broken = exp.or_(
            exp.and_(
                last, exp.or_(_col(VALID_TO).is_(exp.not_(exp.Null())), exp.not_(_col(IS_CURRENT)))
            ),
            exp.and_(
                exp.not_(last),
                exp.or_(
                    _col(IS_CURRENT),
                    _col(VALID_TO).is_(exp.Null()),
                    exp.NEQ(this=_col(VALID_TO), expression=_col("next_from")),
                ),
            ),
            exp.LT(this=_col(VALID_TO), expression=_col(VALID_FROM)),
        )
        query = (
            exp.select(*[_col(k) for k in keys])
            .from_(chain.subquery("chain"))
            .where(broken)
            .distinct()
        )
    elif check == "key_not_null":
        query = (
            exp.select(*[_col(k) for k in keys])
            .from_(table)
            .where(exp.or_(*[_col(k).is_(exp.Null()) for k in keys]))
        )
    else:
        raise ValueError(f"unknown invariant {check!r} (expected one of {', '.join(INVARIANTS)})")
    return _found(query, keys, limit)


def results_table(dataset: str | None = None, project: str | None = None) -> exp.Table:
    return qualified(RESULTS_TABLE, dataset, project)


#: ``cdc_check_results``' columns, in the order a result's values are inserted
RESULT_COLUMNS = (
    ("table_id", "TEXT"),
    ("check_name", "TEXT"),
    ("level", "TEXT"),
    ("status", "TEXT"),
    ("observed", "BIGINT"),
    ("keys", "TEXT"),
    ("checked_at", "TIMESTAMPTZ"),
    ("detail", "TEXT"),
)


def plan_create_results(table: exp.Table) -> exp.Create:
    return plan_create_service_table(table, RESULT_COLUMNS)


def plan_record_results(
    table: exp.Table, results: Sequence[CheckResult], at: dt.datetime
) -> exp.Insert:
    when = exp.cast(exp.Literal.string(at.astimezone(dt.UTC).isoformat()), "TIMESTAMPTZ")
    rows = [
        exp.tuple_(
            exp.Literal.string(r.table),
            exp.Literal.string(r.check),
            exp.Literal.string(r.level),
            exp.Literal.string(r.status),
            exp.Literal.number(r.observed),
            exp.Literal.string(json.dumps(r.keys, default=str, sort_keys=True)),
            when.copy(),
            exp.Literal.string(r.record if r.record is not None else r.detail),
        )
        for r in results
    ]
    return exp.insert(
        exp.values(rows), table.copy(), columns=[_ident(c) for c, _ in RESULT_COLUMNS]
    )


def plan_add_detail(table: exp.Table) -> exp.Alter:
    """``cdc_check_results`` made before it had ``detail``: add it (safe to repeat)."""
    return exp.Alter(
        this=table.copy(),
        kind="TABLE",
        actions=[
            exp.ColumnDef(this=_ident("detail"), kind=exp.DataType.build("TEXT"), exists=True)
        ],
    )


def plan_last_record(table: exp.Table, table_id: str, check: str) -> exp.Select:
    """The ``detail`` the last result of one check of one table recorded."""
    return (
        exp.select(_col("detail"))
        .from_(table.copy())
        .where(
            exp.and_(
                exp.EQ(this=_col("table_id"), expression=exp.Literal.string(table_id)),
                exp.EQ(this=_col("check_name"), expression=exp.Literal.string(check)),
            )
        )
        .order_by(exp.Ordered(this=_col("checked_at"), desc=True))
        .limit(1)
    )

"""``cdc reconcile``: does the state table still match its source? (and ``--repair``)

Per table: take a consistent snapshot of the source at a known log position P
(``connectors.reconcile.PostgresSnapshot``), wait until the state table has applied through P
(``cdc_progress``), compare the source rows in the snapshot with the state's live rows as of P by
segment checksums computed inside each database (``state_models.reconcile.compare``), then
re-check the differing keys at a newer snapshot: a key that differed only because its change was
in flight around P (one transaction at most) compares equal there. ``--repair`` reads the keys
still differing from the source at a new snapshot and sends them through the normal path (the
changelog, then the merge) as snapshot reads (deletes for keys the source does not have), so the
repair is history like any change; then it compares again.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from cdc.cli import EXIT_FAILED, EXIT_OK, AddCommand
from cdc.commands.common import LOCK_WAIT_S, load
from state_models.errors import ConfigError

RECHECKS = 3


def add_commands(add: AddCommand) -> None:
    p = add(
        "reconcile",
        "compare state tables with their source at one consistent position (segment checksums "
        "computed in each database, bisected down to the keys); --repair fixes what differs",
        cmd_reconcile,
    )
    p.add_argument(
        "tables",
        nargs="*",
        metavar="TABLE",
        help="tables to compare (default: every table of the sources cdc run captures)",
    )
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument(
        "--wait",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long to wait for the state to reach the snapshot's position (300); "
        "`cdc run` must be running",
    )
    p.add_argument(
        "--repair",
        action="store_true",
        help="feed what differs through the changelog and the merge as snapshot reads, then "
        "compare again",
    )


@dataclass
class Report:
    table: str
    status: str = "equal"  # equal | different | incomplete
    position: str = ""
    missing: list[dict[str, Any]] = field(default_factory=list)
    extra: list[dict[str, Any]] = field(default_factory=list)
    different: list[dict[str, Any]] = field(default_factory=list)
    repaired: int = 0
    rows_transferred: int = 0
    rows: int = 0
    seconds: float = 0.0
    wait_s: float = 0.0  # of ``seconds``: waiting for the state to reach the snapshots
    source_s: float = 0.0  # of ``seconds``: in the source's queries (they overlap the state's)
    state_s: float = 0.0  # of ``seconds``: in the warehouse's queries
    not_compared: dict[str, str] = field(default_factory=dict)
    pii_compared: list[str] = field(default_factory=list)  # by their protected form
    detail: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "status": self.status,
            "position": self.position,
            "missing": self.missing,
            "extra": self.extra,
            "different": self.different,
            "repaired": self.repaired,
            "rows_transferred": self.rows_transferred,
            "rows": self.rows,
            "seconds": round(self.seconds, 3),
            "wait_s": round(self.wait_s, 3),
            "source_s": round(self.source_s, 3),
            "state_s": round(self.state_s, 3),
            "not_compared": self.not_compared,
            "pii_compared": self.pii_compared,
            **({"detail": self.detail} if self.detail else {}),
        }


def cmd_reconcile(args: argparse.Namespace) -> int:
    from connectors.warehouse import open_warehouse

    cfg = load(args, writes=args.repair)
    if args.wait < 0:
        raise ConfigError(f"--wait {args.wait}: expected 0 or more seconds")
    registered = (
        [cfg.registry.table(t) for t in args.tables]
        if args.tables
        else [t for t in cfg.registry.tables() if t.source.engine != "datastream"]
    )
    for t in registered:
        if t.source.engine == "datastream":
            raise ConfigError(
                f"{t.id}: cdc reconcile compares sources captured by cdc run for now (source "
                f"{t.source_name!r} is engine datastream)"
            )
    reports = []
    warehouse = open_warehouse(cfg.warehouse_url, lock_wait_s=LOCK_WAIT_S)
    try:
        for t in registered:
            reports.append(_reconcile(cfg, t, warehouse, args))
    finally:
        warehouse.close()
    if args.format == "json":
        print(json.dumps([r.as_json() for r in reports], default=str))
    else:
        for r in reports:
            _print(r)
    return EXIT_OK if all(r.status == "equal" for r in reports) else EXIT_FAILED


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _reconcile(cfg: Any, t: Any, warehouse: Any, args: argparse.Namespace) -> Report:
    from connectors.reconcile import (
        QuerySide,
        open_snapshot,
        plan_columns,
        source_shape,
        state_shape,
    )
    from state_models.reconcile import compare, recheck
    from state_models.scd2 import TableDef

    started = time.monotonic()
    report = Report(t.id)
    schema_table = _schema_table(cfg, t)
    table = TableDef.from_registered(t)
    state = warehouse.state_table(table)
    if state is None:
        report.status, report.detail = "incomplete", "no state table yet"
        return report
    names = warehouse.names(state.name)

    def warehouse_query(plan: Any) -> list[dict[str, Any]]:
        try:
            return warehouse.query(plan)
        finally:
            warehouse.release()  # let `cdc run` merge between our queries

    def sides(snapshot: Any) -> tuple[Any, Any, Any]:
        source_types = snapshot.columns(*schema_table)
        compared = plan_columns(
            table, state, source_types, [warehouse.caps.dialect], snapshot.dialect
        )
        src = QuerySide(
            source_shape(table, state, schema_table, source_types, compared, snapshot.dialect),
            snapshot.query,
            protect=_protector(table) if compared.pii else None,
        )
        seq = snapshot.as_of
        dst = QuerySide(state_shape(state, names, warehouse.caps, seq, compared), warehouse_query)
        return src, dst, compared

    proven_at = [0.0]  # when the snapshot of the last comparison was taken

    @contextlib.contextmanager
    def at_position(what: str) -> Iterator[Any]:
        """A source snapshot the state has caught up with, or None (the report says why)."""
        with open_snapshot(t.source_name, t.source) as snapshot:
            report.position = snapshot.position
            proven_at[0] = snapshot.taken_at
            waited = time.monotonic()
            applied = _wait_applied(warehouse, t, snapshot, args.wait)
            report.wait_s += time.monotonic() - waited
            if not applied:
                report.status = "incomplete"
                report.detail = (
                    f"the state table did not reach the source position {report.position} "
                    f"within {args.wait:g} s ({what}): is `cdc run` running?"
                )
            yield snapshot if applied else None

    transferred = [0]

    def measure(what: str) -> Any:
        """Compare at one snapshot, then re-check what differs at newer ones (in flight)."""
        with at_position(what) as snapshot:
            if snapshot is None:
                return None
            src, dst, compared = sides(snapshot)
            report.not_compared = compared.skipped
            report.pii_compared = compared.pii
            _say(f"{t.id}: {what} at {report.position} ({len(compared.columns)} columns)")
            diff = compare(
                src,
                dst,
                on_level=lambda level, n, bad: _say(
                    f"{t.id}: level {level}: {n} segments, {bad} differ"
                ),
            )
            report.rows = src.rows_seen
            report.source_s += src.seconds
            report.state_s += dst.seconds
            _say(
                f"{t.id}: source {src.queries} queries {src.seconds:.2f} s, state "
                f"{dst.queries} queries {dst.seconds:.2f} s"
            )
        transferred[0] += diff.rows_transferred + src.pii_rows
        seen = (diff.missing, diff.extra, diff.different, diff.hashes)
        for _ in range(RECHECKS):
            if diff.equal:
                break
            with at_position("re-checking") as snapshot:
                if snapshot is None:
                    return None
                src, dst, _ = sides(snapshot)
                diff = recheck(src, dst, diff.keys())
                report.source_s += src.seconds
                report.state_s += dst.seconds
            transferred[0] += diff.rows_transferred
            _say(f"{t.id}: re-checked at {report.position}: {len(diff.keys())} still differ")
            # the same keys, differing the same way, twice running: not changes in flight
            now = (diff.missing, diff.extra, diff.different, diff.hashes)
            if now == seen:
                break
            seen = now
        return diff

    diff = measure("comparing")
    if diff is not None and not diff.equal and args.repair:
        report.repaired = _repair(cfg, t, table, warehouse, diff, report)
        diff = measure("checking the repair")
    if diff is None:
        report.seconds = time.monotonic() - started
        return report
    report.rows_transferred = transferred[0]
    key_names = list(state.key)
    report.missing = [dict(zip(key_names, k, strict=True)) for k in diff.missing]
    report.extra = [dict(zip(key_names, k, strict=True)) for k in diff.extra]
    report.different = [
        {"key": dict(zip(key_names, k, strict=True)), "columns": cols}
        for k, cols in diff.different.items()
    ]
    if report.status != "incomplete":
        report.status = "equal" if diff.equal else "different"
    if report.status == "equal":  # proven whole at that snapshot: its loss windows close
        from connectors.loss_windows import LossWindows

        for w in LossWindows(cfg.state_dir).close(t.id, proven_at[0]):
            _say(f"{t.id}: loss window {w.id} closed (the table equals its source)")
    report.seconds = time.monotonic() - started
    return report


def _schema_table(cfg: Any, t: Any) -> tuple[str, str]:
    from state_models.registry import table_infos

    [info] = [i for i in table_infos(cfg.registry, t.source_name) if i.id == t.id]
    return tuple(info.schema_table)  # type: ignore[return-value]


def _protector(table: Any) -> Any:
    """(state column, clear text) -> the protected text, with the table's pii: policy and key."""
    key = table.pii.key  # from this process's environment, never sent to a database

    def protect(column: str, text: str | None) -> str | None:
        value = table.pii.protect_value(table.source_column(column), text, key)
        return None if value is None else str(value)

    return protect


def _wait_applied(warehouse: Any, t: Any, snapshot: Any, wait_s: float) -> bool:
    """Whether the state table holds every change before the snapshot, within ``wait_s``: a
    table of the same source (merged in log order by `cdc run`) applied a change ordered after
    the snapshot, or the table was caught up with its source after the snapshot was taken."""
    from cdc.commands.runtime import _epoch

    bound = snapshot.as_of
    deadline = time.monotonic() + wait_s
    while True:
        try:
            rows = warehouse.progress()
        finally:
            warehouse.release()
        for r in rows:
            if r["source"] != t.source_name or r["writer"] != "cdc run":
                continue
            if r["applied_seq"] and r["applied_seq"] > bound:
                return True
            caught = _epoch(r["caught_up_at"])
            if r["table_id"] == t.id and caught is not None and caught > snapshot.taken_at:
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def _repair(cfg: Any, t: Any, table: Any, warehouse: Any, diff: Any, report: Report) -> int:
    """Read the differing keys at a new snapshot; write them to the changelog; merge them."""
    from connectors.changelog.writer import ChangelogWriter
    from connectors.deadletter import DeadLetterStore, Sealing, default_folder
    from connectors.reconcile import open_snapshot, read_source_rows
    from merge_jobs.apply import apply_events
    from state_models.events import ChangeEvent, Op
    from state_models.registry import table_infos

    state = warehouse.state_table(table)
    infos = table_infos(cfg.registry, t.source_name)
    [info] = [i for i in infos if i.id == t.id]
    wanted = [*diff.missing, *diff.different]
    key_columns = tuple(table.source_column(k) for k in state.key)
    with open_snapshot(t.source_name, t.source) as snapshot:
        rows = read_source_rows(snapshot, t.source_name, infos, info, key_columns, wanted)
        seq = snapshot.repair_seq
        at_us = int(snapshot.taken_at * 1_000_000)
    source_keys = [table.source_column(k) for k in state.key]
    events = [
        ChangeEvent(t.id, Op.READ, {k: row[k] for k in source_keys}, None, row, seq, at_us)
        for row in rows
    ]
    found = {tuple(e.key[k] for k in source_keys) for e in events}
    gone = [k for k in diff.missing + list(diff.different) if k not in found]
    for key in [*diff.extra, *gone]:  # not in the source (any more): a delete
        image = dict(zip(source_keys, key, strict=True))
        events.append(ChangeEvent(t.id, Op.DELETE, image, image, None, seq, at_us))
    with ChangelogWriter(cfg.changelog_root) as writer:
        writer.append(events)
    letters = DeadLetterStore(default_folder(cfg.state_dir), sealing=Sealing.of(cfg.registry))
    try:
        result = apply_events(
            warehouse,
            {t.id: table},
            events,
            ingested_at=dt.datetime.now(dt.UTC),
            dead_letters=letters,
            batch_size=10_000,
            context_of=None,
        )
    finally:
        warehouse.release()
    _say(f"{t.id}: repaired {len(events)} keys at {snapshot.position} (changelog + merge)")
    if result.dead_letters:
        report.detail = (
            f"{len(result.dead_letters)} repair event(s) dead-lettered: cdc dead-letters ls"
        )
    return len(events)


def _print(r: Report) -> None:
    print(
        f"{r.table}: {r.status.upper()} at {r.position or '-'} ({r.seconds:.1f} s, "
        f"{r.rows_transferred:,} rows left the databases)"
    )
    for k in r.missing:
        print(f"  missing  {_key(k)}")
    for k in r.extra:
        print(f"  extra    {_key(k)}")
    for d in r.different:
        print(f"  differs  {_key(d['key'])}: {', '.join(d['columns'])}")
    if r.repaired:
        print(f"  repaired {r.repaired} key(s)")
    for c, why in r.not_compared.items():
        print(f"  not compared: {c} ({why})")
    if r.detail:
        print(f"  {r.detail}")


def _key(key: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in key.items())

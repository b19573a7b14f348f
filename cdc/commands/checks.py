"""``cdc check``: is each state table right? Its invariants, and the dead letters waiting."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

from cdc.cli import EXIT_FAILED, EXIT_OK, AddCommand
from cdc.commands.common import LOCK_WAIT_S, load, subcommands
from cdc.commands.job import STREAMING_JOB_NAME
from cdc.console import print_table
from state_models.checks import LAST_CHECK_FILE, CheckResult
from state_models.errors import ConfigError
from state_models.scd2 import TableDef


def add_commands(add: AddCommand) -> None:
    p = add(
        "check",
        "check every state table's invariants (one current version per key, chained validity, "
        "one version per seq, no null key) and the dead letters waiting; exit 1 when an "
        "error-level check fails",
        cmd_check,
    )
    p.add_argument("tables", nargs="*", metavar="TABLE", help="only these tables (default: all)")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument(
        "--limit", type=int, default=10, help="offending keys shown per check (default 10)"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="run nothing: print the bytes each check's query would read (BigQuery's dry run)",
    )

    p = add("monitoring", "alerting for cdc run's metrics", _monitoring_usage)
    sub = subcommands(p, "monitoring_command")
    s = sub(
        "rules",
        "Prometheus alerting rules (YAML) for cdc run's metrics, from the registry's sla:; with "
        "--out, Cloud Monitoring alert policies for the streaming job on Dataflow too",
        cmd_rules,
    )
    s.add_argument(
        "--out",
        metavar="DIR",
        help="write DIR/prometheus-rules.yml and DIR/cloud-monitoring/*.json instead of printing "
        "the Prometheus rules",
    )
    s.add_argument(
        "--dataflow-job",
        metavar="NAME",
        default=STREAMING_JOB_NAME,
        help="the Cloud Monitoring policies watch the Dataflow job of this name (the --job-name "
        f"given to `cdc job streaming`, default {STREAMING_JOB_NAME}; '*': every Dataflow job "
        "of the project)",
    )


def cmd_rules(args: argparse.Namespace) -> int:
    from cdc.monitoring import (
        alert_policies,
        alerting_rules,
        dataflow_job_problem,
        render,
        render_policy,
    )
    from state_models.errors import ConfigError

    if args.dataflow_job == "*":
        args.dataflow_job = None
    if args.dataflow_job is not None and (problem := dataflow_job_problem(args.dataflow_job)):
        raise ConfigError(f"--dataflow-job: {problem}")
    cfg = load(args)
    text = render(alerting_rules(cfg.registry))
    if not args.out:
        print(text, end="")
        return EXIT_OK
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prometheus-rules.yml").write_text(text)
    print(f"wrote {folder / 'prometheus-rules.yml'} (check it: promtool check rules FILE)")
    policies = folder / "cloud-monitoring"
    policies.mkdir(exist_ok=True)
    for name, policy in alert_policies(cfg.registry, dataflow_job=args.dataflow_job).items():
        (policies / name).write_text(render_policy(policy))
        print(f"wrote {policies / name}")
    print(
        "create them with: gcloud alpha monitoring policies create --policy-from-file=FILE"
        + (
            f" (they watch the Dataflow job {args.dataflow_job})"
            if args.dataflow_job
            else " (they watch every Dataflow job of the project)"
        )
    )
    return EXIT_OK


def _monitoring_usage(args: argparse.Namespace) -> int:
    print("usage: cdc monitoring rules [--out DIR] [--dataflow-job NAME]", file=sys.stderr)
    return 2


def cmd_check(args: argparse.Namespace) -> int:
    from connectors.deadletter import DeadLetterStore, default_folder
    from connectors.loss_windows import LossWindows
    from connectors.warehouse import open_warehouse

    cfg = load(args)
    registered = (
        [cfg.registry.table(t) for t in args.tables] if args.tables else cfg.registry.tables()
    )
    if args.limit < 0:
        raise ConfigError(f"--limit {args.limit}: expected 0 or more")
    warehouse = open_warehouse(cfg.warehouse_url, lock_wait_s=LOCK_WAIT_S)
    try:
        if args.dry_run:
            return _dry_run(warehouse, registered, args.limit)
        letters = DeadLetterStore(default_folder(cfg.state_dir)).list()
        waiting: dict[str | None, int] = {}
        for letter in letters:
            waiting[letter.table] = waiting.get(letter.table, 0) + 1
        progress = {r["table_id"]: r for r in warehouse.progress()}
        windows = LossWindows(cfg.state_dir)
        now = time.time()
        results: list[CheckResult] = []
        for t in registered:
            table = TableDef.from_registered(t)
            found = warehouse.check(table, limit=args.limit)
            if not found:
                found = [
                    CheckResult(t.id, "exists", "warn", "fail", 0, detail="no state table yet")
                ]
            results.extend(found)
            count = waiting.get(t.id, 0)
            results.append(
                CheckResult(
                    t.id,
                    "dead_letters",
                    "warn",
                    "fail" if count else "pass",
                    count,
                    detail="see cdc dead-letters ls" if count else "",
                )
            )
            results.extend(_registry_checks(cfg, t, table, warehouse, progress.get(t.id), now))
            results.append(_loss_windows(windows, t.id))
        results.extend(_freshness_checks(cfg))
        at = dt.datetime.now(dt.UTC)
        warehouse.record_checks(results, at)
    finally:
        warehouse.close()
    _remember(cfg.state_dir, results, at)
    failed = [r for r in results if r.status == "fail" and r.level == "error"]
    if args.format == "json":
        print(
            json.dumps({"ok": not failed, "results": [r.as_json() for r in results]}, default=str)
        )
    else:
        print_table(
            [_row(r) for r in results], ["table", "check", "level", "status", "observed", "keys"]
        )
        warned = sum(1 for r in results if r.status == "fail" and r.level == "warn")
        print(
            f"{len(results)} checks: {len(failed)} failed, {warned} warnings",
            file=sys.stderr,
        )
    return EXIT_FAILED if failed else EXIT_OK


#: Where `cdc check` leaves its last results for `cdc run`'s /metrics (cdc_check_failed).


def _remember(state_dir: Path, results: list[CheckResult], at: dt.datetime) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "at": at.timestamp(),
        "results": [
            {"table": r.table, "check": r.check, "level": r.level, "status": r.status}
            for r in results
        ],
    }
    tmp = state_dir / (LAST_CHECK_FILE + ".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(state_dir / LAST_CHECK_FILE)


def _loss_windows(windows: Any, table_id: str) -> CheckResult:
    """Stretches of the source's log that may be missing from the table, until reconciled."""
    found = windows.open_for(table_id)
    return CheckResult(
        table_id,
        "loss_window",
        "error",
        "fail" if found else "pass",
        len(found),
        detail="; ".join(
            f"{w.id}: {w.describe()}; fix: cdc reconcile {table_id} --repair" for w in found
        ),
    )


def _registry_checks(
    cfg: Any, t: Any, table: TableDef, warehouse: Any, progress: dict[str, Any] | None, now: float
) -> list[CheckResult]:
    """The table's SLA and ``checks:`` from the registry (its own, else its source's)."""
    from cdc.commands.runtime import _epoch
    from state_models import checks
    from state_models.registry import duration_seconds

    out = []
    sla = t.sla
    if sla is not None and sla.freshness is not None:
        bound = sla.freshness
        out.append(
            checks.freshness_sla(
                t.id,
                duration_seconds(bound.warn) if bound.warn else None,
                duration_seconds(bound.error) if bound.error else None,
                _epoch((progress or {}).get("caught_up_at")),
                _epoch((progress or {}).get("applied_commit_at")),
                now,
            )
        )
    wanted = t.checks
    if wanted.volume is not None:
        out.append(_volume(cfg, t, wanted.volume, int(now * 1e6)))
    if wanted.schema_drift is not None:
        state = warehouse.state_table(table)
        if state is not None:
            current = {c.name: str(c.type) for c in state.columns}
            last = warehouse.last_record(t.id, "schema_drift")
            previous = None
            if last:
                try:
                    previous = dict(json.loads(last)["columns"])
                except (ValueError, KeyError, TypeError):
                    previous = None  # not ours to read: start again from these columns
            out.append(checks.schema_drift(t.id, wanted.schema_drift.level, previous, current))
    return out


def _volume(cfg: Any, t: Any, spec: Any, now_us: int) -> CheckResult:
    """The last complete hour's changes against the hours before it, from the changelog's
    per-hour counts (file footers only)."""
    from connectors.changelog.reader import ChangelogReader, summarize
    from state_models import checks
    from state_models.changelog import ChangeRange

    if t.source.engine == "datastream":
        return CheckResult(
            t.id,
            "volume",
            spec.level,
            "skip",
            0,
            detail="not measured: the changelog of an engine: datastream source is Datastream's "
            "own files, whose changes are not counted per hour",
        )
    hour = checks.last_complete_hour(now_us)
    reader = ChangelogReader(cfg.changelog_root)
    rng = ChangeRange(
        since_us=hour - spec.baseline_hours * checks.HOUR_US, until_us=hour + checks.HOUR_US
    )
    _files, partitions = summarize(reader, t.id, rng)
    hourly = {p.partition.start_us: p.rows for p in partitions if p.partition is not None}
    first = reader.first_partition(t.id)
    return checks.volume(
        t.id,
        spec.level,
        spec.min_ratio,
        spec.max_ratio,
        spec.baseline_hours,
        hourly,
        None if first is None else first.start_us,
        now_us,
    )


def _dry_run(warehouse: Any, registered: list[Any], limit: int) -> int:
    """What each invariant's query would read, per table, without running any."""
    rows = []
    total = 0
    for t in registered:
        for check, size in warehouse.check_bytes(TableDef.from_registered(t), limit=limit).items():
            total += size or 0
            rows.append(
                {
                    "table": t.id,
                    "check": check,
                    "bytes": "-" if size is None else f"{size:,}",
                }
            )
    print_table(rows, ["table", "check", "bytes"])
    print(
        f"{len(rows)} queries would read {total:,} bytes"
        if any(r["bytes"] != "-" for r in rows)
        else "the warehouse does not estimate bytes (DuckDB reads its local file)",
        file=sys.stderr,
    )
    return EXIT_OK


def _freshness_checks(cfg: Any) -> list[CheckResult]:
    """Per source, from what `cdc run` last reported: a stalled source, or a run that was killed
    (down), is an error; a source never run here (no status yet) is not checked."""
    import time

    from cdc.commands.runtime import _stall_after, freshness
    from cdc.runtime import read_status

    runtime = read_status(cfg.state_dir)
    if runtime is None:
        return []
    now = time.time()
    out = []
    for name, source in cfg.registry.sources.items():
        capture = runtime.get("captures", {}).get(name, {})
        fresh = freshness(runtime, capture, now, _stall_after(source))
        bad = fresh["state"] == "stalled" or runtime.get("down")
        out.append(
            CheckResult(
                f"source {name}",
                "freshness",
                "error",
                "fail" if bad else "pass",
                int(fresh["stalled_for_s"] or 0),
                detail=fresh["text"],
            )
        )
    return out


def _row(r: CheckResult) -> dict[str, Any]:
    keys = "; ".join(", ".join(f"{k}={v}" for k, v in key.items()) for key in r.keys)
    more = r.observed - len(r.keys) if r.check != "dead_letters" else 0
    if more > 0:
        keys += f" (+{more} more)"
    return {
        "table": r.table,
        "check": r.check,
        "level": r.level,
        "status": {"pass": "ok", "skip": "skip"}.get(
            r.status, "FAIL" if r.level == "error" else "WARN"
        ),
        "observed": r.observed,
        "keys": keys or r.detail,
    }

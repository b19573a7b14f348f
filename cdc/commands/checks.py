"""``cdc check``: is each state table right? Its invariants, and the dead letters waiting."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from cdc.cli import EXIT_FAILED, EXIT_OK, AddCommand
from cdc.commands.common import LOCK_WAIT_S, load, subcommands
from cdc.console import print_table
from state_models.checks import CheckResult
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

    p = add("monitoring", "alerting for cdc run's metrics", _monitoring_usage)
    sub = subcommands(p, "monitoring_command")
    s = sub(
        "rules",
        "Prometheus alerting rules (YAML) for cdc run's metrics, from the registry's sla:",
        cmd_rules,
    )
    s.add_argument("--out", metavar="DIR", help="write DIR/prometheus-rules.yml instead of stdout")


def cmd_rules(args: argparse.Namespace) -> int:
    from cdc.monitoring import alerting_rules, render

    cfg = load(args)
    text = render(alerting_rules(cfg.registry))
    if args.out:
        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "prometheus-rules.yml").write_text(text)
        print(f"wrote {folder / 'prometheus-rules.yml'} (check it: promtool check rules FILE)")
    else:
        print(text, end="")
    return EXIT_OK


def _monitoring_usage(args: argparse.Namespace) -> int:
    print("usage: cdc monitoring rules [--out DIR]", file=sys.stderr)
    return 2


def cmd_check(args: argparse.Namespace) -> int:
    from connectors.deadletter import DeadLetterStore, default_folder
    from connectors.warehouse import open_warehouse

    cfg = load(args)
    registered = (
        [cfg.registry.table(t) for t in args.tables] if args.tables else cfg.registry.tables()
    )
    letters = DeadLetterStore(default_folder(cfg.state_dir)).list()
    waiting: dict[str | None, int] = {}
    for letter in letters:
        waiting[letter.table] = waiting.get(letter.table, 0) + 1
    results: list[CheckResult] = []
    warehouse = open_warehouse(cfg.warehouse_url, lock_wait_s=LOCK_WAIT_S)
    try:
        for t in registered:
            table = TableDef.from_registered(t)
            found = warehouse.check(table, limit=max(0, args.limit))
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
        results.extend(_freshness_checks(cfg))
        warehouse.record_checks(results, dt.datetime.now(dt.UTC))
    finally:
        warehouse.close()
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
        "status": "ok" if r.status == "pass" else ("FAIL" if r.level == "error" else "WARN"),
        "observed": r.observed,
        "keys": keys or r.detail,
    }

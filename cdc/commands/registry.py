"""Registry commands: ``validate``, ``tables``, ``register``, ``preflight``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cdc.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, AddCommand
from cdc.commands.common import load
from cdc.console import print_table
from state_models.errors import ConfigError


def add_commands(add: AddCommand) -> None:
    add(
        "validate",
        "check the registry file; report every problem with its place in the file",
        cmd_validate,
    )

    p = add(
        "tables", "list the registered tables, their keys, engines and state tables", cmd_tables
    )
    p.add_argument("--format", choices=["table", "json"], default="table")

    p = add("register", "introspect a live table and append it to the registry file", cmd_register)
    p.add_argument("--source", required=True, help="source name in the registry")
    p.add_argument("table", help="schema.table (PostgreSQL) or database.table (MySQL)")
    p.add_argument(
        "--key", nargs="+", metavar="COLUMN", help="key columns for a table without a primary key"
    )
    p.add_argument(
        "--rename",
        nargs="+",
        metavar="COLUMN=NAME",
        type=_rename_arg,
        default=[],
        help="keep a column in the state table under another name (NAME beside name: warehouses "
        "compare names without case)",
    )

    p = add(
        "preflight",
        "check that every source is ready for CDC, with the fix for each failure",
        cmd_preflight,
    )
    p.add_argument("--source", help="only this source")
    p.add_argument("--format", choices=["table", "json"], default="table")


def _rename_arg(text: str) -> tuple[str, str]:
    old, sep, new = text.partition("=")
    if not sep or not new:
        raise argparse.ArgumentTypeError(f"expected COLUMN=NAME (e.g. NAME=name_2), got {text!r}")
    return old, new


def cmd_validate(args: argparse.Namespace) -> int:
    from cdc.config import load_config

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    for w in cfg.warnings:
        print(w.render(str(cfg.path)), file=sys.stderr)
    n_tables = len(cfg.registry.tables())
    print(f"{cfg.path}: valid ({len(cfg.registry.sources)} sources, {n_tables} tables)")
    return EXIT_OK


def cmd_tables(args: argparse.Namespace) -> int:
    cfg = load(args)
    rows = [
        {
            "table": t.id,
            "kind": t.source.kind,
            "engine": t.source.engine,
            "key": ",".join(t.primary_key) if t.primary_key else "(from database)",
            "state_table": t.state_table,
            "pii": ",".join(f"{c}:{p}" for c, p in (t.spec.pii or {}).items()),
        }
        for t in cfg.registry.tables()
    ]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    elif rows:
        print_table(rows, ["table", "kind", "engine", "key", "state_table", "pii"])
    else:
        print(f"no tables registered in {cfg.path}")
    return EXIT_OK


def cmd_register(args: argparse.Namespace) -> int:
    from cdc.register import register_table

    cfg = load(args)
    entry = register_table(
        Path(cfg.path), cfg.registry, args.source, args.table, args.key, dict(args.rename)
    )
    cols = ", ".join(f"{c} {t}" for c, t in entry["columns"].items())
    renamed = "".join(f"; {o} kept as {n}" for o, n in (entry.get("rename") or {}).items())
    print(
        f"registered {args.source}.{args.table} (key {list(entry['primary_key'])}; columns: "
        f"{cols}{renamed}) in {cfg.path}"
    )
    return EXIT_OK


def cmd_preflight(args: argparse.Namespace) -> int:
    from connectors.preflight import preflight

    cfg = load(args)
    names = [args.source] if args.source else list(cfg.registry.sources)
    for n in names:
        if n not in cfg.registry.sources:
            raise ConfigError(
                f"no source {n!r} in {cfg.path} (sources: {', '.join(cfg.registry.sources)})"
            )
    checks = [c for n in names for c in preflight(n, cfg.registry.sources[n], cfg.state_dir)]
    if args.format == "json":
        print(json.dumps([c.__dict__ for c in checks], indent=2))
    else:
        for c in checks:
            mark = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}[c.status]
            print(f"[{mark}] {c.source}: {c.name}: {c.detail}")
            if c.fix and c.status != "ok":
                print(f"       fix: {c.fix}")
    failed = sum(1 for c in checks if c.status == "fail")
    print(f"{len(checks)} checks, {failed} failed", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK

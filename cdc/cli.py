"""The ``cdc`` command line.

Exit codes: 0 success, 1 runtime failure (a server down, events dead-lettered), 2 bad usage or an
invalid registry. Errors print one clear line (and a hint); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from state_models.errors import CdcError, ConfigError, TerminalError, TransientError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, Handler] = {}


def command(name: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        _COMMANDS[name] = fn
        return fn

    return deco


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdc",
        description="Change data capture into an immutable changelog and SCD2 history tables.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", "-c", help="registry file (default: $CDC_CONFIG or ./cdc.yaml)")
        p.add_argument("--debug", action="store_true", help="show tracebacks")
        return p

    add("validate", "check the registry file; report every problem with its place in the file")

    p = add("tables", "list the registered tables, their keys, engines and state tables")
    p.add_argument("--format", choices=["table", "json"], default="table")

    p = add("register", "introspect a live table and append it to the registry file")
    p.add_argument("--source", required=True, help="source name in the registry")
    p.add_argument("table", help="schema.table (PostgreSQL) or database.table (MySQL)")
    p.add_argument(
        "--key", nargs="+", metavar="COLUMN", help="key columns for a table without a primary key"
    )

    p = add("preflight", "check that every source is ready for CDC, with the fix for each failure")
    p.add_argument("--source", help="only this source")
    p.add_argument("--format", choices=["table", "json"], default="table")

    add("demo", "run the whole product on throwaway local databases")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = _COMMANDS[args.command]
    try:
        return handler(args)
    except ConfigError as exc:
        _error(exc, args)
        return EXIT_USAGE
    except (TerminalError, TransientError, CdcError) as exc:
        _error(exc, args)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _error(exc: BaseException, args: argparse.Namespace) -> None:
    if getattr(args, "debug", False):
        traceback.print_exc()
    print(f"cdc {args.command}: {exc}", file=sys.stderr)


def _load(args: argparse.Namespace):  # -> LoadedConfig
    from cdc.config import load_config

    cfg = load_config(args.config)
    for w in cfg.warnings:
        print(w.render(str(cfg.path)), file=sys.stderr)
    return cfg


def print_table(rows: list[dict[str, object]], columns: list[str]) -> None:
    """A plain aligned text table."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


# --------------------------------------------------------------------------- commands


@command("validate")
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


@command("tables")
def cmd_tables(args: argparse.Namespace) -> int:
    cfg = _load(args)
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


@command("register")
def cmd_register(args: argparse.Namespace) -> int:
    from cdc.register import register_table

    cfg = _load(args)
    entry = register_table(Path(cfg.path), cfg.registry, args.source, args.table, args.key)
    cols = ", ".join(f"{c} {t}" for c, t in entry["columns"].items())
    print(
        f"registered {args.source}.{args.table} (key {list(entry['primary_key'])}; columns: {cols}) in {cfg.path}"
    )
    return EXIT_OK


@command("preflight")
def cmd_preflight(args: argparse.Namespace) -> int:
    from connectors.preflight import preflight

    cfg = _load(args)
    names = [args.source] if args.source else list(cfg.registry.sources)
    for n in names:
        if n not in cfg.registry.sources:
            raise ConfigError(
                f"no source {n!r} in {cfg.path} (sources: {', '.join(cfg.registry.sources)})"
            )
    checks = [c for n in names for c in preflight(n, cfg.registry.sources[n])]
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


@command("demo")
def cmd_demo(args: argparse.Namespace) -> int:
    print(
        "cdc demo: not yet. The embedded runtime (capture -> changelog -> SCD2 tables in DuckDB) is being "
        "built; meanwhile `cdc validate --config examples/cdc.yaml` and `cdc tables` show the registry."
    )
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

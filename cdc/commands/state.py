"""State-table commands: ``apply`` (Debezium files into history), ``history``, ``as-of``.

``cdc apply`` needs only the warehouse, never the source database: each line of each file is one
Debezium change event value (with or without the ``schema``/``payload`` wrapper), routed to its
registered table by ``source.schema`` (PostgreSQL) or ``source.db`` (MySQL) and ``source.table``.
Lines it cannot apply go to the dead-letter store with the reason; it then exits 1 saying where.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import difflib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from cdc.cli import EXIT_FAILED, EXIT_OK, AddCommand
from cdc.commands.common import LOCK_WAIT_S, load
from cdc.config import LoadedConfig
from cdc.console import cell_text as _cell
from cdc.console import is_terminal, print_table
from cdc.console import jsonl_line as _jsonl
from connectors.deadletter import NewDeadLetter, Sealing
from state_models.debezium import decode_debezium
from state_models.errors import ConfigError, DecodeError, UnknownTableError
from state_models.events import ChangeEvent
from state_models.scd2 import StateTable, TableDef, render_version
from state_models.seq import is_seq
from state_models.tables import TableResolver

FORMATS = ["table", "jsonl", "csv"]
#: Lines decoded and applied per round, so that a large file never sits in memory whole.
LINES_PER_ROUND = 100_000


def add_commands(add: AddCommand) -> None:
    p = add(
        "apply",
        "apply files of Debezium change events (one JSON value per line) to the state tables",
        cmd_apply,
    )
    p.add_argument("--source", required=True, help="source name in the registry")
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=10_000,
        metavar="N",
        help="events per MERGE per table (default 10000)",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="event files ('-' reads stdin)")

    p = add("history", "every version of a table's rows, ordered by key then seq", cmd_history)
    p.add_argument(
        "table",
        nargs="?",
        help="table id (billing.public.subscriptions), state table or schema.table (with --tx: "
        "optional, default every registered table)",
    )
    p.add_argument(
        "--tx",
        metavar="TXID",
        help="every change one source transaction made, across tables, in log order (PostgreSQL "
        "xid or Debezium's xid:lsn, MySQL/MariaDB GTID)",
    )
    p.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="COL=VALUE",
        help="only versions whose column equals the value (repeat for composite keys)",
    )
    p.add_argument("--format", choices=FORMATS, default="table")

    p = add("as-of", "the live rows of a table at a commit time or a source position", cmd_as_of)
    p.add_argument(
        "tables",
        nargs="+",
        metavar="table",
        help="table id (billing.public.subscriptions), state table or schema.table; several "
        "with --consistent",
    )
    p.add_argument(
        "--consistent",
        action="store_true",
        help="the tables at one transaction boundary of their source, capped at its watermark "
        "(never half a transaction); each row gets _table",
    )
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--at", metavar="TIMESTAMP", help="ISO-8601 commit time (UTC unless given)")
    when.add_argument("--seq", metavar="SEQ", help="source position (16-hex-digit sections)")
    when.add_argument(
        "--tx", metavar="TXID", help="through this source transaction (with --consistent)"
    )
    p.add_argument("--format", choices=FORMATS, default="table")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# --------------------------------------------------------------------------- apply


def cmd_apply(args: argparse.Namespace) -> int:
    from connectors.deadletter import DeadLetterStore, default_folder
    from connectors.warehouse import open_warehouse
    from merge_jobs.apply import ApplyReport, apply_events
    from state_models.registry import table_infos
    from state_models.tables import resolver_for

    cfg = load(args, writes=True)
    source = _source(cfg, args.source)
    resolve = resolver_for(table_infos(cfg.registry, source), source)
    tables = {
        t.id: TableDef.from_registered(t) for t in cfg.registry.tables() if t.source_name == source
    }
    paths = [_readable(f) for f in args.files]
    store = DeadLetterStore(default_folder(cfg.state_dir), sealing=Sealing.of(cfg.registry))
    ingested_at = dt.datetime.now(dt.UTC)
    report = ApplyReport()
    tombstones = 0
    warehouse = open_warehouse(cfg.warehouse_url, lock_wait_s=LOCK_WAIT_S)
    try:
        for chunk in _chunks(_lines(paths), LINES_PER_ROUND):
            decoded = _decode_lines(chunk, resolve, source)
            tombstones += decoded.tombstones
            report.dead_letters.extend(store.put_many(decoded.failures))
            report.merge(
                apply_events(
                    warehouse,
                    tables,
                    decoded.events,
                    ingested_at=ingested_at,
                    dead_letters=store,
                    batch_size=args.batch_size,
                    context_of=decoded.place,
                )
            )
    finally:
        warehouse.close()

    _print_counts(report, tables)
    if tombstones:
        print(f"{tombstones} Debezium tombstone(s) (null values after deletes) skipped")
    if report.dead_letters:
        kinds = sorted({d.error_type for d in report.dead_letters})
        print(
            f"cdc apply: {len(report.dead_letters)} event(s) could not be applied "
            f"({', '.join(kinds)}); they are in the dead-letter store {store.folder} "
            "with their reasons and raw lines",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


@dataclass
class _Decoded:
    events: list[ChangeEvent] = field(default_factory=list)
    failures: list[NewDeadLetter] = field(default_factory=list)
    places: dict[int, dict[str, Any]] = field(default_factory=dict)
    tombstones: int = 0

    def place(self, event: ChangeEvent) -> dict[str, Any]:
        """Where an event came from (file and line), for its dead letter."""
        return self.places[id(event)]


def _decode_lines(
    lines: Sequence[tuple[dict[str, Any], bytes]], resolve: TableResolver, source: str
) -> _Decoded:
    out = _Decoded()
    for where, raw in lines:
        try:
            line = raw.decode("utf-8")
            decoded = decode_debezium(line, resolve)
        except UnicodeDecodeError as exc:
            problem = DecodeError(
                f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at column {exc.start + 1}", raw=raw
            )
            out.failures.append(NewDeadLetter.from_error(problem, source=source, context=where))
            continue
        except (DecodeError, UnknownTableError) as exc:
            out.failures.append(
                NewDeadLetter.from_error(exc, raw=raw, source=source, context=where)
            )
            continue
        if isinstance(decoded, ChangeEvent):
            out.events.append(decoded)
            out.places[id(decoded)] = where
        else:
            out.tombstones += 1  # the Kafka compaction marker after a delete: nothing to apply
    return out


def _source(cfg: LoadedConfig, name: str) -> str:
    if name in cfg.registry.sources:
        return name
    known = list(cfg.registry.sources)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"no source {name!r} in {cfg.path}{hint} (sources: {', '.join(known) or 'none'})"
    )


def _readable(name: str) -> Path | None:
    if name == "-":
        return None
    path = Path(name)
    if not path.is_file():
        raise ConfigError(f"event file {name} not found (expected a file of Debezium JSON lines)")
    return path


def _lines(paths: Sequence[Path | None]) -> Iterator[tuple[dict[str, Any], bytes]]:
    """Each non-blank line of each file as its exact bytes (a dead letter keeps them as they were;
    decoding is the decoder's business), with its file and line number."""
    for path in paths:
        stream: BinaryIO = sys.stdin.buffer if path is None else path.open("rb")
        name = "-" if path is None else str(path)
        try:
            for number, line in enumerate(stream, 1):
                if line.strip():
                    yield {"file": name, "line": number}, line.rstrip(b"\r\n")
        finally:
            if path is not None:
                stream.close()


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _print_counts(report: Any, tables: Mapping[str, TableDef]) -> None:
    rows = [
        {
            "table": c.table_id,
            "state_table": c.state_table,
            "events": c.events,
            "new_versions": c.inserted,
            "revalidated": c.updated,
            "unchanged": c.unchanged,
            "dead_letters": c.dead_lettered,
        }
        for c in report.tables.values()
    ]
    undecoded = len(report.dead_letters) - sum(c.dead_lettered for c in report.tables.values())
    if undecoded:
        rows.append({"table": "(not decoded)", "dead_letters": undecoded})
    if rows:
        print_table(
            rows,
            [
                "table",
                "state_table",
                "events",
                "new_versions",
                "revalidated",
                "unchanged",
                "dead_letters",
            ],
        )
    else:
        print("no events in the given files")
    for c in report.tables.values():
        for change in c.schema_changes:
            print(f"{c.state_table}: {change}")


# --------------------------------------------------------------------------- queries


def cmd_history(args: argparse.Namespace) -> int:
    if args.tx is not None:
        from cdc.commands.transactions import cmd_history_tx

        if args.key:
            raise ConfigError("--tx lists a transaction's changes: it takes no --key")
        return cmd_history_tx(args, load(args))
    if args.table is None:
        raise ConfigError("give a table (or --tx TXID for a transaction's changes)")
    cfg, table = _table(args)
    key = _hashed(table, _key_filter(args.key))
    from connectors.warehouse import open_warehouse

    warehouse = open_warehouse(cfg.warehouse_url, lock_wait_s=LOCK_WAIT_S)
    try:
        state = warehouse.state_table(table)
        if state is not None:
            _check_key(state, key)
        rows = warehouse.history(table, key or None)
    finally:
        warehouse.close()
    return _print_rows(state, rows, args.format, table)


def cmd_as_of(args: argparse.Namespace) -> int:
    at = _timestamp(args.at) if args.at is not None else None
    if args.seq is not None and not is_seq(args.seq):
        raise ConfigError(
            f"--seq {args.seq!r} is not a seq: expected 16-hex-digit sections joined by '/', "
            "e.g. 0000000001a2b3c4/0000000001a2b3d0 (the _seq column of `cdc history`)"
        )
    if args.consistent:
        from cdc.commands.transactions import cmd_as_of_consistent

        args.at_time = at
        return cmd_as_of_consistent(args, load(args))
    if len(args.tables) > 1 or args.tx is not None:
        raise ConfigError(
            "several tables, or --tx, need --consistent (one transaction boundary for all)"
        )
    args.table = args.tables[0]
    cfg, table = _table(args)
    from connectors.warehouse import open_warehouse

    warehouse = open_warehouse(cfg.warehouse_url, lock_wait_s=LOCK_WAIT_S)
    try:
        state = warehouse.state_table(table)
        rows = warehouse.as_of(table, at=at, seq=args.seq)
    finally:
        warehouse.close()
    return _print_rows(state, rows, args.format, table)


def _table(args: argparse.Namespace) -> tuple[LoadedConfig, TableDef]:
    cfg = load(args)
    return cfg, TableDef.from_registered(cfg.registry.table(args.table))


def _key_filter(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        column, sep, value = pair.partition("=")
        if not sep or not column:
            raise ConfigError(f"--key {pair!r}: expected COLUMN=VALUE, e.g. --key id=42")
        out[column] = value
    return out


def _hashed(table: TableDef, key: dict[str, str]) -> dict[str, str]:
    """``--key`` values of hashed columns as the state table holds them: the clear value given is
    hashed with the PII key (it is never shown)."""
    if table.pii is None:
        return key
    out = {}
    for column, value in key.items():
        name = table.source_column(column)
        out[column] = (
            table.pii.protect_value(name, value) if table.pii.columns.get(name) == "hash" else value
        )
    return out


def _check_key(state: StateTable, key: Mapping[str, str]) -> None:
    """Each ``--key`` names a column of the table and holds a value of that column's type."""
    from state_models.types import ValueCoercionError, coerce_value

    for column, value in key.items():
        if column not in state.business_names:
            close = difflib.get_close_matches(column, state.business_names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"--key {column}: {state.table_id} has no column {column!r}{hint} "
                f"(columns: {', '.join(state.business_names)})"
            )
        wtype = state.column_type(column)
        try:
            coerce_value(value, wtype)
        except ValueCoercionError:
            raise ConfigError(
                f"--key {column}={value}: column {column} of {state.table_id} holds {wtype} "
                f"values, not {value!r}"
            ) from None


def _timestamp(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(
            text.strip().replace("Z", "+00:00").replace("z", "+00:00")
        )
    except ValueError:
        raise ConfigError(
            f"--at {text!r} is not an ISO-8601 time: expected e.g. 2026-05-01T12:00:00Z "
            "(UTC unless an offset is given)"
        ) from None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _print_rows(
    state: StateTable | None, rows: list[dict[str, Any]], fmt: str, table: TableDef
) -> int:
    try:
        return _write_rows(state, rows, fmt, table)
    except BrokenPipeError:  # `cdc history ... | head`: the reader has all it wanted
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stays open until exit
        return EXIT_OK


def _write_rows(
    state: StateTable | None, rows: list[dict[str, Any]], fmt: str, table: TableDef
) -> int:
    if state is None:
        print(
            f"{table.table_id}: no state table {table.state_table} yet (nothing applied)",
            file=sys.stderr,
        )
        return EXIT_OK
    rendered = [render_version(state, r) for r in rows]
    columns = [c.name for c in state.all_columns()]
    if fmt == "jsonl":
        for r in rendered:
            print(_jsonl(r))
    elif fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        for r in rendered:
            writer.writerow([_cell(r.get(c)) for c in columns])
    elif rendered:
        # on a terminal, long business values are cut to keep rows readable; a metadata value
        # (a seq to copy into `cdc as-of --seq`) never is, and nothing is cut in a pipe
        business = set(state.business_names) if is_terminal(sys.stdout) else set()
        print_table(
            [
                {c: _cell(r.get(c), 40 if c in business else None) for c in columns}
                for r in rendered
            ],
            columns,
        )
    else:
        print(f"{table.table_id}: no rows", file=sys.stderr)
    return EXIT_OK

"""``cdc changelog ls|show``: what the raw changelog holds, per table and per hour partition."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

from cdc.cli import EXIT_FAILED, EXIT_OK, AddCommand
from cdc.commands.common import load, print_table, subcommands
from cdc.config import LoadedConfig
from state_models.changelog import ChangeRange
from state_models.errors import ConfigError


def add_commands(add: AddCommand) -> None:
    p = add(
        "changelog",
        "what the raw changelog holds: files, events, bytes, seq and time ranges",
        _usage,
    )
    sub = subcommands(p, "changelog_command")
    s = sub("ls", "one line per table: files, events, bytes, seq range, commit-time range", cmd_ls)
    s.add_argument("--format", choices=["table", "json"], default="table")
    s = sub("show", "one line per hour partition of a table (or per file with --files)", cmd_show)
    s.add_argument("table", help="registered table (id, state table name or schema.table)")
    add_range_arguments(s)
    s.add_argument("--files", action="store_true", help="one line per file")
    s.add_argument("--format", choices=["table", "json"], default="table")


def _usage(args: argparse.Namespace) -> int:
    raise ConfigError("cdc changelog needs a subcommand: ls, show")


def add_range_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--since", metavar="T", help="commit time from (inclusive), ISO 8601, UTC if no zone"
    )
    p.add_argument("--until", metavar="T", help="commit time to (exclusive)")
    p.add_argument("--from-seq", metavar="S", help="seq from (inclusive)")
    p.add_argument("--to-seq", metavar="S", help="seq to (inclusive)")


def parse_time(value: str, option: str) -> int:
    """ISO 8601 date or date-time (UTC when it has no zone) -> µs since the epoch."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{option} {value!r} is not a time: expected ISO 8601 such as 2024-05-01 or "
            "2024-05-01T08:30:00Z"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    delta = t - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def range_from_args(args: argparse.Namespace) -> ChangeRange:
    try:
        return ChangeRange(
            since_us=parse_time(args.since, "--since") if args.since else None,
            until_us=parse_time(args.until, "--until") if args.until else None,
            from_seq=args.from_seq,
            to_seq=args.to_seq,
        )
    except ValueError as exc:
        raise ConfigError(f"bad range: {exc}") from None


def resolve_table(cfg: LoadedConfig, ref: str) -> str:
    """A registered table's id; an id that is only in the changelog is accepted too."""
    try:
        return cfg.registry.table(ref).id
    except ConfigError:
        if ref.count(".") == 2:
            from connectors.changelog.reader import ChangelogReader

            if ref in ChangelogReader(cfg.changelog_root).tables():
                return ref
        raise


def format_us(us: int | None) -> str:
    if us is None:
        return ""
    t = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)
    return t.strftime("%Y-%m-%d %H:%M:%S")


def format_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _row(s: Any, **extra: Any) -> dict[str, Any]:
    return {
        **extra,
        "files": s.files,
        "events": s.rows,
        "bytes": s.bytes,
        "size": format_bytes(s.bytes),
        "first_seq": s.first_seq or "",
        "last_seq": s.last_seq or "",
        "first_commit": format_us(s.min_commit_us),
        "last_commit": format_us(s.max_commit_us),
    }


def _report_unreadable(unreadable: list[Any]) -> None:
    for u in unreadable:
        print(f"unreadable: {u.path}: {u.reason}", file=sys.stderr)


def cmd_ls(args: argparse.Namespace) -> int:
    from connectors.changelog.reader import ChangelogReader, PartitionSummary, ReadStats, summarize

    cfg = load(args)
    reader = ChangelogReader(cfg.changelog_root)
    registered = [t.id for t in cfg.registry.tables()]
    stored = reader.tables()
    stats = ReadStats()
    rows = []
    for table in sorted(set(registered) | set(stored)):
        _, parts = summarize(reader, table, stats=stats)
        total = PartitionSummary(table, None)
        for p in parts:
            total.files += p.files
            total.rows += p.rows
            total.bytes += p.bytes
            for attr, pick in (
                ("first_seq", min),
                ("last_seq", max),
                ("min_commit_us", min),
                ("max_commit_us", max),
            ):
                mine, theirs = getattr(total, attr), getattr(p, attr)
                if theirs is not None:
                    setattr(total, attr, theirs if mine is None else pick(mine, theirs))
        note = "" if table in registered else "not registered"
        rows.append(_row(total, table=table, partitions=len(parts), note=note))
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        print(f"changelog {cfg.changelog_root}")
        if rows:
            print_table(
                rows,
                [
                    "table",
                    "partitions",
                    "files",
                    "events",
                    "size",
                    "first_seq",
                    "last_seq",
                    "first_commit",
                    "last_commit",
                    "note",
                ],
            )
        else:
            print("no tables registered and nothing stored")
    _report_unreadable(stats.unreadable)
    return EXIT_FAILED if stats.unreadable else EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from connectors.changelog.reader import ChangelogReader, ReadStats, summarize

    cfg = load(args)
    table = resolve_table(cfg, args.table)
    rng = range_from_args(args)
    reader = ChangelogReader(cfg.changelog_root)
    stats = ReadStats()
    files, parts = summarize(reader, table, rng, stats=stats)
    if args.files:
        rows = [
            {
                "partition": s.file.partition.path,
                "file": s.file.display.rsplit("/", 1)[-1],
                "path": s.file.display,
                "events": s.rows,
                "row_groups": s.row_groups,
                "bytes": s.file.bytes,
                "size": format_bytes(s.file.bytes),
                "first_seq": s.file.first_seq,
                "last_seq": s.file.last_seq,
                "first_commit": format_us(s.min_commit_us),
                "last_commit": format_us(s.max_commit_us),
            }
            for s in files
        ]
        columns = [
            "partition",
            "file",
            "events",
            "row_groups",
            "size",
            "first_commit",
            "last_commit",
        ]
    else:
        rows = [_row(p, partition=p.partition.path if p.partition else "") for p in parts]
        columns = [
            "partition",
            "files",
            "events",
            "size",
            "first_seq",
            "last_seq",
            "first_commit",
            "last_commit",
        ]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        where = "" if rng.is_everything else " (range given: files that may overlap it)"
        print(f"{table} in {cfg.changelog_root}{where}")
        if rows:
            print_table(rows, columns)
        total_rows = sum(p.rows for p in parts)
        total_bytes = sum(p.bytes for p in parts)
        per_event = f", {total_bytes / total_rows:.1f} bytes/event" if total_rows else ""
        print(
            f"{len(parts)} partitions, {len(files)} files, {total_rows} events, "
            f"{format_bytes(total_bytes)}{per_event}"
        )
    _report_unreadable(stats.unreadable)
    return EXIT_FAILED if stats.unreadable else EXIT_OK

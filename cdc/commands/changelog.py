"""The raw changelog on the command line.

- ``cdc changelog ls|show``: what it holds, per table and per hour partition;
- ``cdc replay TABLE [range]``: apply a range of it to the state table through the same merge;
- ``cdc rebuild TABLE --shadow`` / ``--swap``: rebuild the state table from all of it into a shadow
  table, and put the shadow in the live table's place when ``verify`` finds them equal;
- ``cdc verify TABLE --against SHADOW``: row counts and content checksums per key range.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

from cdc.cli import EXIT_FAILED, EXIT_OK, AddCommand
from cdc.commands.common import LOCK_WAIT_S, load, subcommands
from cdc.config import LoadedConfig
from cdc.console import ProgressBar, print_table
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

    p = add(
        "replay", "apply a range of the changelog to a state table (safe to repeat)", cmd_replay
    )
    p.add_argument("table", help="registered table (id, state table name or schema.table)")
    add_range_arguments(p)
    p.add_argument("--batch-size", type=int, default=None, help="events per MERGE")

    p = add(
        "rebuild",
        "rebuild a state table from the whole changelog: into a shadow table (--shadow), "
        "then swap it in when it matches the live table (--swap)",
        cmd_rebuild,
    )
    p.add_argument("table", help="registered table (id, state table name or schema.table)")
    p.add_argument("--shadow", action="store_true", help="rebuild into the shadow table")
    p.add_argument(
        "--swap", action="store_true", help="replace the live table by the shadow if they match"
    )
    p.add_argument("--shadow-name", help="shadow state table name (default <state table>__shadow)")
    p.add_argument("--batch-size", type=int, default=None, help="events per MERGE")

    p = add(
        "verify",
        "compare a state table with another (a rebuilt shadow): row counts and content checksums "
        "per key range, and the first differing rows",
        cmd_verify,
    )
    p.add_argument("table", help="registered table (id, state table name or schema.table)")
    p.add_argument("--against", help="the other state table (default <state table>__shadow)")
    p.add_argument("--ranges", type=int, default=16, help="key ranges to checksum (default 16)")
    p.add_argument("--limit", type=int, default=10, help="differing rows to show (default 10)")
    p.add_argument("--format", choices=["table", "json"], default="table")


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


def changelog_reader(cfg: LoadedConfig, table_id: str, dead_letters: Any = None) -> Any:
    """The reader of a table's raw changelog, chosen by its source's engine: Datastream's own
    files for ``engine: datastream``, our Parquet changelog otherwise."""
    from connectors.changelog.reader import ChangelogReader

    try:
        registered = cfg.registry.table(table_id)
    except ConfigError:  # only in the changelog
        return ChangelogReader(cfg.changelog_root)
    source = registered.source
    if source.engine != "datastream":
        return ChangelogReader(cfg.changelog_root)
    from connectors.changelog.datastream import DEFAULT_MARGIN_S, DatastreamChangelogReader
    from state_models.registry import table_infos

    rotation = source.datastream.file_rotation_interval_s if source.datastream else None
    return DatastreamChangelogReader(
        cfg.datastream_output(registered.source_name),
        registered.source_name,
        table_infos(cfg.registry, registered.source_name),
        kind=source.kind,
        dead_letters=dead_letters,
        margin_s=DEFAULT_MARGIN_S if rotation is None else rotation + 300,
    )


def _summarize(reader: Any, table: str, rng: ChangeRange | None, stats: Any) -> tuple[Any, Any]:
    from connectors.changelog.reader import ChangelogReader, summarize

    if isinstance(reader, ChangelogReader):
        return summarize(reader, table, rng, stats=stats)
    return reader.summarize(table, rng, stats=stats)


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
        "events": s.rows if s.counted else "",
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
    from connectors.changelog.reader import ChangelogReader, PartitionSummary, ReadStats

    cfg = load(args)
    registered = [t.id for t in cfg.registry.tables()]
    stored = ChangelogReader(cfg.changelog_root).tables()
    stats = ReadStats()
    rows = []
    for table in sorted(set(registered) | set(stored)):
        _, parts = _summarize(changelog_reader(cfg, table), table, None, stats)
        total = PartitionSummary(table, None, counted=all(p.counted for p in parts))
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
        if not total.counted:
            note = "Datastream files (events not counted; times are their folders')"
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
    from connectors.changelog.reader import ReadStats

    cfg = load(args)
    table = resolve_table(cfg, args.table)
    rng = range_from_args(args)
    reader = changelog_reader(cfg, table)
    stats = ReadStats()
    files, parts = _summarize(reader, table, rng, stats)
    if args.files:
        rows = [_file_row(s) for s in files]
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
        print(f"{table} in {reader.root.url}{where}")
        if rows:
            print_table(rows, columns)
        total_rows = sum(p.rows for p in parts)
        total_bytes = sum(p.bytes for p in parts)
        per_event = f", {total_bytes / total_rows:.1f} bytes/event" if total_rows else ""
        events = f"{total_rows} events" if all(p.counted for p in parts) else "events not counted"
        print(
            f"{len(parts)} partitions, {len(files)} files, {events}, "
            f"{format_bytes(total_bytes)}{per_event}"
        )
    _report_unreadable(stats.unreadable)
    return EXIT_FAILED if stats.unreadable else EXIT_OK


def _file_row(s: Any) -> dict[str, Any]:
    from connectors.changelog.datastream import DatastreamFile

    if isinstance(s, DatastreamFile):
        return {
            "partition": s.partition.path,
            "file": s.display.rsplit("/", 1)[-1],
            "path": s.display,
            "events": "",
            "row_groups": "",
            "bytes": s.bytes,
            "size": format_bytes(s.bytes),
            "first_seq": "",
            "last_seq": "",
            "first_commit": format_us(s.minute_us),
            "last_commit": "",
        }
    return {
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


# --------------------------------------------------------------------------- replay, rebuild, verify


def _open(cfg: LoadedConfig, ref: str) -> tuple[Any, Any, Any, Any]:
    """(table def, changelog reader, warehouse, dead-letter store) for a registered table."""
    from connectors.deadletter import DeadLetterStore, Sealing, default_folder
    from connectors.warehouse import open_warehouse
    from state_models.scd2 import TableDef

    table = TableDef.from_registered(cfg.registry.table(ref))
    dead_letters = DeadLetterStore(default_folder(cfg.state_dir), sealing=Sealing.of(cfg.registry))
    reader = changelog_reader(cfg, table.table_id, dead_letters)
    warehouse = open_warehouse(cfg.warehouse_url, lock_wait_s=LOCK_WAIT_S)
    return table, reader, warehouse, dead_letters


def _planned_events(reader: Any, table_id: str, rng: ChangeRange) -> int | None:
    """Events in the files a read will open (an upper bound when the range cuts files); None
    when only reading them would tell (Datastream files)."""
    from connectors.changelog.reader import ChangelogReader, summarize

    if not isinstance(reader, ChangelogReader):
        return None
    files, _ = summarize(reader, table_id, rng)
    return sum(f.rows for f in files)


def _replay_summary(report: Any, what: str) -> int:
    counts = report.applied.tables.get(report.table)
    rate = report.events / report.seconds if report.seconds else 0.0
    print(
        f"{what}: {report.events:,} events from {report.read.files_read} files "
        f"({report.read.row_groups_skipped} row groups skipped) in {report.seconds:.1f}s "
        f"({rate:,.0f} events/s)"
    )
    if counts is not None:
        print(
            f"  {counts.inserted:,} versions inserted, {counts.updated:,} repaired, "
            f"{counts.unchanged:,} already there, {counts.dead_lettered:,} dead-lettered "
            f"({counts.batches} MERGEs)"
        )
    for change in counts.schema_changes if counts else []:
        print(f"  schema: {change}")
    for u in report.read.unreadable:
        print(f"unreadable: {u.path}: {u.reason}", file=sys.stderr)
    if report.read.rejected:
        print(
            f"{report.read.rejected} records could not be decoded: dead-lettered with their file "
            "and offset (see cdc dead-letters ls)",
            file=sys.stderr,
        )
    if report.read.unreadable:
        print(
            f"{len(report.read.unreadable)} changelog files could not be read: the range is "
            "incomplete (fix or move them, then replay again)",
            file=sys.stderr,
        )
    if report.applied.dead_letters:
        print(
            f"{len(report.applied.dead_letters)} events dead-lettered: see cdc dead-letters ls",
            file=sys.stderr,
        )
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_replay(args: argparse.Namespace) -> int:
    from merge_jobs.replay import DEFAULT_REPLAY_BATCH, replay

    cfg = load(args, writes=True)
    rng = range_from_args(args)
    table, reader, warehouse, dead_letters = _open(cfg, args.table)
    try:
        bar = ProgressBar(_planned_events(reader, table.table_id, rng), "replay")
        report = replay(
            reader,
            warehouse,
            table,
            rng,
            dead_letters=dead_letters,
            batch_size=args.batch_size or DEFAULT_REPLAY_BATCH,
            progress=bar,
        )
        bar.finish()
        if report.ok:
            _settle(cfg, table, warehouse, dead_letters)
    finally:
        warehouse.close()
    return _replay_summary(report, f"replayed into {table.state_table}")


def _settle(cfg: LoadedConfig, table: Any, warehouse: Any, dead_letters: Any) -> None:
    """After a replay: the source's transaction-consistent watermark (``settle_watermark``),
    when every table of the source holds its whole changelog."""
    from connectors.changelog.reader import ChangelogReader, ReadStats
    from merge_jobs.replay import settle_watermark, unordered_changelog
    from state_models.scd2 import TableDef

    registered = [t for t in cfg.registry.tables() if t.source_name == table.source]
    if not registered or registered[0].source.engine == "datastream":
        return  # its files arrive in no log order, and no watermark is kept for it
    unordered = unordered_changelog(cfg.registry, table.source)
    if unordered is not None:
        print(f"source {table.source}: no transaction-consistent watermark: {unordered}")
        return

    def changelog_last(table_id: str) -> str | None:
        reader = changelog_reader(cfg, table_id)
        if not isinstance(reader, ChangelogReader):
            return None
        seqs = [f.last_seq for f in reader.files(table_id, None, ReadStats())]  # from the names
        return max(seqs) if seqs else None

    settled = settle_watermark(
        warehouse,
        table.source,
        [TableDef.from_registered(t) for t in registered],
        changelog_last,
        dead_letters.list(source=table.source),
    )
    if settled.watermark is None:
        print(f"source {table.source}: no transaction-consistent watermark: {settled.reason}")
    else:
        held = f" (held by dead letter {settled.held_by})" if settled.held_by else ""
        print(f"source {table.source}: consistent through {settled.watermark}{held}")


def cmd_rebuild(args: argparse.Namespace) -> int:
    from merge_jobs.replay import DEFAULT_REPLAY_BATCH, rebuild, replay, shadow_of
    from state_models.changelog import ChangeRange

    cfg = load(args, writes=True)
    table, reader, warehouse, dead_letters = _open(cfg, args.table)
    shadow = shadow_of(table, args.shadow_name)
    batch = args.batch_size or DEFAULT_REPLAY_BATCH
    try:
        if not args.shadow and not args.swap:
            if warehouse.state_table(table) is not None:
                raise ConfigError(
                    f"state table {table.state_table} exists: rebuild into a shadow "
                    f"(cdc rebuild {args.table} --shadow), compare (cdc verify {args.table}), "
                    f"then swap it in (cdc rebuild {args.table} --swap)"
                )
            bar = ProgressBar(_planned_events(reader, table.table_id, ChangeRange()), "rebuild")
            report = replay(
                reader, warehouse, table, dead_letters=dead_letters, batch_size=batch, progress=bar
            )
            bar.finish()
            return _replay_summary(report, f"built {table.state_table} from the changelog")
        status = EXIT_OK
        if args.shadow:
            bar = ProgressBar(_planned_events(reader, table.table_id, ChangeRange()), "rebuild")
            report = rebuild(
                reader,
                warehouse,
                table,
                into=shadow,
                dead_letters=dead_letters,
                batch_size=batch,
                progress=bar,
            )
            bar.finish()
            status = _replay_summary(report, f"rebuilt {shadow.state_table} from the changelog")
            if status != EXIT_OK:
                if args.swap:
                    print("not swapping: the rebuild was incomplete", file=sys.stderr)
                return status
            if not args.swap:
                print(f"compare with: cdc verify {args.table} --against {shadow.state_table}")
        if args.swap:
            comparison = warehouse.compare_states(table, shadow)
            _print_comparison(comparison)
            if not comparison.equal:
                print(
                    f"not swapping: {shadow.state_table} differs from {table.state_table}",
                    file=sys.stderr,
                )
                return EXIT_FAILED
            warehouse.replace_state(table, shadow)
            print(f"swapped: {table.state_table} is now the rebuilt table")
        return status
    finally:
        warehouse.close()


def cmd_verify(args: argparse.Namespace) -> int:
    from merge_jobs.replay import shadow_of

    cfg = load(args)
    table, _, warehouse, _ = _open(cfg, args.table)
    if args.ranges < 1 or args.limit < 0:
        raise ConfigError("--ranges must be at least 1 and --limit not negative")
    other = shadow_of(table, args.against)
    try:
        comparison = warehouse.compare_states(table, other, ranges=args.ranges, limit=args.limit)
    finally:
        warehouse.close()
    if args.format == "json":
        print(json.dumps(_comparison_json(comparison), indent=2, default=str))
    else:
        _print_comparison(comparison)
    return EXIT_OK if comparison.equal else EXIT_FAILED


def _key_text(key: tuple[Any, ...]) -> str:
    return ", ".join(str(v) for v in key)


def _comparison_json(c: Any) -> dict[str, Any]:
    return {
        "table": c.table,
        "other": c.other,
        "equal": c.equal,
        "missing": c.missing,
        "rows": c.rows,
        "other_rows": c.other_rows,
        "only_in_table": list(c.only_in_table),
        "only_in_other": list(c.only_in_other),
        "ranges": [
            {
                **r.__dict__,
                "first_key": list(r.first_key),
                "last_key": list(r.last_key),
                "equal": r.equal,
            }
            for r in c.ranges
        ],
        "differences": [
            {"key": list(k), "seq": seq, "in_table": a, "in_other": b}
            for k, seq, a, b in c.differences
        ],
    }


def _print_comparison(c: Any) -> None:
    if c.missing:
        print(f"{c.table} vs {c.other}: state table {c.missing} does not exist")
        return
    print(
        f"{c.table} vs {c.other}: {c.rows:,} vs {c.other_rows:,} versions in "
        f"{len(c.ranges)} key ranges (checksums over {len(c.compared_columns)} columns, "
        "_ingested_at excluded)"
    )
    if c.only_in_table or c.only_in_other:
        print(
            f"  columns only in {c.table}: {', '.join(c.only_in_table) or '-'}; "
            f"only in {c.other}: {', '.join(c.only_in_other) or '-'}"
        )
    rows = [
        {
            "range": r.number,
            "first_key": _key_text(r.first_key),
            "last_key": _key_text(r.last_key),
            "rows": r.rows,
            "other_rows": r.other_rows,
            "checksum": "" if r.checksum is None else format(int(r.checksum) & (2**64 - 1), "016x"),
            "other_checksum": ""
            if r.other_checksum is None
            else format(int(r.other_checksum) & (2**64 - 1), "016x"),
            "status": "equal" if r.equal else "DIFFERS",
        }
        for r in c.ranges
    ]
    if rows:
        print_table(
            rows,
            [
                "range",
                "first_key",
                "last_key",
                "rows",
                "other_rows",
                "checksum",
                "other_checksum",
                "status",
            ],
        )
    if c.equal:
        print("equal")
        return
    differing = sum(1 for r in c.ranges if not r.equal)
    print(f"{differing} of {len(c.ranges)} key ranges differ; first differing versions:")
    for key, seq, mine, theirs in c.differences:
        where = f"key ({_key_text(key)}) seq {seq}"
        if theirs is None:
            print(f"  {where}: only in {c.table}: {_row_text(mine)}")
        elif mine is None:
            print(f"  {where}: only in {c.other}: {_row_text(theirs)}")
        else:
            cols = [k for k in c.compared_columns if mine.get(k) != theirs.get(k)]
            changes = "; ".join(
                f"{k}: {_value_text(mine.get(k))} vs {_value_text(theirs.get(k))}" for k in cols
            )
            print(f"  {where}: differs: {changes}")


def _value_text(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _row_text(row: dict[str, Any] | None) -> str:
    if row is None:
        return "(not found)"
    return ", ".join(f"{k}={v}" for k, v in row.items() if k != "_ingested_at")

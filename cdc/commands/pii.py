"""``cdc pii apply`` and ``cdc erase``: the only commands that ever replace a changelog file."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cdc.cli import EXIT_OK, AddCommand
from cdc.commands.common import LOCK_WAIT_S, load, subcommands
from cdc.config import LoadedConfig
from state_models.errors import ConfigError
from state_models.scd2 import TableDef


def add_commands(add: AddCommand) -> None:
    p = add("pii", "personal data already stored: rewrite it under the registry's pii:", _usage)
    sub = subcommands(p, "pii_command")
    s = sub(
        "apply",
        "rewrite a table's changelog files and state versions under its current pii: policy "
        "(after adding or changing one)",
        cmd_pii_apply,
    )
    s.add_argument("table", help="registered table (id, state table name or schema.table)")

    p = add(
        "erase",
        "remove one data subject's personal values from every version and changelog file of a "
        "table, keeping the history's shape",
        cmd_erase,
    )
    p.add_argument("table", help="registered table (id, state table name or schema.table)")
    p.add_argument(
        "--key",
        action="append",
        required=True,
        metavar="COL=VALUE",
        help="the row's key (repeat for a composite key); a hashed key column takes the clear value",
    )


def _usage(args: argparse.Namespace) -> int:
    print("usage: cdc pii apply TABLE", file=sys.stderr)
    return 2


def cmd_pii_apply(args: argparse.Namespace) -> int:
    from merge_jobs.pii_rewrite import policy_transform

    cfg, table = _writable_table(args)
    if table.pii is None:
        raise ConfigError(f"{table.table_id} has no pii: columns in {cfg.path}: nothing to apply")
    transform = policy_transform(table)
    report = _rewrite(cfg, table, transform, only=None)
    _record(
        cfg,
        {
            "command": "pii apply",
            "table": table.table_id,
            "policy": dict(table.pii.columns),
            "key_fingerprint": _fingerprint(cfg),
            "changelog_files": report.files,
            "versions": report.versions,
        },
    )
    print(
        f"{table.table_id}: {len(report.files)} changelog files ({report.changelog_events:,} "
        f"changes) and {report.versions:,} versions of {table.state_table} rewritten under "
        f"pii: {', '.join(f'{c}: {p}' for c, p in table.pii.columns.items())}"
    )
    return EXIT_OK


def cmd_erase(args: argparse.Namespace) -> int:
    from cdc.commands.state import _hashed, _key_filter
    from connectors.warehouse import open_warehouse
    from merge_jobs.pii_rewrite import erasable_columns, erase_transform

    cfg, table = _writable_table(args)
    key = _hashed(table, _key_filter(args.key))
    missing = [k for k in table.primary_key or () if k not in key]
    if missing or set(key) - set(table.primary_key or ()):
        raise ConfigError(
            f"--key must name exactly the key of {table.table_id}: "
            f"{', '.join(table.primary_key or ())}"
        )
    warehouse = open_warehouse(cfg.warehouse_url, lock_wait_s=LOCK_WAIT_S)
    try:
        state = warehouse.state_table(table)
        business = state.business_names if state is not None else ()
        if state is not None and not warehouse.history(table, key):
            raise ConfigError(f"{table.table_id} has no row with that key (nothing was changed)")
    finally:
        warehouse.close()
    columns = erasable_columns(table, business)
    source_key = {table.source_column(k): v for k, v in key.items()}
    transform, erased = erase_transform(table, source_key, columns)

    def holds_the_key(events: list[Any]) -> bool:
        return any(
            e.key and all(str(e.key.get(k)) == str(v) for k, v in source_key.items())
            for e in events
        )

    report = _rewrite(cfg, table, transform, only=holds_the_key)
    _record(
        cfg,
        {
            "command": "erase",
            "table": table.table_id,
            "key": key,  # as stored: a hashed key column holds its token, never the clear value
            "columns": columns,
            "changes": erased[0],
            "changelog_files": report.files,
            "versions": report.versions,
        },
    )
    print(
        f"{table.table_id}: erased {', '.join(columns)} from {erased[0]:,} changes of the row "
        f"({len(report.files)} changelog files rewritten, {report.versions:,} versions of "
        f"{table.state_table} checked and swapped); recorded in {cfg.state_dir / 'audit.jsonl'}"
    )
    return EXIT_OK


def _writable_table(args: argparse.Namespace) -> tuple[LoadedConfig, TableDef]:
    cfg = load(args, writes=True)
    registered = cfg.registry.table(args.table)
    if registered.source.engine == "datastream":
        raise ConfigError(
            f"{registered.id} is read from Datastream's own files, which this command does not "
            "rewrite; exclude the column from the stream (cdc datastream plan/apply)"
        )
    _refuse_locked_retention(cfg.changelog_root)
    return cfg, TableDef.from_registered(registered)


def _rewrite(cfg: LoadedConfig, table: TableDef, transform: Any, only: Any) -> Any:
    from connectors.warehouse import open_warehouse
    from merge_jobs.pii_rewrite import RewriteReport, rewrite_changelog, rewrite_state

    report = RewriteReport(table.table_id)
    rewrite_changelog(cfg.changelog_root, table.table_id, transform, report, only=only)
    warehouse = open_warehouse(cfg.warehouse_url, lock_wait_s=LOCK_WAIT_S)
    try:
        rewrite_state(warehouse, table, transform, report)
    finally:
        warehouse.close()
    return report


def _refuse_locked_retention(root: str) -> None:
    """A bucket whose retention policy keeps objects for a while refuses their removal: stop
    before anything is written (a rewrite that cannot remove the old files would leave the clear
    values in place beside the new ones)."""
    if not root.startswith("gs://"):
        return
    from google.cloud import storage  # type: ignore[attr-defined]

    bucket = storage.Client().bucket(root[len("gs://") :].split("/", 1)[0])
    bucket.reload()
    if bucket.retention_period:
        locked = "a locked" if bucket.retention_policy_locked else "a"
        raise ConfigError(
            f"bucket {bucket.name} has {locked} retention policy of {bucket.retention_period} s: "
            "a changelog file cannot be replaced before it is that old, so nothing was changed"
        )


def _fingerprint(cfg: LoadedConfig) -> str | None:
    key = cfg.pii_key()
    return None if key is None else key.fingerprint


def _record(cfg: LoadedConfig, entry: dict[str, Any]) -> None:
    from merge_jobs.pii_rewrite import record

    record(cfg.state_dir, entry)

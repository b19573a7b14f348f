"""``cdc online rebuild|verify TABLE``: the Redis online store against the state table.

``rebuild`` writes every key's current version (tombstones included) from the state table, through
the same fenced write as the live feed, so a newer value already there is kept. ``verify``
compares the store with ``_current``: exit 0 equal, 1 different (keys listed), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cdc.cli import EXIT_FAILED, EXIT_OK, AddCommand
from cdc.commands.common import LOCK_WAIT_S, load, subcommands
from state_models.errors import ConfigError


def add_commands(add: AddCommand) -> None:
    p = add("online", "the online current-state store (Redis): rebuild, verify", _usage)
    sub = subcommands(p, "online_command")
    s = sub("rebuild", "write every key's current row from the state table (fenced)", cmd_rebuild)
    s.add_argument("table", help="registered table (id, state table name or schema.table)")
    s = sub("verify", "compare the store with the state table's _current view", cmd_verify)
    s.add_argument("table", help="registered table (id, state table name or schema.table)")
    s.add_argument("--format", choices=["table", "json"], default="table")
    s.add_argument("--limit", type=int, default=20, help="differing keys to list (default 20)")


def _usage(args: argparse.Namespace) -> int:
    raise ConfigError("cdc online: give a subcommand (rebuild, verify)")


def _open(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    from connectors.online_stores import open_online
    from state_models.scd2 import TableDef

    cfg = load(args)
    registered = cfg.registry.table(args.table)
    store = cfg.registry.online_for(registered)
    if store is None:
        raise ConfigError(
            f"{registered.id} is not kept online: add an `online:` section (url, key_prefix, "
            "tables) to cdc.yaml, at the top or in its source"
        )
    return cfg, TableDef.from_registered(registered), open_online(store)


def _expected(cfg: Any, table: Any) -> list[Any]:
    from connectors.online import current_online_rows
    from connectors.warehouse import open_warehouse

    warehouse = open_warehouse(cfg.warehouse_url, lock_wait_s=LOCK_WAIT_S)
    try:
        return current_online_rows(warehouse, table)
    finally:
        warehouse.close()


def cmd_rebuild(args: argparse.Namespace) -> int:
    cfg, table, online = _open(args)
    try:
        rows = _expected(cfg, table)
        online.ping()  # reachable, and ready (a Bigtable store's table made when missing)
        written = sum(online.write(rows[i : i + 5000]) for i in range(0, len(rows), 5000))
    finally:
        online.close()
    print(
        f"{table.table_id}: {len(rows):,} current rows ({sum(r.deleted for r in rows):,} "
        f"tombstones) written where newer: {written:,} written, {len(rows) - written:,} already "
        "there or newer"
    )
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from connectors.online import compare

    cfg, table, online = _open(args)
    try:
        diff = compare(_expected(cfg, table), online.rows(table.table_id))
    finally:
        online.close()
    if args.format == "json":
        print(
            json.dumps(
                {
                    "table": table.table_id,
                    "equal": diff.equal,
                    "missing": diff.missing,
                    "extra": diff.extra,
                    "different": diff.different,
                }
            )
        )
    else:
        if diff.equal:
            print(f"{table.table_id}: the online store equals _current")
        for what, keys in (
            ("missing from the store", diff.missing),
            ("in the store, not live", diff.extra),
            ("different", diff.different),
        ):
            if keys:
                shown = ", ".join(keys[: args.limit])
                more = f" (+{len(keys) - args.limit} more)" if len(keys) > args.limit else ""
                print(f"{table.table_id}: {len(keys)} {what}: {shown}{more}", file=sys.stdout)
    return EXIT_OK if diff.equal else EXIT_FAILED

"""``cdc dbt sources --out DIR``: a runnable dbt project over the state tables (``cdc.dbt_project``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cdc.cli import EXIT_OK, AddCommand
from cdc.commands.common import LOCK_WAIT_S, load, subcommands
from state_models.errors import ConfigError


def add_commands(add: AddCommand) -> None:
    p = add("dbt", "hand the state tables to dbt", _usage)
    sub = subcommands(p, "dbt_command")
    s = sub(
        "sources",
        "write a dbt project: sources with types and freshness, SCD2 tests, a staging model",
        cmd_sources,
    )
    s.add_argument("--out", required=True, help="the project's folder (created)")


def _usage(args: argparse.Namespace) -> int:
    raise ConfigError("cdc dbt: give a subcommand (sources)")


def cmd_sources(args: argparse.Namespace) -> int:
    from cdc.dbt_project import write_project
    from connectors.warehouse import open_warehouse

    cfg = load(args)
    out = Path(args.out)
    warehouse = open_warehouse(cfg.warehouse_url, lock_wait_s=LOCK_WAIT_S)
    try:
        written = write_project(cfg, out, warehouse)
    finally:
        warehouse.close()
    print(f"wrote a dbt project of {len(cfg.registry.tables())} sources in {out}:")
    for path in written:
        print(f"  {path}")
    print(f"run it: cd {out} && dbt source freshness --profiles-dir . && dbt test --profiles-dir .")
    return EXIT_OK

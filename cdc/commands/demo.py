"""``cdc demo``: the whole product on throwaway local databases."""

from __future__ import annotations

import argparse

from cdc.cli import EXIT_OK, AddCommand


def add_commands(add: AddCommand) -> None:
    add("demo", "run the whole product on throwaway local databases", cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    print(
        "cdc demo: not yet. The embedded runtime (capture -> changelog -> SCD2 tables in DuckDB) is being "
        "built; meanwhile `cdc validate --config examples/cdc.yaml` and `cdc tables` show the registry."
    )
    return EXIT_OK

"""``cdc demo``: the whole product on throwaway local databases."""

from __future__ import annotations

import argparse
from pathlib import Path

from cdc.cli import AddCommand
from state_models.errors import ConfigError


def add_commands(add: AddCommand) -> None:
    p = add(
        "demo",
        "start throwaway PostgreSQL/MariaDB, capture a subscription workload, show its history",
        cmd_demo,
    )
    p.add_argument("--seconds", type=float, default=20.0, help="how long the workload runs (20)")
    p.add_argument("--rate", type=float, default=40.0, help="business actions per second (40)")
    p.add_argument(
        "--engine",
        choices=["pgoutput", "debezium"],
        default="pgoutput",
        help="PostgreSQL capture: native pgoutput reader (default) or embedded Debezium",
    )
    p.add_argument(
        "--folder",
        default=".cdc-demo",
        help="where the registry, changelog and DuckDB go (.cdc-demo)",
    )
    p.add_argument("--no-mariadb", action="store_true", help="skip the MariaDB payments side")


def cmd_demo(args: argparse.Namespace) -> int:
    from cdc.demo.run import DemoOptions, run_demo

    if args.seconds <= 0 or args.rate <= 0:
        raise ConfigError("--seconds and --rate must be positive")
    return run_demo(
        DemoOptions(
            folder=Path(args.folder),
            seconds=args.seconds,
            rate=args.rate,
            engine=args.engine,
            mariadb=not args.no_mariadb,
        )
    )

"""Helpers shared by commands: loading the registry with its warnings, plain-text tables."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cdc.config import LoadedConfig, load_config

#: How long a command waits for ``cdc run`` to let go of a DuckDB warehouse file (it does so between
#: merges, so a command gets in within a merge's time).
LOCK_WAIT_S = 30.0


def load(args: argparse.Namespace) -> LoadedConfig:
    """The registry named by ``--config``; warnings (unset variables) go to stderr."""
    cfg = load_config(args.config)
    for w in cfg.warnings:
        print(w.render(str(cfg.path)), file=sys.stderr)
    return cfg


def print_table(rows: Sequence[Mapping[str, object]], columns: list[str]) -> None:
    """A plain aligned text table."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def subcommands(
    parent: argparse.ArgumentParser, dest: str
) -> Callable[[str, str, Any], argparse.ArgumentParser]:
    """``add(name, help, handler)`` for the subcommands of a command group (``cdc datastream plan``)."""
    sub = parent.add_subparsers(dest=dest, metavar="SUBCOMMAND")

    def add(name: str, help_text: str, handler: Any) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help_text, description=help_text)
        # also accepted after the subcommand; SUPPRESS keeps a value given before it
        s.add_argument("--config", "-c", default=argparse.SUPPRESS, help="registry file")
        s.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
        s.set_defaults(handler=handler)
        return s

    return add

"""Helpers shared by commands: loading the registry with its warnings, subcommand groups."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from cdc.config import LoadedConfig, load_config

#: How long a command waits for ``cdc run`` to let go of a DuckDB warehouse file (it does so between
#: merges, so a command gets in within a merge's time).
LOCK_WAIT_S = 30.0


def load(args: argparse.Namespace, *, writes: bool = False) -> LoadedConfig:
    """The registry named by ``--config``; warnings (unset variables) go to stderr. A command
    that ``writes`` (captures, merges, replays) refuses to start without the PII key its tables
    need, or with another key than the one their values were hashed with."""
    cfg = load_config(args.config)
    for w in cfg.warnings:
        print(w.render(str(cfg.path)), file=sys.stderr)
    if writes:
        cfg.pii_key()
    return cfg


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

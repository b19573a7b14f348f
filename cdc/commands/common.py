"""Helpers shared by commands: loading the registry with its warnings, plain-text tables."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence

from cdc.config import LoadedConfig, load_config


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

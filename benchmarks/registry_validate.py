"""How long ``cdc validate`` takes on a registry of many tables (issue 13: 100,000 in seconds).

Writes a registry of ``--tables`` tables (one source, three typed columns each), then times, in
this one process: ``cdc validate`` as built (libyaml's events straight into values, YAML 1.2) and,
as the yardstick, ruamel.yaml's round-trip loader (what the registry was read with before; it is
still what ``cdc register`` edits the file with) parsing a registry of ``--compare-tables`` tables.
Its rate is per table, so the two sizes compare.

    .venv/bin/python benchmarks/registry_validate.py [--tables 100000] [--compare-tables 10000]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdc.cli import main as cdc_main

TARGET_SECONDS = 10.0  # "in seconds" for 100,000 tables


def write_registry(path: Path, tables: int) -> int:
    lines = [
        "changelog: ./changelog",
        "warehouse: duckdb:///warehouse.duckdb",
        "sources:",
        "  billing:",
        "    kind: postgres",
        "    engine: pgoutput",
        "    dsn: postgresql://cdc@127.0.0.1/billing",
        "    tables:",
    ]
    for i in range(tables):
        lines += [
            f"      - name: public.t{i}",
            "        primary_key: [id]",
            f"        columns: {{id: bigint, amount: 'numeric(12,{i % 10})', note: text}}",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path.stat().st_size


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tables", type=int, default=100_000)
    p.add_argument("--compare-tables", type=int, default=10_000, help="0: skip ruamel.yaml")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        registry = Path(tmp) / "cdc.yaml"
        size = write_registry(registry, args.tables)
        started = time.perf_counter()
        code = cdc_main(["validate", "--config", str(registry)])
        ours = time.perf_counter() - started
        if code != 0:
            print(f"cdc validate exited {code}", file=sys.stderr)
            return 1
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"cdc validate: {args.tables:,} tables ({size / 2**20:.1f} MiB) in {ours:.2f} s, "
            f"{args.tables / ours:,.0f} tables/s, peak RSS {rss:.0f} MiB; "
            f"target {TARGET_SECONDS:.0f} s: {'met' if ours <= TARGET_SECONDS else 'miss'}"
        )
        if args.compare_tables:
            from ruamel.yaml import YAML

            small = Path(tmp) / "small.yaml"
            write_registry(small, args.compare_tables)
            text = small.read_text()
            started = time.perf_counter()
            YAML(typ="rt").load(text)
            theirs = time.perf_counter() - started
            rate = args.compare_tables / theirs
            print(
                f"ruamel.yaml round-trip parse alone: {args.compare_tables:,} tables in "
                f"{theirs:.2f} s, {rate:,.0f} tables/s "
                f"(~{args.tables / rate:.0f} s for {args.tables:,}); "
                f"cdc validate is {args.tables / ours / rate:.1f}x its rate"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How fast `cdc reconcile` compares a PostgreSQL table with its DuckDB state table (issue 16).

A throwaway PostgreSQL gets a table of ``--rows`` rows (several types); a `cdc run` captures it
into DuckDB and keeps running. Once it has archived the snapshot (steady state), in this process: one plain md5 scan of the table on the
source (the yardstick), the reconcile of the equal table, and the reconcile after ``--differ``
scattered keys were changed in the state table. Printed per run: seconds, rows/s, rows that left
the databases, peak RSS of this process. Targets: at most 2x the md5 scan, under 300 MiB, fewer
than 1% of the rows transferred with 10 differences.

    .venv/bin/python benchmarks/reconcile_speed.py [--rows 1000000] [--differ 10]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import duckdb

from cdc.cli import main as cdc_main
from connectors.local_servers import PostgresServer
from connectors.warehouse.duckdb import DuckDBWarehouse

TABLE = "bench.public.subscriptions"
STATE = "bench_subscriptions"
REGISTRY = """\
changelog: ./changelog
warehouse: duckdb:///warehouse.duckdb
state_dir: ./state
sources:
  bench:
    kind: postgres
    engine: pgoutput
    dsn: {dsn}
    tables:
      - name: public.subscriptions
        primary_key: [id]
        columns: {id: bigint, plan: text, amount: "numeric(12,2)", renews_at: timestamptz,
                  note: text, flags: jsonb}
"""


def seed(server: PostgresServer, rows: int) -> str:
    """Database ``bench`` with ``public.subscriptions`` of ``rows`` rows; its DSN."""
    dsn = server.create_database("bench")
    server.execute(
        "CREATE TABLE public.subscriptions (id bigint PRIMARY KEY, plan text, "
        "amount numeric(12,2), renews_at timestamptz, note text, flags jsonb);"
        "INSERT INTO public.subscriptions SELECT g, 'plan ' || (g % 7), (g % 100000) * 1.25, "
        "'2026-01-01 00:00:00+00'::timestamptz + g * interval '1 second', "
        "CASE WHEN g % 3 = 0 THEN NULL ELSE 'note ' || g END, jsonb_build_object('g', g) "
        f"FROM generate_series(1, {rows}) g; ANALYZE public.subscriptions;",
        database="bench",
    )
    return dsn


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def idle(folder: Path, rows: int) -> bool:
    """cdc run has archived every event and holds no unmerged journal segment."""
    out = subprocess.run(
        [sys.executable, "-m", "cdc", "status", "--config", "cdc.yaml", "--format", "json"],
        cwd=folder,
        capture_output=True,
        text=True,
    )
    try:
        runtime = json.loads(out.stdout)["runtime"] or {}
    except (ValueError, KeyError, TypeError):
        return False
    return runtime.get("events_archived", 0) >= rows and runtime.get("journal_segments") == 0


def reconcile(folder: Path, label: str, rows: int) -> dict:
    import contextlib
    import io

    out = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = cdc_main(
            ["reconcile", TABLE, "--config", str(folder / "cdc.yaml"), "--format", "json"]
        )
    total = time.perf_counter() - started
    [report] = json.loads(out.getvalue())
    seconds = total - report["wait_s"]  # the comparison, without waiting for cdc run to catch up
    print(
        f"{label:<28} {seconds:7.2f} s  {rows / seconds:>12,.0f} rows/s  "
        f"(+{report['wait_s']:.1f} s waiting for the state)  "
        f"{report['rows_transferred']:>8,} rows transferred "
        f"({100 * report['rows_transferred'] / rows:.3f}%)  status {report['status']} "
        f"(exit {code})  peak RSS {rss_mib():.0f} MiB\n{'':<28} of which in the source's "
        f"queries {report['source_s']:.2f} s, in the warehouse's {report['state_s']:.2f} s "
        "(the two sides run at the same time)"
    )
    return {**report, "seconds": seconds}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--differ", type=int, default=10)
    args = p.parse_args()
    server = PostgresServer().start()
    run = None
    try:
        dsn = seed(server, args.rows)
        folder = Path(tempfile.mkdtemp(prefix="cdc-reconcile-bench-"))
        (folder / "cdc.yaml").write_text(REGISTRY.replace("{dsn}", dsn))
        print(f"capturing {args.rows:,} rows with cdc run ...", flush=True)
        run = subprocess.Popen(
            [sys.executable, "-m", "cdc", "run", "--config", str(folder / "cdc.yaml")],
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while True:
            time.sleep(2)
            try:
                with duckdb.connect(str(folder / "warehouse.duckdb"), read_only=True) as con:
                    n = con.execute(f"SELECT count(*) FROM {STATE} WHERE _is_current").fetchone()
                if n and n[0] >= args.rows:
                    break
            except duckdb.Error:
                continue
        print("waiting for cdc run to finish archiving the snapshot ...", flush=True)
        while not idle(folder, args.rows):  # measured with the service steady, not mid-backfill
            time.sleep(2)
        started = time.perf_counter()
        server.execute(
            "SELECT count(*), sum(length(md5(s::text))) FROM public.subscriptions s",
            database="bench",
        )
        md5_s = time.perf_counter() - started
        print(
            f"{'one md5 scan on PostgreSQL':<28} {md5_s:7.2f} s  {args.rows / md5_s:>12,.0f} rows/s"
        )
        equal = reconcile(folder, "reconcile, equal", args.rows)
        keys = random.Random(1).sample(range(1, args.rows + 1), args.differ)
        wh = DuckDBWarehouse(f"duckdb:///{folder / 'warehouse.duckdb'}", lock_wait_s=60)
        try:  # cdc run holds the file between its merges: wait for a turn
            wh.con.execute(
                f"UPDATE {STATE} SET plan = 'changed' WHERE _is_current AND id IN "
                f"({', '.join(map(str, keys))})"
            )
        finally:
            wh.close()
        differ = reconcile(folder, f"reconcile, {args.differ} differ", args.rows)
        found = sorted(d["key"]["id"] for d in differ["different"])
        print(
            f"\nratio to one md5 scan: equal {equal['seconds'] / md5_s:.2f}x, "
            f"{args.differ} differ {differ['seconds'] / md5_s:.2f}x (target <= 2x); the source's "
            f"queries alone: equal {equal['source_s'] / md5_s:.2f}x, {args.differ} differ "
            f"{differ['source_s'] / md5_s:.2f}x; "
            f"found the {args.differ} changed keys: {found == sorted(keys)}"
        )
        return 0 if equal["status"] == "equal" and found == sorted(keys) else 1
    finally:
        if run is not None:
            run.terminate()
            run.wait(120)
        server.destroy()


if __name__ == "__main__":
    sys.exit(main())

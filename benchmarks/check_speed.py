"""How long `cdc check`'s invariants take on a large DuckDB state table (issue 15: 10M versions
in under 10 s on our machines).

Builds a state table of ``--keys`` keys x ``--versions`` versions each through the real schema
(``plan_create_state``), filled by one INSERT ... SELECT from ``range()`` whose windows chain
exactly, then times ``DuckDBWarehouse.check`` (every invariant, one query each) and checks that
all pass; then breaks one version and checks that it is found.

    .venv/bin/python benchmarks/check_speed.py [--keys 1000000] [--versions 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connectors.warehouse.duckdb import DuckDBWarehouse
from state_models.scd2 import TableDef

TARGET_S = 10.0
TABLE = TableDef(
    "bench.public.subscriptions",
    "subscriptions",
    "postgres",
    ("id",),
    {"id": "bigint", "plan": "text", "amount": "numeric(12,2)"},
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--versions", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="cdc-check-") as tmp:
        wh = DuckDBWarehouse(f"duckdb:///{tmp}/w.duckdb", threads=args.threads)
        wh.ensure_table(TABLE)
        started = time.perf_counter()
        n = args.versions
        wh.con.execute(
            f"""
            INSERT INTO subscriptions
            SELECT k AS id, 'plan-' || (v % 4) AS plan, (k % 1000)::DECIMAL(12,2) AS amount,
                   TIMESTAMPTZ '2026-01-01' + to_seconds(k % 86400 + v * 100000) AS _valid_from,
                   CASE WHEN v < {n - 1}
                        THEN TIMESTAMPTZ '2026-01-01' + to_seconds(k % 86400 + (v + 1) * 100000)
                   END AS _valid_to,
                   v = {n - 1} AS _is_current, false AS _is_deleted,
                   CASE WHEN v = 0 THEN 'c' ELSE 'u' END AS _op,
                   lpad(printf('%x', v), 16, '0') || '/' || lpad(printf('%x', k), 16, '0') AS _seq,
                   md5(k::TEXT || '/' || v::TEXT) AS _event_id, NULL AS _tx_id,
                   now() AS _ingested_at, NULL AS _next_seq, NULL AS _unavailable
            FROM range({args.keys}) AS keys(k), range({n}) AS versions(v)
            """
        )
        built = time.perf_counter() - started
        versions = wh.con.execute("SELECT count(*) FROM subscriptions").fetchone()[0]
        print(f"built {versions:,} versions in {built:.1f} s (not timed)")
        started = time.perf_counter()
        results = wh.check(TABLE)
        took = time.perf_counter() - started
        failed = [r.check for r in results if r.status == "fail"]
        print(
            f"cdc check invariants: {versions:,} versions in {took:.2f} s "
            f"({versions / took / 1e6:.1f}M versions/s); {failed if failed else 'all pass'}; "
            f"target {TARGET_S:.0f} s: {'met' if took <= TARGET_S else 'miss'}; "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
        )
        wh.con.execute("UPDATE subscriptions SET _is_current = true WHERE id = 42 AND _op = 'c'")
        found = {r.check: r.keys for r in wh.check(TABLE) if r.status == "fail"}
        print(
            f"one version broken on purpose: found by {sorted(found)} at keys {found.get('one_current')}"
        )
        wh.close()
    return 0 if not failed and found else 1


if __name__ == "__main__":
    raise SystemExit(main())

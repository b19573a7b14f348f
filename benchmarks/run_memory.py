"""Peak memory of `cdc run` while it captures, merges and archives a large initial snapshot.

A throwaway PostgreSQL gets a table of ``--rows`` rows (bigint key, text, numeric(12,2),
timestamptz, nullable text, jsonb); `cdc run` (pgoutput into DuckDB, a local changelog) captures
it from scratch. This process samples the `cdc run` process's resident memory every half second
until every row is merged and archived and the journal is empty, and prints the peak, the time it
took, and the RSS over time. Target (issue 17): memory bounded whatever the backlog, under 1 GiB.

    .venv/bin/python benchmarks/run_memory.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from reconcile_speed import REGISTRY, idle, seed  # the same table and registry

from connectors.local_servers import PostgresServer


def rss_mib(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return None
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for cdc run")
    args = p.parse_args()
    server = PostgresServer().start()
    folder = Path(tempfile.mkdtemp(prefix="cdc-run-memory-"))
    run = None
    try:
        dsn = seed(server, args.rows)
        (folder / "cdc.yaml").write_text(REGISTRY.replace("{dsn}", dsn))
        print(f"cdc run capturing a snapshot of {args.rows:,} rows ...", flush=True)
        started = time.monotonic()
        run = subprocess.Popen(
            [sys.executable, "-m", "cdc", "run", "--config", str(folder / "cdc.yaml")],
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        peak, said, checked = 0.0, 0.0, 0.0
        while True:
            time.sleep(0.5)
            rss = rss_mib(run.pid)
            if rss is None or run.poll() is not None:
                print(f"cdc run exited with {run.poll()}", file=sys.stderr)
                return 1
            peak = max(peak, rss)
            now = time.monotonic() - started
            if now - said >= 5:
                said = now
                print(f"{now:7.1f} s  RSS {rss:6.0f} MiB  peak {peak:6.0f} MiB", flush=True)
            if now - checked >= 3:  # `cdc status` costs a process start: not every sample
                checked = now
                if idle(folder, args.rows):
                    break
            if now > args.timeout:
                print("cdc run did not finish in time", file=sys.stderr)
                return 1
        took = time.monotonic() - started
        print(
            f"\n{args.rows:,} rows captured, merged and archived in {took:.1f} s; peak RSS of "
            f"cdc run {peak:.0f} MiB (target: under 1 GiB, bounded whatever the backlog)"
        )
        return 0 if peak < 1024 else 1
    finally:
        if run is not None and run.poll() is None:
            run.terminate()
            run.wait(120)
        server.destroy()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

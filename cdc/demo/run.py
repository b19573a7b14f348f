"""``cdc demo``: the whole product on throwaway local databases, in a few minutes.

1. start a throwaway PostgreSQL (subscriptions side) and, when installed, MariaDB (payments side);
2. create the schema, register every table with ``cdc register`` (live introspection) in a fresh
   ``cdc.yaml``;
3. run the embedded runtime (capture from the logs → journal → changelog + SCD2 tables in DuckDB)
   while a realistic workload runs, with a progress bar;
4. print the history of one subscription as a timeline, an as-of answer, the freshness lag, and
   where the changelog and DuckDB file are.

The servers are removed on exit, also on Ctrl-C; the demo folder (registry, changelog, DuckDB)
stays so it can be queried afterwards.
"""

from __future__ import annotations

import datetime as dt
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

from cdc.config import load_config
from cdc.console import ProgressBar
from cdc.demo.workload import SubscriptionWorkload, WorkloadStats
from cdc.register import register_table
from cdc.runtime import Runtime, RuntimeOptions
from connectors.local_servers import MariaDBServer, PostgresServer, mariadb_binaries
from connectors.sources import mysql_params
from connectors.warehouse import open_warehouse
from state_models.errors import CdcError
from state_models.scd2 import TableDef

PG_TABLES = ["public.plans", "public.users", "public.subscriptions", "public.invoices"]
MYSQL_TABLES = ["payments.payments", "payments.refunds"]


@dataclass
class DemoOptions:
    folder: Path = Path(".cdc-demo")
    seconds: float = 20.0
    rate: float = 40.0  # business actions per second
    engine: str = "pgoutput"  # pgoutput | debezium
    mariadb: bool = True
    seed: int = 7


def run_demo(opts: DemoOptions, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    folder = opts.folder.resolve()
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    servers: list[Any] = []
    try:
        say(err, "starting a throwaway PostgreSQL (wal_level=logical)")
        pg = PostgresServer()
        servers.append(pg)
        pg.start()
        billing_dsn = pg.create_database("billing")
        my = None
        if opts.mariadb and mariadb_binaries() is not None and binlog_capture_available():
            say(err, "starting a throwaway MariaDB (ROW binlog, full images and metadata)")
            my = MariaDBServer()
            servers.append(my)
            my.start()
            my.execute("CREATE DATABASE payments")
        elif opts.mariadb and mariadb_binaries() is None:
            say(
                err,
                "MariaDB is not installed: the payments side is skipped (apt-get install mariadb-server)",
            )
        elif opts.mariadb:
            say(err, "the binlog capture engine is not in this build: the payments side is skipped")
        payments_dsn = my.dsn("payments") if my else None
        SubscriptionWorkload.create_schema(
            billing_dsn, mysql_params(payments_dsn) if payments_dsn else None
        )

        config = write_registry(folder, billing_dsn, payments_dsn, opts.engine)
        cfg = load_config(config)
        for name, tables in (("billing", PG_TABLES), ("payments", MYSQL_TABLES if my else [])):
            for t in tables:
                register_table(config, cfg.registry, name, t, None)
                cfg = load_config(config)
        say(err, f"registered {len(cfg.registry.tables())} tables in {config}")

        runtime = Runtime(cfg, RuntimeOptions(max_latency_s=0.1, archive_interval_s=10.0))
        runtime.prepare()  # on the main thread: a JVM started by the runner would hang the exit
        stop = threading.Event()
        result: dict[str, Any] = {}
        runner = threading.Thread(
            target=lambda: result.setdefault("summary", runtime.run(stop)), daemon=True
        )
        runner.start()
        wait_streaming(runtime, runner, err)

        workload = SubscriptionWorkload(
            billing_dsn, mysql_params(payments_dsn) if payments_dsn else None, seed=opts.seed
        )
        started = dt.datetime.now(dt.UTC)
        bar = ProgressBar(opts.seconds, "workload", unit=None, file=err)
        try:
            workload.run(opts.seconds, opts.rate, on_progress=progress_shown(bar, runtime))
        finally:
            bar.finish()
            workload.close()
        caught_up = wait_caught_up(runtime, err)
        stop.set()
        runner.join(120)
        summary = result.get("summary")
        if summary is None or summary.exit_code != 0:
            say(err, f"the runtime failed: {summary.error if summary else 'did not stop'}")
            return 1
        report(out, cfg, runtime, workload.stats, started, caught_up)
        return 0
    finally:
        for s in reversed(servers):
            s.destroy()


def say(err: TextIO, text: str) -> None:
    err.write(f"cdc demo: {text}\n")
    err.flush()


def write_registry(folder: Path, billing_dsn: str, payments_dsn: str | None, engine: str) -> Path:
    text = f"""# Written by `cdc demo`. Tables were added by `cdc register` (live introspection).
changelog: ./changelog
warehouse: duckdb:///warehouse.duckdb
state_dir: ./state
sources:
  billing:
    kind: postgres
    engine: {engine}
    dsn: {billing_dsn}
    sla: {{freshness: {{warn: 1h, error: 1d}}}}
    tables: []
"""
    if payments_dsn:
        text += f"""  payments:
    kind: mysql
    engine: binlog
    dsn: {payments_dsn}
    server_id: 4242
    sla: {{freshness: {{warn: 1h, error: 1d}}}}
    tables: []
"""
    path = folder / "cdc.yaml"
    path.write_text(text)
    return path


def binlog_capture_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("connectors.capture.binlog") is not None


def wait_streaming(
    runtime: Runtime, runner: threading.Thread, err: TextIO, timeout: float = 120.0
) -> None:
    """Wait until every capture took its snapshot and streams (so the workload is in the log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not runner.is_alive():
            raise CdcError(f"the runtime stopped: {runtime.summary.error or 'no reason given'}")
        stats = runtime.capture_stats()
        if stats and all(s.phase == "streaming" for s in stats.values()):
            return
        failed = [s for s in stats.values() if s.phase == "failed"]
        if failed:
            raise CdcError(f"capture failed: {failed[0].last_error}")
        time.sleep(0.1)
    raise CdcError(
        f"captures did not start streaming within {timeout:.0f}s: {runtime.capture_stats()}"
    )


def progress_shown(bar: ProgressBar, runtime: Runtime) -> Any:
    """The workload's progress callback: elapsed time on the bar, what was done beside it."""

    def show(elapsed: float, stats: WorkloadStats) -> None:
        fresh = runtime.freshness()
        lag = f"p50 lag {fresh['p50']:.2f}s" if fresh else "lag -"
        bar.set(
            min(elapsed, bar.total or elapsed),
            f"{stats.transactions:,} business actions  {runtime.summary.events_merged:,} changes "
            f"merged ({runtime.events_per_second():,.0f}/s)  {lag}",
        )

    return show


def wait_caught_up(runtime: Runtime, err: TextIO, timeout: float = 120.0) -> bool:
    """Wait until everything captured is merged (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        captured = sum(s.events for s in runtime.capture_stats().values())
        time.sleep(0.5)  # changes committed just before the workload stopped are still in flight
        settled = sum(s.events for s in runtime.capture_stats().values()) == captured
        merged = runtime.summary.events_merged >= captured and not runtime.journal.pending("merged")
        if captured and settled and merged:
            return True
    say(err, f"the merge did not catch up within {timeout:.0f}s")
    return False


# --------------------------------------------------------------------------- the report


def report(
    out: TextIO,
    cfg: Any,
    runtime: Runtime,
    stats: WorkloadStats,
    started: dt.datetime,
    caught_up: bool,
) -> None:
    cdc, python = runnable("cdc"), runnable("python")  # hints runnable as printed
    w = open_warehouse(cfg.warehouse_url, lock_wait_s=30)
    try:
        subs = TableDef.from_registered(cfg.registry.table("billing.public.subscriptions"))
        invoices = TableDef.from_registered(cfg.registry.table("billing.public.invoices"))
        versions = w.history(subs)
        by_key: dict[Any, list[dict[str, Any]]] = {}
        for v in versions:
            by_key.setdefault(v["id"], []).append(v)
        # the subscription with the richest story: most versions, preferring one still alive
        sub_id, story = max(
            by_key.items(), key=lambda kv: (len(kv[1]), not kv[1][-1]["_is_deleted"])
        )
        out.write("\n" + "=" * 78 + "\n")
        actions = ", ".join(
            f"{n} {k.replace('_', ' ')}"
            for k, n in sorted(stats.actions.items(), key=lambda x: -x[1])
        )
        out.write(f"What happened: {stats.transactions:,} business actions ({actions})\n")
        out.write(
            f"Captured from the database logs and merged: {runtime.summary.events_merged:,} row changes "
            f"into {len(cfg.registry.tables())} SCD2 tables ({len(runtime.dead_letters)} dead letters)\n"
        )
        out.write("=" * 78 + "\n\n")
        out.write(
            f"History of subscription {sub_id} (state table {subs.state_table}), ordered by the source log:\n\n"
        )
        out.write(timeline(story))
        invoice_versions = w.history(invoices)
        paid = [
            v for v in invoice_versions if v.get("subscription_id") == sub_id and v["_is_current"]
        ]
        out.write(one_transaction(versions, invoice_versions, subs, invoices, cdc, rel(cfg.path)))
        if paid:
            out.write(
                "\n  invoices now: "
                + ", ".join(f"#{v['id']} {v['status']} {fmt(v['amount'])}" for v in paid)
                + "\n"
            )

        # as-of: the plan at a moment between two of its versions
        if len(story) >= 2:
            a, b = story[len(story) // 2 - 1], story[len(story) // 2]
            at = a["_valid_from"] + (b["_valid_from"] - a["_valid_from"]) / 2
            rows = [r for r in w.as_of(subs, at=at) if r["id"] == sub_id]
            user = story[0].get("user_id")
            answer = (
                f"plan {rows[0]['plan_id']!r}, status {rows[0]['status']!r}, amount {fmt(rows[0]['amount'])}"
                if rows
                else "no live subscription"
            )
            out.write(
                f"\nAs of {at.isoformat(timespec='microseconds')}: user {user} was on {answer}\n"
            )
            out.write(
                f"  ({cdc} as-of --config {rel(cfg.path)} {subs.state_table} --at {at.isoformat()})\n"
            )
        fresh = runtime.freshness()
        if fresh:
            out.write(
                f"\nFreshness: a committed change was visible in DuckDB after {fresh['p50']:.2f}s (p50), "
                f"{fresh['p99']:.2f}s (p99), over {int(fresh['n']):,} changes"
                + ("" if caught_up else " (the merge had NOT fully caught up)")
                + "\n"
            )
        out.write("\nEverything is kept; query it:\n")
        out.write(f"  registry   {rel(cfg.path)}\n")
        out.write(
            f"  changelog  {rel(Path(cfg.changelog_root))}   (immutable Parquet, one folder per table)\n"
        )
        out.write(f"  DuckDB     {rel(Path(cfg.warehouse_url.removeprefix('duckdb:///')))}\n")
        out.write(
            f"  {cdc} history --config {rel(cfg.path)} {subs.state_table} --key id={sub_id}\n"
        )
        out.write(f"  {cdc} changelog ls --config {rel(cfg.path)}\n")
        db = rel(Path(cfg.warehouse_url.removeprefix("duckdb:///")))
        query = f"SELECT plan_id, status, count(*) FROM {subs.state_table}_current GROUP BY ALL ORDER BY ALL"
        out.write(
            f"  {python} -c \"import duckdb; duckdb.connect('{db}', read_only=True).sql('{query}').show()\"\n"
        )
    finally:
        w.close()


def one_transaction(
    versions: list[dict[str, Any]],
    invoice_versions: list[dict[str, Any]],
    subs: TableDef,
    invoices: TableDef,
    cdc: str,
    config: str,
) -> str:
    """One business action as the one source transaction it was, across tables."""
    by_tx: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for v in versions:
        if v.get("_tx_id"):
            by_tx.setdefault(v["_tx_id"], []).append((subs.table_id, v))
    for v in invoice_versions:
        if v.get("_tx_id") in by_tx:
            by_tx[v["_tx_id"]].append((invoices.table_id, v))
    both = [(tx, rows) for tx, rows in by_tx.items() if len({t for t, _ in rows}) > 1]
    if not both:
        return ""
    tx, rows = both[0]  # an early one: the watermark has passed it
    lines = [f"\nOne business action, one source transaction (tx {tx}) across its tables:\n"]
    for table_id, v in sorted(rows, key=lambda r: r[1]["_seq"]):
        lines.append(
            f"  {v['_seq']}  {table_id:<30} id {v['id']}: {v['_op']} status {v.get('status')!r}\n"
        )
    lines.append(f"  ({cdc} history --config {config} --tx {tx})\n")
    lines.append("  both tables as of that transaction (never half of one):\n")
    lines.append(
        f"  ({cdc} as-of --config {config} --consistent {subs.table_id} {invoices.table_id} "
        f"--tx {tx})\n"
    )
    return "".join(lines)


SHOWN = ("plan_id", "status", "amount", "trial_ends_at", "current_period_end", "canceled_at")


def timeline(story: list[dict[str, Any]]) -> str:
    lines = []
    previous: dict[str, Any] | None = None
    for v in story:
        when = v["_valid_from"].isoformat(sep=" ", timespec="microseconds")
        op = {
            "c": "created",
            "u": "updated",
            "d": "deleted",
            "r": "snapshot",
            "t": "truncated",
        }.get(v["_op"], v["_op"])
        if v["_is_deleted"]:
            change = "row deleted"
        elif previous is None or previous.get("_is_deleted"):
            change = ", ".join(f"{c}={fmt(v.get(c))}" for c in SHOWN if v.get(c) is not None)
        else:
            diffs = [
                f"{c}: {fmt(previous.get(c))} -> {fmt(v.get(c))}"
                for c in SHOWN
                if previous.get(c) != v.get(c)
            ]
            change = ", ".join(diffs) or "(no visible change)"
        marker = "  <- current" if v["_is_current"] and not v["_is_deleted"] else ""
        lines.append(f"  {when}  {op:<9} {change}{marker}")
        previous = v
    return "\n".join(lines) + "\n"


def fmt(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    return str(value)


def runnable(name: str) -> str:
    """How to run this environment's ``name`` (``cdc``, ``python``) from the user's shell: the bare
    name when it is what the shell finds, else its path (``.venv/bin/cdc`` after ``make demo``)."""
    here = Path(sys.executable).parent / name
    found = shutil.which(name)
    if found and Path(found).resolve() == here.resolve():
        return name
    return rel_path(here)


def rel_path(path: Path) -> str:
    """``path`` relative to the working folder when it lies below it (symlinks kept)."""
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)

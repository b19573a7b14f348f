"""Commit-to-visible latency and throughput of the production path, run locally end to end.

    PostgreSQL (throwaway) -> embedded Debezium + Pub/Sub sink (capture process)
        -> Pub/Sub stand-in (its own process) -> streaming merge job on Beam's DirectRunner
        -> changelog files (local folder) + state table in DuckDB (this process)

0. Warm-up: ``--warmup`` s at ``--rate`` (not measured), so that the capture's JVM has compiled
   Debezium's hot code before the measured phase.
1. Steady: a writer process commits ``--rate`` changes/s (transactions of ``--tx-rows`` updates)
   for ``--seconds``. Each change's latency is the time it is first seen in the DuckDB state table
   (polled every ``--poll`` s) minus its source commit time (``_valid_from``, Debezium's commit
   time). Targets: p50 under 2 s, p99 under 5 s.
2. Ceiling: ``--burst`` changes committed as fast as PostgreSQL takes them; the sustained
   throughput is burst / (last change visible - first change committed).
3. Reference, same machine, same run: Beam's ``ReadFromPubSub`` on the DirectRunner into a
   no-op step, reading ``--bare`` pre-published messages: the ceiling of the runner itself (with
   the read the job installed in this process: pulls of up to 1,000, ``merge_jobs.direct_runner``).

    python benchmarks/pipeline_latency.py                      # 1k changes/s for 60 s
    python benchmarks/pipeline_latency.py --rate 500 --seconds 20 --burst 10000

Everything runs on this machine's cores (PostgreSQL, the JVM, the stand-in, Beam); the load
average before and after is printed, so a busy machine shows in the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_GCE_CHECK", "true")

PROJECT = "bench-project"
TABLE_ID = "bench.public.subs"
REGISTRY = """
changelog: {dir}/changelog
warehouse: duckdb:///{dir}/state.duckdb
state_dir: {dir}/state
sources:
  bench:
    kind: postgres
    engine: debezium
    dsn: {dsn}
    snapshot: never
    tables:
      - name: public.subs
        primary_key: [id]
        columns: {{id: bigint, plan: text, amount: "numeric(12,2)", updated_at: timestamptz}}
pubsub:
  project: {project}
  ack_deadline_seconds: 60
  # One Publish call carries one ordering key, so a batch costs a call per distinct key. Measured
  # on 2 busy cores with 200-change batches (sink + stand-in CPU per change): per-row keys 450/s
  # (2.0 ms), 64 buckets 1,000/s (0.85 ms), 16 buckets 2,100/s (0.40 ms). A row keeps its bucket,
  # so its changes stay in order; 16 buckets are 16 x 1 MB/s of ordered throughput per table.
  ordering_buckets: 16
"""


# --------------------------------------------------------------------------- child roles


def run_capture(config: str) -> int:
    """Capture the source into Pub/Sub until SIGTERM; prints 'streaming' once it streams."""
    from cdc.config import load_config
    from connectors.capture import make_capture
    from connectors.pubsub import PubSubSink
    from state_models.registry import table_infos

    registry = load_config(config).registry
    capture = make_capture(
        "bench",
        registry.sources["bench"],
        table_infos(registry, "bench"),
        Path(config).parent / "capture",
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def announce() -> None:
        while capture.stats().phase != "streaming" and not stop.is_set():
            time.sleep(0.05)
        print("streaming", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    with PubSubSink.from_registry(registry) as sink:
        capture.run(sink, stop)
    print(json.dumps({"captured": capture.stats().events}), flush=True)
    return 0


def run_workload(dsn: str, rows: int, rate: float, seconds: float, tx_rows: int, burst: int) -> int:
    """Commit updates at ``rate`` changes/s for ``seconds`` (or ``burst`` as fast as possible)."""
    import psycopg

    rng = random.Random(1)
    done = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        start = time.monotonic()
        if burst:
            size = 1000
            for lo in range(0, burst, size):
                ids = [(lo + i) % rows + 1 for i in range(min(size, burst - lo))]
                conn.execute(
                    "UPDATE public.subs SET amount = amount + 1, updated_at = now() WHERE id = ANY(%s)",
                    (ids,),
                )
                done += len(ids)
        else:
            tx_interval = tx_rows / rate
            n_tx = int(seconds * rate / tx_rows)
            for i in range(n_tx):
                pause = start + i * tx_interval - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                ids = rng.sample(range(1, rows + 1), tx_rows)
                conn.execute(
                    "UPDATE public.subs SET amount = amount + 1, updated_at = now() WHERE id = ANY(%s)",
                    (ids,),
                )
                done += tx_rows
        elapsed = time.monotonic() - start
    print(json.dumps({"changes": done, "seconds": elapsed}), flush=True)
    return 0


# --------------------------------------------------------------------------- the orchestra


class Visibility:
    """Polls the state table; records when each change (by event id) first became visible."""

    def __init__(self, url: str, table: Any, every: float):
        self.url, self.table, self.every = url, table, every
        self.seen: dict[str, tuple[int, float]] = {}  # event id -> (commit µs, first seen s)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="visibility", daemon=True)

    def _run(self) -> None:
        import duckdb

        from connectors.warehouse.duckdb import duckdb_path

        con = duckdb.connect(duckdb_path(self.url))
        watermark = 0
        name = self.table.state_table
        while not self.stop.is_set():
            time.sleep(self.every)
            try:
                rows = con.execute(
                    f"SELECT _event_id, epoch_us(_valid_from), epoch_us(_ingested_at) FROM {name} "
                    "WHERE epoch_us(_ingested_at) >= ?",
                    [watermark],
                ).fetchall()
            except duckdb.CatalogException:
                continue  # the first MERGE has not created the table yet
            now = time.time()
            for event_id, commit_us, ingested_us in rows:
                if event_id not in self.seen:
                    self.seen[event_id] = (commit_us, now)
                watermark = max(watermark, ingested_us)
        con.close()

    def latencies(self, since_us: int, until_us: int) -> list[float]:
        return sorted(
            seen - commit / 1e6
            for commit, seen in self.seen.values()
            if since_us <= commit < until_us
        )

    def wait_for(self, since_us: int, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(1 for c, _ in list(self.seen.values()) if c >= since_us) >= count:
                return True
            time.sleep(0.2)
        return False


def pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")


def start_standin() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.pubsub_emulator"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("PUBSUB_EMULATOR_HOST="):
        proc.kill()
        raise RuntimeError(f"the Pub/Sub stand-in did not start: {line!r}")
    return proc, line.split("=", 1)[1]


def child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )


def result_of(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child failed ({proc.returncode}): {out[-2000:]}")
    return dict(json.loads(lines[-1]))


def bare_reference(n: int) -> float:
    """Messages/s of ReadFromPubSub -> no-op on the DirectRunner, from a pre-filled subscription."""
    import apache_beam as beam
    from apache_beam.io.gcp.pubsub import ReadFromPubSub
    from apache_beam.options.pipeline_options import PipelineOptions
    from google.cloud import pubsub_v1

    from merge_jobs import direct_runner

    topic = f"projects/{PROJECT}/topics/bare"
    sub = f"projects/{PROJECT}/subscriptions/bare"
    publisher = pubsub_v1.PublisherClient()
    publisher.create_topic(name=topic)
    with pubsub_v1.SubscriberClient() as subscriber:
        subscriber.create_subscription(name=sub, topic=topic, ack_deadline_seconds=60)
    payload = b"x" * 1500  # about one Debezium envelope with its schema block
    futures = [publisher.publish(topic, payload, n=str(i)) for i in range(n)]
    for f in futures:
        f.result()
    publisher.stop()
    marker = Path(tempfile.mkdtemp()) / "count"

    class Count(beam.DoFn):
        def setup(self) -> None:
            self.f = open(marker, "a")  # noqa: SIM115 - one line per element, closed by the OS

        def process(self, _: Any) -> Iterable[Any]:
            self.f.write(".")
            self.f.flush()
            return ()  # annotated Iterable, not None: Beam 2.78 refuses a `-> None` process

    pipeline = beam.Pipeline(options=PipelineOptions([], streaming=True, project=PROJECT))
    direct_runner.install(pipeline)  # the job's large pulls, as the job has them
    _ = pipeline | ReadFromPubSub(subscription=sub, with_attributes=True) | beam.ParDo(Count())
    start = time.monotonic()
    result = pipeline.run()
    try:
        while (marker.stat().st_size if marker.exists() else 0) < n:
            if time.monotonic() - start > 300:
                break
            time.sleep(0.1)
    finally:
        result.cancel()
    return (marker.stat().st_size if marker.exists() else 0) / (time.monotonic() - start)


def orchestrate(args: argparse.Namespace) -> int:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from google.cloud import pubsub_v1

    from cdc.config import load_config
    from connectors.local_servers import PostgresServer
    from connectors.pubsub import ensure_pubsub
    from merge_jobs.settings import (
        JobSettings,
        dead_letter_topic_of,
        registered_tables,
        subscriptions_of,
    )
    from merge_jobs.streaming import build_streaming

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="cdc-bench-"))
    pg = PostgresServer().start()
    standin, host = start_standin()
    os.environ["PUBSUB_EMULATOR_HOST"] = host
    capture = None
    result = None
    try:
        dsn = pg.create_database("bench")
        pg.execute(
            "CREATE TABLE public.subs (id bigint PRIMARY KEY, plan text NOT NULL, "
            "amount numeric(12,2) NOT NULL, updated_at timestamptz NOT NULL)",
            database="bench",
        )
        pg.execute(
            "INSERT INTO public.subs SELECT g, 'basic', 10, now() FROM generate_series(1, %s) g",
            database="bench",
            params=(args.rows,),
        )
        config = work / "cdc.yaml"
        config.write_text(REGISTRY.format(dir=work, dsn=dsn, project=PROJECT))
        registry = load_config(config).registry
        layout = registry.pubsub_layout()
        assert layout is not None
        ensure_pubsub(layout, pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient())
        infos, defs = registered_tables(registry)
        settings = JobSettings(
            tables=infos,
            table_defs=defs,
            warehouse_url=f"duckdb:///{work}/state.duckdb",
            changelog_root=str(work / "changelog"),
            dead_letter_folder=str(work / "dead_letters"),
            dead_letter_topic=dead_letter_topic_of(registry),
            batch_size=args.batch_size,
            batch_max_latency_s=args.batch_max_latency,
            changelog_window_s=args.changelog_window,
        )
        pipeline = beam.Pipeline(options=PipelineOptions([], streaming=True, project=PROJECT))
        build_streaming(pipeline, settings, subscriptions_of(registry))
        result = pipeline.run()
        visible = Visibility(settings.warehouse_url, defs[TABLE_ID], args.poll)
        visible.thread.start()

        capture = child("--role", "capture", "--config", str(config))
        assert capture.stdout is not None
        if capture.stdout.readline().strip() != "streaming":
            raise RuntimeError("the capture did not start streaming")

        def at_rate(seconds: float) -> dict[str, Any]:
            """Commit changes at --rate for ``seconds`` (a writer process); its counts."""
            workload = child(
                *("--role", "workload", "--dsn", dsn, "--rows", str(args.rows)),
                *("--rate", str(args.rate), "--seconds", str(seconds)),
                *("--tx-rows", str(args.tx_rows), "--burst", "0"),
            )
            return result_of(workload, timeout=seconds * 3 + 60)

        # 0. warm-up: the capture's JVM compiles Debezium's hot code during its first tens of
        # thousands of changes (the C2 compiler alone took ~9 s of CPU here), so a cold start would
        # be measured as a backlog; the steady phase starts once the warm-up is visible.
        warmup = None
        if args.warmup > 0:
            warm_from = int(time.time() * 1e6)
            warmup = at_rate(args.warmup)
            visible.wait_for(warm_from, warmup["changes"], timeout=args.drain)
            warmup["drained_s"] = time.time() - warm_from / 1e6

        # 1. steady rate
        steady_from = int(time.time() * 1e6)
        w = at_rate(args.seconds)
        steady_until = int(time.time() * 1e6)
        drained = visible.wait_for(steady_from, w["changes"], timeout=args.drain)
        lat = visible.latencies(steady_from, steady_until)
        missing = w["changes"] - len(lat)

        # 2. ceiling
        time.sleep(2)
        burst_from = int(time.time() * 1e6)
        b = result_of(
            child(
                "--role",
                "workload",
                "--dsn",
                dsn,
                "--rows",
                str(args.rows),
                "--burst",
                str(args.burst),
            ),
            timeout=600,
        )
        burst_done = visible.wait_for(burst_from, b["changes"], timeout=args.drain)
        burst_seen = [s for c, s in visible.seen.values() if c >= burst_from]
        burst_commits = [c for c, _ in visible.seen.values() if c >= burst_from]
        ceiling = (
            len(burst_seen) / (max(burst_seen) - min(burst_commits) / 1e6) if burst_seen else 0.0
        )
        visible.stop.set()
    finally:
        if capture is not None:
            capture.send_signal(signal.SIGTERM)
            try:
                capture.wait(60)
            except subprocess.TimeoutExpired:
                capture.kill()
        if result is not None:
            result.cancel()
    bare = bare_reference(args.bare) if args.bare else float("nan")
    standin.terminate()
    standin.wait(10)
    pg.destroy()
    load_after = os.getloadavg()

    print()
    print(
        f"machine: {os.cpu_count()} cores; load average before {load_before[0]:.2f}, "
        f"after {load_after[0]:.2f} (1 min)"
    )
    print(
        f"settings: batch {args.batch_size} / {args.batch_max_latency} s, changelog window "
        f"{args.changelog_window} s, poll {args.poll} s"
    )
    if warmup is not None:
        print(
            f"warm-up (not measured): {warmup['changes']} changes at {args.rate:.0f}/s, visible "
            f"{warmup['drained_s']:.1f} s after it began"
        )
    print(
        f"steady: {w['changes']} changes in {w['seconds']:.1f} s "
        f"({w['changes'] / w['seconds']:.0f}/s offered, target {args.rate:.0f}/s)"
    )
    if lat:
        print(
            f"  commit-to-visible latency: p50 {pct(lat, 0.5):.2f} s, p99 {pct(lat, 0.99):.2f} s, "
            f"max {lat[-1]:.2f} s, mean {statistics.fmean(lat):.2f} s  (targets: p50 < 2 s, p99 < 5 s)"
        )
    if not drained or missing:
        print(
            f"  NOT DRAINED: {missing} of {w['changes']} changes not visible {args.drain:.0f} s "
            "after the load stopped"
        )
    print(
        f"ceiling: {b['changes']} changes committed in {b['seconds']:.1f} s; "
        f"{len(burst_seen)} visible; sustained {ceiling:.0f} changes/s end to end"
        + ("" if burst_done else f" (not drained within {args.drain:.0f} s)")
    )
    print(
        f"reference: Beam DirectRunner ReadFromPubSub -> no-op: {bare:.0f} messages/s "
        "(with the job's read: pulls of up to 1,000, merge_jobs/direct_runner.py)"
    )
    print(f"(work folder {work})")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rate", type=float, default=1000.0, help="changes/s in the steady phase")
    p.add_argument("--seconds", type=float, default=60.0, help="length of the steady phase")
    p.add_argument(
        "--warmup", type=float, default=15.0, help="seconds at --rate before the steady phase"
    )
    p.add_argument("--tx-rows", type=int, default=10, help="changes per source transaction")
    p.add_argument("--rows", type=int, default=5000, help="rows in the source table")
    p.add_argument("--burst", type=int, default=30000, help="changes in the ceiling phase")
    p.add_argument(
        "--bare", type=int, default=20000, help="messages for the Beam reference (0: skip)"
    )
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--batch-max-latency", type=float, default=0.5)
    p.add_argument("--changelog-window", type=float, default=10.0)
    p.add_argument("--poll", type=float, default=0.1, help="seconds between visibility polls")
    p.add_argument("--drain", type=float, default=180.0, help="longest wait for the backlog")
    p.add_argument("--role", choices=["capture", "workload"], help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--dsn", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role == "capture":
        return run_capture(args.config)
    if args.role == "workload":
        return run_workload(args.dsn, args.rows, args.rate, args.seconds, args.tx_rows, args.burst)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())

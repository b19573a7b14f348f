"""Changelog write and replay throughput (issue 5).

1. ``--events`` change events (inserts, then updates and deletes over ``--keys`` keys, each with
   its Debezium JSON message as ``raw``, as the native readers produce) are written to a changelog
   in capture-sized batches through ``ChangelogWriter.append`` (``--sink write``: the EventSink
   call, one durable file per batch). Making the events is not timed.
2. The whole changelog is replayed into a fresh DuckDB state table through ``merge_jobs.replay``
   (the same merge as live ingestion).

Peer, same events, same run: JSON Lines + gzip, the format of the Kafka Connect / Debezium Server
object-store sinks and of Datastream's JSON output (write speed, bytes per event, read + decode).

Targets on 2 cores: write >= 200k events/s, replay (read + merge) >= 200k events/s, peak RSS < 1 GiB.

    .venv/bin/python benchmarks/replay_throughput.py               # 2M events
    .venv/bin/python benchmarks/replay_throughput.py --events 200000 --keys 20000
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connectors.changelog import ChangelogWriter
from connectors.changelog.reader import ChangelogReader, ReadStats
from connectors.deadletter import DeadLetterStore
from connectors.warehouse import open_warehouse
from merge_jobs.replay import replay
from state_models.debezium import encode_debezium
from state_models.events import ChangeEvent, Op, event_from_record, event_to_record
from state_models.scd2 import TableDef
from state_models.seq import make_seq

TABLE = "billing.public.subscriptions"
T0 = 1_714_550_400_000_000
PLANS = ("basic-monthly", "pro-monthly", "pro-yearly", "enterprise")
STATUSES = ("active", "past_due", "canceled", "trialing")
#: the column types the native readers state with every event (one dict per table version)
SOURCE_TYPES = {
    "id": "int64",
    "customer_id": "int64",
    "plan": "string",
    "status": "string",
    "amount": "org.apache.kafka.connect.data.Decimal(scale=2,precision=12)",
    "currency": "string",
    "renews_at": "io.debezium.time.ZonedTimestamp",
    "note": "string",
}


def make_events(start: int, n: int, keys: int) -> list[ChangeEvent]:
    """Events ``start .. start+n``: the first ``keys`` insert, then 1 in 10 deletes, rest update."""
    out = []
    for i in range(start, start + n):
        k = i % keys
        after = {
            "id": k,
            "customer_id": 1_000_000 + (k * 7919) % 500_000,
            "plan": PLANS[i % 4],
            "status": STATUSES[(i // 3) % 4],
            "amount": Decimal(1000 + i % 9000) / 100,
            "currency": "EUR",
            "renews_at": f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}T00:00:00Z",
            "note": None if i % 5 else f"changed by job {i % 97}",
        }
        if i < keys:
            op, before = Op.INSERT, None
        elif i % 10 == 0:
            op, before, after = Op.DELETE, {"id": k}, None
        else:
            op, before = Op.UPDATE, None  # REPLICA IDENTITY DEFAULT: no before image
        e = ChangeEvent(
            table=TABLE,
            op=op,
            key={"id": k},
            before=before,
            after=after,
            seq=make_seq(0x1000000 + i * 64, 0x1000000 + i * 64 + 8),
            commit_ts=T0 + i * 2_000,  # 500 changes a second: ~1.1 hours for 2M
            tx_id=str(100_000 + i // 4),
            source_types=SOURCE_TYPES,
        )
        out.append(e.with_raw(encode_debezium(e, "postgres")))
    return out


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--keys", type=int, default=200_000)
    ap.add_argument(
        "--write-batch", type=int, default=10_000, help="events per write() (capture batch)"
    )
    ap.add_argument(
        "--sink",
        choices=["append", "write"],
        default="append",
        help="append: buffered, files roll by size (default); write: EventSink, a file per batch",
    )
    ap.add_argument("--replay-batch", type=int, default=50_000, help="events per MERGE")
    ap.add_argument(
        "--duckdb-memory",
        default="256MB",
        help="DuckDB memory_limit for the state table (its own default is 80%% of RAM)",
    )
    ap.add_argument("--dir", help="work folder (default: a temporary one, removed afterwards)")
    ap.add_argument("--no-peer", action="store_true", help="skip the JSON Lines + gzip peer")
    args = ap.parse_args()

    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="cdc-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    root = work / "changelog"
    print(f"{args.events:,} events over {args.keys:,} keys; {os.cpu_count()} cores; work in {work}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    # ---------------------------------------------------------------- write
    writer = ChangelogWriter(str(root))
    peer_path = work / "peer.jsonl.gz"
    peer = None if args.no_peer else gzip.open(peer_path, "wt", compresslevel=6)  # noqa: SIM115
    t_write = t_peer = 0.0
    made = 0
    while made < args.events:
        n = min(args.write_batch, args.events - made)
        batch = make_events(made, n, args.keys)
        t = time.perf_counter()
        if args.sink == "write":
            writer.write(batch)  # EventSink: each batch durable on return, one file per batch
        else:
            writer.append(batch)  # buffered (archiver, Beam): files roll at 64 MiB
        t_write += time.perf_counter() - t
        if peer is not None:
            t = time.perf_counter()
            peer.write(
                "".join(
                    json.dumps(event_to_record(e), separators=(",", ":"), ensure_ascii=False) + "\n"
                    for e in batch
                )
            )
            t_peer += time.perf_counter() - t
        made += n
    t = time.perf_counter()
    writer.flush()
    t_write += time.perf_counter() - t
    if peer is not None:
        t = time.perf_counter()
        peer.close()
        t_peer += time.perf_counter() - t
    size = dir_bytes(root)
    print()
    print(
        f"write   changelog (zstd Parquet): {args.events / t_write:>10,.0f} events/s   "
        f"{size / args.events:6.1f} bytes/event   {len(writer.published)} files, "
        f"{size / 2**20:.1f} MiB"
    )
    if peer is not None:
        psize = peer_path.stat().st_size
        print(
            f"write   peer (JSON Lines + gzip): {args.events / t_peer:>10,.0f} events/s   "
            f"{psize / args.events:6.1f} bytes/event"
        )
    print(f"peak RSS after write: {rss_mib():.0f} MiB")

    # ---------------------------------------------------------------- read only
    reader = ChangelogReader(str(root))
    stats = ReadStats()
    t = time.perf_counter()
    n_read = sum(len(b) for b in reader.events(TABLE, stats=stats, batch_rows=args.replay_batch))
    t_read = time.perf_counter() - t
    assert n_read == args.events and not stats.unreadable, (n_read, stats.unreadable)
    print()
    print(f"read    changelog -> ChangeEvent:  {n_read / t_read:>10,.0f} events/s")
    if peer is not None:
        t = time.perf_counter()
        with gzip.open(peer_path, "rt") as f:
            n_peer = sum(1 for line in f if event_from_record(json.loads(line)))
        t_peer_read = time.perf_counter() - t
        print(f"read    peer -> ChangeEvent:       {n_peer / t_peer_read:>10,.0f} events/s")

    # ---------------------------------------------------------------- replay
    wh_path = work / "replay.duckdb"
    wh_path.unlink(missing_ok=True)
    warehouse = open_warehouse(f"duckdb:///{wh_path}")
    # DuckDB otherwise caches the whole table file in memory; the limit makes it page instead.
    warehouse.con.execute("SET memory_limit = ?", [args.duckdb_memory])
    table = TableDef(
        TABLE,
        "billing_subscriptions",
        primary_key=("id",),
        declared={
            "id": "bigint",
            "customer_id": "bigint",
            "plan": "text",
            "status": "text",
            "amount": "numeric(12,2)",
            "currency": "char(3)",
            "renews_at": "timestamptz",
            "note": "text",
        },
    )
    report = replay(
        reader,
        warehouse,
        table,
        dead_letters=DeadLetterStore(work / "dead_letters"),
        batch_size=args.replay_batch,
        ingested_at=dt.datetime.now(dt.UTC),
    )
    versions = warehouse.stats(table)
    warehouse.close()
    counts = report.applied.tables[TABLE]
    print(
        f"replay  read + merge into DuckDB:  {report.events / report.seconds:>10,.0f} events/s   "
        f"({report.events:,} events in {report.seconds:.1f}s, {counts.batches} MERGEs, "
        f"{counts.inserted:,} versions, {counts.dead_lettered} dead letters)"
    )
    assert versions is not None and versions["versions"] == args.events, versions
    print(f"peak RSS: {rss_mib():.0f} MiB")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if not args.dir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()

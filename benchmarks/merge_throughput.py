"""SCD2 merge throughput into DuckDB, and dlt's ``scd2`` merge on the same shape of data.

What it does, in one run (figures printed at the end):

1. A source history of ``--events`` changes on ``--keys`` keys: inserts, updates (2% leave a TOAST
   column unsent), deletes and re-inserts, one to three changes per transaction, commit times to
   the second (so often equal). Delivered as a transport would: 10% of the events displaced later
   (many into the next batch), 5% delivered twice.
2. That stream applied to a DuckDB file in batches of ``--batch``: one ``Warehouse.apply`` (one
   MERGE) per batch. Throughput = events delivered / wall time of the applies. The result is then
   checked: at most one current version per key, validity chained, and the versions of a sample
   of keys equal to the reference fold.
3. Scale: the table is copied and grown with older history to ``--grow`` versions; the same
   ``--tail`` further batches go into the small and into the grown table. Ratio = mean batch time
   (grown) / mean batch time (small).
4. dlt 1.x, ``write_disposition={"disposition": "merge", "strategy": "scd2"}``, ``merge_key="id"``,
   into DuckDB, batches of ``--batch`` rows with every key once (all it supports: one version per
   key per load), over ``--dlt-batches`` loads; rows handed in as dicts (what its ``pg_replication``
   source yields) and, separately, as an Arrow table (its fastest path). Throughput = rows / wall
   time of ``pipeline.run``, the first (table-creating) load excluded.

Run (takes a few minutes)::

    python benchmarks/merge_throughput.py            # the issue's sizes
    python benchmarks/merge_throughput.py --events 200000 --keys 20000 --batch 20000 --grow 2000000
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connectors.warehouse.duckdb import DuckDBWarehouse
from state_models.events import ChangeEvent, Op
from state_models.oracle import fold
from state_models.pii import TablePolicy
from state_models.scd2 import TableDef, render_version
from state_models.seq import make_seq

TABLE = TableDef(
    "bench.public.subscriptions",
    "subscriptions",
    "postgres",
    ("id",),
    {"id": "bigint", "status": "text", "amount": "numeric(12,2)", "note": "text", "n": "bigint"},
)
STATUSES = ["active", "trialing", "past_due", "canceled"]
START_TS = 1_780_000_000_000_000  # µs


# --------------------------------------------------------------------------- data


def source_history(n_events: int, n_keys: int, seed: int) -> list[ChangeEvent]:
    """Changes in commit order, legal at the source (no update of an absent row)."""
    rnd = random.Random(seed)
    live: dict[int, dict[str, Any]] = {}
    out: list[ChangeEvent] = []
    tx = 0
    lsn = 0
    while len(out) < n_events:
        tx += 1
        ts = START_TS + tx * 200_000 // 1_000_000 * 1_000_000  # ~5 transactions per second
        for _ in range(rnd.randint(1, 3)):
            if len(out) >= n_events:
                break
            k = rnd.randrange(n_keys)
            lsn += 1
            seq = make_seq(tx, lsn)
            row = live.get(k)
            if row is None:
                row = {
                    "id": k,
                    "status": rnd.choice(STATUSES),
                    "amount": Decimal(rnd.randrange(100_000)).scaleb(-2),
                    "note": "note " * rnd.randint(1, 20),
                    "n": lsn,
                }
                live[k] = row
                out.append(_event(Op.INSERT, k, seq, ts, tx, after=dict(row)))
            elif rnd.random() < 0.1:
                del live[k]
                out.append(_event(Op.DELETE, k, seq, ts, tx))
            else:
                row.update(status=rnd.choice(STATUSES), n=lsn)
                row["amount"] = Decimal(rnd.randrange(100_000)).scaleb(-2)
                toast = rnd.random() < 0.02
                after = {c: v for c, v in row.items() if not (toast and c == "note")}
                out.append(
                    _event(Op.UPDATE, k, seq, ts, tx, after=after, unavailable=("note",) * toast)
                )
    return out


def _event(
    op: Op,
    k: int,
    seq: str,
    ts: int,
    tx: int,
    after: dict[str, Any] | None = None,
    unavailable: tuple[str, ...] = (),
) -> ChangeEvent:
    return ChangeEvent(
        table=TABLE.table_id,
        op=op,
        key={"id": k},
        before={"id": k} if op is Op.DELETE else None,
        after=after,
        seq=seq,
        commit_ts=ts,
        tx_id=str(tx),
        unavailable=unavailable,
    )


def delivery(events: list[ChangeEvent], batch: int, seed: int) -> list[ChangeEvent]:
    """10% of the events displaced later (up to 1.5 batches), 5% delivered twice."""
    rnd = random.Random(seed)
    slots: list[tuple[float, int, ChangeEvent]] = []
    for i, e in enumerate(events):
        late = rnd.random() < 0.10
        position = i + (rnd.uniform(1, 1.5 * batch) if late else 0)
        slots.append((position, i, e))
        if rnd.random() < 0.05:
            slots.append((i + rnd.uniform(0, batch), i, e))
    slots.sort(key=lambda s: s[0])
    return [e for _, _, e in slots]


# --------------------------------------------------------------------------- ours


#: The same table with three of its columns hashed (``pii: {status: hash, amount: hash, note:
#: hash}``): the cost of keyed HMAC-SHA256 on every value of three columns at the merge.
HASHED = ("status", "amount", "note")
TABLE_PII = TableDef(
    TABLE.table_id,
    "subscriptions",
    "postgres",
    ("id",),
    {**(TABLE.declared or {}), **dict.fromkeys(HASHED, "text")},
    pii=TablePolicy(columns=dict.fromkeys(HASHED, "hash")),
)


def apply_batches(
    wh: DuckDBWarehouse,
    stream: list[ChangeEvent],
    batch: int,
    ingested: dt.datetime,
    table: TableDef = TABLE,
) -> list[float]:
    times = []
    for i in range(0, len(stream), batch):
        chunk = stream[i : i + batch]
        t0 = time.perf_counter()
        result = wh.apply(table, chunk, ingested)
        times.append(time.perf_counter() - t0)
        assert not result.rejected, result.rejected[:3]
    return times


def check(wh: DuckDBWarehouse, events: list[ChangeEvent], sample_keys: int, seed: int) -> str:
    """Invariants over the whole table, and the reference fold on a sample of keys."""
    con = wh.con
    bad_current = con.execute(
        "SELECT count(*) FROM (SELECT id FROM subscriptions GROUP BY id "
        "HAVING count(*) FILTER (WHERE _is_current) <> 1)"
    ).fetchall()[0][0]
    broken_chain = con.execute(
        "SELECT count(*) FROM (SELECT _next_seq, _valid_to, lead(_seq) OVER w AS s, "
        "lead(_valid_from) OVER w AS f FROM subscriptions WINDOW w AS (PARTITION BY id ORDER BY _seq)) "
        "WHERE _next_seq IS DISTINCT FROM s OR _valid_to IS DISTINCT FROM f"
    ).fetchall()[0][0]
    keys = set(random.Random(seed).sample(range(max(e.key["id"] for e in events) + 1), sample_keys))
    mine = [e for e in events if e.key.get("id") in keys]
    state = wh.state_table(TABLE)
    assert state is not None
    expected = [render_version(state, r) for r in fold(state, mine, dt.datetime.now(dt.UTC))]
    got = [render_version(state, r) for k in sorted(keys) for r in wh.history(TABLE, {"id": k})]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "_ingested_at"} for r in rows]  # noqa: E731
    same = strip(got) == strip(expected)
    assert bad_current == 0 and broken_chain == 0 and same, (bad_current, broken_chain, same)
    return f"ok ({sample_keys} keys = reference fold; 1 current per key; validity chained)"


def grow(path: Path, versions: int) -> int:
    """Add older history (before every benchmark seq) until the table holds ``versions`` rows."""
    import duckdb

    con = duckdb.connect(str(path))
    con.execute("SET TimeZone = 'UTC'")
    have = con.execute("SELECT count(*) FROM subscriptions").fetchall()[0][0]
    keys = con.execute("SELECT count(DISTINCT id) FROM subscriptions").fetchall()[0][0]
    per_key = max(1, (versions - have) // keys)
    # per key: per_key older versions chained to each other and to the key's first real version
    con.execute(
        f"""
        INSERT INTO subscriptions
        WITH firsts AS (
            SELECT id, min(_seq) AS first_seq, min(_valid_from) AS first_from
            FROM subscriptions GROUP BY id
        ), old AS (
            SELECT f.id, j, f.first_seq, f.first_from,
                   printf('%016x/%016x', 0, f.id * {per_key} + j) AS seq
            FROM firsts f, range({per_key}) r(j)
        )
        SELECT id, 'active', (j % 1000) / 100.0, 'old', j,
               make_timestamptz(2020, 1, 1, 0, 0, 0) + to_minutes(j),
               CASE WHEN j < {per_key} - 1
                    THEN make_timestamptz(2020, 1, 1, 0, 0, 0) + to_minutes(j + 1)
                    ELSE first_from END,
               false, false, 'u', seq, md5(seq), 'old', now(),
               CASE WHEN j < {per_key} - 1
                    THEN printf('%016x/%016x', 0, id * {per_key} + j + 1)
                    ELSE first_seq END,
               NULL
        FROM old
        """
    )
    con.execute("CHECKPOINT")
    total = con.execute("SELECT count(*) FROM subscriptions").fetchall()[0][0]
    con.close()
    return int(total)


# --------------------------------------------------------------------------- dlt


def run_dlt(workdir: Path, keys: int, batches: int, arrow: bool) -> tuple[float, list[float]]:
    """dlt scd2 into DuckDB: rows per second over loads 2..n (load 1 creates the table)."""
    os.environ["RUNTIME__LOG_LEVEL"] = "WARNING"
    if arrow:
        os.environ["NORMALIZE__PARQUET_NORMALIZER__ADD_DLT_LOAD_ID"] = "true"
        os.environ["NORMALIZE__PARQUET_NORMALIZER__ADD_DLT_ID"] = "true"
    import dlt
    import pyarrow as pa

    @dlt.resource(
        name="subscriptions",
        write_disposition={"disposition": "merge", "strategy": "scd2"},
        merge_key="id",
    )
    def subscriptions(rows: Any) -> Any:
        yield rows

    name = "dlt_arrow" if arrow else "dlt_dicts"
    pipeline = dlt.pipeline(
        pipeline_name=name,
        destination=dlt.destinations.duckdb(str(workdir / f"{name}.duckdb")),
        dataset_name="bench",
        pipelines_dir=str(workdir / f"{name}_pipelines"),
    )
    rnd = random.Random(7)
    times = []
    for b in range(batches):
        statuses = [rnd.choice(STATUSES) for _ in range(keys)]
        amounts = [rnd.randrange(100_000) / 100 for _ in range(keys)]
        if arrow:
            data: Any = pa.table(
                {
                    "id": pa.array(range(keys), pa.int64()),
                    "status": statuses,
                    "amount": amounts,
                    "note": ["note"] * keys,
                    "n": [b] * keys,
                }
            )
        else:
            data = [
                {"id": k, "status": statuses[k], "amount": amounts[k], "note": "note", "n": b}
                for k in range(keys)
            ]
        t0 = time.perf_counter()
        pipeline.run(subscriptions(data))
        times.append(time.perf_counter() - t0)
    steady = times[1:] or times
    return keys * len(steady) / sum(steady), times


# --------------------------------------------------------------------------- main


def keep_watermark(history: list[ChangeEvent], batch: int) -> float:
    """What ``cdc run`` adds per merged batch to keep the watermark (``Runtime._merge_pending``):
    follow the batch's transactions (their starts, for dead letters) and take the cut."""
    from state_models.watermark import TransactionCuts

    cuts = TransactionCuts()
    t0 = time.perf_counter()
    for i in range(0, len(history), batch):
        cuts.observe(e for e in history[i : i + batch] if e.source == "bench")
        cuts.complete_through()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=100_000)
    p.add_argument("--grow", type=int, default=10_000_000, help="versions in the grown table")
    p.add_argument("--tail", type=int, default=3, help="batches into the small and grown tables")
    p.add_argument("--dlt-batches", type=int, default=4)
    p.add_argument("--threads", type=int, default=2, help="DuckDB threads (the target is 2 cores)")
    p.add_argument("--check-keys", type=int, default=1000, help="keys compared with the fold")
    p.add_argument("--workdir", help="keep the databases here (default: a temporary folder)")
    args = p.parse_args(argv)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="cdc-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    ingested = dt.datetime.now(dt.UTC)
    print(
        f"machine: {os.cpu_count()} cores, load average {load_before[0]:.1f} at start; "
        f"DuckDB threads={args.threads}; work in {workdir}"
    )

    t0 = time.perf_counter()
    everything = source_history(args.events + args.tail * args.batch, args.keys, seed=1)
    history, tail_history = everything[: args.events], everything[args.events :]
    stream = delivery(history, args.batch, seed=2)
    print(
        f"generated {len(history):,} changes on {args.keys:,} keys -> {len(stream):,} deliveries "
        f"({time.perf_counter() - t0:.1f} s, not timed)"
    )

    small = workdir / "small.duckdb"
    wh = DuckDBWarehouse(f"duckdb:///{small}", threads=args.threads)
    times = apply_batches(wh, stream, args.batch, ingested)
    ours = len(stream) / sum(times)
    versions = wh.con.execute("SELECT count(*) FROM subscriptions").fetchall()[0][0]
    print(
        f"ours: {len(stream):,} events in {len(times)} batches, {sum(times):.1f} s: "
        f"{ours:,.0f} events/s (batch times {', '.join(f'{t:.2f}' for t in times)} s); "
        f"{versions:,} versions"
    )
    print("check:", check(wh, history, args.check_keys, seed=3))
    wh.close()
    watermark_s = keep_watermark(history, args.batch)
    with_watermark = len(stream) / (sum(times) + watermark_s)
    print(
        f"ours + keeping the source's watermark (cdc run follows each batch's transactions in log "
        f"order): {watermark_s:.2f} s for {len(history):,} events -> {with_watermark:,.0f} "
        f"events/s ({with_watermark / ours:.3f}x without)"
    )

    # the same stream into a table whose three columns are hashed (pii:)
    os.environ.setdefault("CDC_PII_KEY", "merge-benchmark-pii-key-0123456789")
    hashed_wh = DuckDBWarehouse(f"duckdb:///{workdir / 'hashed.duckdb'}", threads=args.threads)
    hashed_times = apply_batches(hashed_wh, stream, args.batch, ingested, TABLE_PII)
    hashed = len(stream) / sum(hashed_times)
    tokens = hashed_wh.con.execute(
        "SELECT count(*) FROM subscriptions WHERE status NOT LIKE 'h1:%'"
    ).fetchall()[0][0]
    hashed_wh.close()
    print(
        f"ours, 3 columns hashed: {hashed:,.0f} events/s ({hashed / ours:.2f}x the plain run; "
        f"{tokens} status values not tokens)"
    )

    # scale: the same further batches into the small table and into a copy grown to --grow
    grown_path = workdir / "grown.duckdb"
    shutil.copy(small, grown_path)
    t0 = time.perf_counter()
    grown_versions = grow(grown_path, args.grow)
    print(f"grown copy: {grown_versions:,} versions ({time.perf_counter() - t0:.1f} s, not timed)")
    tail = delivery(tail_history, args.batch, seed=5)
    per_table = {}
    for label, path in (("small", small), ("grown", grown_path)):
        wh = DuckDBWarehouse(f"duckdb:///{path}", threads=args.threads)
        per_table[label] = apply_batches(wh, tail, args.batch, ingested)
        size = wh.con.execute("SELECT count(*) FROM subscriptions").fetchall()[0][0]
        wh.close()
        print(
            f"  tail into {label:5s} table ({size:,} versions after): batch times "
            f"{', '.join(f'{t:.2f}' for t in per_table[label])} s"
        )
    ratio = statistics.mean(per_table["grown"]) / statistics.mean(per_table["small"])

    dlt_dicts, dict_times = run_dlt(workdir, args.keys, args.dlt_batches, arrow=False)
    print(
        f"dlt scd2 (rows as dicts): {dlt_dicts:,.0f} rows/s "
        f"(load times {', '.join(f'{t:.1f}' for t in dict_times)} s; first excluded)"
    )
    dlt_arrow, arrow_times = run_dlt(workdir, args.keys, args.dlt_batches, arrow=True)
    print(
        f"dlt scd2 (rows as Arrow): {dlt_arrow:,.0f} rows/s "
        f"(load times {', '.join(f'{t:.1f}' for t in arrow_times)} s; first excluded)"
    )

    load_after = os.getloadavg()
    print()
    print("figures")
    print(
        f"  ours                       {ours:12,.0f} events/s   target >= 250,000   "
        f"{'met' if ours >= 250_000 else f'missed by {1 - ours / 250_000:.0%}'}"
    )
    print(
        f"  ours / dlt (dicts)         {ours / dlt_dicts:12.1f} x          target >= 50       "
        f"{'met' if ours / dlt_dicts >= 50 else 'missed'}"
    )
    print(f"  ours / dlt (Arrow)         {ours / dlt_arrow:12.1f} x")
    print(
        f"  ours with the watermark    {with_watermark:12,.0f} events/s   ({with_watermark / ours:.3f}x)"
    )
    print(
        f"  batch into {grown_versions / 1e6:.0f}M / into ~{versions / 1e6:.0f}M versions "
        f"{ratio:6.2f} x          target <= 2        {'met' if ratio <= 2 else 'missed'}"
    )
    busy = max(load_before[0], load_after[0]) > (os.cpu_count() or 1) * 0.75
    print(
        f"  load average {load_before[0]:.1f} -> {load_after[0]:.1f} on {os.cpu_count()} cores"
        + ("  (the machine was busy: other work shared the CPU)" if busy else "")
    )
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

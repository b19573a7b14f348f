"""`cdc as-of --consistent` never shows half a transaction, while `cdc run` merges and is killed.

Each transaction of the workload adds an invoice and raises its subscription's ``total`` by the
invoice's amount, in one transaction over two tables: in any state that holds whole transactions
only, each subscription's ``total`` equals the sum of its invoices. `cdc run` merges with batches
of two events (so the two tables' MERGEs of one transaction run apart) and is SIGKILLed once. While
the workload runs, the test asks for both tables as of now, as of sampled transactions (``--tx``)
and positions (``--seq``), and checks that invariant in every answer, that the transaction asked
for is in it when the watermark has passed it, and that the watermark never held a transaction
in part. At the end, as of now equals the source.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest

from cdc.cli import main as cdc_main
from cdc.config import load_config
from connectors.sources import mysql_params
from connectors.warehouse import open_warehouse
from tests.integration.test_run_crash import start_run, stop_run, wait_streaming

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PG_SCHEMA = """
CREATE TABLE public.subscriptions (id bigint PRIMARY KEY, total numeric(12,2) NOT NULL);
CREATE TABLE public.invoices (id bigint PRIMARY KEY, sub_id bigint NOT NULL,
                              amount numeric(12,2) NOT NULL);
"""
MARIADB_SCHEMA = [
    "CREATE TABLE subscriptions (id BIGINT PRIMARY KEY, total DECIMAL(12,2) NOT NULL)",
    "CREATE TABLE invoices (id BIGINT PRIMARY KEY, sub_id BIGINT NOT NULL, "
    "amount DECIMAL(12,2) NOT NULL)",
]
SUBSCRIPTIONS = 8


@dataclass
class Source:
    registry: str
    prefix: str  # table ids: f"{prefix}subscriptions"
    connect: Callable[[], Any]
    tx_id: Callable[[Any], str]  # the id of the transaction the cursor just ran
    query: Callable[[str], list[tuple[Any, ...]]]


@pytest.fixture(params=["postgres", "postgres-debezium", "mariadb"])
def source(request: pytest.FixtureRequest) -> Source:
    if request.param.startswith("postgres"):
        engine = "debezium" if request.param.endswith("debezium") else "pgoutput"
        postgres, dsn = request.getfixturevalue("postgres"), request.getfixturevalue("pg_database")
        db = dsn.rsplit("/", 1)[1]
        postgres.execute(PG_SCHEMA, database=db)

        def pg_tx(cur: Any) -> str:
            cur.execute("SELECT txid_current()")
            return str(cur.fetchone()[0] & 0xFFFFFFFF)

        return Source(
            registry=f"""
    kind: postgres
    engine: {engine}
    dsn: {dsn}
    slot: cdc_tx_{db}
    publication: cdc_tx_{db}
    tables:
      - name: public.subscriptions
        primary_key: [id]
        columns: {{id: bigint, total: "numeric(12,2)"}}
      - name: public.invoices
        primary_key: [id]
        columns: {{id: bigint, sub_id: bigint, amount: "numeric(12,2)"}}
""",
            prefix="billing.public.",
            connect=lambda: psycopg.connect(dsn),
            tx_id=pg_tx,
            query=lambda sql: postgres.execute(sql.replace("{t}", "public."), database=db),
        )
    mariadb, db = request.getfixturevalue("mariadb"), request.getfixturevalue("mysql_database")
    for statement in MARIADB_SCHEMA:
        mariadb.execute(statement, database=db)
    dsn = mariadb.dsn(db)

    def maria_tx(cur: Any) -> str:
        cur.execute("SELECT @@last_gtid")
        return str(cur.fetchone()[0])

    return Source(
        registry=f"""
    kind: mysql
    engine: binlog
    dsn: {dsn}
    tables:
      - name: {db}.subscriptions
        primary_key: [id]
        columns: {{id: bigint, total: "decimal(12,2)"}}
      - name: {db}.invoices
        primary_key: [id]
        columns: {{id: bigint, sub_id: bigint, amount: "decimal(12,2)"}}
""",
        prefix=f"billing.{db}.",
        connect=lambda: pymysql.connect(autocommit=False, **mysql_params(dsn)),
        tx_id=maria_tx,
        query=lambda sql: mariadb.execute(sql.replace("{t}", ""), database=db),
    )


def workload(
    source: Source, n: int, committed: list[tuple[str, int]], done: threading.Event
) -> None:
    """Transactions of two changes over both tables; ``committed`` gets (their id, invoice id)."""
    rng = random.Random(7)
    conn = source.connect()
    try:
        cur = conn.cursor()
        for s in range(1, SUBSCRIPTIONS + 1):
            cur.execute("INSERT INTO subscriptions VALUES (%s, 0)", (s,))
        conn.commit()
        for i in range(1, n + 1):
            sub = rng.randint(1, SUBSCRIPTIONS)
            amount = Decimal(rng.randint(1, 9999)) / 100
            if rng.random() < 0.5:  # the subscription first, then its invoice
                cur.execute(
                    "UPDATE subscriptions SET total = total + %s WHERE id = %s", (amount, sub)
                )
                cur.execute("INSERT INTO invoices VALUES (%s, %s, %s)", (i, sub, amount))
            else:
                cur.execute("INSERT INTO invoices VALUES (%s, %s, %s)", (i, sub, amount))
                cur.execute(
                    "UPDATE subscriptions SET total = total + %s WHERE id = %s", (amount, sub)
                )
            tx = source.tx_id(cur) if source.prefix.endswith("public.") else None
            conn.commit()
            committed.append((tx if tx is not None else source.tx_id(cur), i))
            time.sleep(0.01)
    finally:
        conn.close()
    done.set()


def as_of(config: Path, source: Source, *how: str) -> tuple[int, list[dict[str, Any]], str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cdc_main(
            [
                "as-of",
                "--consistent",
                f"{source.prefix}subscriptions",
                f"{source.prefix}invoices",
                *how,
                "--format",
                "jsonl",
                "--config",
                str(config),
            ]
        )
    return code, [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


def whole(rows: list[dict[str, Any]], prefix: str) -> bool:
    """Each subscription's total is the sum of its invoices: no transaction seen in part."""
    sums: dict[int, Decimal] = {}
    for r in rows:
        if r["_table"] == f"{prefix}invoices":
            sums[r["sub_id"]] = sums.get(r["sub_id"], Decimal(0)) + Decimal(str(r["amount"]))
    totals = {
        r["id"]: Decimal(str(r["total"])) for r in rows if r["_table"] == f"{prefix}subscriptions"
    }
    return all(totals.get(s, Decimal(0)) == v for s, v in sums.items()) and all(
        v == sums.get(s, Decimal(0)) for s, v in totals.items()
    )


def progress(config: Path) -> list[dict[str, Any]]:
    cfg = load_config(config)
    for _ in range(100):
        try:
            wh = open_warehouse(cfg.warehouse_url, lock_wait_s=5)
        except Exception:  # the runtime holds the file this moment
            time.sleep(0.05)
            continue
        try:
            return wh.progress()
        finally:
            wh.close()
    return []


def torn_moments(log: Path, warehouse: Path, prefix: str) -> int:
    """How many MERGEs (from `cdc run --debug`'s per-MERGE lines, in order) left the two tables
    at positions that split a transaction: one table through its change, the other not."""
    import duckdb

    tables = (f"{prefix}subscriptions", f"{prefix}invoices")
    changes: dict[str, dict[str, str]] = {}  # tx -> table -> its change's seq
    with duckdb.connect(str(warehouse), read_only=True) as db:
        for table in tables:
            state = f"billing_{table.rsplit('.', 1)[1]}"
            for tx, seq in db.execute(f"SELECT _tx_id, _seq FROM {state}").fetchall():
                changes.setdefault(str(tx), {})[table] = seq
    both = [c for c in changes.values() if len(c) == 2]
    applied = {t: "" for t in tables}
    torn = 0
    for line in log.read_text().splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if doc.get("logger") != "cdc.merge":
            continue
        _, _, rest = doc["msg"].partition(" events into ")
        table, _, through = rest.partition(" through ")
        if table not in applied:
            continue
        applied[table] = max(applied[table], through)
        a, b = tables
        torn += any((c[a] <= applied[a]) != (c[b] <= applied[b]) for c in both)
    return torn


def test_consistent_as_of_never_shows_half_a_transaction(
    source: Source, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    config = tmp_path / "cdc.yaml"
    config.write_text(f"""
changelog: ./changelog
warehouse: duckdb:///{tmp_path}/warehouse.duckdb
state_dir: {tmp_path}/state
sources:
  billing:{source.registry}""")
    state, log = tmp_path / "state", tmp_path / "run.log"
    # --debug: a log line per MERGE, so the test can tell the tables advanced unevenly
    proc = start_run(config, log, "--batch-size", "2", "--debug")
    committed: list[tuple[str, int]] = []
    answers = checked_tx = 0
    try:
        wait_streaming(state, proc, timeout=240)  # a JVM start on a busy machine
        done = threading.Event()
        writer = threading.Thread(target=workload, args=(source, 1200, committed, done))
        writer.start()
        rng = random.Random(3)
        killed = False
        while not done.is_set() or answers < 12:
            time.sleep(0.2)
            if not killed and len(committed) > 200:
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
                proc = start_run(config, log, "--batch-size", "2", "--debug")
                wait_streaming(state, proc, timeout=240)  # a JVM start on a busy machine
                killed = True
            sample = rng.choice(committed) if committed else None
            asks = [["--at", "2999-01-01T00:00:00Z"]]
            if sample is not None:
                asks.append(["--tx", sample[0]])
            for how in asks:
                code, got, err = as_of(config, source, *how)
                assert code in (0, 1), err
                assert whole(got, source.prefix), (how, err, got)
                answers += 1
                if how[0] == "--tx" and code == 0 and sample is not None:
                    # through the transaction asked for: its invoice is there
                    invoices = {r["id"] for r in got if r["_table"].endswith("invoices")}
                    assert sample[1] in invoices, (sample, err)
                    checked_tx += 1
            if done.is_set() and answers >= 12:
                break
        writer.join(120)
        assert done.is_set(), "the workload did not finish"
        # the end: as of now, once the watermark reaches the last transaction, equals the source
        deadline = time.monotonic() + 90
        while True:
            code, got, err = as_of(config, source, "--tx", committed[-1][0])
            if code == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert code == 0, err
        code, got, err = as_of(config, source, "--at", "2999-01-01T00:00:00Z")
        assert code == 0, err
        # a seq inside the history: the answer is whole too
        seqs = sorted(r["_seq"] for r in got)
        code_s, got_s, err_s = as_of(config, source, "--seq", seqs[len(seqs) // 2])
        assert code_s == 0 and whole(got_s, source.prefix), err_s
        assert 0 < len(got_s) <= len(got)
    finally:
        if proc.poll() is None:
            stop_run(proc, log)
    subs = {r[0]: Decimal(r[1]) for r in source.query("SELECT id, total FROM {t}subscriptions")}
    invoices = {
        r[0]: (r[1], Decimal(r[2]))
        for r in source.query("SELECT id, sub_id, amount FROM {t}invoices")
    }
    assert {
        r["id"]: Decimal(str(r["total"])) for r in got if r["_table"].endswith("subscriptions")
    } == subs
    assert {
        r["id"]: (r["sub_id"], Decimal(str(r["amount"])))
        for r in got
        if r["_table"].endswith("invoices")
    } == invoices
    # while it ran, the answers were checked whole (and a sampled transaction found in its own
    # answer whenever the watermark had passed it: `checked_tx` of them; a slow restart may leave
    # none, so the transactions are checked again below, once everything is applied)
    assert answers >= 12, (answers, checked_tx)

    # the SQL functions answer what the command answers
    import duckdb

    middle, middle_invoice = committed[len(committed) // 2]
    code, via_cli, err = as_of(config, source, "--tx", middle)
    assert code == 0, err
    assert middle_invoice in {r["id"] for r in via_cli if r["_table"].endswith("invoices")}
    assert middle_invoice + 1 not in {r["id"] for r in via_cli if r["_table"].endswith("invoices")}
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as db:
        for name in ("subscriptions", "invoices"):
            via_sql = db.execute(
                f"SELECT id, _seq FROM billing_{name}_consistent_tx(?) ORDER BY id", [middle]
            ).fetchall()
            expected = sorted((r["id"], r["_seq"]) for r in via_cli if r["_table"].endswith(name))
            assert via_sql == expected and via_sql, name

    # the tables' applied positions did diverge: some MERGE left one table through a transaction
    # whose change to the other table was not applied yet (what the watermark is there for)
    assert torn_moments(log, tmp_path / "warehouse.duckdb", source.prefix) > 0

    # a replay of the changelog into a fresh warehouse answers the same, through the transaction
    # before the last one (whether the last is complete only a later change would tell)
    fresh = tmp_path / "fresh.yaml"
    fresh.write_text(
        config.read_text()
        .replace("warehouse.duckdb", "fresh.duckdb")
        .replace(f"{tmp_path}/state", f"{tmp_path}/fresh-state")
    )
    code, replayed, err = replay_all(fresh, source)
    assert code == 1 and "capped at the watermark" in err, err  # the last transaction waits
    last_sub, last_amount = invoices.pop(committed[-1][1])
    subs[last_sub] -= last_amount
    assert {
        r["id"]: Decimal(str(r["total"])) for r in replayed if r["_table"].endswith("subscriptions")
    } == subs
    assert {
        r["id"]: (r["sub_id"], Decimal(str(r["amount"])))
        for r in replayed
        if r["_table"].endswith("invoices")
    } == invoices

    # the same replay on the BigQuery emulator answers the same (once: the engines differ only
    # upstream of the changelog)
    if request.node.callspec.params["source"] == "postgres":
        in_bigquery = replay_on_bigquery(request, config, tmp_path, source)
        assert {(r["_table"], r["id"], r["_seq"]) for r in in_bigquery} == {
            (r["_table"], r["id"], r["_seq"]) for r in replayed
        }


def replay_all(config: Path, source: Source) -> tuple[int, list[dict[str, Any]], str]:
    """`cdc replay` of both tables under ``config``, then the consistent as-of of everything."""
    for name in ("subscriptions", "invoices"):
        with contextlib.redirect_stdout(io.StringIO()):
            code = cdc_main(["replay", f"{source.prefix}{name}", "--config", str(config)])
        assert code == 0
    return as_of(config, source, "--at", "2999-01-01T00:00:00Z")


def replay_on_bigquery(
    request: pytest.FixtureRequest, config: Path, tmp_path: Path, source: Source
) -> list[dict[str, Any]]:
    """`cdc replay` of both tables into a dataset of its own on the BigQuery emulator (or real
    BigQuery with CDC_TEST_BIGQUERY_PROJECT), then the consistent as-of of everything."""
    import uuid

    client = request.getfixturevalue("bigquery_client")()
    if not os.environ.get("CDC_TEST_BIGQUERY_PROJECT"):
        emulator = request.getfixturevalue("bigquery_emulator")
        request.getfixturevalue("monkeypatch").setenv(
            "BIGQUERY_EMULATOR_HOST", emulator.api_endpoint
        )
    dataset = client.create_dataset(f"{client.project}.cdc_consistent_{uuid.uuid4().hex[:8]}")
    try:
        bq = tmp_path / "bq.yaml"
        bq.write_text(
            config.read_text()
            .replace(
                f"duckdb:///{tmp_path}/warehouse.duckdb",
                f"bigquery://{dataset.project}/{dataset.dataset_id}",
            )
            .replace(f"{tmp_path}/state", f"{tmp_path}/bq-state")
        )
        code, rows, err = replay_all(bq, source)
        assert code == 1 and "capped at the watermark" in err, err
        assert whole(rows, source.prefix)
        return rows
    finally:
        client.delete_dataset(dataset, delete_contents=True, not_found_ok=True)
        client.close()

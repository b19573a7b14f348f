"""`cdc run` survives SIGKILL: the `_current` view ends equal to the source, one version per change.

A workload of inserts, updates and deletes (each audited by a trigger in the same transaction, so
the audit table lists every committed change) runs against a throwaway source while `cdc run` is
killed with SIGKILL twice and restarted: PostgreSQL captured by pgoutput, and MariaDB captured by
the binlog reader. At the end the state table must hold exactly one version per committed change
of each key, and its `_current` view must equal the source table.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest

from cdc.config import load_config
from connectors.sources import mysql_params
from connectors.warehouse import open_warehouse
from state_models.scd2 import TableDef

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PG_SCHEMA = """
CREATE TABLE public.accounts (id bigint PRIMARY KEY, balance numeric(12,2) NOT NULL, note text);
CREATE TABLE public.audit (n bigserial PRIMARY KEY, id bigint NOT NULL, op text NOT NULL);
CREATE FUNCTION public.audit_accounts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO public.audit (id, op) VALUES (COALESCE(NEW.id, OLD.id), TG_OP);
  RETURN NULL;
END $$;
CREATE TRIGGER accounts_audit AFTER INSERT OR UPDATE OR DELETE ON public.accounts
  FOR EACH ROW EXECUTE FUNCTION public.audit_accounts();
"""

MARIADB_SCHEMA = [
    "CREATE TABLE accounts (id BIGINT PRIMARY KEY, balance DECIMAL(12,2) NOT NULL, note TEXT)",
    "CREATE TABLE audit (n BIGINT AUTO_INCREMENT PRIMARY KEY, id BIGINT NOT NULL, op VARCHAR(8) NOT NULL)",
    *(
        f"CREATE TRIGGER accounts_{op.lower()} AFTER {op} ON accounts FOR EACH ROW "
        f"INSERT INTO audit (id, op) VALUES ({row}.id, '{op}')"
        for op, row in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD"))
    ),
]


@dataclass
class Source:
    """One source database of the test: its registry entry, a connection, a query."""

    registry: str  # the `billing:` source entry of cdc.yaml
    table: str  # registered table id
    connect: Callable[[], Any]  # a DB-API connection, autocommit off
    query: Callable[[str], list[tuple[Any, ...]]]


@pytest.fixture(params=["postgres", "mariadb"])
def source(request: pytest.FixtureRequest) -> Source:
    if request.param == "postgres":
        postgres, dsn = request.getfixturevalue("postgres"), request.getfixturevalue("pg_database")
        db = dsn.rsplit("/", 1)[1]
        postgres.execute(PG_SCHEMA, database=db)
        return Source(
            registry=f"""
    kind: postgres
    engine: pgoutput
    dsn: {dsn}
    slot: cdc_crash_{db}
    publication: cdc_crash_{db}
    tables:
      - name: public.accounts
        primary_key: [id]
        columns: {{id: bigint, balance: "numeric(12,2)", note: text}}
""",
            table="billing.public.accounts",
            connect=lambda: psycopg.connect(dsn),
            query=lambda sql: postgres.execute(sql.replace("{t}", "public."), database=db),
        )
    mariadb, db = request.getfixturevalue("mariadb"), request.getfixturevalue("mysql_database")
    for statement in MARIADB_SCHEMA:
        mariadb.execute(statement, database=db)
    dsn = mariadb.dsn(db)
    return Source(
        registry=f"""
    kind: mysql
    engine: binlog
    dsn: {dsn}
    tables:
      - name: {db}.accounts
        primary_key: [id]
        columns: {{id: bigint, balance: "decimal(12,2)", note: text}}
""",
        table=f"billing.{db}.accounts",
        connect=lambda: pymysql.connect(autocommit=False, **mysql_params(dsn)),
        query=lambda sql: mariadb.execute(sql.replace("{t}", ""), database=db),
    )


def start_run(config: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cdc",
            "run",
            "--config",
            str(config),
            "--log-format",
            "json",
            "--max-latency",
            "0.1",
            "--archive-interval",
            "2",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def stop_run(proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> int:
    """SIGTERM, and the exit code; a run that does not stop in time is asked (SIGUSR1) for every
    thread's stack, killed, and the test fails with the end of its log, stacks included."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        time.sleep(5)
        proc.kill()
        proc.wait()
        pytest.fail(
            f"cdc run did not stop within {timeout} s of SIGTERM:\n{log.read_text()[-12000:]}"
        )


def wait_streaming(state: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "cdc run exited early"
        try:
            doc = json.loads((state / "status.json").read_text())
            if (
                doc.get("running")
                and doc.get("pid") == proc.pid  # not the status a killed run left behind
                and doc["captures"].get("billing", {}).get("phase") == "streaming"
            ):
                return
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.1)
    raise TimeoutError("cdc run did not start streaming")


def workload(source: Source, n: int, seed: int, done: threading.Event) -> None:
    rng = random.Random(seed)
    live: set[int] = set()
    next_id = 1
    conn = source.connect()
    try:
        cur = conn.cursor()
        for i in range(n):
            choice = rng.random()
            if not live or choice < 0.35:
                cur.execute(
                    "INSERT INTO accounts VALUES (%s, %s, %s)",
                    (next_id, rng.randint(0, 999), f"n{i}"),
                )
                live.add(next_id)
                next_id += 1
            elif choice < 0.85:
                for key in rng.sample(sorted(live), min(len(live), rng.randint(1, 3))):
                    cur.execute(
                        "UPDATE accounts SET balance = balance + 1, note = %s WHERE id = %s",
                        (f"u{i}", key),
                    )
            else:
                key = rng.choice(sorted(live))
                cur.execute("DELETE FROM accounts WHERE id = %s", (key,))
                live.discard(key)
            conn.commit()
            time.sleep(0.004)
        cur.execute("INSERT INTO accounts VALUES (-1, 0, 'end of workload')")
        conn.commit()
    finally:
        conn.close()
    done.set()


def test_cdc_run_killed_twice_loses_and_doubles_nothing(source: Source, tmp_path: Path) -> None:
    config = tmp_path / "cdc.yaml"
    config.write_text(f"""
changelog: ./changelog
warehouse: duckdb:///warehouse.duckdb
state_dir: ./state
sources:
  billing:{source.registry}""")
    state, log = tmp_path / "state", tmp_path / "run.log"
    proc = start_run(config, log)
    try:
        wait_streaming(state, proc)
        done = threading.Event()
        writer = threading.Thread(target=workload, args=(source, 1500, 11, done))
        writer.start()
        for pause in (2.0, 2.5):  # two hard kills while the workload runs
            time.sleep(pause)
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            # its last status said running; `cdc status` must not believe it
            status = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "cdc",
                    "status",
                    "--config",
                    str(config),
                    "--format",
                    "json",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=tmp_path,
            )
            runtime = json.loads(status.stdout)["runtime"]
            assert runtime["down"] is True and runtime["running"] is False, status.stdout
            proc = start_run(config, log)
            wait_streaming(state, proc)
        writer.join(180)
        assert done.is_set(), "the workload did not finish"
        # let the runtime catch up with the end marker, then stop it gracefully
        cfg = load_config(config)
        deadline = time.monotonic() + 90
        while True:
            time.sleep(1.0)
            assert stop_run(proc, log) == 0, log.read_text()[-3000:]
            wh = open_warehouse(cfg.warehouse_url)
            table = TableDef.from_registered(cfg.registry.table(source.table))
            current = wh.current(table)
            history = wh.history(table)
            wh.close()
            if any(r["id"] == -1 for r in current) or time.monotonic() > deadline:
                break
            proc = start_run(config, log)
            wait_streaming(state, proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    source_rows = {
        r[0]: (r[1], r[2]) for r in source.query("SELECT id, balance, note FROM {t}accounts")
    }
    assert {r["id"]: (r["balance"], r["note"]) for r in current} == source_rows

    audit: dict[int, int] = {}
    for key, count in source.query("SELECT id, count(*) FROM {t}audit GROUP BY id"):
        audit[key] = count
    versions: dict[int, int] = {}
    for r in history:
        versions[r["id"]] = versions.get(r["id"], 0) + 1
    assert versions == audit  # one version per committed change: nothing lost, nothing doubled
    assert sum(audit.values()) > 1500
    # exactly one current version per key, and validity intervals chain without gaps
    by_key: dict[int, list[dict]] = {}
    for r in history:
        by_key.setdefault(r["id"], []).append(r)
    for rows in by_key.values():
        assert sum(1 for r in rows if r["_is_current"]) == 1
        for a, b in itertools.pairwise(rows):
            assert a["_valid_to"] == b["_valid_from"]

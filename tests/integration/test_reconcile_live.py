"""`cdc reconcile` against a real PostgreSQL captured by a running `cdc run`, with a workload
changing rows during every comparison: a clean table reconciles equal (no false positives while
changes flow); a key whose versions were deleted, a changed value and a phantom key in the state
table are each reported with the right keys and columns; `--repair` fixes them through the
changelog and the merge, the next reconcile is equal, and so is a rebuild from the changelog."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TABLE = "shop.public.subscriptions"
STATE = "shop_subscriptions"

REGISTRY = """\
changelog: ./changelog
warehouse: duckdb:///warehouse.duckdb
state_dir: ./state
sources:
  shop:
    kind: postgres
    engine: pgoutput
    dsn: {dsn}
    tables:
      - name: public.subscriptions
        primary_key: [id]
{columns}"""
COLUMNS = (
    '        columns: {id: bigint, plan: text, amount: "numeric(12,2)", renews_at: timestamptz,\n'
    "                  note: text, flags: jsonb, score: double precision, active: boolean,\n"
    "                  blob: bytea, starts: date}\n"
)

SCHEMA = """
CREATE TABLE public.subscriptions (
    id bigint PRIMARY KEY,
    plan text,
    amount numeric(12,2),
    renews_at timestamptz,
    note text,
    flags jsonb,
    score double precision,
    active boolean,
    blob bytea,
    starts date
);
INSERT INTO public.subscriptions
SELECT g, 'plan ' || (g % 7), (g * 1.25)::numeric(12,2), '2026-01-01 00:00:00+00'::timestamptz
       + g * interval '1 minute 0.5 second', CASE WHEN g % 5 = 0 THEN '' WHEN g % 5 = 1 THEN NULL
       ELSE 'note|' || g END, jsonb_build_object('z', g, 'a', jsonb_build_array(1, 'x')),
       g / 3.0, g % 2 = 0, decode(lpad(to_hex(g), 8, '0'), 'hex'), date '2026-01-01' + g
FROM generate_series(1, 3000) g;
"""


def cdc(tmp_path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdc", *args, "--config", str(tmp_path / "cdc.yaml")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_run(tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`cdc run` in the background, its log in run.log (shown when a test finds it ended)."""
    return subprocess.Popen(
        [sys.executable, "-m", "cdc", "run", "--config", str(tmp_path / "cdc.yaml")],
        cwd=tmp_path,
        env=env or dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "run.log").open("a"),
    )


def reconcile(tmp_path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    out = cdc(tmp_path, "reconcile", TABLE, "--format", "json", "--wait", "60", *extra)
    assert out.returncode in (0, 1) and out.stdout, out.stdout + out.stderr
    [report] = json.loads(out.stdout)
    report["log"] = out.stderr  # progress lines, for failure messages
    return out.returncode, report


def state_sql(tmp_path: Path, statement: str) -> None:
    """Break the state table on purpose (`cdc run` lets go of the file between merges)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
                con.execute(statement)
            return
        except duckdb.IOException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Workload:
    """Updates and inserts on keys above 1000 while it runs (the broken keys stay below)."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.stop = threading.Event()
        self.changes = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = random.Random(7)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            next_id = 100_000
            while not self.stop.is_set():
                key = rng.randint(1001, 3000)
                with conn.transaction():
                    conn.execute(
                        "UPDATE public.subscriptions SET amount = amount + 1, note = %s, "
                        "flags = flags || jsonb_build_object('n', %s) WHERE id = %s",
                        (f"w{self.changes}", self.changes, key),
                    )
                    if self.changes % 5 == 0:
                        next_id += 1
                        conn.execute(
                            "INSERT INTO public.subscriptions (id, plan) VALUES (%s, 'new')",
                            (next_id,),
                        )
                self.changes += 1
                time.sleep(0.01)

    def __enter__(self) -> Workload:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def test_reconcile_finds_what_was_broken_repairs_it_and_stays_exact_under_load(
    postgres, source_dsn, tmp_path
) -> None:
    db = source_dsn.rsplit("/", 1)[1]
    postgres.execute(SCHEMA, database=db)
    (tmp_path / "cdc.yaml").write_text(REGISTRY.format(dsn=source_dsn, columns=COLUMNS))
    run = start_run(tmp_path)
    try:
        deadline = time.monotonic() + 120
        while True:  # the snapshot merged
            assert run.poll() is None, (tmp_path / "run.log").read_text()
            status = json.loads(cdc(tmp_path, "status", "--format", "json").stdout)
            if status["tables"][0]["live_rows"] == 3000:
                break
            assert time.monotonic() < deadline, status
            time.sleep(1)
        with Workload(source_dsn) as load:
            code, report = reconcile(tmp_path)
            assert (code, report["status"]) == (0, "equal"), report
            assert report["not_compared"] == {}, report
            assert report["rows"] >= 3000, report
            assert report["rows_transferred"] < report["rows"], report["log"]
            assert load.changes > 20  # the comparison ran while changes flowed

            state_sql(tmp_path, f"DELETE FROM {STATE} WHERE id = 10")
            state_sql(
                tmp_path,
                f"UPDATE {STATE} SET plan = 'hacked', amount = 0 WHERE id = 20 AND _is_current",
            )
            state_sql(
                tmp_path,
                f"INSERT INTO {STATE} SELECT * REPLACE (999999 AS id) FROM {STATE} "
                "WHERE id = 30 AND _is_current",
            )
            code, report = reconcile(tmp_path)
            assert (code, report["status"]) == (1, "different"), report
            assert report["missing"] == [{"id": 10}]
            assert report["extra"] == [{"id": 999999}]
            assert report["different"] == [{"key": {"id": 20}, "columns": ["amount", "plan"]}]

            code, report = reconcile(tmp_path, "--repair")
            assert (code, report["status"], report["repaired"]) == (0, "equal", 3), report["log"]
            code, report = reconcile(tmp_path)
            assert (code, report["status"]) == (0, "equal"), report
    finally:
        run.terminate()
        run.wait(120)
    # the repair is history: a rebuild from the changelog gives a table that reconciles equal
    state_sql(
        tmp_path,
        f"DROP VIEW IF EXISTS {STATE}_current; DROP TABLE {STATE}; "
        f"DROP TABLE IF EXISTS {STATE}__truncates",
    )
    out = cdc(tmp_path, "rebuild", TABLE)
    assert out.returncode == 0, out.stdout + out.stderr
    run = start_run(tmp_path)
    try:
        code, report = reconcile(tmp_path)
        assert (code, report["status"]) == (0, "equal"), report
    finally:
        run.terminate()
        run.wait(120)


def run_for(tmp_path: Path, seconds: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "cdc", "run"),
            *("--config", str(tmp_path / "cdc.yaml"), "--duration", str(seconds)),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=seconds + 120,
    )


def test_a_dropped_and_recreated_slot_is_a_loss_window_until_reconcile_proves_it_healed(
    postgres, source_dsn, tmp_path
) -> None:
    db = source_dsn.rsplit("/", 1)[1]
    postgres.execute(
        "CREATE TABLE public.subscriptions (id bigint PRIMARY KEY, plan text);"
        "INSERT INTO public.subscriptions SELECT g, 'basic' FROM generate_series(1, 50) g;",
        database=db,
    )
    (tmp_path / "cdc.yaml").write_text(REGISTRY.format(dsn=source_dsn, columns=""))
    assert run_for(tmp_path, 8).returncode == 0
    # behind our back: the slot is dropped, changes happen, a new slot of the same name appears
    postgres.execute("SELECT pg_drop_replication_slot('cdc_shop')", database=db)
    postgres.execute(
        "UPDATE public.subscriptions SET plan = 'lost' WHERE id <= 5;"
        "DELETE FROM public.subscriptions WHERE id = 50;",
        database=db,
    )
    postgres.execute(
        "SELECT pg_create_logical_replication_slot('cdc_shop', 'pgoutput')", database=db
    )
    out = run_for(tmp_path, 30)
    assert out.returncode == 1 and "recorded as loss window" in out.stderr, out.stderr
    status = json.loads(cdc(tmp_path, "status", "--format", "json").stdout)
    [window] = status["loss_windows"]
    assert window["open_tables"] == [TABLE] and window["to_position"] is None
    assert any("cdc reconcile shop.public.subscriptions --repair" in w for w in status["warnings"])
    check = cdc(tmp_path, "check", "--format", "json")
    lost = [r for r in json.loads(check.stdout)["results"] if r["check"] == "loss_window"]
    assert check.returncode == 1 and lost[0]["status"] == "fail"

    # on_position_lost: resnapshot: the capture takes a new snapshot and goes on
    (tmp_path / "cdc.yaml").write_text(
        REGISTRY.format(dsn=source_dsn, columns="").replace(
            "    tables:", "    on_position_lost: resnapshot\n    tables:"
        )
    )
    postgres.execute("SELECT pg_drop_replication_slot('cdc_shop')", database=db)
    postgres.execute(
        "SELECT pg_create_logical_replication_slot('cdc_shop', 'pgoutput')", database=db
    )
    run = start_run(tmp_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            status = json.loads(cdc(tmp_path, "status", "--format", "json").stdout)
            if status["loss_windows"] and status["loss_windows"][0]["to_position"]:
                break
            assert run.poll() is None and time.monotonic() < deadline, status
            time.sleep(1)
        postgres.execute("UPDATE public.subscriptions SET plan = 'after' WHERE id = 1", database=db)
        # the new snapshot brought the updates made in the gap; a row deleted in the gap is not
        # in any snapshot: reconcile finds it, --repair deletes it and closes the window
        code, report = reconcile(tmp_path)
        assert (code, report["extra"], report["missing"]) == (1, [{"id": 50}], []), report
        assert report["different"] == [], report
        assert json.loads(cdc(tmp_path, "status", "--format", "json").stdout)["loss_windows"]
        code, report = reconcile(tmp_path, "--repair")
        assert (code, report["status"], report["repaired"]) == (0, "equal", 1), report
        assert json.loads(cdc(tmp_path, "status", "--format", "json").stdout)["loss_windows"] == []
        assert cdc(tmp_path, "check").returncode == 0
    finally:
        run.terminate()
        run.wait(120)
    # history is in order: the new snapshot's versions after the old ones, the change after it
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        plans = [
            r[0]
            for r in con.execute(f"SELECT plan FROM {STATE} WHERE id = 1 ORDER BY _seq").fetchall()
        ]
        gone = con.execute(
            f"SELECT _is_deleted FROM {STATE} WHERE id = 50 AND _is_current"
        ).fetchall()
    assert plans == ["basic", "lost", "after"], plans
    assert gone == [(True,)], gone


PII_KEY = "6b6579206f6620746865207265636f6e63696c652074657374203132333435"


def test_pii_columns_compare_by_their_protected_form_made_on_our_side(
    postgres, source_dsn, tmp_path
) -> None:
    """The PII key never reaches a database: the source's clear values come out per segment and
    are hashed or masked here, then compared with what the state table holds."""
    db = source_dsn.rsplit("/", 1)[1]
    postgres.execute(
        "CREATE TABLE public.subscriptions (id bigint PRIMARY KEY, plan text, email text, "
        "phone text);"
        "INSERT INTO public.subscriptions SELECT g, 'basic', 'user' || g || '@example.com', "
        "'+44 7700 9' || lpad(g::text, 5, '0') FROM generate_series(1, 500) g;",
        database=db,
    )
    (tmp_path / "cdc.yaml").write_text(
        REGISTRY.format(
            dsn=source_dsn,
            columns="        columns: {id: bigint, plan: text, email: text, phone: text}\n"
            "        pii: {email: hash, phone: mask}\n",
        )
    )
    env = {**os.environ, "CDC_PII_KEY": PII_KEY}
    run = start_run(tmp_path, env)

    def reconcile_pii(*extra: str) -> tuple[int, dict[str, Any], str]:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "cdc",
                "reconcile",
                TABLE,
                "--config",
                str(tmp_path / "cdc.yaml"),
                "--format",
                "json",
                "--wait",
                "60",
                *extra,
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode in (0, 1) and out.stdout, out.stdout + out.stderr
        [report] = json.loads(out.stdout)
        return out.returncode, report, out.stdout + out.stderr

    try:
        deadline = time.monotonic() + 120
        while (
            json.loads(cdc(tmp_path, "status", "--format", "json").stdout)["tables"][0]["live_rows"]
            != 500
        ):
            assert run.poll() is None and time.monotonic() < deadline
            time.sleep(1)
        code, report, text = reconcile_pii()
        assert (code, report["status"], report["pii_compared"]) == (0, "equal", ["email", "phone"])
        assert report["not_compared"] == {}
        assert "user1@example.com" not in text and PII_KEY not in text  # nothing in clear
        state_sql(tmp_path, f"UPDATE {STATE} SET email = 'h1:forged' WHERE id = 3 AND _is_current")
        state_sql(tmp_path, f"UPDATE {STATE} SET phone = '*' WHERE id = 4 AND _is_current")
        code, report, _ = reconcile_pii()
        assert report["different"] == [
            {"key": {"id": 3}, "columns": ["email"]},
            {"key": {"id": 4}, "columns": ["phone"]},
        ], report
        code, report, _ = reconcile_pii("--repair")
        assert (code, report["status"], report["repaired"]) == (0, "equal", 2), report
    finally:
        run.terminate()
        run.wait(120)
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        [(email, phone)] = con.execute(
            f"SELECT email, phone FROM {STATE} WHERE id = 3 AND _is_current"
        ).fetchall()
    assert email.startswith("h1:") and email != "h1:forged" and "@" not in email
    assert phone.endswith("0003") and phone.startswith("*")


def test_a_database_whose_text_is_not_utf8_is_refused_with_its_encoding(postgres: Any) -> None:
    """The digests hash the database's own text bytes, which are UTF-8 only in a UTF8 database:
    any other encoding is refused up front instead of reporting every non-ASCII row as different."""
    from connectors.reconcile import PostgresSnapshot, ReconcileError
    from state_models.registry import Source

    name = f"t_latin1_{os.getpid()}_{random.randrange(1 << 30)}"
    postgres.execute(
        f"CREATE DATABASE \"{name}\" ENCODING 'LATIN1' TEMPLATE template0 "
        "LC_COLLATE 'C' LC_CTYPE 'C'"
    )
    source = Source(kind="postgres", engine="pgoutput", dsn=postgres.dsn(name))
    with (
        pytest.raises(ReconcileError, match="server_encoding is LATIN1"),
        PostgresSnapshot("latin", source),
    ):
        pass
    # the temporary slot went with its connection: nothing is left behind on the server
    with psycopg.connect(postgres.dsn(name), autocommit=True) as conn:
        slots = conn.execute(  # the server's other databases have slots of their own
            "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()"
        ).fetchone()
    assert slots is not None and slots[0] == 0

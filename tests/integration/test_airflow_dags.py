"""The Composer / Airflow operators (``composer/cdc_airflow``) run with Airflow itself, in its own
locked virtualenv (``composer/requirements.lock``): the example DAGs import; ``dag.test()`` of a
backfill replays a range into DuckDB and checks it; a check DAG passes on a sound table and fails,
saying which check and key, on a broken one; the streaming job's start task builds a command line
that ``cdc job streaming`` accepts and learns the job id from what the launcher prints."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest

from cdc.cli import build_parser
from cdc.commands.job import _pipeline_options, _print_dataflow
from cdc.demo.run import DemoOptions, run_demo
from connectors.local_servers import postgres_bindir
from tests.airflow_env import COMPOSER, airflow_env, ensure_venv
from tests.integration.test_reconcile_live import state_sql

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HERE = Path(__file__).resolve().parents[1] / "airflow"
CDC = str(Path(sys.executable).with_name("cdc"))
TABLE = "billing.public.subscriptions"


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The Airflow virtualenv's interpreter and an environment with a migrated SQLite metadata
    database in a fresh AIRFLOW_HOME."""
    venv = ensure_venv()
    home = tmp_path_factory.mktemp("airflow-home")
    env = airflow_env(home)
    migrated = subprocess.run(
        [str(venv / "bin" / "airflow"), "db", "migrate"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    return {"python": str(venv / "bin" / "python"), **env}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if postgres_bindir() is None:
        pytest.skip("needs the PostgreSQL server binaries (apt-get install postgresql)")
    folder = tmp_path_factory.mktemp("demo")
    out, err = io.StringIO(), io.StringIO()
    options = DemoOptions(folder=folder, seconds=3, rate=20, mariadb=False)
    assert run_demo(options, out, err) == 0, err.getvalue()
    return folder


def run_dag(
    airflow: dict[str, str], folder: Path, dag_id: str, conf: dict | None = None, **env: str
) -> tuple[dict, str]:
    environment = {k: v for k, v in airflow.items() if k != "python"}
    environment.update(AIRFLOW__CORE__DAGS_FOLDER=str(folder), CDC_COMMAND=CDC, **env)
    done = subprocess.run(
        [airflow["python"], str(HERE / "run_dag.py"), str(folder), dag_id, json.dumps(conf or {})],
        capture_output=True,
        text=True,
        env=environment,
        timeout=600,
    )
    lines = done.stdout.strip().splitlines()
    log = done.stdout + done.stderr  # Airflow logs to stdout, tracebacks to stderr
    assert done.returncode == 0 and lines, log[-4000:]
    return json.loads(lines[-1]), log


def dag_folder(tmp_path: Path, source: str) -> Path:
    """A DAG folder holding one file with ``source``."""
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "dag.py").write_text(textwrap.dedent(source))
    return folder


def versions(folder: Path) -> int:
    with duckdb.connect(str(folder / "warehouse.duckdb"), read_only=True) as db:
        row = db.execute("SELECT count(*) FROM billing_subscriptions").fetchone()
    assert row is not None
    return int(row[0])


def test_the_example_dags_import(airflow: dict[str, str]) -> None:
    listed, _err = run_dag(airflow, COMPOSER / "dags", "--list", CDC_TABLES=TABLE)
    assert listed["import_errors"] == {}
    dags = listed["dags"]
    assert set(dags) == {
        "cdc_nightly_checks",
        "cdc_backfill",
        "cdc_streaming_start",
        "cdc_streaming_drain",
    }
    assert dags["cdc_nightly_checks"] == ["check", "reconcile", "repair"]
    assert dags["cdc_backfill"] == ["check", "replay__billing_public_subscriptions"]
    assert dags["cdc_streaming_start"] == ["running", "start"]
    assert dags["cdc_streaming_drain"] == ["drain"]


def test_a_backfill_dag_replays_its_range_into_duckdb_and_checks_it(
    airflow: dict[str, str], demo: Path
) -> None:
    before = versions(demo)
    assert before > 0
    with duckdb.connect(str(demo / "warehouse.duckdb")) as db:
        db.execute("DELETE FROM billing_subscriptions")  # lost: the backfill brings it back

    def backfill(since: str) -> tuple[dict, str]:
        conf = {"since": since, "until": ""}
        config = str(demo / "cdc.yaml")
        dags = COMPOSER / "dags"
        return run_dag(airflow, dags, "cdc_backfill", conf, CDC_TABLES=TABLE, CDC_CONFIG=config)

    run, err = backfill("2020-01-01T00:00:00Z")
    assert run["state"] == "success", err[-4000:]
    assert run["tasks"] == {"replay__billing_public_subscriptions": "success", "check": "success"}
    assert versions(demo) == before
    assert f"{before} versions inserted" in run["returns"]["replay__billing_public_subscriptions"]
    assert run["returns"]["check"]["ok"] is True
    # the range reached the command: a range after every change replays nothing
    later, err = backfill("2099-01-01T00:00:00Z")
    assert later["state"] == "success", err[-4000:]
    assert ": 0 events from 0 files" in later["returns"]["replay__billing_public_subscriptions"]
    assert "--since 2099-01-01T00:00:00Z" in err


def test_a_check_dag_passes_on_a_sound_table_and_fails_on_a_broken_one(
    airflow: dict[str, str], demo: Path, tmp_path: Path
) -> None:
    dags = dag_folder(
        tmp_path,
        f"""
        from cdc_airflow.dags import nightly_checks_dag

        dag = nightly_checks_dag(
            "cdc_checks_only",
            tables=[{TABLE!r}],
            reconcile=False,
            operator_args={{"config": {str(demo / "cdc.yaml")!r}}},
        )
        """,
    )
    sound, err = run_dag(airflow, dags, "cdc_checks_only")
    assert sound["state"] == "success", err[-4000:]
    assert sound["tasks"] == {"check": "success"}
    checks = {r["check"]: r["status"] for r in sound["returns"]["check"]["results"]}
    assert checks["one_current"] == "pass" and checks["validity_chained"] == "pass"

    # broken on purpose: a second current version of one subscription
    with duckdb.connect(str(demo / "warehouse.duckdb")) as db:
        key = db.execute(
            "INSERT INTO billing_subscriptions SELECT * REPLACE "
            "('ffffffffffffffff/ffffffffffffffff' AS _seq) FROM billing_subscriptions "
            "WHERE _is_current ORDER BY id LIMIT 1 RETURNING id"
        ).fetchone()
    assert key is not None
    try:
        broken, err = run_dag(airflow, dags, "cdc_checks_only")
        assert broken["state"] == "failed"
        assert broken["tasks"] == {"check": "failed"}
        assert "check(s) failed: billing.public.subscriptions one_current fail" in err
        assert f"first key {{'id': {key[0]}}}" in err or f"first key {key[0]}" in err, err[-3000:]
    finally:
        with duckdb.connect(str(demo / "warehouse.duckdb")) as db:
            db.execute(
                "DELETE FROM billing_subscriptions WHERE _seq = 'ffffffffffffffff/ffffffffffffffff'"
            )


def test_a_command_that_exits_2_fails_the_task_without_retrying(
    airflow: dict[str, str], demo: Path, tmp_path: Path
) -> None:
    dags = dag_folder(
        tmp_path,
        f"""
        import datetime as dt
        from cdc_airflow.dags import backfill_dag

        dag = backfill_dag(
            "cdc_typo",
            tables=["billing.public.subscriptionz"],
            check_after=False,
            operator_args={{
                "config": {str(demo / "cdc.yaml")!r},
                "retries": 3,
                "retry_delay": dt.timedelta(seconds=1),
            }},
        )
        """,
    )
    run, err = run_dag(airflow, dags, "cdc_typo")
    assert run["state"] == "failed"
    assert run["tasks"] == {"replay__billing_public_subscriptionz": "failed"}
    assert "bad usage or registry: not retried" in err
    # the task's failure says why, from what `cdc` printed on stderr
    reason = err[err.index("`cdc replay billing.public.subscriptionz") :].splitlines()[0]
    assert "exited 2: " in reason and "subscriptionz" in reason.split("exited 2: ")[1], reason
    assert err.count(f"running {CDC} replay billing.public.subscriptionz") == 1
    assert "subscriptionz" in err


def test_the_streaming_start_task_launches_a_command_cdc_accepts_and_reads_its_job_id(
    airflow: dict[str, str], demo: Path
) -> None:
    # the line `cdc job streaming` prints once Dataflow accepted the job
    args = build_parser().parse_args(
        [
            "job",
            "streaming",
            "--runner",
            "DataflowRunner",
            "--project",
            "acme-data",
            "--region",
            "europe-west1",
        ]
    )

    class Submitted:
        def job_id(self) -> str:
            return "2026-12-07_10_00_00-1234567890"

    with contextlib.redirect_stdout(io.StringIO()) as printed:
        _print_dataflow(Submitted(), args, streaming=True)
    launcher_line = printed.getvalue().splitlines()[0]

    environment = {k: v for k, v in airflow.items() if k != "python"}
    environment["AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT"] = "google-cloud-platform://"
    done = subprocess.run(
        [
            airflow["python"],
            str(HERE / "start_streaming.py"),
            sys.executable,
            str(demo / "cdc.yaml"),
            launcher_line,
        ],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    started = json.loads(done.stdout.strip().splitlines()[-1])
    assert started["returned"] == {"dataflow_job_id": "2026-12-07_10_00_00-1234567890"}
    assert started["drain"] == {
        "job_name": "cdc-streaming",
        "drain_pipeline": True,
        "project_id": "acme-data",
        "location": "europe-west1",
    }
    assert started["sensor"]["expected"] == ["JOB_STATE_RUNNING"]

    command = started["command"]
    assert command[:3] == [sys.executable, "-m", "merge_jobs.streaming"]
    parsed = build_parser().parse_args(["job", "streaming", *command[3:]])
    assert parsed.config == str(demo / "cdc.yaml")
    assert parsed.warehouse == "bigquery://acme-data/cdc_state"
    assert parsed.changelog == "gs://acme-cdc/raw" and parsed.batch_size == 5000
    options = _pipeline_options(parsed, streaming=True).get_all_options(drop_default=True)
    assert options["runner"] == "DataflowRunner" and options["streaming"] is True
    assert options["job_name"] == "cdc-streaming"
    assert (options["project"], options["region"]) == ("acme-data", "europe-west1")
    assert options["temp_location"] == "gs://acme-cdc-tmp/beam"
    assert options["max_num_workers"] == 4
    assert any(label.startswith("airflow-version=v") for label in options["labels"])
    assert os.path.exists(options["setup_file"])


def test_a_rebuild_dag_builds_a_shadow_verifies_it_and_swaps_it_in(
    airflow: dict[str, str], demo: Path, tmp_path: Path
) -> None:
    before = versions(demo)
    dags = dag_folder(
        tmp_path,
        f"""
        from cdc_airflow.dags import rebuild_dag

        dag = rebuild_dag(
            "cdc_rebuild", tables=[{TABLE!r}], operator_args={{"config": {str(demo / "cdc.yaml")!r}}}
        )
        """,
    )
    run, log = run_dag(airflow, dags, "cdc_rebuild")
    assert run["state"] == "success", log[-4000:]
    group = "rebuild__billing_public_subscriptions"
    assert run["tasks"] == {
        f"{group}.shadow": "success",
        f"{group}.verify": "success",
        f"{group}.swap": "success",
        "check": "success",
    }
    assert (
        log.index(f"running {CDC} rebuild {TABLE} --shadow")
        < log.index(f"running {CDC} verify {TABLE}")
        < log.index(f"running {CDC} rebuild {TABLE} --swap")
    )
    assert versions(demo) == before
    with duckdb.connect(str(demo / "warehouse.duckdb"), read_only=True) as db:
        rows = db.execute("SELECT table_name FROM information_schema.tables").fetchall()
    tables = {r[0] for r in rows}
    assert "billing_subscriptions__shadow" not in tables  # swapped in, not left behind


def test_a_source_password_comes_from_an_airflow_connection_and_is_never_logged(
    airflow: dict[str, str], demo: Path, tmp_path: Path
) -> None:
    registry = (demo / "cdc.yaml").read_text()
    dsn_line = next(line for line in registry.splitlines() if "dsn:" in line)
    copy = tmp_path / "cdc.yaml"
    copy.write_text(registry.replace(dsn_line, "    dsn: ${BILLING_DSN}"))
    dags = dag_folder(
        tmp_path,
        f"""
        from cdc_airflow.operators import CdcOperator
        from cdc_airflow.dags import _dag

        with _dag("cdc_preflight", None, None, []) as dag:
            CdcOperator(
                task_id="preflight",
                arguments=["preflight"],
                config={str(copy)!r},
                connections={{"BILLING_DSN": "cdc_billing"}},
            )
        """,
    )
    run, log = run_dag(
        airflow,
        dags,
        "cdc_preflight",
        AIRFLOW_CONN_CDC_BILLING="postgresql://cdc:s3cret-pw@127.0.0.1:1/billing",
    )
    assert run["state"] == "failed"
    # the connection's URI reached `cdc` (it tried that host and port) ...
    assert "127.0.0.1:1/billing" in log and "Connection refused" in log, log[-3000:]
    # ... and its password appears nowhere: not in the command line, not in cdc's output
    assert "s3cret-pw" not in log


def test_the_nightly_dag_reconciles_a_live_source_and_repairs_what_differs(
    airflow: dict[str, str], postgres: Any, source_dsn: str, tmp_path: Path
) -> None:
    db = source_dsn.rsplit("/", 1)[1]
    postgres.execute(
        "CREATE TABLE public.subscriptions (id bigint PRIMARY KEY, plan text, amount numeric);"
        "INSERT INTO public.subscriptions SELECT g, 'p' || (g % 3), g * 1.5 "
        "FROM generate_series(1, 200) g;",
        database=db,
    )
    (tmp_path / "cdc.yaml").write_text(
        textwrap.dedent(
            f"""\
            changelog: ./changelog
            warehouse: duckdb:///warehouse.duckdb
            state_dir: ./state
            sources:
              shop:
                kind: postgres
                engine: pgoutput
                dsn: {source_dsn}
                tables:
                  - name: public.subscriptions
                    primary_key: [id]
                    columns: {{id: bigint, plan: text, amount: numeric}}
            """
        )
    )
    table, state = "shop.public.subscriptions", "shop_subscriptions"
    run = subprocess.Popen(
        [CDC, "run", "--config", str(tmp_path / "cdc.yaml")],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "run.log").open("w"),
    )
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "warehouse.duckdb").exists() or live_rows(tmp_path, state) < 200:
            assert run.poll() is None, (tmp_path / "run.log").read_text()
            assert time.monotonic() < deadline, "the snapshot was not merged in 120 s"
            time.sleep(1)
        state_sql(tmp_path, f"DELETE FROM {state} WHERE id = 10")  # lost, on purpose

        # the example DAG's factory as cdc_nightly.py calls it, without its 15-minute retry
        dags = dag_folder(
            tmp_path,
            f"""
            from cdc_airflow.dags import nightly_checks_dag

            dag = nightly_checks_dag(
                "cdc_nightly_checks",
                tables=[{table!r}],
                repair=True,
                reconcile_wait_s=60,
                operator_args={{"config": {str(tmp_path / "cdc.yaml")!r}}},
            )
            """,
        )
        nightly, log = run_dag(airflow, dags, "cdc_nightly_checks")
    finally:
        run.terminate()
        run.wait(120)
    assert nightly["tasks"] == {"check": "success", "reconcile": "failed", "repair": "success"}
    assert f"{table} different (1 missing, 0 extra, 0 different)" in log, log[-4000:]
    [repaired] = nightly["returns"]["repair"]
    assert (repaired["status"], repaired["repaired"]) == ("equal", 1)
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        row = con.execute(f"SELECT plan FROM {state} WHERE id = 10 AND _is_current").fetchone()
    assert row == ("p1",)


def live_rows(folder: Path, state: str) -> int:
    try:
        with duckdb.connect(str(folder / "warehouse.duckdb"), read_only=True) as con:
            row = con.execute(f"SELECT count(*) FROM {state} WHERE _is_current").fetchone()
    except (duckdb.IOException, duckdb.CatalogException):
        return 0  # held by `cdc run` between merges, or not created yet
    return int(row[0]) if row else 0

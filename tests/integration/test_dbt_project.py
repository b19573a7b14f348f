"""`cdc dbt sources` writes a dbt project that real dbt (dbt-duckdb, in its own locked virtualenv)
runs green right after `cdc demo`: source freshness from cdc_progress, the SCD2 tests, the staging
model; and `dbt test` fails on a state table broken on purpose."""

from __future__ import annotations

import contextlib
import io
import subprocess
from pathlib import Path

import duckdb
import pytest

from cdc.cli import main as cdc_main
from cdc.demo.run import DemoOptions, run_demo
from connectors.local_servers import mariadb_binaries, postgres_bindir
from tests.dbt_env import dbt_env, ensure_venv

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def dbt(venv: Path, project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(venv / "bin" / "dbt"),
            *args,
            "--project-dir",
            str(project),
            "--profiles-dir",
            str(project),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dbt_env(),
        cwd=project,
    )


@pytest.mark.skipif(
    postgres_bindir() is None or mariadb_binaries() is None,
    reason="needs local PostgreSQL and MariaDB server binaries",
)
def test_the_generated_project_runs_green_after_the_demo_and_fails_on_a_broken_table(
    tmp_path: Path,
) -> None:
    venv = ensure_venv()
    folder = tmp_path / "demo"
    out, err = io.StringIO(), io.StringIO()
    assert run_demo(DemoOptions(folder=folder, seconds=4, rate=25), out, err) == 0, err.getvalue()
    project = tmp_path / "dbt"
    with contextlib.redirect_stdout(io.StringIO()):
        code = cdc_main(
            ["dbt", "sources", "--out", str(project), "--config", str(folder / "cdc.yaml")]
        )
    assert code == 0
    sources = (project / "models" / "sources.yml").read_text()
    assert "loaded_at_query" in sources and "scd2_one_current" in sources

    fresh = dbt(venv, project, "source", "freshness")
    assert fresh.returncode == 0, fresh.stdout[-3000:]
    assert "PASS" in fresh.stdout and "billing_subscriptions" in fresh.stdout
    run = dbt(venv, project, "run")
    assert run.returncode == 0, run.stdout[-3000:]
    tested = dbt(venv, project, "test")
    assert tested.returncode == 0, tested.stdout[-3000:]
    assert "scd2_one_current" in tested.stdout and "ERROR=0" in tested.stdout.replace(" ", "")

    # broken on purpose: a second current version of one subscription
    with duckdb.connect(str(folder / "warehouse.duckdb")) as db:
        db.execute(
            "INSERT INTO billing_subscriptions SELECT * REPLACE ('ffffffffffffffff/ffffffffffffffff' "
            "AS _seq) FROM billing_subscriptions WHERE _is_current LIMIT 1"
        )
    broken = dbt(venv, project, "test")
    assert broken.returncode == 1, broken.stdout[-3000:]
    assert "FAIL 1 source_scd2_one_current_cdc_billing_subscriptions" in broken.stdout, (
        broken.stdout[-3000:]
    )

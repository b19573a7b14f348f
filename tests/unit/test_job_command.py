"""``cdc job streaming|replay``: options, checks before anything runs, and a local replay."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

pytest.importorskip("apache_beam", reason="needs apache-beam (pip install -e '.[gcp]')")

from cdc.cli import build_parser, main
from cdc.commands.job import _pipeline_options
from connectors.changelog import write_events
from connectors.warehouse import open_warehouse
from merge_jobs.pool import POOL
from tests.scd2_histories import BASE_TS
from tests.unit.test_merge_job_steps import TABLE, history_events

REGISTRY = """
changelog: ./lake
warehouse: duckdb:///state.duckdb
sources:
  billing:
    kind: postgres
    engine: debezium
    dsn: postgresql://cdc@127.0.0.1/billing
    tables:
      - name: public.subscriptions
        primary_key: [id]
        columns: {id: bigint, plan: text, amount: "numeric(12,2)"}
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "cdc.yaml"
    path.write_text(REGISTRY)
    return path


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["job", *argv])


def test_replay_on_the_direct_runner_applies_the_changelog_once_however_often_it_runs(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = history_events()
    write_events(str(config.parent / "lake"), events)
    args = ["job", "replay", "--config", str(config), "--since", "2026-05-28T20:26:41Z"]
    for _ in range(2):
        assert main(args) == 0
        POOL.close_idle()
    out = capsys.readouterr().out
    in_range = [e for e in events if e.commit_ts >= BASE_TS + 1_000_000]
    assert f"DONE: {len(in_range)} events replayed, {len(in_range)} merged in 1 MERGEs" in out
    wh = open_warehouse(f"duckdb:///{config.parent / 'state.duckdb'}")
    try:
        versions = wh.history(TABLE)
    finally:
        wh.close()
    assert sorted(r["_event_id"] for r in versions) == sorted(e.event_id for e in in_range)


def test_dataflow_needs_cloud_locations_and_says_which(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["job", "streaming", "--config", str(config), "--runner", "DataflowRunner"]) == 2
    err = capsys.readouterr().err
    for needed in (
        "--project is required",
        "--region is required",
        "--temp-location is required",
        "--changelog gs://bucket/prefix",
        "--dead-letters gs://bucket/prefix",
        "--warehouse bigquery://project/dataset",
    ):
        assert needed in err


def test_an_online_store_password_never_travels_in_a_dataflow_job(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config.write_text(REGISTRY + "online:\n  url: redis://:hunter2-pw@10.0.0.5:6379/0\n")
    cloud = ["--runner", "DataflowRunner", "--project", "p", "--region", "r"]
    cloud += ["--temp-location", "gs://t/beam", "--changelog", "gs://c/raw"]
    cloud += ["--dead-letters", "gs://c/dl", "--warehouse", "bigquery://p/ds"]
    assert main(["job", "streaming", "--config", str(config), *cloud]) == 2
    err = capsys.readouterr().err
    assert "online: store's url holds a password" in err and "Memorystore" in err
    assert "hunter2-pw" not in err


def test_beam_spellings_and_labels_are_the_same_options(config: Path) -> None:
    # what the Airflow Beam provider passes (composer/cdc_airflow/dataflow.py)
    beam_style = parse(
        "streaming",
        "--runner=DataflowRunner",
        "--job_name=cdc-streaming",
        "--temp_location=gs://acme-tmp/beam",
        "--max_num_workers=4",
        "--batch_size=100",
        "--labels=airflow-version=v3-3-2",
        "--labels",
        "team=data",
    )
    dashed = parse(
        "streaming",
        "--runner=DataflowRunner",
        "--job-name=cdc-streaming",
        "--temp-location=gs://acme-tmp/beam",
        "--max-num-workers=4",
        "--batch-size=100",
        "--labels=airflow-version=v3-3-2",
        "--labels=team=data",
    )
    assert vars(beam_style) == vars(dashed)
    options = _pipeline_options(beam_style, streaming=True).get_all_options()
    assert options["labels"] == ["airflow-version=v3-3-2", "team=data"]
    assert options["temp_location"] == "gs://acme-tmp/beam" and options["max_num_workers"] == 4


def test_dataflow_options_reach_beam(config: Path) -> None:
    from apache_beam.options.pipeline_options import (
        GoogleCloudOptions,
        SetupOptions,
        StandardOptions,
        WorkerOptions,
    )

    args = parse(
        "streaming",
        "--runner=DataflowRunner",
        "--project=acme-data",
        "--region=europe-west1",
        "--temp-location=gs://acme-tmp/beam",
        "--num-workers=2",
        "--max-num-workers=8",
        "--service-account=cdc-merge@acme-data.iam.gserviceaccount.com",
        "--pipeline-option=experiments=enable_streaming_engine",
    )
    options = _pipeline_options(args, streaming=True)
    cloud = options.view_as(GoogleCloudOptions)
    assert (cloud.project, cloud.region, cloud.temp_location) == (
        "acme-data",
        "europe-west1",
        "gs://acme-tmp/beam",
    )
    assert cloud.service_account_email == "cdc-merge@acme-data.iam.gserviceaccount.com"
    workers = options.view_as(WorkerOptions)
    assert (workers.num_workers, workers.max_num_workers) == (2, 8)
    assert options.view_as(StandardOptions).streaming
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    setup_file = options.view_as(SetupOptions).setup_file
    assert setup_file and Path(setup_file).name == "pyproject.toml" and Path(setup_file).exists()
    assert "enable_streaming_engine" in options.get_all_options()["experiments"]
    # a fixed name for the streaming job (what `--update` and `cdc monitoring rules` expect)
    assert cloud.job_name == "cdc-streaming"
    named = _pipeline_options(
        parse("streaming", "--runner=DataflowRunner", "--job-name=x"), streaming=True
    )
    assert named.view_as(GoogleCloudOptions).job_name == "x"


def test_unknown_pipeline_options_and_missing_subscriptions_are_usage_errors(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["job", "replay", "--config", str(config)]
    assert main([*base, "--pipeline-option", "no_such_option=1"]) == 2
    assert "unknown Beam pipeline option(s): no_such_option" in capsys.readouterr().err
    assert main([*base, "--since", "yesterday"]) == 2
    assert "--since expects an ISO-8601 time" in capsys.readouterr().err
    assert main(["job", "streaming", "--config", str(config)]) == 2
    assert "no subscription to read" in capsys.readouterr().err


def test_the_package_dataflow_workers_install_builds_offline(tmp_path: Path) -> None:
    """What Beam runs for ``--setup_file pyproject.toml`` (stager: ``python -m build
    --no-isolation --sdist``): the sdist must build without PyPI and hold every package."""
    import subprocess
    import sys
    import tarfile

    from cdc.commands.job import _own_pyproject

    pyproject = _own_pyproject()
    assert pyproject is not None
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--sdist", "--outdir", str(tmp_path)],
        cwd=Path(pyproject).parent,
        check=True,
        capture_output=True,
    )
    [sdist] = tmp_path.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for module in (
        "merge_jobs/transforms.py",
        "merge_jobs/streaming.py",
        "merge_jobs/backfill.py",
        "connectors/warehouse/__init__.py",
        "state_models/debezium.py",
        "cdc/commands/job.py",
        "pyproject.toml",
    ):
        assert module in names


def test_datastream_inputs_need_a_datastream_source_and_a_pattern_inside_its_folder(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["job", "streaming", "--config", str(config), "--datastream-files", "/x/**"]
    assert main(args) == 2
    assert "no engine: datastream source" in capsys.readouterr().err

    with_stream = tmp_path / "ds.yaml"
    with_stream.write_text(
        REGISTRY
        + """
  shop:
    kind: mysql
    engine: datastream
    dsn: mysql://datastream@10.0.0.5/shop
    tables: [{name: shop.orders, primary_key: [id]}]
    datastream: {project: p, location: us-central1, bucket: acme-ds, output: ./ds/shop}
"""
    )
    args = ["job", "streaming", "--config", str(with_stream), "--datastream-files", "/x/**"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "outside every Datastream source's folder" in err and str(tmp_path / "ds/shop") in err

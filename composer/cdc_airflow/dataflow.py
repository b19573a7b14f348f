"""The streaming merge job on Dataflow, started and drained from Airflow with the Apache Beam and
Google providers' own operators (needs ``apache-airflow-providers-apache-beam`` and
``apache-airflow-providers-google``, both in Composer's default image).

Start: ``BeamRunPythonPipelineOperator`` runs ``python -m merge_jobs.streaming`` with the service's
interpreter (``cdc_python``: the environment ``cdc`` is installed in, which packages the project
for the workers) and Beam-style options (``--job_name``, ``--project``, ``--region``, ``--labels``,
``--temp_location``, ...; ``cdc job streaming`` takes both spellings). The launcher prints
``Created job with id: [ID]``, from which the provider learns the job id; it then waits until the
job runs, and ``DataflowJobStatusSensor`` confirms it is ``JOB_STATE_RUNNING``.

Drain: ``DataflowStopJobOperator`` with ``drain_pipeline=True`` on the job name: Dataflow stops
reading, flushes every buffered batch and changelog window, then stops (nothing lost; a cancel
would drop what is buffered).

The job name is fixed (``append_job_name=False``): Dataflow refuses a second active job of the
same name, so a start that runs twice cannot leave two jobs merging, and the monitoring policies of
``cdc monitoring rules --dataflow-job`` find it by that name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator
from airflow.providers.google.cloud.hooks.dataflow import DataflowJobStatus
from airflow.providers.google.cloud.operators.dataflow import (
    DataflowConfiguration,
    DataflowStopJobOperator,
)
from airflow.providers.google.cloud.sensors.dataflow import DataflowJobStatusSensor

from cdc_airflow.dags import _dag

STREAMING_JOB_NAME = "cdc-streaming"  # `cdc job streaming`'s default on Dataflow
MODULE = "merge_jobs.streaming"


def start_streaming_job(
    *,
    project: str,
    region: str,
    cdc_python: str,
    config: str,
    job_name: str = STREAMING_JOB_NAME,
    pipeline_options: Mapping[str, Any] | None = None,
    gcp_conn_id: str = "google_cloud_default",
    task_id: str = "start",
    **kwargs: Any,
) -> BeamRunPythonPipelineOperator:
    """The start task. ``pipeline_options`` are ``cdc job streaming``'s options in Beam's
    spelling (``{"temp_location": "gs://...", "warehouse": "bigquery://p/ds",
    "changelog": "gs://...", "max_num_workers": 4, "subscription": [...]}``)."""
    options = {"config": config, **dict(pipeline_options or {})}
    return BeamRunPythonPipelineOperator(
        task_id=task_id,
        runner="DataflowRunner",
        py_file=MODULE,
        py_options=["-m"],
        py_interpreter=cdc_python,
        pipeline_options=options,
        dataflow_config=DataflowConfiguration(
            job_name=job_name,
            append_job_name=False,
            project_id=project,
            location=region,
            gcp_conn_id=gcp_conn_id,
            wait_until_finished=False,  # a streaming job never finishes: wait until it runs
            drain_pipeline=True,  # a start task killed mid-way drains what it started
        ),
        gcp_conn_id=gcp_conn_id,
        **kwargs,
    )


def streaming_job_dags(
    *,
    project: str,
    region: str,
    job_name: str = STREAMING_JOB_NAME,
    gcp_conn_id: str = "google_cloud_default",
    dag_id_prefix: str = "cdc_streaming",
    dag_args: Mapping[str, Any] | None = None,
    **start_args: Any,
) -> tuple[Any, Any]:
    """Two DAGs triggered by hand: ``<prefix>_start`` (``start_streaming_job(**start_args)``,
    then a sensor until the job runs) and ``<prefix>_drain`` (drain by job name, waiting until
    Dataflow says it stopped)."""
    where = {"project_id": project, "location": region, "gcp_conn_id": gcp_conn_id}
    with _dag(f"{dag_id_prefix}_start", None, dag_args, ["dataflow"]) as start_dag:
        started = start_streaming_job(
            project=project,
            region=region,
            job_name=job_name,
            gcp_conn_id=gcp_conn_id,
            **start_args,
        )
        running = DataflowJobStatusSensor(
            task_id="running",
            job_id="{{ task_instance.xcom_pull(task_ids='start')['dataflow_job_id'] }}",
            expected_statuses={DataflowJobStatus.JOB_STATE_RUNNING},
            poke_interval=30,
            timeout=20 * 60,
            mode="reschedule",
            **where,
        )
        started >> running
    with _dag(f"{dag_id_prefix}_drain", None, dag_args, ["dataflow"]) as drain_dag:
        DataflowStopJobOperator(
            task_id="drain",
            job_name_prefix=job_name,
            drain_pipeline=True,
            stop_timeout=30 * 60,
            **where,
        )
    return start_dag, drain_dag

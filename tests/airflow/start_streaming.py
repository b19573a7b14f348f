"""Executes the streaming job's start task of ``cdc_airflow.dataflow`` inside the Airflow
virtualenv, for real up to the point where Dataflow would be called: the Beam provider asks the
service's interpreter for its Beam version (a real child process), builds the launcher's command
line and hands each line the launcher prints to the Dataflow hook's job-id parser. Only the launch
itself (which would submit to Dataflow) and the wait on Dataflow's API are replaced: the launch by
feeding the parser the line ``cdc job streaming`` prints after a submission (given as argument).

    python start_streaming.py CDC_PYTHON CONFIG LAUNCHER_LINE

Prints ``{"command": [...], "returned": ..., "drain": {...}}`` as JSON.
"""

from __future__ import annotations

import json
import sys
from typing import Any
from unittest import mock


def main(cdc_python: str, config: str, launcher_line: str) -> int:
    from airflow.providers.apache.beam.hooks.beam import BeamHook
    from airflow.providers.google.cloud.hooks.dataflow import DataflowHook
    from airflow.providers.google.cloud.links.dataflow import DataflowJobLink
    from cdc_airflow.dataflow import streaming_job_dags

    start_dag, drain_dag = streaming_job_dags(
        project="acme-data",
        region="europe-west1",
        cdc_python=cdc_python,
        config=config,
        pipeline_options={
            "temp_location": "gs://acme-cdc-tmp/beam",
            "warehouse": "bigquery://acme-data/cdc_state",
            "changelog": "gs://acme-cdc/raw",
            "max_num_workers": 4,
            "batch_size": 5000,
        },
    )
    seen: dict[str, Any] = {}

    def launch(self: Any, variables: dict, command_prefix: list[str], **kw: Any) -> None:
        from airflow.providers.apache.beam.hooks.beam import beam_options_to_args

        seen["command"] = [*command_prefix, f"--runner={self.runner}"]
        seen["command"] += beam_options_to_args(variables)
        kw["process_line_callback"](launcher_line)

    start = start_dag.get_task("start")
    with (
        mock.patch.object(BeamHook, "_start_pipeline", launch),
        mock.patch.object(DataflowHook, "wait_for_done", lambda *a, **k: None),
        mock.patch.object(DataflowJobLink, "persist", lambda *a, **k: None),
    ):
        returned = start.execute(context={})
    drain = drain_dag.get_task("drain")
    sensor = start_dag.get_task("running")
    print(
        json.dumps(
            {
                "command": seen["command"],
                "returned": returned,
                "sensor": {
                    "job_id": sensor.job_id,
                    "expected": sorted(sensor.expected_statuses),
                },
                "drain": {
                    "job_name": drain.job_name,
                    "drain_pipeline": drain.drain_pipeline,
                    "project_id": drain.project_id,
                    "location": drain.location,
                },
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))

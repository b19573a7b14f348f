"""The streaming merge job on Dataflow: `cdc_streaming_start` starts it (and waits until it runs),
`cdc_streaming_drain` drains it (buffered batches and changelog windows flushed, nothing lost).
Both triggered by hand. Settings (environment of the Composer environment): CDC_CONFIG,
CDC_PYTHON (the interpreter of the service's environment), CDC_PROJECT, CDC_REGION and
CDC_DATAFLOW_OPTIONS, a JSON object of `cdc job streaming` options in Beam's spelling
({"temp_location": "gs://acme-cdc-tmp/beam", "warehouse": "bigquery://acme-data/cdc_state", ...}).
"""

from __future__ import annotations

import json
import os

from cdc_airflow.dataflow import streaming_job_dags
from cdc_airflow.settings import from_environment

settings = from_environment()

start_dag, drain_dag = streaming_job_dags(
    project=os.environ.get("CDC_PROJECT", "my-project"),
    region=os.environ.get("CDC_REGION", "europe-west1"),
    cdc_python=os.environ.get("CDC_PYTHON", "python3"),
    config=settings.config or "cdc.yaml",
    pipeline_options=json.loads(os.environ.get("CDC_DATAFLOW_OPTIONS") or "{}"),
)

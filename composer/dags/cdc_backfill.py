"""A backfill, triggered by hand with the range to replay:

    airflow dags trigger cdc_backfill -c '{"since": "2026-05-01T00:00:00Z", "until": "2026-06-01T00:00:00Z"}'

replays [since, until) of the changelog into each table (`cdc replay`: the live MERGE, safe to
repeat and to overlap), then runs `cdc check` on them. Settings: see cdc_nightly.py; CDC_TABLES
(comma-separated) names the tables; without it, one `cdc job replay` replays every table on Beam
(CDC_REPLAY_OPTIONS: its runner options, e.g. "--runner DataflowRunner --project p --region r
--temp-location gs://... --warehouse bigquery://p/ds --changelog gs://...").
"""

from __future__ import annotations

import datetime as dt
import os
import shlex

from cdc_airflow.dags import backfill_dag
from cdc_airflow.settings import from_environment

settings = from_environment()

dag = backfill_dag(
    "cdc_backfill",
    tables=settings.tables,
    job_options=shlex.split(os.environ.get("CDC_REPLAY_OPTIONS", "")),
    operator_args={**settings.operator_args, "execution_timeout": dt.timedelta(hours=12)},
)

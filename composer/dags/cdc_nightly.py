"""Nightly: `cdc check` and `cdc reconcile` of every registered table at 02:30 UTC; a reconcile
that finds differences fails its task (Airflow's retries and alerting apply) and triggers a
`cdc reconcile --repair`, itself history (changelog and `cdc history` show what it fixed).

Set on the Composer environment (Environment variables): CDC_CONFIG, the registry (e.g.
/home/airflow/gcs/data/cdc/cdc.yaml: the bucket's data/ folder), and CDC_COMMAND, the `cdc` of the
environment the service is installed in. The registry's `dsn: ${VAR}` values come from Airflow
connections (a Secret Manager backend on Composer) through CDC_CONNECTIONS, e.g.
"BILLING_DSN=cdc_billing,PAYMENTS_DSN=cdc_payments", and the pii: key from an Airflow Variable
through CDC_SECRET_VARIABLES, e.g. "CDC_PII_KEY=cdc_pii_key".
"""

from __future__ import annotations

import datetime as dt

from cdc_airflow.dags import nightly_checks_dag
from cdc_airflow.settings import from_environment

settings = from_environment()

dag = nightly_checks_dag(
    "cdc_nightly_checks",
    tables=settings.tables,
    schedule="30 2 * * *",
    reconcile=True,
    repair=True,
    operator_args={
        **settings.operator_args,
        "retries": 1,
        "retry_delay": dt.timedelta(minutes=15),
        "execution_timeout": dt.timedelta(hours=3),
    },
)

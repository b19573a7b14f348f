"""DAG factories for the batch side of cdc-history: nightly checks and reconcile, a backfill of a
range of the changelog, and a rebuild of a state table behind a verified swap.

Each factory returns an ordinary ``DAG``; put a call in a file of the Composer environment's
``dags/`` folder (``composer/dags/`` has one per use). ``operator_args`` are passed to every ``cdc``
task (``config``, ``cdc_command``, ``connections``, ``env``, ``retries``, ``pool``, ...).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

try:  # Airflow 3
    from airflow.sdk import DAG, TaskGroup
except ImportError:  # Airflow 2.10+
    from airflow.models.dag import DAG  # type: ignore[no-redef]
    from airflow.utils.task_group import TaskGroup  # type: ignore[no-redef]

from cdc_airflow.operators import (
    CdcCheckOperator,
    CdcOperator,
    CdcReconcileOperator,
    CdcReplayOperator,
)

DEFAULT_START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _dag(
    dag_id: str, schedule: Any, dag_args: Mapping[str, Any] | None, tags: Sequence[str]
) -> DAG:
    args = {"start_date": DEFAULT_START, "catchup": False, **(dag_args or {})}
    return DAG(dag_id, schedule=schedule, tags=["cdc", *tags], **args)


def nightly_checks_dag(
    dag_id: str = "cdc_nightly_checks",
    *,
    tables: Sequence[str] = (),
    schedule: Any = "30 2 * * *",
    reconcile: bool = True,
    repair: bool = False,
    reconcile_wait_s: int | None = None,
    operator_args: Mapping[str, Any] | None = None,
    dag_args: Mapping[str, Any] | None = None,
) -> DAG:
    """``cdc check`` (invariants, freshness, volume, schema drift) and ``cdc reconcile`` (the
    state against its source at one log position) of ``tables`` (default: every registered
    table), side by side: each fails on its own findings. With ``repair``, a ``cdc reconcile
    --repair`` runs only when the reconcile failed, and fails itself when differences remain."""
    with _dag(dag_id, schedule, dag_args, ["checks"]) as dag:
        common = dict(operator_args or {})
        CdcCheckOperator(task_id="check", tables=tables, **common)
        if reconcile:
            compared = CdcReconcileOperator(
                task_id="reconcile", tables=tables, wait_s=reconcile_wait_s, **common
            )
            if repair:
                repaired = CdcReconcileOperator(
                    task_id="repair",
                    tables=tables,
                    repair=True,
                    wait_s=reconcile_wait_s,
                    trigger_rule="all_failed",
                    **common,
                )
                compared >> repaired
    return dag


def backfill_dag(
    dag_id: str = "cdc_backfill",
    *,
    tables: Sequence[str] = (),
    schedule: Any = None,
    since: str = "{{ params.since }}",
    until: str = "{{ params.until }}",
    job_options: Sequence[str] = (),
    check_after: bool = True,
    operator_args: Mapping[str, Any] | None = None,
    dag_args: Mapping[str, Any] | None = None,
) -> DAG:
    """Replays ``[since, until)`` of the changelog (``cdc replay`` per table; without tables,
    one ``cdc job replay`` of them all on Beam, with ``job_options`` such as the Dataflow runner's),
    then checks the tables. Safe to repeat and to overlap. By default triggered by hand with the
    range as params (``airflow dags trigger cdc_backfill -c '{"since": "...", "until": "..."}'``);
    with a schedule and ``since="{{ data_interval_start }}"``, ``until="{{ data_interval_end }}"``
    each run replays its own interval. An empty ``since``/``until`` leaves that end open."""
    args = {"params": {"since": "", "until": ""}, **(dag_args or {})}
    with _dag(dag_id, schedule, args, ["backfill"]) as dag:
        common = dict(operator_args or {})
        replays = [
            CdcReplayOperator(
                task_id=f"replay__{_task_name(table)}" if table else "replay",
                table=table,
                since=since,
                until=until,
                job_options=job_options,
                **common,
            )
            for table in (tables or [None])
        ]
        if check_after:
            checked = CdcCheckOperator(task_id="check", tables=tables, **common)
            replays >> checked
    return dag


def rebuild_task_group(
    table: str,
    *,
    shadow: str | None = None,
    group_id: str | None = None,
    operator_args: Mapping[str, Any] | None = None,
) -> TaskGroup:
    """Inside a DAG: rebuild ``table`` from the whole changelog into a shadow table, verify the
    shadow against the live table, and only then swap it in (``cdc rebuild --swap`` verifies once
    more, inside the swap). A verify that finds differences fails the group before the swap."""
    common = dict(operator_args or {})
    with TaskGroup(group_id or f"rebuild__{_task_name(table)}") as group:
        shadow_args = ["--shadow-name", shadow] if shadow else []
        against = ["--against", shadow] if shadow else []
        built = CdcOperator(
            task_id="shadow", arguments=["rebuild", table, "--shadow", *shadow_args], **common
        )
        verified = CdcOperator(task_id="verify", arguments=["verify", table, *against], **common)
        swapped = CdcOperator(
            task_id="swap", arguments=["rebuild", table, "--swap", *shadow_args], **common
        )
        built >> verified >> swapped
    return group


def rebuild_dag(
    dag_id: str = "cdc_rebuild",
    *,
    tables: Sequence[str],
    schedule: Any = None,
    operator_args: Mapping[str, Any] | None = None,
    dag_args: Mapping[str, Any] | None = None,
) -> DAG:
    """One rebuild + verify + swap group per table, then ``cdc check`` of them all."""
    with _dag(dag_id, schedule, dag_args, ["rebuild"]) as dag:
        groups = [rebuild_task_group(t, operator_args=operator_args) for t in tables]
        checked = CdcCheckOperator(task_id="check", tables=tables, **dict(operator_args or {}))
        groups >> checked
    return dag


def _task_name(table: str) -> str:
    """A task id for a table name (``billing.public.subs`` -> ``billing_public_subs``)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in table)

"""Runs one DAG of a folder with ``dag.test()`` inside the Airflow virtualenv and prints, as the
last line of stdout, ``{"state": ..., "tasks": {task_id: state}, "returns": {task_id: xcom}}``.

    python run_dag.py DAG_FOLDER DAG_ID [RUN_CONF_JSON]
    python run_dag.py DAG_FOLDER --list      # {"import_errors": {...}, "dags": {dag_id: [task_id]}}

Run by tests/integration/test_airflow_dags.py with that virtualenv's interpreter (never imported
by the service's environment, which has no Airflow)."""

from __future__ import annotations

import json
import sys


def main(folder: str, dag_id: str, conf: str = "{}") -> int:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=folder)
    if dag_id == "--list":
        dags = {d: sorted(bag.get_dag(d).task_ids) for d in bag.dag_ids}
        errors = {k: str(v) for k, v in bag.import_errors.items()}
        print(json.dumps({"import_errors": errors, "dags": dags}))
        return 0
    if bag.import_errors:
        print(json.dumps({"import_errors": {k: str(v) for k, v in bag.import_errors.items()}}))
        return 1
    dag = bag.get_dag(dag_id)
    run = dag.test(run_conf=json.loads(conf))
    tasks = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    returns = {}
    for ti in run.get_task_instances():
        try:
            returns[ti.task_id] = ti.xcom_pull(task_ids=ti.task_id)
        except Exception as exc:
            returns[ti.task_id] = f"xcom unavailable: {exc}"
    print(json.dumps({"state": str(run.state), "tasks": tasks, "returns": returns}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))

"""Every plan, rendered for DuckDB and BigQuery, against reviewed golden files in tests/golden/sql.

A change to a plan shows up here as a diff of SQL a reviewer can read. To accept an intended
change: ``CDC_UPDATE_GOLDEN=1 python -m pytest tests/unit/test_plans_golden.py`` and review the
diff. The DuckDB renderings are also executed by the contract suite (tests/contract).
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
import sqlglot
from sqlglot import exp

from state_models.dialects import BIGQUERY, DUCKDB
from state_models.plans import (
    plan_add_column,
    plan_as_of,
    plan_create_state,
    plan_history,
    plan_merge,
    plan_record_truncates,
    plan_widen_column,
    table_names,
)
from state_models.scd2 import Column, StateTable
from state_models.types import INT64, JSON, STRING, TIMESTAMP, decimal

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "sql"
TABLE = StateTable(
    "billing.public.plan_prices",
    "billing_plan_prices",
    ("plan", "currency"),
    (
        Column("plan", STRING),
        Column("currency", STRING),
        Column("price", decimal(10, 2)),
        Column("meta", JSON),
        Column("renews_at", TIMESTAMP),
    ),
    carry=("meta",),  # the source once sent meta as unavailable (TOAST)
)
DIALECTS = {"duckdb": (DUCKDB, None, None), "bigquery": (BIGQUERY, "cdc_state", "acme-data")}


def plans(dialect: str) -> dict[str, list[exp.Expr]]:
    caps, dataset, project = DIALECTS[dialect]
    names = table_names(TABLE.name, dataset, project, staging="billing_plan_prices__stage")
    return {
        "merge": [plan_merge(TABLE, names, caps)],
        "merge_with_truncates": [plan_merge(TABLE, names, caps, with_truncates=True)],
        "merge_truncating": [
            plan_merge(TABLE, names, caps, truncating=True),
            plan_record_truncates(names, caps),
        ],
        "create": list(plan_create_state(TABLE, names, caps)),
        "evolve": [
            plan_add_column(names.state, Column("note", STRING), caps),
            plan_widen_column(names.state, Column("price", decimal(12, 2)), caps),
        ],
        "history": [plan_history(TABLE, names, caps, {"plan": "ab", "currency": "c"})],
        "as_of": [
            plan_as_of(TABLE, names, caps, at=dt.datetime(2026, 5, 1, 12, tzinfo=dt.UTC)),
            plan_as_of(TABLE, names, caps, seq="0000000000000010/0000000000000020"),
        ],
    }


CASES = [(d, name) for d in DIALECTS for name in plans(d)]


@pytest.mark.parametrize("dialect, name", CASES, ids=[f"{d}-{n}" for d, n in CASES])
def test_rendered_sql_matches_the_golden_file(dialect, name):
    caps = DIALECTS[dialect][0]
    text = ";\n\n".join(caps.render(e, pretty=True) for e in plans(dialect)[name]) + ";\n"
    path = GOLDEN / f"{name}.{dialect}.sql"
    if os.environ.get("CDC_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing {path}; run with CDC_UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text()


def test_user_names_are_quoted_identifiers_never_spliced_text():
    hostile = StateTable(
        "a.b.c",
        'x"; DROP TABLE y; --',
        ("id",),
        (Column("id", INT64), Column("a`b'c", STRING)),
    )
    names = table_names(hostile.name, staging="s")
    for caps in (DUCKDB, BIGQUERY):
        statements = sqlglot.parse(caps.render(plan_merge(hostile, names, caps)), caps.dialect)
        assert len(statements) == 1 and isinstance(statements[0], exp.Merge)
        assert statements[0].this.name == hostile.name
        columns = {c.name for c in statements[0].find_all(exp.Column)}
        assert "a`b'c" in columns

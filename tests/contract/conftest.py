"""The warehouse contract suite runs on every warehouse: DuckDB always, BigQuery when available.

BigQuery is bqemulator started by the ``bigquery_client`` fixture (tests/conftest.py), or real
BigQuery when ``CDC_TEST_BIGQUERY_PROJECT`` is set. ``warehouse`` is one warehouse per test module
and backend; tests give each table a fresh name (``tests.scd2_histories.table_def``), so one
warehouse serves many hypothesis examples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from connectors.warehouse.duckdb import DuckDBWarehouse

BACKENDS = ["duckdb", "bigquery"]


@pytest.fixture(scope="module", params=BACKENDS)
def warehouse(request: pytest.FixtureRequest) -> Iterator[Any]:
    yield request.getfixturevalue(f"{request.param}_warehouse")


@pytest.fixture(scope="module")
def duckdb_warehouse() -> Iterator[Any]:
    wh = DuckDBWarehouse("duckdb:///:memory:")
    try:
        yield wh
    finally:
        wh.close()


@pytest.fixture(scope="module")
def bigquery_warehouse(bigquery_client: Callable[[], Any], bigquery_dataset: str) -> Iterator[Any]:
    from tests.bqemu import warehouse_class

    project, dataset = bigquery_dataset.split(".", 1)
    wh = warehouse_class()(f"bigquery://{project}/{dataset}", client=bigquery_client())
    try:
        yield wh
    finally:
        wh.close()

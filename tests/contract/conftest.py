"""The warehouse contract suite runs on every warehouse: DuckDB always, BigQuery when available.

``warehouse`` is one warehouse per test module and backend; tests give each table a fresh name
(``tests.scd2_histories.table_def``), so one warehouse serves many hypothesis examples.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from connectors.warehouse.duckdb import DuckDBWarehouse

BACKENDS = ["duckdb", "bigquery"]


@pytest.fixture(scope="module", params=BACKENDS)
def warehouse(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "duckdb":
        wh = DuckDBWarehouse("duckdb:///:memory:")
        try:
            yield wh
        finally:
            wh.close()
        return
    yield request.getfixturevalue("bigquery_warehouse")


@pytest.fixture(scope="module")
def bigquery_warehouse() -> Any:
    pytest.skip("BigQuery: no emulator fixture yet")

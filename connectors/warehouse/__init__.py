"""Warehouses that hold the SCD2 state tables: DuckDB (embedded default) and BigQuery.

One small interface (:class:`Warehouse`); every implementation runs the same plans from
``state_models.plans``, rendered for its dialect. Open one with :func:`open_warehouse`::

    wh = open_warehouse("duckdb:///.cdc/warehouse.duckdb")   # or bigquery://project/dataset
    result = wh.apply(table_def, events, ingested_at=now)     # one MERGE per call
    rows = wh.history(table_def, key={"id": 42})
"""

from __future__ import annotations

import os
from typing import Any

from connectors.warehouse.base import ApplyResult, Warehouse
from state_models.errors import ConfigError

__all__ = ["ApplyResult", "Warehouse", "open_warehouse"]


def open_warehouse(url: str, *, lock_wait_s: float = 0.0, **options: Any) -> Warehouse:
    """Open ``duckdb:///path.duckdb`` (``duckdb:///:memory:``) or ``bigquery://project/dataset``.

    ``lock_wait_s``: DuckDB only, how long to wait for another process (``cdc run``) to let go of
    the file; commands that read a table while ``cdc run`` merges into it pass a few seconds.
    """
    if url.startswith("duckdb://"):
        from connectors.warehouse.duckdb import DuckDBWarehouse

        return DuckDBWarehouse(url, lock_wait_s=lock_wait_s, **options)
    if url.startswith("bigquery://"):
        if os.environ.get("BIGQUERY_EMULATOR_HOST"):  # the client talks to the emulator
            from connectors.warehouse.bqemulator import BQEmulatorWarehouse

            return BQEmulatorWarehouse(url, **options)
        from connectors.warehouse.bigquery import BigQueryWarehouse

        return BigQueryWarehouse(url, **options)
    raise ConfigError(
        f"unsupported warehouse {url!r}: expected duckdb:///path.duckdb or bigquery://project/dataset"
    )

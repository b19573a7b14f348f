"""The embedded warehouse: one DuckDB file (``duckdb:///path.duckdb``) holding the state tables.

A batch is staged as an Arrow table registered with the connection (no copy), and the MERGE plan
runs in one transaction. DuckDB has no clustering or partitions; the MERGE still reads only the
touched keys' recent versions (see ``state_models.plans``), plus one scan of the key columns.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from connectors.warehouse.sql import MergeCounts, MergePlan, SqlWarehouse
from state_models.dialects import DUCKDB
from state_models.errors import ConfigError, TransientError, ValueRejectedError, WarehouseError
from state_models.plans import TableNames, table_names
from state_models.scd2 import StateTable

_counter = itertools.count()
log = logging.getLogger(__name__)


def duckdb_path(url: str) -> str:
    """``duckdb:///abs/path.duckdb`` -> ``/abs/path.duckdb``; ``duckdb:///:memory:`` -> ``:memory:``."""
    if not url.startswith("duckdb:///"):
        raise ConfigError(f"expected duckdb:///path.duckdb, got {url!r}")
    rest = url[len("duckdb:///") :]
    if rest == ":memory:" or not rest:
        return ":memory:"
    return rest if rest.startswith("/") else os.path.abspath(rest)


class DuckDBWarehouse(SqlWarehouse):
    """State tables in a DuckDB database file."""

    caps = DUCKDB

    def __init__(
        self,
        url: str = "duckdb:///:memory:",
        *,
        connection: Any = None,
        threads: int | None = None,
        lock_wait_s: float = 0.0,
    ):
        """``lock_wait_s``: how long to wait when another process holds the file (DuckDB lets one
        process open a file at a time; ``cdc run`` lets go of it between merges, see ``release``)."""
        super().__init__()
        self.url = url
        self._path = duckdb_path(url)
        self._threads = threads
        self._owned = connection is None and self._path != ":memory:"
        self._lock_wait_s = lock_wait_s  # also when reopening after ``release``
        if self._owned:
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        self._con: Any = connection if connection is not None else self._connect(lock_wait_s)

    def _connect(self, lock_wait_s: float = 0.0) -> Any:
        started = time.monotonic()
        said = False
        while True:
            try:
                con = duckdb.connect(self._path)
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower():  # read-only, no permission, not a database
                    raise WarehouseError(
                        f"cannot open DuckDB warehouse {self._path}: {exc}"
                    ) from exc
                waited = time.monotonic() - started
                if waited >= lock_wait_s:
                    # another process holds the file's lock: worth retrying later
                    raise TransientError(
                        f"cannot open DuckDB warehouse {self._path}: {exc}"
                    ) from exc
                if not said and waited > 1:
                    log.warning(
                        "waiting for another process (cdc run?) to let go of %s", self._path
                    )
                    said = True
                time.sleep(0.02)
        con.execute("SET TimeZone = 'UTC'").fetchall()
        if self._threads:
            con.execute(f"SET threads = {int(self._threads)}").fetchall()
        return con

    @property
    def con(self) -> Any:
        """The connection, reopened if ``release`` let go of the file."""
        if self._con is None:
            self._con = self._connect(self._lock_wait_s)
        return self._con

    def release(self) -> None:
        """Close the file so that other processes (``cdc history``, ``cdc status``) can open it; the
        next statement reopens it (raising ``TransientError`` while someone else holds it)."""
        if self._owned and self._con is not None:
            self._con.close()
            self._con = None

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def _exec(self, sql: str) -> list[Any]:
        """Run a statement to completion (DuckDB refuses new work while a result is unread)."""
        return self.con.execute(sql).fetchall()

    # ----------------------------------------------------------------- hooks

    def _names(self, table_name: str, staging: str | None = None) -> TableNames:
        return table_names(table_name, staging=staging)

    def _describe(self, names: TableNames) -> tuple[list[tuple[str, str]], str | None] | None:
        name = names.state.name
        rows = self.con.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position",
            [name],
        ).fetchall()
        if not rows:
            return None
        comment = self.con.execute(
            "SELECT comment FROM duckdb_tables() WHERE schema_name = current_schema() AND table_name = ?",
            [name],
        ).fetchall()
        return [(r[0], r[1]) for r in rows], (comment[0][0] if comment else None)

    def _run(self, statements: Sequence[exp.Expr]) -> None:
        for s in statements:
            self._exec(self.caps.render(s))

    def _run_atomically(self, statements: Sequence[exp.Expr]) -> None:
        with self._transaction():
            self._run(statements)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One transaction; DuckDB's errors as ours. A failed commit (disk full) has ended the
        transaction already, so the rollback's own complaint ("no transaction is active") must not
        hide the real reason."""
        self.con.begin()
        try:
            yield
            self.con.commit()
        except BaseException as exc:
            with contextlib.suppress(duckdb.Error):
                self.con.rollback()
            if isinstance(exc, duckdb.DataError):
                raise ValueRejectedError(f"DuckDB refused a value: {exc}") from exc
            if isinstance(exc, duckdb.TransactionException) and "conflict" in str(exc).lower():
                raise TransientError(f"DuckDB warehouse {self._path}: {exc}") from exc
            if isinstance(
                exc,
                duckdb.IOException
                | duckdb.PermissionException
                | duckdb.OutOfMemoryException
                | duckdb.TransactionException,  # a commit that could not write its log
            ):
                raise WarehouseError(f"cannot write DuckDB warehouse {self._path}: {exc}") from exc
            raise

    def _set_comment(self, names: TableNames, comment: str) -> None:
        self._exec(
            exp.Comment(
                this=names.state.copy(), kind="TABLE", expression=exp.Literal.string(comment)
            ).sql("duckdb")
        )

    def _stage(self, table: StateTable, staged: pa.Table) -> str:
        # one name per table, so that the rendered MERGE can be reused batch after batch
        name = f"__cdc_stage_{table.name}"
        self.con.register(name, staged)
        return name

    def _unstage(self, staging: str) -> None:
        self.con.unregister(staging)

    def _render(self, statement: exp.Expr) -> str:
        if isinstance(statement, exp.Merge):  # DuckDB says what each row did
            statement = statement.copy()
            statement.set("returning", exp.Returning(expressions=[exp.column("merge_action")]))
        return self.caps.render(statement)

    def _merge(self, plan: MergePlan, params: Mapping[str, Any]) -> MergeCounts:
        merge, *rest = plan.sql
        with self._transaction():
            actions = self.con.sql(merge, params=dict(params)).to_arrow_table()
            for sql in rest:  # the truncate-log insert: no parameters
                self.con.execute(sql).fetchall()
        counts = _action_counts(actions)
        return MergeCounts(
            inserted=counts.get("INSERT", 0),
            updated=counts.get("UPDATE", 0),
            deleted=counts.get("DELETE", 0),
        )

    def _query(self, query: exp.Expr) -> list[dict[str, Any]]:
        cur = self.con.execute(self.caps.render(query))
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def _action_counts(actions: pa.Table) -> dict[str, int]:
    if actions.num_rows == 0:
        return {}
    counts = pc.value_counts(actions.column(0).combine_chunks())
    return {str(v["values"]): int(v["counts"]) for v in counts.to_pylist()}

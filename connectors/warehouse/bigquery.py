"""State tables in BigQuery (``bigquery://project/dataset``), through the official client.

The same plans as DuckDB, rendered for BigQuery. A batch is loaded into a short-lived staging
table with a load job (the staged Arrow table as Parquet, a resumable upload), then one MERGE, run
with the touched key buckets as the query parameter ``@touched_buckets`` so that it reads only their
partitions; a batch holding a truncate runs the MERGE and the truncate-log insert as one
transaction. The table's description records our column types and key: BigQuery's own schema
says ``NUMERIC`` where we asked for ``NUMERIC(12, 2)`` only in some clients, and bqemulator lists
JSON as STRING and forgets columns added with ``ALTER TABLE``.

Real BigQuery needs Application Default Credentials (or an injected client); with
``BIGQUERY_EMULATOR_HOST`` set, the client talks to that emulator anonymously and
``open_warehouse`` returns ``connectors.warehouse.bqemulator.BQEmulatorWarehouse``, which holds
what only the emulator needs. The staging table's name is fixed per warehouse object (one MERGE at
a time uses it), so the rendered MERGE of a table's shape is built once and reused.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, urlparse

import pyarrow as pa
import pyarrow.parquet as pq
from sqlglot import exp

from connectors.warehouse.sql import MergeCounts, MergePlan, SqlWarehouse
from state_models.dialects import BIGQUERY
from state_models.errors import ConfigError, TransientError
from state_models.plans import TableNames, staging_columns, table_names
from state_models.scd2 import StateTable
from state_models.types import WarehouseType

#: Staging tables that a crash leaves behind expire on their own.
STAGING_TTL = dt.timedelta(hours=6)

_SCHEMA_TYPES = {
    "INTEGER": "INT64",
    "INT64": "INT64",
    "FLOAT": "FLOAT64",
    "FLOAT64": "FLOAT64",
    "BOOLEAN": "BOOL",
    "BOOL": "BOOL",
}


def make_client(project: str, location: str | None) -> Any:
    """The official client: Application Default Credentials, or the emulator named by
    ``BIGQUERY_EMULATOR_HOST`` (which the client honours) with anonymous credentials."""
    from google.cloud import bigquery

    emulator = os.environ.get("BIGQUERY_EMULATOR_HOST")
    if not emulator:
        return bigquery.Client(project=project, location=location)
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials

    endpoint = emulator if "://" in emulator else f"http://{emulator}"
    return bigquery.Client(
        project=project,
        location=location,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=endpoint),
    )


def parse_bigquery_url(url: str) -> tuple[str, str, dict[str, str]]:
    """``bigquery://project/dataset?location=EU`` -> (project, dataset, options)."""
    parsed = urlparse(url)
    dataset = parsed.path.strip("/")
    if parsed.scheme != "bigquery" or not parsed.netloc or not dataset or "/" in dataset:
        raise ConfigError(f"expected bigquery://project/dataset, got {url!r}")
    options = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    return parsed.netloc, dataset, options


class BigQueryWarehouse(SqlWarehouse):
    """State tables in one BigQuery dataset."""

    caps = BIGQUERY

    def __init__(self, url: str, *, client: Any = None, location: str | None = None):
        super().__init__()
        from google.cloud import bigquery

        self.url = url
        self.project, self.dataset, options = parse_bigquery_url(url)
        self.location = location or options.get("location")
        self._bq = bigquery
        self.client = client or make_client(self.project, self.location)
        #: this object's staging tables: ``<table>__stage_<this>``, one batch at a time
        self._stage_suffix = uuid.uuid4().hex[:12]
        self._ensure_dataset()

    def close(self) -> None:
        self.client.close()

    # ----------------------------------------------------------------- plumbing

    def _ensure_dataset(self) -> None:
        from google.api_core.exceptions import Conflict, NotFound

        ref = f"{self.project}.{self.dataset}"
        try:
            self._call(lambda: self.client.get_dataset(ref))
            return
        except NotFound:
            pass
        dataset = self._bq.Dataset(ref)
        if self.location:
            dataset.location = self.location
        with contextlib.suppress(Conflict):  # created meanwhile by another worker
            self._call(lambda: self.client.create_dataset(dataset))

    def _call(self, fn: Any) -> Any:
        """Run a client call, mapping BigQuery's retryable failures to ``TransientError``."""
        from google.api_core import exceptions as gexc

        try:
            return fn()
        except (
            gexc.ServiceUnavailable,
            gexc.InternalServerError,
            gexc.TooManyRequests,
            gexc.GatewayTimeout,
            gexc.DeadlineExceeded,
        ) as exc:
            raise TransientError(f"BigQuery is unavailable right now: {exc}") from exc
        except (gexc.BadRequest, gexc.Forbidden) as exc:
            text = str(exc)
            # two MERGEs on one table at once, or a quota: BigQuery says to retry
            if any(s in text for s in ("concurrent update", "rateLimitExceeded", "quota")):
                raise TransientError(f"BigQuery asks to retry: {text}") from exc
            raise

    def _job(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        config = self._bq.QueryJobConfig(query_parameters=self._parameters(params or {}))
        return self._call(lambda: self._wait(self.client.query(sql, job_config=config)))

    @staticmethod
    def _wait(job: Any) -> Any:
        job.result()
        return job

    def _parameters(self, params: Mapping[str, Any]) -> list[Any]:
        out: list[Any] = []
        for name, value in params.items():
            if isinstance(value, list):
                out.append(self._bq.ArrayQueryParameter(name, "INT64", value))
            else:
                out.append(self._bq.ScalarQueryParameter(name, "STRING", value))
        return out

    # ----------------------------------------------------------------- hooks

    def _names(self, table_name: str, staging: str | None = None) -> TableNames:
        return table_names(table_name, self.dataset, self.project, staging)

    def _ref(self, table: exp.Table) -> str:
        return f"{self.project}.{self.dataset}.{table.name}"

    def _describe(self, names: TableNames) -> tuple[list[tuple[str, str]], str | None] | None:
        from google.api_core.exceptions import NotFound

        try:
            table = self._call(lambda: self.client.get_table(self._ref(names.state)))
        except NotFound:
            return None
        columns = []
        for f in table.schema:
            kind = _SCHEMA_TYPES.get(f.field_type, f.field_type)
            if kind in ("NUMERIC", "BIGNUMERIC") and f.precision is not None:
                kind = f"{kind}({f.precision}, {f.scale or 0})"
            if f.mode == "REPEATED":
                kind = f"ARRAY<{kind}>"
            columns.append((f.name, kind))
        return columns, table.description

    def _run(self, statements: Sequence[exp.Expr]) -> None:
        for statement in statements:
            self._job(self.caps.render(statement))

    def _set_comment(self, names: TableNames, comment: str) -> None:
        # through the API: bqemulator accepts ALTER TABLE ... SET OPTIONS but ignores it
        table = self._call(lambda: self.client.get_table(self._ref(names.state)))
        table.description = comment
        self._call(lambda: self.client.update_table(table, ["description"]))

    def _set_policy_tags(self, names: TableNames, tags: Mapping[str, str]) -> None:
        """Each tagged column's policy tag, through the tables API (``schema`` of a
        ``tables.patch``): BigQuery then enforces column-level access on the table and on every
        view reading it, and dynamic masking rules of the tag apply to readers without access."""
        table = self._call(lambda: self.client.get_table(self._ref(names.state)))
        schema, changed = [], False
        for f in table.schema:
            wanted = tags.get(f.name)
            have = list(f.policy_tags.names) if f.policy_tags is not None else []
            if wanted is not None and have != [wanted]:
                f = self._bq.SchemaField.from_api_repr(
                    {**f.to_api_repr(), "policyTags": {"names": [wanted]}}
                )
                changed = True
            schema.append(f)
        if changed:
            table.schema = schema
            self._call(lambda: self.client.update_table(table, ["schema"]))

    def _stage(self, table: StateTable, staged: pa.Table) -> str:
        from google.api_core.exceptions import Conflict

        name = f"{table.name}__stage_{self._stage_suffix}"
        columns = staging_columns(table, self.caps)
        schema = [self._bq.SchemaField(c.name, _schema_type(c.type)) for c in columns]
        destination = self._bq.Table(f"{self.project}.{self.dataset}.{name}", schema=schema)
        destination.expires = dt.datetime.now(dt.UTC) + STAGING_TTL
        try:
            self._call(lambda: self.client.create_table(destination))
        except Conflict:  # left by a batch whose clean-up failed: its rows must not come along
            self._unstage(name)
            self._call(lambda: self.client.create_table(destination))
        config = self._bq.LoadJobConfig(
            source_format=self._bq.SourceFormat.PARQUET,
            schema=schema,
            write_disposition=self._bq.WriteDisposition.WRITE_APPEND,
        )
        # the staged Arrow table as it is: exact decimals, 64-bit integers, µs times and bytes
        # need no conversion to text and back
        body = io.BytesIO()
        pq.write_table(staged, body, compression="snappy")
        # no size=: the client then uses a resumable upload (bqemulator refuses multipart ones)
        self._call(
            lambda: self._wait(
                self.client.load_table_from_file(
                    io.BytesIO(body.getvalue()), destination.reference, job_config=config
                )
            )
        )
        return name

    def _unstage(self, staging: str) -> None:
        ref = f"{self.project}.{self.dataset}.{staging}"
        self._call(lambda: self.client.delete_table(ref, not_found_ok=True))

    def _merge(self, plan: MergePlan, params: Mapping[str, Any]) -> MergeCounts:
        """One MERGE job, or a batch holding a truncate as one transaction (a script); the counts
        from BigQuery's ``dml_stats`` of each MERGE."""
        if len(plan.sql) == 1:
            merge_jobs = [self._job(plan.sql[0], params)]
        else:
            job = self._job(script(plan.sql), params)
            merge_jobs = [
                j
                for j in self.client.list_jobs(parent_job=job.job_id)
                if getattr(j, "statement_type", None) == "MERGE"
            ]
        stats = [getattr(j, "dml_stats", None) for j in merge_jobs]
        return MergeCounts(
            inserted=sum(s.inserted_row_count for s in stats if s),
            updated=sum(s.updated_row_count for s in stats if s),
            deleted=sum(s.deleted_row_count for s in stats if s),
        )

    def _query(self, query: exp.Expr) -> list[dict[str, Any]]:
        job = self._job(self.caps.render(query))
        return [dict(row.items()) for row in job.result()]

    def _bytes(self, query: exp.Expr) -> int | None:
        """BigQuery's dry run of ``query``: the bytes it would process (and bill)."""
        config = self._bq.QueryJobConfig(dry_run=True, use_query_cache=False)
        job = self._call(lambda: self.client.query(self.caps.render(query), job_config=config))
        return None if job.total_bytes_processed is None else int(job.total_bytes_processed)

    def drop_dataset(self) -> None:
        """Delete the whole dataset (tests)."""
        self._call(
            lambda: self.client.delete_dataset(
                f"{self.project}.{self.dataset}", delete_contents=True, not_found_ok=True
            )
        )


def script(statements: Sequence[str]) -> str:
    """The statements as one transaction (a BigQuery multi-statement query)."""
    return "BEGIN TRANSACTION;\n" + "".join(s + ";\n" for s in statements) + "COMMIT TRANSACTION;"


def _schema_type(wtype: WarehouseType) -> str:
    """The load schema's type name: the DDL type without its parameters (NUMERIC(12, 2) -> NUMERIC)."""
    return wtype.sql("bigquery").split("(", 1)[0]

"""What each warehouse can do, as data. Plans read these fields instead of asking "is it BigQuery?"."""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp


@dataclass(frozen=True)
class Capabilities:
    """How one warehouse dialect differs, for the plans in ``state_models.plans``."""

    dialect: str  # sqlglot dialect name used to render every plan
    #: Partition state tables by a hash bucket of the key (this many buckets) and let the MERGE
    #: name the touched buckets as the query parameter ``@touched_buckets`` (None: no partitions).
    key_buckets: int | None = None
    #: How many key columns the table may be clustered by (0: the warehouse has no clustering DDL).
    max_cluster_columns: int = 0
    #: Whether the warehouse has table functions (``<table>_as_of(at)``).
    table_functions: bool = False
    #: Whether JSON values can be compared with ``=`` / ``IS DISTINCT FROM`` (BigQuery: no).
    json_equality: bool = True
    #: How to fingerprint a row (64 bits) for table comparisons: ``hash`` (DuckDB ``HASH(a, b)``)
    #: or ``farm_fingerprint`` (BigQuery ``FARM_FINGERPRINT(TO_JSON_STRING(STRUCT(a, b)))``).
    row_fingerprint: str = "hash"

    def render(self, expression: exp.Expr, pretty: bool = False) -> str:
        return expression.sql(dialect=self.dialect, pretty=pretty)


DUCKDB = Capabilities(dialect="duckdb")

#: BigQuery limits one job to modifying 4,000 partitions and a table to 10,000; 1,000 buckets keep
#: a small MERGE (a few hundred keys) to a few hundred partitions while leaving headroom.
BIGQUERY = Capabilities(
    dialect="bigquery",
    key_buckets=1000,
    max_cluster_columns=4,
    table_functions=True,
    json_equality=False,
    row_fingerprint="farm_fingerprint",
)

TOUCHED_BUCKETS_PARAM = "touched_buckets"
#: The MERGE's lower bound: the earliest ``_seq`` of the batch (see ``plans.plan_merge``).
SINCE_SEQ_PARAM = "since_seq"

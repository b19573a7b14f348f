"""BigQuery state tables on bqemulator (``BIGQUERY_EMULATOR_HOST``): what only the emulator needs.

bqemulator runs our MERGE and scripts, but two things differ from BigQuery, measured on this
machine (docs/architecture.md §8):

- a MERGE job has no ``dml_stats``: the inserted/updated/deleted counts come from one extra query
  over the MERGE's source (``plan_merge_counts``), run before the MERGE;
- a script (a batch holding a truncate) runs its statements without the query parameters: the
  values are written into the statements as literals.

Nothing here runs against real BigQuery: ``open_warehouse`` picks this class only when
``BIGQUERY_EMULATOR_HOST`` is set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlglot import exp

from connectors.warehouse.bigquery import BigQueryWarehouse, script
from connectors.warehouse.sql import MergeCounts, MergePlan
from state_models.plans import plan_merge_counts


class BQEmulatorWarehouse(BigQueryWarehouse):
    """``BigQueryWarehouse`` with the emulator's two differences worked around."""

    def _merge(self, plan: MergePlan, params: Mapping[str, Any]) -> MergeCounts:
        merge = plan.statements[0]
        assert isinstance(merge, exp.Merge)
        counted = self._count_changes(merge, params)
        if len(plan.sql) == 1:
            self._job(plan.sql[0], params)
        else:
            self._job(script([self.caps.render(_bind(s, params)) for s in plan.statements]), {})
        return counted

    def _count_changes(self, merge: exp.Merge, params: Mapping[str, Any]) -> MergeCounts:
        """What the MERGE will do, counted from its source."""
        job = self._job(self.caps.render(plan_merge_counts(merge)), params)
        row = dict(next(iter(job.result())).items())
        return MergeCounts(int(row["inserted"]), int(row["updated"]), int(row["deleted"]))


def _bind(statement: exp.Expr, params: Mapping[str, Any]) -> exp.Expr:
    """The statement with each ``@name`` parameter replaced by its value as a literal."""

    def literal(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Parameter) and node.name in params:
            value = params[node.name]
            if isinstance(value, list):
                return exp.Array(expressions=[exp.Literal.number(v) for v in value])
            return exp.Literal.string(str(value))
        return node

    return statement.transform(literal)

"""``cdc dbt sources --out DIR``: a runnable dbt project over the state tables.

What it writes (nothing from the dbt hub, which our machines cannot reach):

- ``dbt_project.yml``; ``profiles.yml`` with a ``duckdb`` and a ``bigquery`` target (the
  registry's warehouse picks the default; BigQuery authenticates with ``oauth``, i.e. the
  application default credentials);
- ``models/sources.yml``: one source ``cdc`` (the warehouse's schema or dataset), a table per
  registered table with its description (table id, key, what the SCD2 columns mean) and its
  columns with the warehouse's types; freshness from the registry's ``sla: {freshness}`` as
  ``warn_after``/``error_after``, measured by ``loaded_at_query`` on ``cdc_progress.caught_up_at``
  (when the table last held everything its source had written), else on the newest commit time;
  and the SCD2 tests below on every table;
- ``tests/generic/``: ``scd2_unique_version`` (one version per key and ``_seq``),
  ``scd2_no_overlap`` (a version's window ends where the next one's begins, never after),
  ``scd2_one_current`` (exactly one current version per key);
- ``models/staging/stg_<first table>.sql``: an example staging model of the live rows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from state_models.registry import RegisteredTable, duration_seconds
from state_models.scd2 import TableDef

PROFILE = "cdc_history"

TESTS = {
    "scd2_unique_version": """\
{% test scd2_unique_version(model, key_columns) %}
-- one version per key and _seq (the merge's identity of a change)
select {{ key_columns | join(', ') }}, _seq, count(*) as versions
from {{ model }}
group by {{ key_columns | join(', ') }}, _seq
having count(*) > 1
{% endtest %}
""",
    "scd2_no_overlap": """\
{% test scd2_no_overlap(model, key_columns) %}
-- each version's window [_valid_from, _valid_to) ends where the key's next version begins:
-- open only on the last version, never past the next one
with ordered as (
    select _seq, _valid_to,
        lead(_valid_from) over (partition by {{ key_columns | join(', ') }} order by _seq) as next_from,
        lead(_seq) over (partition by {{ key_columns | join(', ') }} order by _seq) as next_seq
    from {{ model }}
)
select * from ordered
where (next_seq is null and _valid_to is not null)
   or (next_seq is not null and (_valid_to is null or _valid_to > next_from))
{% endtest %}
""",
    "scd2_one_current": """\
{% test scd2_one_current(model, key_columns) %}
-- exactly one current version (a live row or a tombstone) per key
select {{ key_columns | join(', ') }},
    sum(case when _is_current then 1 else 0 end) as current_versions
from {{ model }}
group by {{ key_columns | join(', ') }}
having sum(case when _is_current then 1 else 0 end) <> 1
{% endtest %}
""",
}


def _after(text: str | None) -> dict[str, Any] | None:
    """A registry duration as dbt's ``{count, period}`` (whole minutes, rounded up)."""
    if text is None:
        return None
    return {"count": max(1, math.ceil(duration_seconds(text) / 60)), "period": "minute"}


def _yaml(value: Any) -> str:
    """YAML without a YAML writer's surprises: JSON is YAML."""
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def write_project(cfg: Any, out: Path, warehouse: Any) -> list[Path]:
    """Write the project into ``out`` (see the module doc); returns the files written."""
    url: str = cfg.warehouse_url
    is_duckdb = url.startswith("duckdb:")
    schema = "main" if is_duckdb else url.removeprefix("bigquery://").split("/", 1)[1]
    project = None if is_duckdb else url.removeprefix("bigquery://").split("/", 1)[0]
    written: list[Path] = []

    def put(name: str, text: str) -> None:
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)

    put(
        "dbt_project.yml",
        _yaml(
            {
                "name": "cdc_history",
                "version": "1.0.0",
                "config-version": 2,
                "profile": PROFILE,
                "model-paths": ["models"],
                "test-paths": ["tests"],
                "models": {"cdc_history": {"staging": {"+materialized": "view"}}},
            }
        ),
    )
    duckdb_path = str(Path(url.removeprefix("duckdb:///")).resolve()) if is_duckdb else ""
    put(
        "profiles.yml",
        _yaml(
            {
                PROFILE: {
                    "target": "duckdb" if is_duckdb else "bigquery",
                    "outputs": {
                        "duckdb": {
                            "type": "duckdb",
                            "path": duckdb_path or "warehouse.duckdb",
                            "schema": "main",
                            "threads": 2,
                        },
                        "bigquery": {
                            "type": "bigquery",
                            "method": "oauth",
                            "project": project or "YOUR_PROJECT",
                            "dataset": schema if not is_duckdb else "cdc_state",
                            "threads": 4,
                        },
                    },
                }
            }
        ),
    )
    tables = []
    registered: list[RegisteredTable] = list(cfg.registry.tables())
    for t in registered:
        tables.append(_source_table(t, warehouse))
    put(
        "models/sources.yml",
        _yaml(
            {
                "version": 2,
                "sources": [
                    {
                        "name": "cdc",
                        "description": "SCD Type 2 state tables kept by cdc-history from the "
                        "sources' logs: one row per version of a source row, ordered by _seq.",
                        "schema": schema,
                        **({"database": project} if project else {}),
                        "tables": tables,
                    }
                ],
            }
        ),
    )
    for name, text in TESTS.items():
        put(f"tests/generic/{name}.sql", text)
    if registered:
        first = TableDef.from_registered(registered[0])
        state = warehouse.state_table(first)
        columns = state.business_names if state is not None else list(first.primary_key or ())
        put(
            f"models/staging/stg_{first.state_table}.sql",
            "-- the live rows of "
            + first.table_id
            + " (an example staging model: the current, not deleted version of each key)\n"
            + "select\n    "
            + ",\n    ".join(columns)
            + ",\n    _valid_from as changed_at\n"
            + f"from {{{{ source('cdc', '{first.state_table}') }}}}\n"
            + "where _is_current and not _is_deleted\n",
        )
    return written


def _source_table(t: RegisteredTable, warehouse: Any) -> dict[str, Any]:
    table = TableDef.from_registered(t)
    state = warehouse.state_table(table)
    key = list(state.key if state is not None else (table.primary_key or ()))
    entry: dict[str, Any] = {
        "name": t.state_table,
        "description": f"History of {t.id} (key {', '.join(key)}): one row per version; "
        "_valid_from/_valid_to its validity, _is_current the latest, _is_deleted a tombstone, "
        "_seq its source log position.",
    }
    if state is not None:
        dialect = warehouse.caps.dialect
        entry["columns"] = [
            {"name": c.name, "data_type": c.type.to_sql(dialect).sql(dialect=dialect)}
            for c in state.all_columns()
        ]
    entry["data_tests"] = [
        {test: {"key_columns": key}}
        for test in ("scd2_unique_version", "scd2_no_overlap", "scd2_one_current")
    ]
    freshness = (t.sla.freshness if t.sla else None) or None
    if freshness is not None and (freshness.warn or freshness.error):
        dialect = warehouse.caps.dialect
        progress = warehouse.names("cdc_progress").state.sql(dialect=dialect)
        history = warehouse.names(t.state_table).state.sql(dialect=dialect)
        entry["config"] = {
            "freshness": {
                k: v
                for k, v in (
                    ("warn_after", _after(freshness.warn)),
                    ("error_after", _after(freshness.error)),
                )
                if v is not None
            },
            # when the table last held everything its source had written (cdc_progress), not
            # when its newest change happened: an idle source is not a stale table
            # (the newest commit time until cdc_progress has a row for it)
            "loaded_at_query": f"select coalesce((select max(caught_up_at) from {progress} "
            f"where table_id = '{t.id}'), (select max(_valid_from) from {history}))",
        }
    return entry

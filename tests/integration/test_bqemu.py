"""The BigQuery stand-in does what the warehouse adapter needs: a resumable-upload load job and an
SCD2 MERGE (dedupe with QUALIFY, validity with LEAD, spliced with the stored versions of the touched
keys). Runs on bqemulator, or on real BigQuery when CDC_TEST_BIGQUERY_PROJECT is set."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import pytest

pytestmark = pytest.mark.integration

# QUALIFY needs a WHERE, GROUP BY or HAVING beside it in real BigQuery: hence WHERE TRUE.
# The parentheses around `SET is_current = (...)` are for bqemulator (see tests/bqemu.py).
SCD2_MERGE = """
MERGE smoke_state AS t
USING (
  WITH batch AS (
    SELECT id, seq, op, name FROM smoke_changes
    WHERE TRUE
    QUALIFY ROW_NUMBER() OVER (PARTITION BY id, seq ORDER BY seq) = 1
  ),
  spliced AS (
    SELECT id, seq, op = 'd' AS deleted, name FROM batch
    UNION ALL
    SELECT s.id, s.valid_from_seq, s.deleted, s.name FROM smoke_state AS s
    WHERE s.id IN (SELECT id FROM batch)
      AND NOT EXISTS (SELECT 1 FROM batch AS b WHERE b.id = s.id AND b.seq = s.valid_from_seq)
  )
  SELECT id, seq AS valid_from_seq, deleted, name,
         LEAD(seq) OVER (PARTITION BY id ORDER BY seq) AS valid_to_seq
  FROM spliced
) AS s
ON t.id = s.id AND t.valid_from_seq = s.valid_from_seq
WHEN MATCHED THEN UPDATE SET
  valid_to_seq = s.valid_to_seq,
  is_current = (s.valid_to_seq IS NULL AND NOT s.deleted)
WHEN NOT MATCHED THEN INSERT (id, name, deleted, valid_from_seq, valid_to_seq, is_current)
  VALUES (s.id, s.name, s.deleted, s.valid_from_seq, s.valid_to_seq,
          s.valid_to_seq IS NULL AND NOT s.deleted)
"""

HISTORY = """
SELECT id, valid_from_seq, valid_to_seq, name, deleted, is_current
FROM smoke_state ORDER BY id, valid_from_seq
"""


def _load_changes(client: Any, dataset: str, events: list[dict[str, Any]]) -> int:
    from google.cloud import bigquery

    schema = [
        bigquery.SchemaField("id", "INT64", mode="REQUIRED"),
        bigquery.SchemaField("seq", "INT64", mode="REQUIRED"),
        bigquery.SchemaField("op", "STRING", mode="REQUIRED"),
        bigquery.SchemaField("name", "STRING"),
    ]
    config = bigquery.LoadJobConfig(
        source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
        schema=schema,
        write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
    )
    body = "".join(json.dumps(e) + "\n" for e in events).encode()
    # no size=: the client then uses a resumable upload, which bqemulator accepts (multipart not)
    job = client.load_table_from_file(
        io.BytesIO(body), f"{dataset}.smoke_changes", job_config=config
    )
    return int(job.result().output_rows)


def test_load_then_scd2_merge_gives_exact_history(
    bigquery_client: Callable[[], Any], bigquery_dataset: str
) -> None:
    from google.cloud import bigquery

    client = bigquery_client()
    client.create_table(
        bigquery.Table(
            f"{bigquery_dataset}.smoke_state",
            schema=[
                bigquery.SchemaField("id", "INT64", mode="REQUIRED"),
                bigquery.SchemaField("name", "STRING"),
                bigquery.SchemaField("deleted", "BOOL", mode="REQUIRED"),
                bigquery.SchemaField("valid_from_seq", "INT64", mode="REQUIRED"),
                bigquery.SchemaField("valid_to_seq", "INT64"),
                bigquery.SchemaField("is_current", "BOOL", mode="REQUIRED"),
            ],
        )
    )
    in_dataset = bigquery.QueryJobConfig(default_dataset=bigquery_dataset)

    def merge() -> int:
        job = client.query(SCD2_MERGE, job_config=in_dataset)
        job.result()
        return int(job.num_dml_affected_rows)

    def history() -> list[tuple[Any, ...]]:
        return [tuple(row) for row in client.query(HISTORY, job_config=in_dataset).result()]

    first = [
        {"id": 1, "seq": 10, "op": "c", "name": "a"},
        {"id": 1, "seq": 20, "op": "u", "name": "b"},
        {"id": 2, "seq": 15, "op": "c", "name": "x"},
        {"id": 1, "seq": 20, "op": "u", "name": "b"},  # delivered twice
    ]
    assert _load_changes(client, bigquery_dataset, first) == 4
    assert merge() == 3
    assert history() == [
        (1, 10, 20, "a", False, False),
        (1, 20, None, "b", False, True),
        (2, 15, None, "x", False, True),
    ]

    late_and_delete = [
        {"id": 1, "seq": 15, "op": "u", "name": "late"},  # older than the current version
        {"id": 2, "seq": 30, "op": "d"},
        {"id": 3, "seq": 5, "op": "c", "name": "n"},
    ]
    assert _load_changes(client, bigquery_dataset, late_and_delete) == 3
    merge()
    expected = [
        (1, 10, 15, "a", False, False),
        (1, 15, 20, "late", False, False),
        (1, 20, None, "b", False, True),
        (2, 15, 30, "x", False, False),
        (2, 30, None, None, True, False),
        (3, 5, None, "n", False, True),
    ]
    assert history() == expected

    merge()  # the same batch again changes nothing
    assert history() == expected
    client.close()


def test_the_staging_table_keeps_its_name_so_the_merge_is_rendered_once(
    bigquery_client: Callable[[], Any], bigquery_dataset: str
) -> None:
    from tests.bqemu import warehouse_class
    from tests.scd2_histories import BASE_TS, INGESTED, event, table_def

    project, dataset = bigquery_dataset.split(".", 1)
    client = bigquery_client()
    wh = warehouse_class()(f"bigquery://{project}/{dataset}", client=client)
    t = table_def()
    try:
        wh.apply(t, [event(t, "c", {"id": 1}, (1, 1), BASE_TS, {"plan": "a"})], INGESTED)
        [plan] = wh._plans.values()
        # a staging table that a failed clean-up left behind, with rows of its own
        stage = f"{project}.{dataset}.{t.state_table}__stage_{wh._stage_suffix}"
        client.query(f"CREATE TABLE `{stage}` AS SELECT 99 AS id").result()
        result = wh.apply(
            t,
            [
                event(t, "u", {"id": 1}, (2, 1), BASE_TS + 1, {"plan": "b"}),
                event(t, "c", {"id": 2}, (2, 2), BASE_TS + 1, {"plan": "a"}),
            ],
            INGESTED,
        )
        assert (result.inserted, result.updated) == (2, 1)
        assert list(wh._plans.values()) == [plan]  # the same shape: the same rendered MERGE
        current = {r["id"]: r["plan"] for r in wh.current(t)}
        assert current == {1: "b", 2: "a"}  # nothing of the leftover came along
    finally:
        wh.close()

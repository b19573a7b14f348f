"""BigQuery policy tags on the state table's columns, from the registry's `policy_tags:` (per
column) and `pii_policy_tags:` (per pii kind), set through the real client against the
BigQuery emulator (or real BigQuery with CDC_TEST_BIGQUERY_PROJECT).

The emulator accepts a schema's policy tags but does not keep them, so the test records the
exact API requests the client sends (its connection's ``api_request``): one ``tables.patch`` of
the state table whose schema carries each tag; against real BigQuery it also reads them back."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from state_models.events import ChangeEvent, Op
from state_models.registry import Registry
from state_models.scd2 import TableDef
from state_models.seq import make_seq

pytestmark = pytest.mark.integration

TAXONOMY = "projects/acme-data/locations/us/taxonomies/123"


def test_policy_tags_land_on_the_state_table_columns(
    bigquery_client: Callable[[], Any], bigquery_dataset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.bqemu import warehouse_class

    monkeypatch.setenv("CDC_PII_KEY", "policy-tags-test-key-0123456789")
    registry = Registry.model_validate(
        {
            "pii_policy_tags": {"hash": f"{TAXONOMY}/policyTags/hashed"},
            "sources": {
                "billing": {
                    "kind": "postgres",
                    "engine": "pgoutput",
                    "dsn": "postgresql://u@h/db",
                    "tables": [
                        {
                            "name": "public.customers",
                            "primary_key": ["id"],
                            "columns": {
                                "id": "bigint",
                                "email": "text",
                                "phone": "text",
                                "plan": "text",
                            },
                            "pii": {"email": "hash", "phone": "mask"},
                            "policy_tags": {"phone": f"{TAXONOMY}/policyTags/contact"},
                        }
                    ],
                }
            },
        }
    )
    table = TableDef.from_registered(registry.table("billing.public.customers"))
    assert table.policy_tags == {
        "email": f"{TAXONOMY}/policyTags/hashed",
        "phone": f"{TAXONOMY}/policyTags/contact",
    }
    project, dataset = bigquery_dataset.split(".", 1)
    client = bigquery_client()
    sent: list[dict[str, Any]] = []
    api_request = client._connection.api_request

    def recording(*args: Any, **kwargs: Any) -> Any:
        sent.append(kwargs)
        return api_request(*args, **kwargs)

    monkeypatch.setattr(client._connection, "api_request", recording)
    wh = warehouse_class()(f"bigquery://{project}/{dataset}", client=client)
    try:
        event = ChangeEvent(
            table=table.table_id,
            op=Op.INSERT,
            key={"id": 1},
            before=None,
            after={"id": 1, "email": "a@b.c", "phone": "+4155550100", "plan": "pro"},
            seq=make_seq(1, 1),
            commit_ts=1_790_000_000_000_000,
        )
        result = wh.apply(table, [event], dt.datetime.now(dt.UTC))
        assert not result.rejected
        expected = {
            "email": [f"{TAXONOMY}/policyTags/hashed"],
            "phone": [f"{TAXONOMY}/policyTags/contact"],
        }
        path = f"/projects/{project}/datasets/{dataset}/tables/{table.state_table}"
        [patch] = [r for r in sent if r.get("method") == "PATCH" and "schema" in r.get("data", {})]
        assert patch["path"] == path
        fields = patch["data"]["schema"]["fields"]
        tagged = {f["name"]: f["policyTags"]["names"] for f in fields if "policyTags" in f}
        assert tagged == expected
        assert {f["name"] for f in fields} >= {
            "id",
            "email",
            "phone",
            "plan",
            "_seq",
            "_valid_from",
        }
        if "googleapis.com" in str(client._connection.API_BASE_URL):  # real BigQuery keeps them
            stored = client.get_table(f"{bigquery_dataset}.{table.state_table}")
            assert {
                f.name: list(f.policy_tags.names) for f in stored.schema if f.policy_tags
            } == expected
        # a later batch of the same shape sends no second patch
        again = ChangeEvent(
            table=table.table_id,
            op=Op.UPDATE,
            key={"id": 1},
            before=None,
            after={"id": 1, "email": "a@b.c", "phone": "+4155550100", "plan": "basic"},
            seq=make_seq(2, 2),
            commit_ts=1_790_000_000_000_001,
        )
        wh.apply(table, [again], dt.datetime.now(dt.UTC))
        assert (
            len([r for r in sent if r.get("method") == "PATCH" and "schema" in r.get("data", {})])
            == 1
        )
        rows = wh.history(table)
        assert rows[0]["email"].startswith("h1:") and rows[0]["phone"] == "*******0100"
    finally:
        wh.close()

"""The registry's `datastream:` section and the resources planned from it (no API involved)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from google.cloud import datastream_v1 as ds

from cdc.cli import main
from cdc.config import load_config
from connectors.datastream import changed_paths, plan_for
from state_models.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cdc.yaml"

SHOP = """
sources:
  shop:
    kind: mysql
    engine: datastream
    dsn: mysql://datastream:${SHOP_PASSWORD}@10.20.0.5/shop
    tables:
      - name: shop.orders
        primary_key: [id]
      - name: shop.customers
      - name: crm.contacts
    datastream:
      project: acme-data
      location: us-central1
      bucket: gs://acme-cdc/
      prefix: /raw/ds/
      format: json
      cdc_method: gtid
      file_rotation_interval_s: 60
"""

BILLING = """
sources:
  billing:
    kind: postgres
    engine: datastream
    snapshot: never
    slot: ds_billing
    dsn: postgresql://ds:s3cret%21@db.internal:6432/billing
    tables:
      - name: public.subscriptions
    datastream:
      project: acme-data
      location: europe-west1
      bucket: acme-cdc
      stream: billing-stream
      private_connection: vpc-peering
"""


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None):
    p = tmp_path / "cdc.yaml"
    p.write_text(text)
    return load_config(p, env=env if env is not None else {"SHOP_PASSWORD": "pw"})


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    return [p.render() for p in err.value.problems]


def test_mysql_plan_includes_registered_tables_gtid_json_and_the_password(tmp_path):
    cfg = load(tmp_path, SHOP)
    plan = plan_for("shop", cfg.registry.sources["shop"])
    assert plan.parent == "projects/acme-data/locations/us-central1"
    assert [r.id for r in plan.resources] == ["cdc-shop-source", "cdc-shop-gcs", "cdc-shop"]

    profile = plan.source_profile.desired
    assert profile.mysql_profile == ds.MysqlProfile(
        hostname="10.20.0.5", port=3306, username="datastream", password="pw"
    )
    assert "static_service_ip_connectivity" in profile
    assert plan.destination_profile.desired.gcs_profile == ds.GcsProfile(
        bucket="acme-cdc", root_path="/raw/ds"
    )

    stream = plan.stream.desired
    mysql = stream.source_config.mysql_source_config
    assert [
        (d.database, [t.table for t in d.mysql_tables])
        for d in mysql.include_objects.mysql_databases
    ] == [("crm", ["contacts"]), ("shop", ["customers", "orders"])]
    assert "gtid" in mysql and "binary_log_position" not in mysql
    assert stream.source_config.source_connection_profile == (
        "projects/acme-data/locations/us-central1/connectionProfiles/cdc-shop-source"
    )
    gcs = stream.destination_config.gcs_destination_config
    assert gcs.path == "/shop"
    assert gcs.json_file_format.compression == ds.JsonFileFormat.JsonCompression.GZIP
    assert gcs.file_rotation_interval == dt.timedelta(seconds=60)
    assert "backfill_all" in stream
    assert (plan.bucket, plan.path) == ("acme-cdc", "raw/ds/shop")


def test_postgres_plan_uses_slot_publication_private_connectivity_and_no_backfill(tmp_path):
    cfg = load(tmp_path, BILLING)
    plan = plan_for("billing", cfg.registry.sources["billing"])
    profile = plan.source_profile.desired.postgresql_profile
    assert (profile.hostname, profile.port, profile.username, profile.password) == (
        "db.internal",
        6432,
        "ds",
        "s3cret!",
    )
    assert profile.database == "billing"
    assert plan.source_profile.desired.private_connectivity.private_connection == (
        "projects/acme-data/locations/europe-west1/privateConnections/vpc-peering"
    )
    pg = plan.stream.desired.source_config.postgresql_source_config
    assert (pg.replication_slot, pg.publication) == ("ds_billing", "cdc_billing")
    assert [s.schema for s in pg.include_objects.postgresql_schemas] == ["public"]
    assert plan.stream.id == "billing-stream"
    assert "backfill_none" in plan.stream.desired
    assert "avro_file_format" in plan.stream.desired.destination_config.gcs_destination_config


def test_misspelt_datastream_key_gets_a_suggestion(tmp_path):
    found = problems(tmp_path, SHOP.replace("bucket:", "buckt:"))
    assert len(found) == 2
    [unknown] = [p for p in found if "buckt" in p]
    assert "sources.shop.datastream.buckt: unknown field" in unknown
    assert "did you mean 'bucket'?" in unknown
    assert any("datastream.bucket: required field is missing" in p for p in found)


def test_bad_datastream_values_are_each_reported(tmp_path):
    text = (
        SHOP.replace("format: json", "format: parquet")
        .replace("location: us-central1", "location: US")
        .replace("project: acme-data", "project: acme-data\n      stream: Bad_Name")
    )
    found = "\n".join(problems(tmp_path, text))
    assert "'parquet' is not valid" in found and "avro, json" in found
    assert "expected a Google Cloud region" in found
    assert "expected a Datastream id" in found


def test_datastream_section_needs_engine_datastream_and_cdc_method_needs_mysql(tmp_path):
    (problem,) = problems(tmp_path, SHOP.replace("engine: datastream", "engine: binlog"))
    assert "only applies to engine: datastream" in problem
    text = BILLING.replace("private_connection: vpc-peering", "cdc_method: gtid")
    (problem,) = problems(tmp_path, text)
    assert "cdc_method applies to MySQL sources only" in problem


def test_plan_refuses_a_source_without_datastream_settings(tmp_path):
    cfg = load(tmp_path, SHOP.split("    datastream:")[0])
    with pytest.raises(ConfigError, match="set `engine: datastream` and a `datastream:` section"):
        plan_for("shop", cfg.registry.sources["shop"])


def test_plan_refuses_an_unset_password_variable(tmp_path):
    cfg = load(tmp_path, SHOP, env={})
    with pytest.raises(ConfigError, match=r"unset \$\{VAR\}"):
        plan_for("shop", cfg.registry.sources["shop"])


def test_changed_paths_name_the_deepest_field_and_ignore_output_only_and_secrets():
    desired = ds.Stream(
        display_name="cdc shop",
        destination_config=ds.DestinationConfig(
            gcs_destination_config=ds.GcsDestinationConfig(
                path="/shop", avro_file_format=ds.AvroFileFormat()
            )
        ),
        backfill_all=ds.Stream.BackfillAllStrategy(),
    )
    existing = type(desired)(desired)
    existing.name, existing.state = "projects/p/locations/l/streams/s", ds.Stream.State.RUNNING
    assert changed_paths(desired, existing) == []

    existing.destination_config.gcs_destination_config.json_file_format = ds.JsonFileFormat()
    existing.backfill_none = ds.Stream.BackfillNoneStrategy()
    existing.destination_config.gcs_destination_config.path = "/old"
    assert changed_paths(desired, existing) == [
        "destination_config.gcs_destination_config.path",
        "destination_config.gcs_destination_config.avro_file_format",
        "backfill_all",
    ]
    profile = ds.ConnectionProfile(mysql_profile=ds.MysqlProfile(hostname="h", password="pw"))
    returned = ds.ConnectionProfile(mysql_profile=ds.MysqlProfile(hostname="h"))
    assert changed_paths(profile, returned) == []


def test_plan_command_for_the_example_registry_offline(capsys):
    assert (
        main(["datastream", "plan", "--source", "shop", "--config", str(EXAMPLE), "--offline"]) == 0
    )
    out = capsys.readouterr().out
    assert "stream cdc-shop  [create or update]" in out
    assert "include: shop.customers, shop.orders" in out
    assert "destination: gs://acme-cdc-datastream/datastream/shop/ via cdc-shop-gcs, avro" in out


def test_plan_command_for_a_non_datastream_source_is_a_usage_error(capsys):
    assert main(["datastream", "plan", "--source", "billing", "--config", str(EXAMPLE)]) == 2
    assert "not provisioned by Datastream" in capsys.readouterr().err
    assert main(["datastream", "plan", "--source", "nope", "--config", str(EXAMPLE)]) == 2
    assert main(["datastream", "--config", str(EXAMPLE)]) == 2


@pytest.mark.parametrize("text", [BILLING, SHOP])
def test_pii_drop_columns_are_left_out_of_the_stream_itself(tmp_path, text):
    """Datastream writes its own files with whatever it reads: a dropped column must not be read."""
    name = "billing" if text is BILLING else "shop"
    table = "public.subscriptions" if text is BILLING else "shop.orders"
    text = text.replace(
        f"      - name: {table}\n",
        f"      - name: {table}\n        pii: {{card: drop, note: drop, email: hash}}\n",
    )
    plan = plan_for(name, load(tmp_path, text).registry.sources[name])
    config = plan.stream.desired.source_config
    if name == "billing":
        [schema] = config.postgresql_source_config.exclude_objects.postgresql_schemas
        [excluded] = schema.postgresql_tables
        columns = [c.column for c in excluded.postgresql_columns]
    else:
        [database] = config.mysql_source_config.exclude_objects.mysql_databases
        [excluded] = database.mysql_tables
        columns = [c.column for c in excluded.mysql_columns]
    assert (excluded.table, columns) == (table.split(".")[1], ["card", "note"])

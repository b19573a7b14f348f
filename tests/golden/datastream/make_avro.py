"""Write the Avro golden files from the JSON ones: ``python -m tests.golden.datastream.make_avro``.

The schema follows the shape Datastream documents for its Avro output (see README.md): the generic
fields, ``read_timestamp``/``source_timestamp`` as ``timestamp-millis``, ``sort_keys`` as an array of
``["string", "long"]``, a ``source_metadata`` record per source and a ``payload`` record whose fields
are the table's columns in unified types (nullable, decimals as ``bytes``/``decimal``, date-times as
``timestamp-micros``). Re-run after editing a ``.jsonl`` file; the tests check both decode alike.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro

HERE = Path(__file__).resolve().parent

_TS_MILLIS = {"type": "long", "logicalType": "timestamp-millis"}
_TS_MICROS = {"type": "long", "logicalType": "timestamp-micros"}


def _nullable(t: Any) -> list[Any]:
    return ["null", t]


def _decimal(precision: int, scale: int) -> dict[str, Any]:
    return {"type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale}


MYSQL_METADATA = [
    ("table", "string"),
    ("database", "string"),
    ("primary_keys", {"type": "array", "items": "string"}),
    ("log_file", "string"),
    ("log_position", "long"),
    ("change_type", "string"),
    ("is_deleted", "boolean"),
]
MYSQL_GTID_METADATA = [
    ("table", "string"),
    ("database", "string"),
    ("primary_keys", {"type": "array", "items": "string"}),
    ("binlog_file", "string"),
    ("binlog_position", "long"),
    ("change_type", "string"),
    ("is_deleted", "boolean"),
]
POSTGRES_METADATA = [
    ("schema", "string"),
    ("table", "string"),
    ("is_deleted", "boolean"),
    ("change_type", "string"),
    ("tx_id", _nullable("string")),
    ("lsn", _nullable("string")),
    ("primary_keys", {"type": "array", "items": "string"}),
]
ORDERS = [
    ("id", _nullable("long")),
    ("customer_id", _nullable("long")),
    ("total", _nullable(_decimal(10, 2))),
    ("status", _nullable("string")),
    ("created_at", _nullable(_TS_MICROS)),
]
SUBSCRIPTIONS = [
    ("id", _nullable("long")),
    ("plan", _nullable("string")),
    ("amount", _nullable(_decimal(12, 2))),
    ("renews_at", _nullable(_TS_MICROS)),
]

FILES = {
    "mysql_binlog": (MYSQL_METADATA, ORDERS),
    "mysql_gtid": (MYSQL_GTID_METADATA, ORDERS),
    "postgres": (POSTGRES_METADATA, SUBSCRIPTIONS),
}


def schema(name: str, metadata: list[tuple[str, Any]], payload: list[tuple[str, Any]]) -> Any:
    return {
        "type": "record",
        "name": name,
        "fields": [
            {"name": "stream_name", "type": "string"},
            {"name": "read_method", "type": "string"},
            {"name": "object", "type": "string"},
            {"name": "schema_key", "type": "string"},
            {"name": "uuid", "type": "string"},
            {"name": "read_timestamp", "type": _TS_MILLIS},
            {"name": "source_timestamp", "type": _TS_MILLIS},
            {"name": "sort_keys", "type": {"type": "array", "items": ["string", "long"]}},
            {
                "name": "source_metadata",
                "type": {
                    "type": "record",
                    "name": "source_metadata",
                    "fields": [{"name": n, "type": t} for n, t in metadata],
                },
            },
            {
                "name": "payload",
                "type": {
                    "type": "record",
                    "name": "payload",
                    "fields": [{"name": n, "type": t} for n, t in payload],
                },
            },
        ],
    }


def _instant(text: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(text.replace(" ", "T"))
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _avro_value(value: Any, avro_type: Any) -> Any:
    if value is None:
        return None
    t = avro_type[1] if isinstance(avro_type, list) else avro_type
    if isinstance(t, dict) and t.get("logicalType") == "decimal":
        return Decimal(str(value)).quantize(Decimal(1).scaleb(-t["scale"]))
    if isinstance(t, dict) and t.get("logicalType") == "timestamp-micros":
        return _instant(value)
    return value


def to_avro_record(doc: dict[str, Any], payload: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(doc)
    out["read_timestamp"] = _instant(doc["read_timestamp"])
    out["source_timestamp"] = _instant(doc["source_timestamp"])
    out["payload"] = {n: _avro_value(doc["payload"].get(n), t) for n, t in payload}
    return out


def main() -> None:
    for stem, (metadata, payload) in FILES.items():
        docs = [
            json.loads(line, parse_float=Decimal)
            for line in (HERE / f"{stem}.jsonl").read_text().splitlines()
            if line.strip()
        ]
        parsed = fastavro.parse_schema(schema(stem, metadata, payload))
        with (HERE / f"{stem}.avro").open("wb") as fh:
            fastavro.writer(fh, parsed, [to_avro_record(d, payload) for d in docs], codec="deflate")
        print(f"wrote {stem}.avro ({len(docs)} records)")


if __name__ == "__main__":
    main()

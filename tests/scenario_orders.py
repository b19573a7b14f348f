"""One scripted history of ``shop.orders``, written as Debezium MySQL events and as Datastream files.

Both engines see the same binlog: the same changes at the same positions and commit times. The
Datastream side is split into files the way Datastream rotates them, and an update is written as
the ``UPDATE-DELETE`` + ``UPDATE-INSERT`` pair Datastream can produce. Tests deliver the files late
and twice, and check that both paths give the same history (and, once merged, the same tables).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from state_models.tables import TableInfo, resolver_for

ORDERS = TableInfo(
    "shop.shop.orders",
    ("id",),
    {
        "id": "bigint",
        "customer_id": "bigint",
        "total": "decimal(10,2)",
        "status": "varchar(20)",
        "created_at": "datetime",
    },
)
RESOLVE = resolver_for([ORDERS], "shop")
_T0 = dt.datetime(2026, 2, 17, 14, 0, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Step:
    file: int  # binlog file number
    pos: int
    ms: int  # commit time, ms after _T0
    op: str  # c u d
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    as_pair: bool = False  # Datastream writes this update as UPDATE-DELETE + UPDATE-INSERT


def _row(i: int, status: str, total: str, created_min: int) -> dict[str, Any]:
    return {
        "id": i,
        "customer_id": 600 + i,
        "total": total,
        "status": status,
        "created_at": (_T0 + dt.timedelta(minutes=created_min)).replace(tzinfo=None),
    }


R1, R2, R3 = (
    _row(1, "placed", "99.99", 0),
    _row(2, "placed", "15.00", 1),
    _row(3, "placed", "7.50", 2),
)
HISTORY = [
    Step(3, 100, 1_000, "c", None, R1),
    Step(3, 220, 2_000, "c", None, R2),
    Step(3, 340, 2_400, "u", R1, {**R1, "status": "paid"}),
    Step(3, 460, 3_000, "u", R2, {**R2, "status": "shipped"}),
    Step(3, 580, 3_050, "d", {**R1, "status": "paid"}, None),
    Step(3, 700, 4_000, "c", None, R3),
    Step(4, 120, 5_000, "u", R3, {**R3, "total": "8.50"}),
    Step(4, 240, 6_000, "u", {**R2, "status": "shipped"}, {**R2, "status": "refunded"}, True),
]
#: Which steps each Datastream file holds (files rotate by size and time, per table).
FILES = [HISTORY[0:3], HISTORY[3:6], HISTORY[6:8]]


def _epoch_ms(ms: int) -> int:
    return int(_T0.timestamp() * 1000) + ms


def debezium_messages() -> list[str]:
    """The Debezium MySQL connector's envelopes (decimal.handling.mode=string), in binlog order."""
    out = []
    for s in HISTORY:
        source = {
            "version": "3.0.0.Final",
            "connector": "mysql",
            "name": "shop",
            "ts_ms": _epoch_ms(s.ms),
            "snapshot": "false",
            "db": "shop",
            "table": "orders",
            "server_id": 1,
            "file": f"mysql-bin.{s.file:06d}",
            "pos": s.pos,
            "row": 0,
        }
        doc = {
            "before": _debezium_row(s.before),
            "after": _debezium_row(s.after),
            "source": source,
            "op": s.op,
            "ts_ms": _epoch_ms(s.ms) + 5,
        }
        out.append(json.dumps(doc))
    return out


def _debezium_row(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    created = row["created_at"].replace(tzinfo=dt.UTC)
    return {**row, "created_at": int(created.timestamp() * 1000)}  # DATETIME: epoch ms


def datastream_files() -> list[str]:
    """The same history as Datastream JSON files (one string per file, one record per line)."""
    return ["".join(line + "\n" for s in steps for line in _datastream_lines(s)) for steps in FILES]


def _datastream_lines(s: Step) -> list[str]:
    when = dt.datetime.fromtimestamp(_epoch_ms(s.ms) / 1000, dt.UTC)
    log_file = f"mysql-bin.{s.file:06d}"

    def record(change_type: str, row: dict[str, Any], n: int) -> str:
        return json.dumps(
            {
                "uuid": f"00000000-0000-4000-8000-{s.file:04d}{s.pos:06d}{n:02d}",
                "read_timestamp": (when + dt.timedelta(seconds=1)).isoformat(
                    timespec="milliseconds"
                ),
                "source_timestamp": when.replace(tzinfo=None).isoformat(timespec="milliseconds"),
                "object": "shop_orders",
                "read_method": "mysql-cdc-binlog",
                "stream_name": "projects/acme-data/locations/us-central1/streams/cdc-shop",
                "schema_key": "9f0c4a31d5b4e0f7a2c18e4b6d7f3a0e5c2b1d90",
                "sort_keys": [_epoch_ms(s.ms), log_file, s.pos],
                "source_metadata": {
                    "table": "orders",
                    "database": "shop",
                    "primary_keys": ["id"],
                    "log_file": log_file,
                    "log_position": s.pos,
                    "change_type": change_type,
                    "is_deleted": change_type in ("DELETE", "UPDATE-DELETE"),
                },
                "payload": {
                    **row,
                    "total": float(row["total"]),
                    "created_at": row["created_at"].isoformat(),
                },
            }
        )

    if s.op == "c":
        return [record("INSERT", s.after or {}, 0)]
    if s.op == "d":
        return [record("DELETE", s.before or {}, 0)]
    if s.as_pair:
        return [
            record("UPDATE-DELETE", s.before or {}, 0),
            record("UPDATE-INSERT", s.after or {}, 1),
        ]
    return [record("UPDATE-INSERT", s.after or {}, 0)]

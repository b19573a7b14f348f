"""Canonical values -> the JSON values Debezium sends for them, and Debezium field schemas.

Shared by the native readers' type tables (``pgtypes`` for PostgreSQL, ``mytypes`` for
MySQL/MariaDB): each supported column type pairs a parser into the canonical value that
``decode_debezium`` yields with one of these renderers, so that the envelope we write decodes back to
the same value. Canonical times are ISO-8601 text (see ``state_models.debezium``).
"""

from __future__ import annotations

import base64
import datetime as dt
from decimal import Decimal
from typing import Any

EPOCH = dt.datetime(1970, 1, 1)
EPOCH_DATE = dt.date(1970, 1, 1)


def field_schema(type_: str, name: str | None = None, **params: str) -> dict[str, Any]:
    """A Kafka Connect field schema: ``field_schema("int64", "io.debezium.time.MicroTimestamp")``."""
    out: dict[str, Any] = {"type": type_}
    if name:
        out["name"] = name
        out["version"] = 1
    if params:
        out["parameters"] = params
    return out


def decimal_bytes(value: Decimal) -> str:
    """``org.apache.kafka.connect.data.Decimal``: the unscaled value, big-endian two's complement, base64."""
    sign, digits, exponent = value.as_tuple()
    unscaled = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
    if isinstance(exponent, int) and exponent > 0:
        unscaled *= 10**exponent
    length = max(1, (unscaled.bit_length() + 8) // 8)
    return base64.b64encode(unscaled.to_bytes(length, "big", signed=True)).decode()


def days_since_epoch(value: str) -> int:
    """``io.debezium.time.Date`` of an ISO date."""
    return (dt.date.fromisoformat(value) - EPOCH_DATE).days


def micros_since_epoch(value: str) -> int:
    """``io.debezium.time.MicroTimestamp`` of a naive ISO timestamp (read as UTC)."""
    delta = dt.datetime.fromisoformat(value) - EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def millis_since_epoch(value: str) -> int:
    """``io.debezium.time.Timestamp`` of a naive ISO timestamp (read as UTC)."""
    return micros_since_epoch(value) // 1000


def micros_of_day(value: str) -> int:
    """``io.debezium.time.MicroTime`` of an ISO time of day."""
    t = dt.time.fromisoformat(value)
    return ((t.hour * 60 + t.minute) * 60 + t.second) * 1_000_000 + t.microsecond


def millis_of_day(value: str) -> int:
    """``io.debezium.time.Time`` of an ISO time of day."""
    return micros_of_day(value) // 1000

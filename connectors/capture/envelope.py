"""Debezium-shaped JSON envelopes for the events of the native readers (pgoutput, binlog).

Sinks that publish or archive the wire message (Pub/Sub, the changelog's original-message column)
treat every engine alike: ``ChangeEvent.raw`` holds a Debezium JSON envelope with its schema block,
so ``decode_debezium(event.raw)`` gives back the same event. The schema of a table version is
rendered once and reused; per event only the payload is serialised, with orjson (more than ten
times faster than ``json.dumps`` here, and every captured event pays for it). Where orjson would
write a value differently from JSON's reading of it (a NaN or infinite float, which it writes as
``null``; an integer beyond 64 bits, which it refuses) the event is serialised by ``json`` instead.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import orjson

from state_models.debezium import source_types_of
from state_models.events import UNAVAILABLE_PLACEHOLDER

VERSION = "cdc-history"


class ColumnType(Protocol):
    @property
    def schema(self) -> dict[str, Any]: ...

    @property
    def wire(self) -> Callable[[Any], Any] | None: ...


@dataclass(frozen=True)
class EnvelopeColumn:
    name: str
    type: ColumnType
    optional: bool = True


_SOURCE_FIELDS = {
    "postgresql": [
        ("version", "string", False),
        ("connector", "string", False),
        ("name", "string", False),
        ("ts_ms", "int64", False),
        ("snapshot", "string", True),
        ("db", "string", False),
        ("sequence", "string", True),
        ("ts_us", "int64", True),
        ("ts_ns", "int64", True),
        ("schema", "string", False),
        ("table", "string", False),
        ("txId", "int64", True),
        ("lsn", "int64", True),
        ("xmin", "int64", True),
    ],
    "mysql": [
        ("version", "string", False),
        ("connector", "string", False),
        ("name", "string", False),
        ("ts_ms", "int64", False),
        ("snapshot", "string", True),
        ("db", "string", False),
        ("ts_us", "int64", True),
        ("ts_ns", "int64", True),
        ("table", "string", True),
        ("server_id", "int64", False),
        ("gtid", "string", True),
        ("file", "string", False),
        ("pos", "int64", False),
        ("row", "int32", False),
        ("thread", "int64", True),
        ("query", "string", True),
    ],
}


class TableEnvelope:
    """Renders envelopes for one version of one table's columns."""

    def __init__(
        self, connector: str, topic: str, columns: Sequence[EnvelopeColumn], *, key: Sequence[str]
    ):
        self.connector = connector
        value_name = f"{topic}.Value"
        row = {
            "type": "struct",
            "fields": [_field(c) for c in columns],
            "optional": True,
            "name": value_name,
        }
        source_name = (
            "io.debezium.connector.postgresql.Source"
            if connector == "postgresql"
            else "io.debezium.connector.mysql.Source"
        )
        schema = {
            "type": "struct",
            "fields": [
                {**row, "field": "before"},
                {**row, "field": "after"},
                {
                    "type": "struct",
                    "fields": [
                        {"type": t, "optional": o, "field": f}
                        for f, t, o in _SOURCE_FIELDS[connector]
                    ],
                    "optional": False,
                    "name": source_name,
                    "field": "source",
                },
                {"type": "string", "optional": False, "field": "op"},
                {"type": "int64", "optional": True, "field": "ts_ms"},
                {"type": "int64", "optional": True, "field": "ts_us"},
                {"type": "int64", "optional": True, "field": "ts_ns"},
            ],
            "optional": False,
            "name": f"{topic}.Envelope",
            "version": 2,
        }
        self._prefix = '{"schema":' + _dumps(schema) + ',"payload":'
        #: the types this schema states (``ChangeEvent.source_types``), one dict shared by the
        #: table version's events: the merge types a column the registry does not declare from
        #: it, as it does for the same message decoded by `cdc apply` or the Beam job
        self.source_types = source_types_of({c.name: _field(c) for c in columns})
        self._wires = [(c.name, c.type.wire) for c in columns if c.type.wire is not None]
        # columns that may hold a NaN or an infinity, which orjson cannot write as json does
        self._floats = [c.name for c in columns if _may_hold_float(c.type.schema)]
        self.key = tuple(key)

    def render(
        self,
        op: str,
        before: Mapping[str, Any] | None,
        after: Mapping[str, Any] | None,
        source: Mapping[str, Any] | str,
        ts_us: int,
        unavailable: Sequence[str] = (),
    ) -> str:
        """The envelope of one event. ``source`` is the source block, or its JSON text (``json_text``,
        or a template: pgoutput renders it once per table and transaction, binlog once per rows
        event, since only the positions change between their events).
        """
        source_json = source if isinstance(source, str) else self._json(source)
        # the payload's own keys are fixed: written around the images, not serialised as a dict
        return (
            f'{self._prefix}{{"before":{self._image(before, ())},'
            f'"after":{self._image(after, unavailable)},"source":{source_json},'
            f'"transaction":null,"op":"{op}","ts_ms":{ts_us // 1000},"ts_us":{ts_us},'
            f'"ts_ns":{ts_us * 1000}}}}}'
        )

    def _image(self, image: Mapping[str, Any] | None, unavailable: Sequence[str]) -> str:
        if image is None:
            return "null"
        if self._wires or unavailable:
            out = dict(image)
            for name, wire in self._wires:
                v = out.get(name)
                if v is not None:
                    out[name] = wire(v)
            for name in unavailable:
                out[name] = UNAVAILABLE_PLACEHOLDER
            image = out
        if self._floats and not _finite(image, self._floats):
            return _dumps(image)
        return self._json(image)

    @staticmethod
    def _json(value: Mapping[str, Any]) -> str:
        try:
            return orjson.dumps(value, default=_default).decode()
        except TypeError:  # an integer beyond 64 bits
            return _dumps(value)


def _field(c: EnvelopeColumn) -> dict[str, Any]:
    return {**c.type.schema, "optional": c.optional, "field": c.name}


def _may_hold_float(schema: Mapping[str, Any]) -> bool:
    if schema.get("type") == "array":
        return _may_hold_float(schema.get("items") or {})
    return schema.get("type") in ("float", "double")


def _finite(image: Mapping[str, Any], names: Sequence[str]) -> bool:
    for name in names:
        v = image.get(name)
        if isinstance(v, float):
            if not math.isfinite(v):
                return False
        elif isinstance(v, list) and not all(math.isfinite(x) for x in v if isinstance(x, float)):
            return False
    return True


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def json_text(value: Any) -> str:
    """Compact JSON as the envelopes are written (exact decimals as text)."""
    return _dumps(value)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_default)

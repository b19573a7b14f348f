"""Debezium-shaped JSON envelopes for the events of the native readers (pgoutput, binlog).

Sinks that publish or archive the wire message (Pub/Sub, the changelog's original-message column)
treat every engine alike: ``ChangeEvent.raw`` holds a Debezium JSON envelope with its schema block,
so ``decode_debezium(event.raw)`` gives back the same event. The schema of a table version is
rendered once and reused; per event only the payload is serialised.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

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
        self._wires = [(c.name, c.type.wire) for c in columns if c.type.wire is not None]
        self.key = tuple(key)

    def render(
        self,
        op: str,
        before: Mapping[str, Any] | None,
        after: Mapping[str, Any] | None,
        source: dict[str, Any] | str,
        ts_us: int,
        unavailable: Sequence[str] = (),
    ) -> str:
        """The envelope text. ``source`` may come already serialised (``json_text``): the rows of
        one binlog event share all of it but the row number, so it is rendered once per event."""
        images = _dumps({"before": self._wire(before, ()), "after": self._wire(after, unavailable)})
        source_text = source if isinstance(source, str) else _dumps(source)
        return (
            f'{self._prefix}{images[:-1]},"source":{source_text},"transaction":null,"op":"{op}",'
            f'"ts_ms":{ts_us // 1000},"ts_us":{ts_us},"ts_ns":{ts_us * 1000}}}}}'
        )

    def _wire(
        self, image: Mapping[str, Any] | None, unavailable: Sequence[str]
    ) -> dict[str, Any] | None:
        if image is None:
            return None
        out = dict(image)
        for name, wire in self._wires:
            v = out.get(name)
            if v is not None:
                out[name] = wire(v)
        for name in unavailable:
            out[name] = UNAVAILABLE_PLACEHOLDER
        return out


def _field(c: EnvelopeColumn) -> dict[str, Any]:
    return {**c.type.schema, "optional": c.optional, "field": c.name}


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def json_text(value: Any) -> str:
    """Compact JSON as the envelopes are written (exact decimals as text)."""
    return _dumps(value)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_default)

"""The canonical change event (docs/architecture.md §3).

Every capture path (Debezium, pgoutput, binlog, Datastream) produces this one shape. Row images are
plain dicts of JSON-compatible values plus ``Decimal`` for exact numerics. Values the source did not
send (PostgreSQL TOAST columns that did not change) are never stored as data: their names are listed
in ``unavailable`` and they are absent from ``after``; the merge carries the previous version's
value forward.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from enum import StrEnum
from typing import Any

from state_models.seq import is_seq

#: Debezium's default ``unavailable.value.placeholder`` (PostgreSQL unchanged TOAST values).
UNAVAILABLE_PLACEHOLDER = "__debezium_unavailable_value"
#: The same placeholder as Debezium sends it for bytea columns (base64 of the text above).
UNAVAILABLE_PLACEHOLDER_B64 = base64.b64encode(UNAVAILABLE_PLACEHOLDER.encode()).decode()

#: The commit times a change may have (µs since the epoch): years 1 to 9999, what BigQuery and
#: Python hold (DuckDB holds more, which then cannot be read back).
MIN_TIMESTAMP_US = -62_135_596_800_000_000
MAX_TIMESTAMP_US = 253_402_300_799_999_999


class Op(StrEnum):
    INSERT = "c"
    UPDATE = "u"
    DELETE = "d"
    READ = "r"  # snapshot read
    TRUNCATE = "t"


@dataclass(slots=True)
class ChangeEvent:
    """One row change, decoded once, whatever engine captured it.

    Treat it as a value: derive a changed copy with ``dataclasses.replace`` (or ``with_raw``), never
    assign to a field. It is not declared ``frozen`` because every captured event is built once on
    the capture's hot path, and a frozen dataclass's ``__init__`` (one ``object.__setattr__`` per
    field) costs about as much as decoding the row itself.
    """

    table: str  # registered table id: source.schema.table
    op: Op
    key: dict[str, Any]  # primary-key values, registry column order; {} for a truncate
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    seq: str
    commit_ts: int  # microseconds since the epoch, UTC
    tx_id: str | None = None
    event_id: str = ""
    unavailable: tuple[str, ...] = ()  # columns whose new value the source did not send (TOAST)
    source_types: dict[str, str] | None = field(default=None, compare=False)  # from a schema block
    raw: str | None = field(default=None, compare=False, repr=False)  # the original message

    def __post_init__(self) -> None:
        if not is_seq(self.seq):
            raise ValueError(f"seq must be 16-hex-digit sections joined by '/': {self.seq!r}")
        if not self.event_id:
            self.event_id = make_event_id(self.table, self.key, self.seq)

    @property
    def source(self) -> str:
        return self.table.split(".", 1)[0]

    @property
    def image(self) -> dict[str, Any] | None:
        """The row as it is after this change (None for a delete or truncate)."""
        return None if self.op in (Op.DELETE, Op.TRUNCATE) else self.after

    def with_raw(self, raw: str | None) -> ChangeEvent:
        return replace(self, raw=raw)


def make_event_id(table: str, key: Mapping[str, Any], seq: str) -> str:
    """Deterministic id: two deliveries of one change have one id.

    Keys are serialised as a JSON list of [column, value] pairs, so composite keys whose values
    would collide when concatenated (``("ab", "c")`` vs ``("a", "bc")``) never share an id.
    """
    # Every captured event gets an id, so the usual keys (integers, text) skip ``json.dumps``;
    # the text built here is byte for byte what ``_event_id_payload`` gives (ids are stored).
    if len(key) == 1:
        for k, v in key.items():
            if type(k) is str and type(v) is int:
                payload = f"[{_json_str(table)},[[{_json_str(k)},{v!r}]],{_json_str(seq)}]"
                return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()
    parts = []
    for k in sorted(key):
        v = key[k]
        kind = type(v)
        if type(k) is not str:
            payload = _event_id_payload(table, key, seq)
            break
        if kind is int:
            parts.append(f"[{_json_str(k)},{v!r}]")
        elif kind is str:
            parts.append(f"[{_json_str(k)},{_json_str(v)}]")
        else:
            payload = _event_id_payload(table, key, seq)
            break
    else:
        payload = f"[{_json_str(table)},[{','.join(parts)}],{_json_str(seq)}]"
    return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()


#: ``json.dumps`` of one string with ``ensure_ascii=False`` (the C encoder when available)
_json_str = json.encoder.encode_basestring


def _event_id_payload(table: str, key: Mapping[str, Any], seq: str) -> str:
    return json.dumps(
        [table, [[k, json_value(key[k])] for k in sorted(key)], seq],
        separators=(",", ":"),
        ensure_ascii=False,
    )


def json_value(value: Any) -> Any:
    """A JSON-safe form of an image value: exact decimals and times as strings."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dict):
        return {k: json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return value


def image_to_json(image: Mapping[str, Any] | None) -> str | None:
    """Serialise a row image for the changelog (stable: same image, same text)."""
    if image is None:
        return None
    return json.dumps(
        {k: json_value(v) for k, v in image.items()}, separators=(",", ":"), ensure_ascii=False
    )


#: The flat record of an event as the changelog (docs/architecture.md §6), the local journal and other
#: stores keep it: images and key as JSON text, times as integers. ``ingested_at`` is added by the
#: writer.
RECORD_FIELDS = (
    "event_id",
    "table",
    "op",
    "seq",
    "commit_ts",
    "tx_id",
    "key",
    "before",
    "after",
    "unavailable",
    "source_types",
    "raw",
)


def event_to_record(event: ChangeEvent) -> dict[str, Any]:
    """The flat, JSON/Arrow-friendly form of an event (see ``RECORD_FIELDS``)."""
    return {
        "event_id": event.event_id,
        "table": event.table,
        "op": event.op.value,
        "seq": event.seq,
        "commit_ts": event.commit_ts,
        "tx_id": event.tx_id,
        "key": image_to_json(event.key),
        "before": image_to_json(event.before),
        "after": image_to_json(event.after),
        "unavailable": list(event.unavailable),
        # the types the message stated: a column the registry does not declare gets the same
        # type from the journal as from the message itself (`cdc apply`, the Beam job)
        "source_types": event.source_types,
        "raw": event.raw,
    }


def event_from_record(record: Mapping[str, Any]) -> ChangeEvent:
    """Rebuild an event from ``event_to_record`` output. Exact numerics come back as their text
    (``"12.50"``); the warehouse casts by column type, and ``event_id`` is kept as stored."""
    return ChangeEvent(
        table=record["table"],
        op=Op(record["op"]),
        key=json.loads(record["key"]) if record.get("key") else {},
        before=json.loads(record["before"]) if record.get("before") else None,
        after=json.loads(record["after"]) if record.get("after") else None,
        seq=record["seq"],
        commit_ts=int(record["commit_ts"]),
        tx_id=record.get("tx_id"),
        event_id=record["event_id"],
        unavailable=tuple(record.get("unavailable") or ()),
        source_types=record.get("source_types"),
        raw=record.get("raw"),
    )

"""Change events as Arrow rows of the changelog, and back (docs/architecture.md §6 columns).

Row images, keys and source types are stored as JSON text with the values of
``state_models.events.json_value`` (exact decimals and times as strings), so reading a file back
gives images whose ``image_to_json`` is the text that was written. Columns beyond the contract:
``unavailable`` (TOAST columns the source did not send, needed to carry the previous value forward)
and ``source_types`` (the source's column types when the capture knew them).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from state_models.errors import TerminalError
from state_models.events import ChangeEvent, Op, image_to_json


class UnstorableEventError(TerminalError):
    """An event holds a value that has no JSON form (the capture produced something unexpected)."""


_TS = pa.timestamp("us", tz="UTC")

SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("table", pa.string(), nullable=False),
        pa.field("op", pa.string(), nullable=False),
        pa.field("seq", pa.string(), nullable=False),
        pa.field("commit_ts", _TS, nullable=False),
        pa.field("tx_id", pa.string()),
        pa.field("key", pa.string(), nullable=False),
        pa.field("before", pa.string()),
        pa.field("after", pa.string()),
        pa.field("unavailable", pa.list_(pa.string())),
        pa.field("source_types", pa.string()),
        pa.field("ingested_at", _TS, nullable=False),
        pa.field("raw", pa.string()),
    ],
    metadata={"cdc.changelog.format": "1"},
)
COLUMNS = tuple(SCHEMA.names)
#: What a replay needs; the original message and source types stay on disk unless asked for.
MERGE_COLUMNS = (
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
    "source_types",  # the types the message stated, for columns the registry does not declare
)
_OPTS = orjson.OPT_PASSTHROUGH_DATETIME
_dumps = orjson.dumps


def _default(value: Any) -> Any:
    # Same conversions as state_models.events.json_value, for the values orjson cannot write itself.
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    raise TypeError(f"cannot store a {type(value).__name__} in a changelog image")


_CONTAINERS = (dict, list, tuple)


def _has_nonfinite(values: Iterable[Any]) -> bool:
    for v in values:
        if type(v) is float:
            if not math.isfinite(v):
                return True
        elif isinstance(v, dict):
            if _has_nonfinite(v.values()):
                return True
        elif isinstance(v, list | tuple) and _has_nonfinite(v):
            return True
    return False


def _may_hold_nonfinite(values: Iterable[Any]) -> bool:
    # One C-level pass over the value types: most images hold no float and no nested value.
    types = set(map(type, values))
    return float in types or not types.isdisjoint(_CONTAINERS)


def dump_json(image: Mapping[str, Any] | None) -> str | None:
    """``image_to_json`` semantics, about five times faster.

    orjson writes NaN/Infinity as ``null`` (losing the value) and refuses integers beyond 64 bits,
    so those images take the standard library path. Text without ``null`` cannot hide a lost NaN,
    which spares most images the scan.
    """
    if image is None:
        return None
    try:
        text = _dumps(image, default=_default, option=_OPTS)
    except TypeError:
        return image_to_json(image)
    if b"null" in text and _may_hold_nonfinite(image.values()) and _has_nonfinite(image.values()):
        return image_to_json(image)
    return text.decode()


def _dump_all(images: Sequence[Mapping[str, Any] | None]) -> list[str | None]:
    """``[dump_json(i) for i in images]`` without two Python calls per image (the writer's hot loop)."""
    out: list[str | None] = []
    append = out.append
    for image in images:
        if image is None:
            append(None)
            continue
        try:
            text = _dumps(image, default=_default, option=_OPTS)
        except TypeError:
            append(image_to_json(image))
            continue
        if (
            b"null" in text
            and _may_hold_nonfinite(image.values())
            and _has_nonfinite(image.values())
        ):
            append(image_to_json(image))
        else:
            append(text.decode())
    return out


#: 19 digits in a row may be an integer beyond 64 bits, which orjson would read as a float.
_LONG_NUMBER = re.compile(r"[0-9]{19}")


def load_json(text: str | None) -> Any:
    if text is None:
        return None
    if _LONG_NUMBER.search(text):
        return json.loads(text)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)  # NaN / Infinity written by the standard library path


def to_batch(events: Sequence[ChangeEvent], ingested_at: Sequence[int]) -> pa.RecordBatch:
    """Arrow rows for ``events`` (``ingested_at`` in µs since the epoch, one per event)."""
    columns = [
        pa.array([e.event_id for e in events], pa.string()),
        pa.array([e.table for e in events], pa.string()),
        pa.array([str(e.op) for e in events], pa.string()),
        pa.array([e.seq for e in events], pa.string()),
        pa.array([e.commit_ts for e in events], _TS),
        pa.array([e.tx_id for e in events], pa.string()),
        _json_column(events, "key"),
        _json_column(events, "before"),
        _json_column(events, "after"),
        pa.array([e.unavailable or None for e in events], pa.list_(pa.string())),
        _json_column(events, "source_types"),
        pa.array(ingested_at, _TS),
        pa.array([e.raw for e in events], pa.string()),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=SCHEMA)


def _json_column(events: Sequence[ChangeEvent], name: str) -> pa.Array:
    values = [getattr(e, name) for e in events]
    if not any(v is not None for v in values):
        return pa.nulls(len(values), pa.string())
    try:
        return pa.array(_dump_all(values), pa.string())
    except (TypeError, ValueError, pa.ArrowException):
        for e in events:  # name the culprit
            try:
                pa.array([dump_json(getattr(e, name))], pa.string())
            except (TypeError, ValueError, pa.ArrowException) as one:
                raise UnstorableEventError(
                    f"event {e.event_id} ({e.table} seq {e.seq}): field {name!r} cannot be "
                    f"stored as JSON text: {one}",
                    raw=e.raw,
                ) from one
        raise


def _load_all(column: pa.Array | pa.ChunkedArray) -> list[Any]:
    """``[load_json(t) for t in column]``, with the checks done once per column in Arrow."""
    texts = column.to_pylist()
    loads = orjson.loads
    try:
        out = [None if t is None else loads(t) for t in texts]
    except orjson.JSONDecodeError:  # NaN / Infinity written by the standard library path
        return [load_json(t) for t in texts]
    long_numbers = pc.match_substring_regex(column, _LONG_NUMBER.pattern)
    if pc.any(long_numbers).as_py():
        for i in pc.indices_nonzero(long_numbers.fill_null(False)).to_pylist():
            out[i] = json.loads(texts[i])
    return out


def from_batch(batch: pa.RecordBatch | pa.Table) -> list[ChangeEvent]:
    """Change events from changelog rows (any subset of columns that includes the merge's)."""
    n = batch.num_rows
    names = set(batch.schema.names)
    nothing: list[Any] = [None] * n

    def col(name: str) -> list[Any]:
        if name not in names:
            return nothing
        c = batch.column(name)
        if pa.types.is_timestamp(c.type):
            c = c.cast(pa.int64())
        return c.to_pylist()

    def json_col(name: str) -> list[Any]:
        if name not in names:
            return nothing
        c = batch.column(name)
        if isinstance(c, pa.ChunkedArray):
            c = c.combine_chunks()
        if pa.types.is_dictionary(c.type):  # each distinct text parsed once, shared by its rows
            entries = _load_all(c.dictionary)
            return [None if i is None else entries[i] for i in c.indices.to_pylist()]
        return _load_all(c)

    ops = {o.value: o for o in Op}
    return [
        ChangeEvent(
            table=table,
            op=ops[op],
            key=key,
            before=before,
            after=after,
            seq=seq,
            commit_ts=commit_ts,
            tx_id=tx_id,
            event_id=event_id,
            unavailable=tuple(unavailable) if unavailable else (),
            source_types=source_types,
            raw=raw,
        )
        for event_id, table, op, seq, commit_ts, tx_id, key, before, after, unavailable, source_types, raw in zip(
            col("event_id"),
            col("table"),
            col("op"),
            col("seq"),
            col("commit_ts"),
            col("tx_id"),
            json_col("key"),
            json_col("before"),
            json_col("after"),
            col("unavailable"),
            json_col("source_types"),
            col("raw"),
            strict=True,
        )
    ]

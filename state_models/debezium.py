"""Decode Debezium JSON change events (PostgreSQL and MySQL/MariaDB connectors) into ``ChangeEvent``.

Accepts the envelope with or without the ``{"schema", "payload"}`` wrapper. Logical types are
converted when the schema block says what they are, else from the registry's declared column
types; an exact numeric always ends up as ``Decimal``, a time as ISO-8601 text. Anything we cannot
decode raises ``DecodeError`` carrying the raw message, so it can go to the dead-letter store.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from state_models.errors import DecodeError, TerminalError, UnknownTableError
from state_models.events import (
    MAX_TIMESTAMP_US,
    MIN_TIMESTAMP_US,
    UNAVAILABLE_PLACEHOLDER,
    UNAVAILABLE_PLACEHOLDER_B64,
    ChangeEvent,
    Op,
    json_value,
    make_event_id,
)
from state_models.seq import binlog_seq, parse_seq, pg_seq
from state_models.tables import TableInfo, TableResolver
from state_models.watermark import TransactionEnd

_EPOCH = dt.datetime(1970, 1, 1)
_EPOCH_DATE = dt.date(1970, 1, 1)
_DECIMAL_TYPE_RE = re.compile(
    r"^\s*(?:numeric|decimal|dec)\s*\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)", re.I
)
_TIME_PRECISION_RE = re.compile(r"\((\d)\)")


class Tombstone:
    """The null-valued record Debezium sends after a delete (for Kafka log compaction).

    It carries nothing the delete event did not already carry, so callers count it and move on.
    """

    def __repr__(self) -> str:
        return "Tombstone"


TOMBSTONE = Tombstone()


def decode_debezium(
    message: str | bytes | Mapping[str, Any] | None,
    resolve: TableResolver,
    *,
    record_key: str | bytes | Mapping[str, Any] | None = None,
    keep_raw: bool = True,
    parsed: Any = None,
) -> ChangeEvent | Tombstone:
    """Decode one Debezium change event value (and optionally its record key).

    ``parsed``: the message already parsed by the caller (a connector with a faster JSON parser);
    ``message`` is then only the raw text kept with the event.
    """
    raw = _raw_text(message)
    try:
        return _decode(message if parsed is None else parsed, raw, resolve, record_key, keep_raw)
    except (DecodeError, UnknownTableError):
        raise
    except _MALFORMED as exc:
        # whatever this message does to the decoder, it is this message's problem alone
        raise DecodeError(
            f"malformed Debezium event: {type(exc).__name__}: {exc}", raw=raw
        ) from exc


#: What a malformed message can make the decoder raise: that message's problem alone.
_MALFORMED = (
    LookupError,
    TypeError,
    ValueError,
    ArithmeticError,
    AttributeError,
    RecursionError,
    binascii.Error,
)


def _raw_text(message: Any) -> str | None:
    if message is None:
        return None
    if isinstance(message, bytes | bytearray):
        return bytes(message).decode("utf-8", errors="replace")
    if isinstance(message, str):
        return message
    return json.dumps(message, default=str, separators=(",", ":"))


def _decode(
    message: Any, raw: str | None, resolve: TableResolver, record_key: Any, keep_raw: bool
) -> ChangeEvent | Tombstone:
    doc = _parse(message, raw)
    if doc is None:
        return TOMBSTONE
    schema: Mapping[str, Any] | None = None
    if isinstance(doc, dict) and "payload" in doc and "schema" in doc:
        schema, doc = doc["schema"], doc["payload"]
        if doc is None:
            return TOMBSTONE
    if not isinstance(doc, dict):
        raise DecodeError(
            f"expected a JSON object (a Debezium envelope), got {type(doc).__name__}", raw=raw
        )
    op_text = doc.get("op")
    if op_text is None:
        raise DecodeError("missing field 'op' (expected one of c, u, d, r, t)", raw=raw)
    try:
        op = Op(op_text)
    except ValueError:
        raise DecodeError(
            f"unsupported op {op_text!r} (expected one of c, u, d, r, t)", raw=raw
        ) from None
    source = doc.get("source")
    if not isinstance(source, dict):
        raise DecodeError("missing or invalid field 'source' (expected an object)", raw=raw)
    connector = source.get("connector")
    if connector not in ("postgresql", "mysql", "mariadb"):
        raise DecodeError(
            f"unsupported connector {connector!r} (expected postgresql, mysql or mariadb)", raw=raw
        )
    schema_name = source.get("schema") if connector == "postgresql" else source.get("db")
    table_name = source.get("table")
    if not schema_name or not table_name:
        raise DecodeError(
            f"source block does not name the table (connector={connector!r}, "
            f"schema/db={schema_name!r}, table={table_name!r})",
            raw=raw,
        )
    try:
        info = resolve(schema_name, table_name)
    except UnknownTableError as exc:
        raise UnknownTableError(str(exc), raw=raw) from None

    try:
        return _decode_change(doc, op, connector, source, schema, info, raw, record_key, keep_raw)
    except TerminalError as exc:
        exc.table = info.id  # its dead letter belongs to the table (and is sealed if it has pii:)
        raise
    except _MALFORMED as exc:
        raise DecodeError(
            f"malformed Debezium event: {type(exc).__name__}: {exc}", raw=raw, table=info.id
        ) from exc


def _decode_change(
    doc: Mapping[str, Any],
    op: Op,
    connector: str,
    source: Mapping[str, Any],
    schema: Mapping[str, Any] | None,
    info: TableInfo,
    raw: str | None,
    record_key: Any,
    keep_raw: bool,
) -> ChangeEvent:
    field_schemas = _field_schemas(schema)
    before, _ = _convert_image(doc.get("before"), field_schemas.get("before"), info, raw, "before")
    after, unavailable = _convert_image(
        doc.get("after"), field_schemas.get("after"), info, raw, "after"
    )
    if op in (Op.INSERT, Op.UPDATE, Op.READ) and after is None:
        raise DecodeError(f"op {op.value!r} without an 'after' image", raw=raw)
    if op is Op.DELETE and before is None:
        raise DecodeError(
            "delete without a 'before' image (cannot tell which row was deleted)", raw=raw
        )

    seq = _seq(connector, source, raw)
    commit_ts = _commit_ts(source, doc, raw)
    tx_id = _tx_id(connector, source, doc)
    key = {} if op is Op.TRUNCATE else _key(op, before, after, info, record_key, raw)
    return info.protect(  # pii: before the event is held anywhere
        ChangeEvent(
            table=info.id,
            op=op,
            key=key,
            before=before,
            after=after,
            seq=seq,
            commit_ts=commit_ts,
            tx_id=tx_id,
            event_id=make_event_id(info.id, key, seq),
            unavailable=tuple(unavailable),
            source_types=source_types_of(field_schemas.get("after") or field_schemas.get("before")),
            raw=raw if keep_raw else None,
        )
    )


def decode_transaction_end(
    message: str | bytes | Mapping[str, Any] | None, source: str
) -> TransactionEnd | None:
    """A record of Debezium's transaction topic (``<topic.prefix>.transaction``, PostgreSQL with
    ``provide.transaction.metadata``): its END as a ``TransactionEnd``, None for a BEGIN. Measured
    shape: ``{"status": "END", "id": "727:22141576", "event_count": 3, "data_collections":
    [{"data_collection": "public.a", "event_count": 2}, ...]}``, the id's number after the colon
    being the commit LSN. Anything else raises ``DecodeError`` with the raw message."""
    raw = _raw_text(message)
    doc = _parse(message, raw)
    if isinstance(doc, dict) and "payload" in doc and "schema" in doc:
        doc = doc["payload"]
    if not isinstance(doc, dict) or doc.get("status") not in ("BEGIN", "END"):
        raise DecodeError("not a Debezium transaction record (status BEGIN or END)", raw=raw)
    if doc["status"] == "BEGIN":
        return None
    tx, _, commit = str(doc.get("id") or "").partition(":")
    collections = doc.get("data_collections")
    if not tx or not commit.isdigit() or not isinstance(collections, list):
        raise DecodeError(
            "transaction END without an id 'xid:commit LSN' and its data_collections", raw=raw
        )
    if not 0 < int(commit) < 1 << 64:
        raise DecodeError(f"transaction END: commit LSN {commit} is not a PostgreSQL LSN", raw=raw)
    counts: dict[str, int] = {}
    for item in collections:
        name = item.get("data_collection") if isinstance(item, dict) else None
        n = item.get("event_count") if isinstance(item, dict) else None
        if not isinstance(name, str) or not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise DecodeError(
                "transaction END: each data_collections item needs data_collection and event_count",
                raw=raw,
            )
        counts[f"{source}.{name}"] = counts.get(f"{source}.{name}", 0) + n
    return TransactionEnd(source, tx, int(commit), tuple(sorted(counts.items())))


def _parse(message: Any, raw: str | None) -> Any:
    if message is None:
        return None
    if isinstance(message, Mapping):
        return dict(message)
    text = raw or ""
    if not text.strip():
        return None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DecodeError(f"not valid JSON: {exc}", raw=raw) from None
    except RecursionError:
        raise DecodeError("JSON nested too deeply to be a change event", raw=raw) from None
    if "\\ud" in text or "\\uD" in text:  # a surrogate escape: is it half of a pair?
        _refuse_lone_surrogates(doc, raw)
    return doc


def _refuse_lone_surrogates(node: Any, raw: str | None) -> None:
    """JSON allows ``"\\udc00"`` alone, but it is not text: no warehouse can store it."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise DecodeError(
                    f"a value holds a lone UTF-16 surrogate ({item!a}): not text", raw=raw
                ) from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


# --------------------------------------------------------------------------- positions and times


def _seq(connector: str | None, source: Mapping[str, Any], raw: str | None) -> str:
    if connector == "postgresql":
        sequence = source.get("sequence")
        if sequence:
            parts = _sequence_parts(sequence) if isinstance(sequence, str) else sequence
            if not isinstance(parts, list) or len(parts) != 2:
                raise DecodeError(
                    f"source.sequence is not [lastCommitLsn, lsn]: {sequence!r}", raw=raw
                )
            last_commit, lsn = parts
            if last_commit is None and str(source.get("snapshot", "false")) == "false":
                # The first transaction a fresh engine streams has no previous commit. Its own change
                # LSN orders it after the snapshot (0/...) and before the next transaction, whose
                # first section is this one's commit end.
                last_commit = lsn
            return pg_seq(last_commit, lsn)
        if source.get("lsn") is None:
            raise DecodeError("PostgreSQL event without source.sequence or source.lsn", raw=raw)
        # Pre-1.9 Debezium: no commit ordering available; the change LSN is the best we have.
        return pg_seq(source.get("lsn"), source.get("lsn"))
    if connector in ("mysql", "mariadb"):
        file, pos = source.get("file"), source.get("pos")
        if not file or pos is None:
            raise DecodeError("MySQL event without source.file/source.pos", raw=raw)
        return binlog_seq(file, int(pos), int(source.get("row") or 0))
    raise DecodeError(
        f"unsupported connector {connector!r} (expected postgresql, mysql or mariadb)", raw=raw
    )


def _sequence_parts(sequence: str) -> Any:
    """``'["123","456"]'`` -> [123, 456] without a JSON parser (every event has one); other forms
    (``null`` first, odd spacing) through ``json``."""
    if sequence.startswith('["') and sequence.endswith('"]'):
        first, sep, second = sequence[2:-2].partition('","')
        if sep and first.isdigit() and second.isdigit():
            return [int(first), int(second)]
    return json.loads(sequence)


def _commit_ts(source: Mapping[str, Any], doc: Mapping[str, Any], raw: str | None) -> int:
    if source.get("ts_us") is not None:
        micros = int(source["ts_us"])
    elif source.get("ts_ns") is not None:
        micros = int(source["ts_ns"]) // 1000
    elif source.get("ts_ms") is not None:
        micros = int(source["ts_ms"]) * 1000
    else:
        raise DecodeError("source block has no commit time (ts_us / ts_ms)", raw=raw)
    if not MIN_TIMESTAMP_US <= micros <= MAX_TIMESTAMP_US:
        # no warehouse, changelog partition or clock holds it: refused here, with its bytes,
        # before it reaches the changelog or the progress of the rest
        raise DecodeError(
            f"source commit time {micros} µs is not a time in years 1 to 9999", raw=raw
        )
    return micros


def _tx_id(connector: str | None, source: Mapping[str, Any], doc: Mapping[str, Any]) -> str | None:
    tx = doc.get("transaction")
    if connector == "postgresql":
        # with provide.transaction.metadata, Debezium's PostgreSQL transaction id is
        # "xid:<this change's LSN>" (measured: it differs between changes of one transaction), so
        # the transaction is its xid: source.txId, else the id's part before the colon
        if source.get("txId") is not None:
            return str(source["txId"])
        if isinstance(tx, dict) and tx.get("id"):
            return str(tx["id"]).split(":", 1)[0]
        return None
    if isinstance(tx, dict) and tx.get("id"):
        return str(tx["id"])
    value = (
        source.get("txId")
        if connector == "postgresql"
        else (source.get("gtid") or source.get("xid"))
    )
    return None if value is None else str(value)


# --------------------------------------------------------------------------- keys


def _key(
    op: Op,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    info: TableInfo,
    record_key: Any,
    raw: str | None,
) -> dict[str, Any]:
    image = before if op is Op.DELETE else after
    if record_key is not None:
        # a parsed key (a Mapping) needs no raw text: serialising it would cost a json.dumps
        key_text = None if isinstance(record_key, Mapping) else _raw_text(record_key)
        parsed = _parse(record_key, key_text)
        if isinstance(parsed, dict) and "payload" in parsed and "schema" in parsed:
            parsed = parsed["payload"]
        if isinstance(parsed, dict) and parsed:
            key = (
                {k: parsed[k] for k in info.primary_key if k in parsed} or dict(parsed)
                if info.primary_key
                else dict(parsed)
            )
            # the image holds the same values decoded with their types (a record key without a
            # schema carries a numeric key column as base64 text)
            if image is not None and all(k in image for k in key):
                return {k: image[k] for k in key}
            return key
    if not info.primary_key:
        raise DecodeError(
            f"no primary key known for {info.id}: set primary_key in the registry "
            "(or `cdc register` it from the live table)",
            raw=raw,
        )
    assert image is not None
    missing = [c for c in info.primary_key if c not in image]
    if missing:
        raise DecodeError(
            f"key column(s) {missing} of {info.id} are missing from the row image", raw=raw
        )
    return {c: image[c] for c in info.primary_key}


# --------------------------------------------------------------------------- values


def _field_schemas(schema: Mapping[str, Any] | None) -> dict[str, dict[str, Mapping[str, Any]]]:
    """{'before': {col: field schema}, 'after': {...}} from an envelope schema block."""
    out: dict[str, dict[str, Mapping[str, Any]]] = {}
    if not isinstance(schema, dict):
        return out
    for f in schema.get("fields") or []:
        if f.get("field") in ("before", "after") and isinstance(f.get("fields"), list):
            out[f["field"]] = {
                c["field"]: c for c in f["fields"] if isinstance(c, dict) and "field" in c
            }
    return out


def source_types_of(fields: Mapping[str, Mapping[str, Any]] | None) -> dict[str, str] | None:
    """Column -> type name (``ChangeEvent.source_types``) from a row's schema fields."""
    if not fields:
        return None
    out = {}
    for name, f in fields.items():
        logical = f.get("name")
        params = f.get("parameters") or {}
        t = logical or f.get("type", "")
        if logical == "org.apache.kafka.connect.data.Decimal" and "scale" in params:
            precision = params.get("connect.decimal.precision")
            t = f"{logical}(scale={params['scale']})"
            if precision is not None:
                t = f"{logical}(scale={params['scale']},precision={precision})"
        out[name] = t
    return out


def _convert_image(
    image: Any,
    fields: Mapping[str, Mapping[str, Any]] | None,
    info: TableInfo,
    raw: str | None,
    which: str,
) -> tuple[dict[str, Any] | None, list[str]]:
    if image is None:
        return None, []
    if not isinstance(image, dict):
        raise DecodeError(
            f"'{which}' must be an object or null, got {type(image).__name__}", raw=raw
        )
    out: dict[str, Any] = {}
    unavailable: list[str] = []
    declared = info.columns or {}
    for col, value in image.items():
        if _is_placeholder(value):
            unavailable.append(col)
            continue
        try:
            out[col] = convert_value(
                value, (fields or {}).get(col), declared.get(col), info.base64_decimals
            )
        except (ValueError, TypeError, ArithmeticError, binascii.Error) as exc:
            raise DecodeError(
                f"column {col!r} in '{which}': cannot decode {value!r}: {exc}", raw=raw
            ) from None
    return out, unavailable


def _is_placeholder(value: Any) -> bool:
    if isinstance(value, str):
        return value in (UNAVAILABLE_PLACEHOLDER, UNAVAILABLE_PLACEHOLDER_B64)
    if isinstance(value, list) and value:
        return all(isinstance(v, str) and v == UNAVAILABLE_PLACEHOLDER for v in value)
    return False


def convert_value(
    value: Any,
    field: Mapping[str, Any] | None,
    declared: str | None,
    base64_decimals: bool = False,
) -> Any:
    """One column value from its Debezium JSON form into our canonical form.

    ``base64_decimals``: without a value schema, a decimal column's text is base64 of the unscaled
    number (the source's Debezium runs ``decimal.handling.mode=precise`` with schemas off) rather
    than the number written out.
    """
    if value is None:
        return None
    if field and field.get("type") == "array" and isinstance(value, list):
        # element types travel in the array's schema (numeric[] -> VariableScaleDecimal structs)
        items = field.get("items") or {}
        return [convert_value(v, items, None) for v in value]
    if field and (field.get("name") in _LOGICAL_TYPES or not declared):
        return _convert_by_schema(value, field)
    if declared:
        return _convert_by_declared_type(value, declared, base64_decimals)
    if isinstance(value, dict) and set(value) == {"scale", "value"}:
        return _variable_scale_decimal(value)
    return value


_LOGICAL_TYPES = frozenset(
    {
        "org.apache.kafka.connect.data.Decimal",
        "io.debezium.data.VariableScaleDecimal",
        "io.debezium.time.Date",
        "org.apache.kafka.connect.data.Date",
        "io.debezium.time.Timestamp",
        "org.apache.kafka.connect.data.Timestamp",
        "io.debezium.time.MicroTimestamp",
        "io.debezium.time.NanoTimestamp",
        "io.debezium.time.Time",
        "org.apache.kafka.connect.data.Time",
        "io.debezium.time.MicroTime",
        "io.debezium.time.NanoTime",
    }
)


def _convert_by_schema(value: Any, field: Mapping[str, Any]) -> Any:
    name = field.get("name")
    params = field.get("parameters") or {}
    if name == "org.apache.kafka.connect.data.Decimal":
        if field.get("type") == "bytes":  # the schema says: base64 of the unscaled number
            return _bytes_to_decimal(value, int(params.get("scale", 0)))
        return _decimal_text(value)
    if name == "io.debezium.data.VariableScaleDecimal":
        return _variable_scale_decimal(value)
    if name in ("io.debezium.time.Date", "org.apache.kafka.connect.data.Date"):
        return (_EPOCH_DATE + dt.timedelta(days=int(value))).isoformat()
    if name in ("io.debezium.time.Timestamp", "org.apache.kafka.connect.data.Timestamp"):
        return _timestamp_text(int(value) * 1000)
    if name == "io.debezium.time.MicroTimestamp":
        return _timestamp_text(int(value))
    if name == "io.debezium.time.NanoTimestamp":
        return _timestamp_text(int(value) // 1000)
    if name in ("io.debezium.time.Time", "org.apache.kafka.connect.data.Time"):
        return _time_text(int(value) * 1000)
    if name == "io.debezium.time.MicroTime":
        return _time_text(int(value))
    if name == "io.debezium.time.NanoTime":
        return _time_text(int(value) // 1000)
    if field.get("type") == "double" and isinstance(value, str):
        return float(value)  # NaN / Infinity arrive as strings
    return value


def _convert_by_declared_type(value: Any, declared: str, base64_decimals: bool = False) -> Any:
    t = declared.strip().lower()
    if t.startswith(("numeric", "decimal", "dec", "money")):
        if isinstance(value, dict):
            return _variable_scale_decimal(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return Decimal(str(value))
        if isinstance(value, str) and base64_decimals:
            m = _DECIMAL_TYPE_RE.match(t)
            if m is None:
                raise ValueError(
                    f"base64 decimal for type {declared!r} without a scale; declare numeric(p,s) "
                    "or set decimal.handling.mode=string"
                )
            return _bytes_to_decimal(value, int(m.group(2) or 0))
        if isinstance(value, str):
            return _decimal_text(value)
        return value
    if isinstance(value, str) and t.startswith(("double", "float", "real")):
        return float(value)  # Debezium sends NaN and infinities of a double as text
    if isinstance(value, int) and not isinstance(value, bool):
        if t == "date":
            return (_EPOCH_DATE + dt.timedelta(days=value)).isoformat()
        if t.startswith(("timestamp", "datetime")) and "with time zone" not in t and "tz" not in t:
            # Debezium's adaptive precision: up to 3 fractional digits travel as milliseconds
            p = _TIME_PRECISION_RE.search(t)
            micros = (
                value * 1000
                if (p and int(p.group(1)) <= 3) or (t.startswith("datetime") and not p)
                else value
            )
            return _timestamp_text(micros)
        if t.startswith("time") and "with time zone" not in t:
            p = _TIME_PRECISION_RE.search(t)
            micros = value * 1000 if p and int(p.group(1)) <= 3 else value
            return _time_text(micros)
    return value


#: A decimal number written out (Debezium's ``decimal.handling.mode=string``), or one of the words
#: PostgreSQL has for a numeric that is not a number (the coercion refuses those with its reason).
_DECIMAL_TEXT_RE = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")
_NOT_A_NUMBER = {
    "nan": "NaN",
    "infinity": "Infinity",
    "+infinity": "Infinity",
    "-infinity": "-Infinity",
}


def _decimal_text(value: Any) -> Decimal:
    """A decimal column's text: the number written out, exactly; never guessed as base64."""
    if not isinstance(value, str):
        raise ValueError(f"expected a decimal number as text, got {type(value).__name__}")
    if _DECIMAL_TEXT_RE.match(value):
        return Decimal(value.strip())
    word = _NOT_A_NUMBER.get(value.strip().lower())
    if word is not None:
        return Decimal(word)
    raise ValueError(
        f"{value!r} is not a decimal number (when the source's Debezium sends decimals as "
        "base64 without value schemas, say so on the source: "
        "`debezium: {decimal.handling.mode: precise}`)"
    )


def _bytes_to_decimal(value: Any, scale: int) -> Decimal:
    if not isinstance(value, str):
        raise ValueError(f"expected base64 text for a decimal, got {type(value).__name__}")
    unscaled = int.from_bytes(base64.b64decode(value, validate=True), "big", signed=True)
    return Decimal(unscaled).scaleb(-scale)


def _variable_scale_decimal(value: Any) -> Decimal:
    if not isinstance(value, dict) or "scale" not in value or "value" not in value:
        raise ValueError("expected {'scale': n, 'value': base64} for a variable-scale decimal")
    return _bytes_to_decimal(value["value"], int(value["scale"]))


def _timestamp_text(micros: int) -> str:
    return (_EPOCH + dt.timedelta(microseconds=micros)).isoformat(timespec="microseconds")


_DAY_MICROS = 86_400_000_000


def _time_text(micros: int) -> str:
    """A time of day. A MySQL TIME is a duration (-838:59:59 to 838:59:59): one outside a day is
    refused, not wrapped around the clock into another time of day."""
    if not 0 <= micros < _DAY_MICROS:
        raise ValueError(
            f"TIME of {micros} µs is a duration outside one day; a time-of-day column cannot "
            "hold it (it would wrap into another time)"
        )
    t = (_EPOCH + dt.timedelta(microseconds=micros)).time()
    return t.isoformat(timespec="microseconds")


# --------------------------------------------------------------------------- encoding

#: The Debezium connector name for each registry source kind.
CONNECTORS = {"postgres": "postgresql", "mysql": "mysql"}


def encode_debezium(event: ChangeEvent, kind: str) -> str:
    """The Debezium JSON envelope (no schema block) of an event; ``decode_debezium`` inverts it.

    For events our native readers captured, so that every wire message is Debezium JSON whatever the
    engine. ``kind`` is the source kind (``postgres`` | ``mysql``). The shape is the one Debezium
    emits with ``decimal.handling.mode=string``: exact numerics as decimal text, times as ISO-8601
    text, bytes as base64; columns the source did not send carry the unavailable-value placeholder.
    The position travels as Debezium's: PostgreSQL ``source.sequence`` = [commit-ordering LSN,
    change LSN], MySQL ``file`` / ``pos`` / ``row``. The same event always gives the same text.
    """
    connector = CONNECTORS.get(kind)
    if connector is None:
        raise ValueError(f"unknown source kind {kind!r} (expected one of {sorted(CONNECTORS)})")
    try:
        source_name, schema_name, table_name = event.table.split(".", 2)
    except ValueError:
        raise ValueError(f"table id must be source.schema.table, got {event.table!r}") from None
    sections = parse_seq(event.seq)
    source: dict[str, Any] = {
        "version": "cdc-history",
        "connector": connector,
        "name": source_name,
        "ts_ms": event.commit_ts // 1000,
        "ts_us": event.commit_ts,
        "snapshot": "true" if event.op is Op.READ else "false",
        "table": table_name,
    }
    if connector == "postgresql":
        if len(sections) != 2:
            raise ValueError(
                f"a PostgreSQL seq has 2 sections (commit LSN / LSN), got {event.seq!r}"
            )
        source.update(
            schema=schema_name,
            sequence=json.dumps([str(sections[0]), str(sections[1])]),
            lsn=sections[1],
        )
        if event.tx_id is not None:  # the xid, a number as Debezium sends it; any other id as is
            tx = event.tx_id
            canonical = tx.isascii() and tx.isdigit() and str(int(tx)) == tx
            source["txId"] = int(tx) if canonical else tx
    else:
        if len(sections) != 3:
            raise ValueError(
                f"a MySQL seq has 3 sections (file / position / row), got {event.seq!r}"
            )
        source.update(
            db=schema_name, file=f"mysql-bin.{sections[0]:06d}", pos=sections[1], row=sections[2]
        )
    after = None if event.after is None else _encode_image(event.after)
    if after is not None:
        after.update(dict.fromkeys(event.unavailable, UNAVAILABLE_PLACEHOLDER))
    envelope = {
        "before": None if event.before is None else _encode_image(event.before),
        "after": after,
        "source": source,
        "transaction": None if event.tx_id is None else {"id": event.tx_id},
        "op": event.op.value,
        "ts_ms": event.commit_ts // 1000,
    }
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _encode_image(image: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for column, value in image.items():
        if isinstance(value, float) and not math.isfinite(value):
            # Debezium sends NaN and infinities of a double column as text.
            value = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        out[column] = json_value(value)
    return out

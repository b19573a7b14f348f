"""MySQL/MariaDB column values -> the canonical values Debezium's MySQL events decode to.

The binlog reader sees a row twice over: as PyMySQL values in the snapshot and as mysql-replication
values in the binlog. Both must become exactly what ``decode_debezium`` yields for the event
Debezium's MySQL connector would send (``decimal.handling.mode=precise``, adaptive time precision,
``binary.handling.mode=bytes``). Each column type has three parts, as in ``pgtypes``:

- ``parse``: a driver value (either driver) -> canonical value;
- ``schema``: the Debezium field schema of the column (for the envelope we render);
- ``wire``: canonical value -> the JSON value Debezium would have sent.

Times follow Debezium's MySQL rules: ``DATETIME`` has no time zone and travels as epoch milli/micro
seconds of its wall-clock value read as UTC (canonical: naive ISO text); ``TIMESTAMP`` is an instant,
sent as ISO text in UTC with a ``Z`` and the column's fraction digits. Both drivers hand us
``TIMESTAMP`` as a naive UTC datetime: mysql-replication converts with ``utcfromtimestamp`` and our
snapshot session runs with ``time_zone = '+00:00'``. Zero dates (``0000-00-00``) become null, as in
Debezium.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from functools import lru_cache
from typing import Any

from connectors.capture.wire import (
    EPOCH,
    days_since_epoch,
    decimal_bytes,
    field_schema,
    micros_since_epoch,
    millis_since_epoch,
)

Parse = Callable[[Any], Any]
Wire = Callable[[Any], Any]


@dataclass(frozen=True)
class ColumnSpec:
    """What decides how a column's values are typed, from ``information_schema`` or a table map."""

    data_type: str  # lower-case MySQL type name: int, decimal, datetime, varchar, enum, ...
    unsigned: bool = False
    precision: int | None = None  # decimal digits; bits of a bit(n)
    scale: int | None = None
    fsp: int = 0  # fractional seconds of datetime/timestamp/time
    labels: tuple[str, ...] = ()  # enum / set members in definition order
    binary: bool = False  # binary/varbinary/blob: bytes, not text
    length: int | None = None  # bytes of a fixed binary(n), whose values have exactly n


@dataclass(frozen=True)
class MyType:
    name: str
    parse: Parse
    schema: dict[str, Any]
    wire: Wire | None = None
    supported: bool = True
    exact: bool = False  # both drivers already hand over the canonical value: no parse needed


# --------------------------------------------------------------------------- parsers


def _identity(v: Any) -> Any:
    return v


def _int(v: Any) -> int:
    return int(v)


def _float32(v: Any) -> float:
    """The shortest decimal that is the same 32-bit float: the binlog's 1.100000023841858 and the
    snapshot's 1.1 both become 1.1, as Java prints the float Debezium sends. Of the decimals of
    that many digits, the nearest to the value (one past it rounds to another float: FLT_MAX's
    3.403e38 would be infinite)."""
    f = float(v)
    try:
        target = struct.pack("<f", f)
    except OverflowError as exc:
        raise ValueError(f"{f!r} is outside the range of a 32-bit FLOAT") from exc
    (value,) = struct.unpack("<f", target)
    if value == 0 or not math.isfinite(value):
        return value  # 0.0 / -0.0 keep their sign; inf and nan are no decimal
    exact = Decimal(value)
    for digits in range(1, 10):
        nearest = Decimal(f"{value:.{digits - 1}e}")
        step = Decimal(1).scaleb(exact.adjusted() - digits + 1)
        below = exact.quantize(step, ROUND_FLOOR)
        other = exact.quantize(step, ROUND_CEILING) if nearest <= below else below
        for candidate in (nearest, other):
            if _is_float32(float(candidate), target):
                return float(candidate)
    return value  # not reached: 9 digits tell every float32 apart


def _is_float32(candidate: float, target: bytes) -> bool:
    try:
        return struct.pack("<f", candidate) == target
    except OverflowError:  # past FLT_MAX by more than half a step: infinite as a float
        return False


def _decimal(v: Any) -> Decimal:
    return v if isinstance(v, Decimal) else Decimal(str(v))


def _text(v: Any) -> str:
    return v.decode("utf-8", errors="replace") if isinstance(v, bytes | bytearray) else str(v)


def _raw(v: Any) -> bytes:
    # mysql-replication hands an empty binary value over as '' (str)
    return v.encode("latin-1") if isinstance(v, str) else bytes(v)


def _bytes(v: Any) -> str:
    return base64.b64encode(_raw(v)).decode()


def _fixed_bytes(length: int) -> Parse:
    """A ``binary(n)`` holds exactly n bytes, padded with 0x00 on insert. The binlog drops the
    trailing 0x00 bytes (the row image stores it like a ``char(n)``, whose pad it strips), the
    snapshot keeps them: pad back to n, which changes nothing for a snapshot value."""

    def parse(v: Any) -> str:
        raw = _raw(v)
        if len(raw) > length:
            raise ValueError(f"{len(raw)} bytes in a binary({length}) column")
        return base64.b64encode(raw.ljust(length, b"\0")).decode()

    return parse


def _zero(v: Any) -> str | None:
    """PyMySQL hands back what no date can hold as text. MySQL's zero value ('0000-00-00',
    '0000-00-00 00:00:00') is null, as in Debezium; anything else ('0000-01-01', '2026-02-30' under
    a lax sql_mode) is refused, so the row is set aside rather than its value made null."""
    text = v.decode("ascii", "replace") if isinstance(v, bytes) else str(v)
    if text and not text.strip("0-:. "):
        return None
    raise ValueError(f"{text!r} is not a date any warehouse can hold (year 0 or no such day)")


def _date(v: Any) -> str | None:
    if isinstance(v, dt.date):
        return v.isoformat()
    return _zero(v)


def _datetime(v: Any) -> str | None:
    if isinstance(v, dt.datetime):
        return v.isoformat(timespec="microseconds")
    return _zero(v)


#: A TIMESTAMP of 0 seconds is MySQL's zero value in the binlog (the type starts at 00:00:01 UTC).
_ZERO_TIMESTAMP = dt.datetime(1970, 1, 1)


def _timestamp(fsp: int) -> Parse:
    def parse(v: Any) -> str | None:
        if not isinstance(v, dt.datetime):
            return _zero(v)
        if v.tzinfo is not None:
            v = v.astimezone(dt.UTC).replace(tzinfo=None)
        if v == _ZERO_TIMESTAMP:
            return None  # the zero value, null as in the snapshot (and in Debezium)
        text = v.strftime("%Y-%m-%dT%H:%M:%S")
        if fsp:
            text += "." + f"{v.microsecond:06d}"[:fsp]
        return text + "Z"

    return parse


def _time(v: Any) -> str:
    """A TIME as a time of day. A TIME is a duration (possibly negative or over 24 h): one outside
    a day is refused (the row is set aside), never wrapped into another time of day."""
    if isinstance(v, dt.timedelta):
        if not dt.timedelta(0) <= v < dt.timedelta(days=1):
            raise ValueError(
                f"TIME {v} is a duration outside one day; a time of day cannot hold it"
            )
        return (EPOCH + v).time().isoformat(timespec="microseconds")
    if isinstance(v, dt.time):
        return v.isoformat(timespec="microseconds")
    raise ValueError(f"not a TIME value: {v!r}")


def _wire_time(value: str) -> int:
    t = dt.time.fromisoformat(value)
    return ((t.hour * 60 + t.minute) * 60 + t.second) * 1_000_000 + t.microsecond


def _set(labels: tuple[str, ...]) -> Parse:
    def parse(v: Any) -> str:
        members = set(v.split(",")) if isinstance(v, str) else set(v)
        members.discard("")
        return ",".join(label for label in labels if label in members)

    return parse


def _bit_one(v: Any) -> bool:
    if isinstance(v, str):  # mysql-replication: '1' / '0'
        return v == "1"
    return int.from_bytes(bytes(v), "big") != 0


def _bits(nbits: int) -> Parse:
    """io.debezium.data.Bits: the value's bits as little-endian bytes (java.util.BitSet)."""
    length = (nbits + 7) // 8

    def parse(v: Any) -> str:
        n = int(v, 2) if isinstance(v, str) else int.from_bytes(bytes(v), "big")
        return base64.b64encode(n.to_bytes(length, "little")).decode()

    return parse


def _json(v: Any) -> str:
    """MariaDB's JSON is text already; MySQL's binary JSON arrives parsed (keys and strings as bytes):
    render it as MySQL prints JSON."""
    if isinstance(v, str):
        return v
    if isinstance(v, bytes | bytearray):
        return v.decode("utf-8", errors="replace")
    return json.dumps(_unbytes(v), ensure_ascii=False)


def _unbytes(v: Any) -> Any:
    if isinstance(v, bytes | bytearray):
        return v.decode("utf-8", errors="replace")
    if isinstance(v, dict):
        return {_unbytes(k): _unbytes(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_unbytes(x) for x in v]
    return v


# --------------------------------------------------------------------------- the type table

_INTS = {
    # (type, unsigned) -> Connect type; unsigned types widen (bigint.unsigned.handling.mode=long)
    ("tinyint", False): "int16",
    ("tinyint", True): "int16",
    ("smallint", False): "int16",
    ("smallint", True): "int32",
    ("mediumint", False): "int32",
    ("mediumint", True): "int32",
    ("int", False): "int32",
    ("int", True): "int64",
    ("bigint", False): "int64",
    ("bigint", True): "int64",
}
_TEXT = {"char", "varchar", "tinytext", "text", "mediumtext", "longtext"}
_BINARY = {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"}


@lru_cache(maxsize=1024)
def my_type(spec: ColumnSpec) -> MyType:
    """The rules for one column type; unknown types pass through as text (``supported=False``)."""
    t = spec.data_type
    s = field_schema
    if t == "integer":
        t = "int"
    if (t, spec.unsigned) in _INTS:
        return MyType(t, _int, s(_INTS[(t, spec.unsigned)]), exact=True)
    if t in ("decimal", "numeric"):
        precision, scale = spec.precision or 10, spec.scale or 0
        return MyType(
            f"decimal({precision},{scale})",
            _decimal,
            s(
                "bytes",
                "org.apache.kafka.connect.data.Decimal",
                scale=str(scale),
                **{"connect.decimal.precision": str(precision)},
            ),
            decimal_bytes,
        )
    if t == "float":
        return MyType(t, _float32, s("float"))
    if t in ("double", "real"):
        return MyType(t, float, s("double"))
    if t == "date":
        return MyType(t, _date, s("int32", "io.debezium.time.Date"), days_since_epoch)
    if t == "datetime":
        if spec.fsp <= 3:
            return MyType(
                t, _datetime, s("int64", "io.debezium.time.Timestamp"), millis_since_epoch
            )
        return MyType(
            t, _datetime, s("int64", "io.debezium.time.MicroTimestamp"), micros_since_epoch
        )
    if t == "timestamp":
        return MyType(t, _timestamp(spec.fsp), s("string", "io.debezium.time.ZonedTimestamp"))
    if t == "time":
        return MyType(t, _time, s("int64", "io.debezium.time.MicroTime"), _wire_time)
    if t == "year":
        return MyType(t, _int, s("int32", "io.debezium.time.Year"))
    if t == "json":
        return MyType(t, _json, s("string", "io.debezium.data.Json"))
    if t == "enum":
        return MyType(t, _text, s("string", "io.debezium.data.Enum", allowed=",".join(spec.labels)))
    if t == "set":
        return MyType(
            t,
            _set(spec.labels),
            s("string", "io.debezium.data.EnumSet", allowed=",".join(spec.labels)),
        )
    if t == "bit":
        nbits = spec.precision or 1
        if nbits == 1:
            return MyType(t, _bit_one, s("boolean"))
        return MyType(t, _bits(nbits), s("bytes", "io.debezium.data.Bits", length=str(nbits)))
    if t == "binary" and spec.length is not None:
        return MyType(t, _fixed_bytes(spec.length), s("bytes"))
    if t in _BINARY or (t in _TEXT and spec.binary):
        return MyType(t, _bytes, s("bytes"))
    if t in _TEXT:
        return MyType(t, _text, s("string"))
    return MyType(t, _text if not spec.binary else _bytes, s("string"), supported=False)


# --------------------------------------------------------------------------- specs from the two sources

_LABELS_RE = re.compile(r"'((?:[^']|'')*)'")


def spec_from_information_schema(
    data_type: str,
    column_type: str,
    numeric_precision: int | None,
    numeric_scale: int | None,
    datetime_precision: int | None,
    character_set: str | None,
    octet_length: int | None = None,
) -> ColumnSpec:
    """A column as ``information_schema.columns`` describes it (``octet_length``:
    ``character_octet_length``, the n of a ``binary(n)``)."""
    t = data_type.lower()
    ct = column_type.lower()
    labels: tuple[str, ...] = ()
    if t in ("enum", "set"):
        labels = tuple(m.replace("''", "'") for m in _LABELS_RE.findall(column_type))
    return ColumnSpec(
        data_type=t,
        unsigned="unsigned" in ct,
        precision=numeric_precision,
        scale=numeric_scale,
        fsp=datetime_precision or 0,
        labels=labels,
        binary=t in _BINARY or (t in _TEXT and character_set in (None, "binary")),
        length=octet_length if t == "binary" else None,
    )


# mysql-replication FIELD_TYPE codes -> MySQL type names
_FIELD_TYPES = {
    1: "tinyint",
    2: "smallint",
    3: "int",
    4: "float",
    5: "double",
    7: "timestamp",
    8: "bigint",
    9: "mediumint",
    10: "date",
    11: "time",
    12: "datetime",
    13: "year",
    15: "varchar",
    16: "bit",
    17: "timestamp",  # TIMESTAMP2
    18: "datetime",  # DATETIME2
    19: "time",  # TIME2
    245: "json",
    246: "decimal",
    247: "enum",
    248: "set",
    249: "blob",
    250: "blob",
    251: "blob",
    252: "blob",
    253: "varchar",
    254: "char",
    255: "geometry",
}


def spec_from_binlog(column: Any) -> ColumnSpec:
    """A column as a binlog table map describes it (a mysql-replication ``Column``, with
    ``binlog_row_metadata=FULL`` for names, signedness, charsets and enum/set members)."""
    code = int(column.type)
    t = _FIELD_TYPES.get(code, f"type {code}")
    charset = getattr(column, "character_set_name", None)
    binary = charset == "binary"
    if t == "blob" and not binary:
        t = "text"
    if t in ("varchar", "char") and binary:
        t = "varbinary" if t == "varchar" else "binary"
    labels: Iterable[str] = ()
    if t == "enum":
        labels = [x for x in (getattr(column, "enum_values", None) or [])[1:]]
    elif t == "set":
        labels = getattr(column, "set_values", None) or []
    return ColumnSpec(
        data_type=t,
        unsigned=bool(getattr(column, "unsigned", False)),
        precision=getattr(column, "precision", None)
        if t == "decimal"
        else (getattr(column, "bits", None) if t == "bit" else None),
        scale=getattr(column, "decimals", None) if t == "decimal" else None,
        fsp=int(getattr(column, "fsp", 0) or 0),
        labels=tuple(labels),
        binary=binary,
        # a binary(n) is a fixed-length string of the binary charset: n bytes (one per character)
        length=getattr(column, "max_length", None) if t == "binary" else None,
    )

"""Column types: source type names -> one warehouse type, rendered for DuckDB and BigQuery.

A source column type arrives in one of three forms:
- a source type name from the registry (``columns: {amount: "numeric(12,2)"}``), parsed with sqlglot
  in the source's own dialect (``postgres`` or ``mysql``);
- a Debezium schema type name from an event's schema block (``ChangeEvent.source_types``:
  ``int64``, ``io.debezium.time.ZonedTimestamp``, ``org.apache.kafka.connect.data.Decimal(scale=2)``);
- nothing at all, when events travel without a schema and the registry declares no types: then
  the first non-null value decides.

Each maps to a :class:`WarehouseType`, a small dialect-free description (a kind plus decimal
precision and scale). Mappings are tables, not branches, so that adding a type is one line. The
same module converts a decoded event value into the Python value the warehouse stores
(:func:`coerce_value`) and back into the JSON form the commands print (:func:`render_value`).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from sqlglot import exp
from sqlglot.errors import ParseError

UTC = dt.UTC
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)


class Kind(StrEnum):
    BOOL = "bool"
    INT64 = "int64"
    FLOAT64 = "float64"
    DECIMAL = "decimal"
    STRING = "string"
    BYTES = "bytes"
    DATE = "date"
    TIME = "time"
    DATETIME = "datetime"  # a wall-clock time without zone (PostgreSQL timestamp, MySQL datetime)
    TIMESTAMP = "timestamp"  # an instant, stored in UTC (timestamptz, MySQL timestamp)
    JSON = "json"
    NAME_LIST = "name_list"  # column names as text (the metadata column ``_unavailable``)


_DECIMAL_TEXT_RE = re.compile(r"^decimal\((\d+),(\d+)\)$")

#: The widest exact decimal both warehouses store natively (DuckDB DECIMAL(38), BigQuery NUMERIC).
MAX_DECIMAL_PRECISION = 38
#: An unbounded ``numeric`` becomes BigQuery's NUMERIC shape: 29 integer digits, 9 decimals.
UNBOUNDED_DECIMAL = (38, 9)


@dataclass(frozen=True, slots=True)
class WarehouseType:
    """One column type, independent of the warehouse dialect."""

    kind: Kind
    precision: int | None = None  # DECIMAL only
    scale: int | None = None  # DECIMAL only

    def __str__(self) -> str:
        if self.kind is Kind.DECIMAL:
            return f"decimal({self.precision},{self.scale})"
        return self.kind.value

    @classmethod
    def parse(cls, text: str) -> WarehouseType:
        """The inverse of ``str()``: ``decimal(12,2)``, ``string``, ``timestamp`` ..."""
        m = _DECIMAL_TEXT_RE.match(text)
        if m:
            return cls(Kind.DECIMAL, int(m.group(1)), int(m.group(2)))
        try:
            return cls(Kind(text))
        except ValueError:
            raise UnknownTypeError(f"not a warehouse type: {text!r}") from None

    def to_sql(self, dialect: str) -> exp.DataType:
        """The column type as a sqlglot DataType for ``dialect`` (``duckdb`` or ``bigquery``)."""
        if self.kind is Kind.DECIMAL:
            p, s = self.precision or UNBOUNDED_DECIMAL[0], self.scale or 0
            name = "DECIMAL"
            if dialect == "bigquery" and (s > 9 or p > s + 29):
                name = "BIGNUMERIC"  # NUMERIC(P,S) needs S <= 9 and P <= S + 29
            return exp.DataType.build(f"{name}({p}, {s})", dialect=dialect)
        return exp.DataType.build(_SQL_NAMES[dialect][self.kind], dialect=dialect)

    def sql(self, dialect: str) -> str:
        return self.to_sql(dialect).sql(dialect=dialect)


def decimal(precision: int, scale: int) -> WarehouseType:
    return WarehouseType(Kind.DECIMAL, precision, scale)


BOOL = WarehouseType(Kind.BOOL)
INT64 = WarehouseType(Kind.INT64)
FLOAT64 = WarehouseType(Kind.FLOAT64)
STRING = WarehouseType(Kind.STRING)
BYTES = WarehouseType(Kind.BYTES)
DATE = WarehouseType(Kind.DATE)
TIME = WarehouseType(Kind.TIME)
DATETIME = WarehouseType(Kind.DATETIME)
TIMESTAMP = WarehouseType(Kind.TIMESTAMP)
JSON = WarehouseType(Kind.JSON)
NAME_LIST = WarehouseType(Kind.NAME_LIST)

_SQL_NAMES: dict[str, dict[Kind, str]] = {
    "duckdb": {
        Kind.BOOL: "BOOLEAN",
        Kind.INT64: "BIGINT",
        Kind.FLOAT64: "DOUBLE",
        Kind.STRING: "VARCHAR",
        Kind.BYTES: "BLOB",
        Kind.DATE: "DATE",
        Kind.TIME: "TIME",
        Kind.DATETIME: "TIMESTAMP",
        Kind.TIMESTAMP: "TIMESTAMPTZ",
        Kind.JSON: "JSON",
        Kind.NAME_LIST: "VARCHAR",
    },
    "bigquery": {
        Kind.BOOL: "BOOL",
        Kind.INT64: "INT64",
        Kind.FLOAT64: "FLOAT64",
        Kind.STRING: "STRING",
        Kind.BYTES: "BYTES",
        Kind.DATE: "DATE",
        Kind.TIME: "TIME",
        Kind.DATETIME: "DATETIME",
        Kind.TIMESTAMP: "TIMESTAMP",
        Kind.JSON: "JSON",
        Kind.NAME_LIST: "STRING",
    },
}

# --------------------------------------------------------------------------- source type names

_T = exp.DataType.Type

#: sqlglot's parsed type -> warehouse type. Types not listed fall back to STRING (text is exact).
_BY_SQLGLOT_TYPE: dict[Any, WarehouseType] = {
    **dict.fromkeys([_T.BOOLEAN], BOOL),
    **dict.fromkeys(
        [
            _T.TINYINT,
            _T.UTINYINT,
            _T.SMALLINT,
            _T.USMALLINT,
            _T.MEDIUMINT,
            _T.UMEDIUMINT,
            _T.INT,
            _T.UINT,
            _T.BIGINT,
            _T.SERIAL,
            _T.SMALLSERIAL,
            _T.BIGSERIAL,
            _T.YEAR,
        ],
        INT64,
    ),
    _T.UBIGINT: decimal(20, 0),  # does not fit a signed 64-bit integer
    **dict.fromkeys([_T.FLOAT, _T.DOUBLE], FLOAT64),
    _T.MONEY: decimal(19, 2),  # Debezium's default money scale
    _T.SMALLMONEY: decimal(10, 4),
    **dict.fromkeys(
        [
            _T.BINARY,
            _T.VARBINARY,
            _T.BLOB,
            _T.TINYBLOB,
            _T.MEDIUMBLOB,
            _T.LONGBLOB,
            _T.IMAGE,
        ],
        BYTES,
    ),
    **dict.fromkeys([_T.DATE, _T.DATE32], DATE),
    _T.TIME: TIME,
    **dict.fromkeys(
        [_T.TIMESTAMP, _T.DATETIME, _T.DATETIME2, _T.DATETIME64, _T.SMALLDATETIME], DATETIME
    ),
    **dict.fromkeys([_T.TIMESTAMP_S, _T.TIMESTAMP_MS, _T.TIMESTAMP_NS, _T.TIMESTAMPNTZ], DATETIME),
    **dict.fromkeys([_T.TIMESTAMPTZ, _T.TIMESTAMPLTZ], TIMESTAMP),
    **dict.fromkeys([_T.JSON, _T.JSONB, _T.ARRAY, _T.STRUCT, _T.MAP], JSON),
}
_DECIMAL_TYPES = frozenset({_T.DECIMAL, _T.UDECIMAL, _T.BIGDECIMAL, _T.DECIMAL32, _T.DECIMAL64})
#: In MySQL ``timestamp`` is an instant (stored in UTC; Debezium sends a ZonedTimestamp).
_DIALECT_OVERRIDES: dict[tuple[str, Any], WarehouseType] = {
    ("mysql", _T.TIMESTAMP): TIMESTAMP,
}
_SOURCE_DIALECTS = {"postgres": "postgres", "mysql": "mysql"}
_BIT_RE = re.compile(r"^\s*bit\s*(?:\(\s*(\d+)\s*\))?\s*$", re.I)
_USER_TYPE_RE = re.compile(r'^"?[A-Za-z_][\w$]*"?(\."?[A-Za-z_][\w$]*"?)?(\[\])?$')
_TINYINT1_RE = re.compile(r"^\s*(?:tinyint|bool|boolean)\s*\(\s*1\s*\)", re.I)


class UnknownTypeError(ValueError):
    """A source type name that cannot be parsed."""


@functools.lru_cache(maxsize=4096)
def map_source_type(type_name: str, source_kind: str = "postgres") -> WarehouseType:
    """A registry type name (``numeric(12,2)``, ``datetime(6)``) -> warehouse type.

    ``source_kind`` is the registry's ``kind`` (``postgres`` or ``mysql``): the name is parsed in
    that dialect, because the same word can mean different things (MySQL ``timestamp`` is an
    instant, PostgreSQL ``timestamp`` is a wall-clock time).
    """
    text = type_name.strip()
    bit = _BIT_RE.match(text)
    if bit:  # bit(1) is a flag; wider bit strings travel as bytes
        return BOOL if int(bit.group(1) or 1) == 1 else BYTES
    if source_kind == "mysql" and _TINYINT1_RE.match(text):
        return INT64  # Debezium sends MySQL tinyint(1) as a small integer, not a boolean
    dialect = _SOURCE_DIALECTS.get(source_kind, "postgres")
    try:
        parsed = exp.DataType.build(text, dialect=dialect)
    except (ParseError, ValueError) as exc:
        if _USER_TYPE_RE.match(text):
            _refuse_a_typo(text, source_kind)
            return STRING  # an enum, domain or other user-defined type: its text is exact
        base = text.split("(", 1)[0].strip().lower()
        close = _close_builtin(base, source_kind)
        hint = f" (did you mean {close!r}?)" if close and close != base else ""
        raise UnknownTypeError(
            f"cannot parse source type {type_name!r} as a {source_kind} type{hint}: {exc}"
        ) from None
    t = parsed.this
    if t in _DECIMAL_TYPES:
        return _decimal_of(parsed)
    override = _DIALECT_OVERRIDES.get((dialect, t))
    if override is not None:
        return override
    return _BY_SQLGLOT_TYPE.get(t, STRING)


#: The built-in type names of each source, to tell a misspelt one (``bigitn``) from the name of a
#: user-defined type (an enum, a domain), which is stored as its text.
BUILTIN_TYPE_NAMES = {
    "postgres": [
        "smallint",
        "integer",
        "int",
        "bigint",
        "int2",
        "int4",
        "int8",
        "smallserial",
        "serial",
        "bigserial",
        "real",
        "float4",
        "float8",
        "numeric",
        "decimal",
        "money",
        "text",
        "varchar",
        "char",
        "character",
        "bpchar",
        "name",
        "citext",
        "bytea",
        "boolean",
        "bool",
        "date",
        "time",
        "timetz",
        "timestamp",
        "timestamptz",
        "interval",
        "uuid",
        "json",
        "jsonb",
        "xml",
        "inet",
        "cidr",
        "macaddr",
        "macaddr8",
        "bit",
        "varbit",
        "tsvector",
        "tsquery",
        "point",
        "line",
        "box",
        "path",
        "polygon",
        "circle",
        "oid",
    ],
    "mysql": [
        "tinyint",
        "smallint",
        "mediumint",
        "int",
        "integer",
        "bigint",
        "decimal",
        "numeric",
        "dec",
        "fixed",
        "float",
        "double",
        "real",
        "bit",
        "bool",
        "boolean",
        "char",
        "varchar",
        "binary",
        "varbinary",
        "tinytext",
        "text",
        "mediumtext",
        "longtext",
        "tinyblob",
        "blob",
        "mediumblob",
        "longblob",
        "enum",
        "set",
        "date",
        "time",
        "datetime",
        "timestamp",
        "year",
        "json",
        "geometry",
        "point",
        "linestring",
        "polygon",
    ],
}


def _close_builtin(name: str, source_kind: str) -> str | None:
    import difflib

    names = BUILTIN_TYPE_NAMES.get(source_kind, BUILTIN_TYPE_NAMES["postgres"])
    close = difflib.get_close_matches(name.strip().lower(), names, n=1, cutoff=0.8)
    return close[0] if close else None


def _refuse_a_typo(text: str, source_kind: str) -> None:
    """An unquoted name one letter or two from a built-in type is a typo, not a user type."""
    if text.startswith('"'):
        return  # quoted: the user says it is a type of their own
    close = _close_builtin(text, source_kind)
    if close is not None and close != text.lower():
        raise UnknownTypeError(
            f"{text!r} is not a {source_kind} type; did you mean {close!r}? (a type of your own, "
            f"an enum or a domain, is stored as text: quote its name, '\"{text}\"', to say so)"
        )


def _decimal_of(parsed: exp.DataType) -> WarehouseType:
    params = [int(p.this.name) for p in parsed.expressions if isinstance(p.this, exp.Literal)]
    if not params:
        return decimal(*UNBOUNDED_DECIMAL)
    precision = params[0]
    scale = params[1] if len(params) > 1 else 0
    if precision > MAX_DECIMAL_PRECISION:
        return STRING  # wider than either warehouse's exact decimal: keep the exact text
    return decimal(precision, scale)


# --------------------------------------------------------------------------- Debezium schema types

#: Debezium / Kafka Connect schema type names (logical name, else primitive type) -> warehouse type.
_BY_DEBEZIUM_NAME: dict[str, WarehouseType] = {
    "boolean": BOOL,
    **dict.fromkeys(["int8", "int16", "int32", "int64"], INT64),
    **dict.fromkeys(["float32", "float64"], FLOAT64),
    "string": STRING,
    "bytes": BYTES,
    "io.debezium.data.VariableScaleDecimal": decimal(*UNBOUNDED_DECIMAL),
    **dict.fromkeys(["io.debezium.time.Date", "org.apache.kafka.connect.data.Date"], DATE),
    **dict.fromkeys(
        [
            "io.debezium.time.Time",
            "io.debezium.time.MicroTime",
            "io.debezium.time.NanoTime",
            "org.apache.kafka.connect.data.Time",
        ],
        TIME,
    ),
    **dict.fromkeys(
        [
            "io.debezium.time.Timestamp",
            "io.debezium.time.MicroTimestamp",
            "io.debezium.time.NanoTimestamp",
            "org.apache.kafka.connect.data.Timestamp",
        ],
        DATETIME,
    ),
    "io.debezium.time.ZonedTimestamp": TIMESTAMP,
    "io.debezium.time.Year": INT64,
    "io.debezium.time.MicroDuration": INT64,
    "io.debezium.data.Json": JSON,
    "io.debezium.data.Bits": BYTES,
    **dict.fromkeys(
        [
            "io.debezium.data.Uuid",
            "io.debezium.data.Enum",
            "io.debezium.data.EnumSet",
            "io.debezium.data.Xml",
            "io.debezium.time.ZonedTime",
            "io.debezium.time.Interval",
            "io.debezium.data.Ltree",
        ],
        STRING,
    ),
    **dict.fromkeys(
        ["io.debezium.data.geometry.Geometry", "io.debezium.data.geometry.Point"], JSON
    ),
}
_CONNECT_DECIMAL_RE = re.compile(r"^org\.apache\.kafka\.connect\.data\.Decimal\((.*)\)$")


def map_debezium_type(type_name: str) -> WarehouseType:
    """A Debezium schema type name (as ``ChangeEvent.source_types`` holds it) -> warehouse type."""
    m = _CONNECT_DECIMAL_RE.match(type_name)
    if m:
        params = dict(p.split("=", 1) for p in m.group(1).split(",") if "=" in p)
        scale = int(params.get("scale", 0))
        precision = int(params.get("precision", MAX_DECIMAL_PRECISION))
        return STRING if precision > MAX_DECIMAL_PRECISION else decimal(precision, scale)
    if type_name == "org.apache.kafka.connect.data.Decimal":
        return decimal(*UNBOUNDED_DECIMAL)
    return _BY_DEBEZIUM_NAME.get(type_name, STRING)


def infer_type(value: Any) -> WarehouseType | None:
    """The type of a decoded value when nothing declares one; None for a null (decide later)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return INT64
    if isinstance(value, float):
        return FLOAT64
    if isinstance(value, Decimal):
        return decimal(*UNBOUNDED_DECIMAL)
    if isinstance(value, dict | list):
        return JSON
    if isinstance(value, bytes | bytearray):
        return BYTES
    return STRING


# --------------------------------------------------------------------------- widening


def is_widening(old: WarehouseType, new: WarehouseType) -> bool:
    """True when every value of ``old`` is exactly representable in ``new`` (or they are equal).

    The warehouses already store every integer width as one 64-bit type and every string length as
    one string type, so most source-side widenings (int -> bigint, varchar(32) -> text) are no
    change at all here. What remains: a decimal growing in integer digits or in scale, and an
    integer moving into a decimal with room for 19 integer digits.
    """
    if old == new:
        return True
    if new.kind is Kind.DECIMAL:
        p2, s2 = new.precision or 0, new.scale or 0
        if old.kind is Kind.DECIMAL:
            p1, s1 = old.precision or 0, old.scale or 0
            return s2 >= s1 and p2 - s2 >= p1 - s1
        if old.kind is Kind.INT64:
            return p2 - s2 >= 19
    return False


def wider_of(a: WarehouseType, b: WarehouseType) -> WarehouseType | None:
    """The type that holds both, when one is a widening of the other; None when neither is."""
    if is_widening(a, b):
        return b
    if is_widening(b, a):
        return a
    return None


# --------------------------------------------------------------------------- values


class ValueCoercionError(ValueError):
    """A decoded value does not fit its column's warehouse type."""


def coerce_value(value: Any, wtype: WarehouseType) -> Any:
    """A decoded event value (JSON-ish, ``Decimal``, ISO-8601 text) -> the Python value stored.

    DECIMAL -> ``Decimal`` at the column's scale; DATE/TIME -> ``date``/``time``; DATETIME -> naive
    ``datetime``; TIMESTAMP -> UTC-aware ``datetime``; BYTES -> ``bytes``; JSON -> compact JSON text.
    Raises :class:`ValueCoercionError` naming what was expected.
    """
    if value is None:
        return None
    try:
        return _COERCE[wtype.kind](value, wtype)
    except ValueCoercionError:
        raise
    except (ValueError, TypeError, ArithmeticError, binascii.Error, OverflowError) as exc:
        raise ValueCoercionError(f"cannot store {value!r} as {wtype}: {exc}") from None


def _to_bool(value: Any, _: WarehouseType) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "t", "f", "1", "0"):
        return value.lower() in ("true", "t", "1")
    raise ValueCoercionError(f"cannot store {value!r} as bool")


def _to_int(value: Any, _: WarehouseType) -> int:
    if isinstance(value, bool):
        raise ValueCoercionError(f"cannot store {value!r} as int64")
    if isinstance(value, int):
        out = value
    elif isinstance(value, float | Decimal):
        if value != int(value):
            raise ValueCoercionError(f"cannot store {value!r} as int64 (has a fraction)")
        out = int(value)
    elif isinstance(value, str):
        out = int(value.strip())
    else:
        raise ValueCoercionError(f"cannot store {value!r} as int64")
    if not -(1 << 63) <= out < (1 << 63):
        raise ValueCoercionError(f"{value!r} does not fit int64")
    return out


def _to_float(value: Any, _: WarehouseType) -> float:
    if isinstance(value, bool):
        raise ValueCoercionError(f"cannot store {value!r} as float64")
    if isinstance(value, int | float | Decimal | str):
        return float(value)
    raise ValueCoercionError(f"cannot store {value!r} as float64")


def _to_decimal(value: Any, wtype: WarehouseType) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise ValueCoercionError(f"cannot store {value!r} as {wtype}")
    try:
        d = Decimal(str(value).strip()) if not isinstance(value, Decimal) else value
    except InvalidOperation:
        raise ValueCoercionError(f"cannot store {value!r} as {wtype}: not a number") from None
    if not d.is_finite():
        raise ValueCoercionError(f"cannot store {value!r} as {wtype}: not a finite number")
    precision, scale = wtype.precision or 38, wtype.scale or 0
    quantized = d.quantize(Decimal(1).scaleb(-scale))
    if quantized != d:
        raise ValueCoercionError(f"{value!r} has more than {scale} decimal places for {wtype}")
    digits = len(quantized.as_tuple().digits) if quantized else 0
    if max(digits, scale) - scale > precision - scale:
        raise ValueCoercionError(
            f"{value!r} has more than {precision - scale} integer digits for {wtype}"
        )
    return quantized


def _to_string(value: Any, _: WarehouseType) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise ValueCoercionError(f"cannot store {value!r} as string")


def _to_bytes(value: Any, _: WarehouseType) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return base64.b64decode(value, validate=True)
    raise ValueCoercionError(f"cannot store {value!r} as bytes (expected base64 text)")


def _to_date(value: Any, _: WarehouseType) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return dt.date(1970, 1, 1) + dt.timedelta(days=value)
    if isinstance(value, str):
        return dt.date.fromisoformat(value.strip()[:10])
    raise ValueCoercionError(f"cannot store {value!r} as date")


def _to_time(value: Any, _: WarehouseType) -> dt.time:
    if isinstance(value, dt.time):
        return value.replace(tzinfo=None)
    if isinstance(value, str):
        text = value.strip().removesuffix("Z")
        return dt.time.fromisoformat(text).replace(tzinfo=None)
    raise ValueCoercionError(f"cannot store {value!r} as time")


def _parse_datetime(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return (_EPOCH + dt.timedelta(microseconds=value)).replace(tzinfo=None)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        return dt.datetime.fromisoformat(text)
    raise ValueCoercionError(f"cannot store {value!r} as a timestamp")


def _to_datetime(value: Any, _: WarehouseType) -> dt.datetime:
    d = _parse_datetime(value)
    return d.astimezone(UTC).replace(tzinfo=None) if d.tzinfo else d


def _to_timestamp(value: Any, _: WarehouseType) -> dt.datetime:
    d = _parse_datetime(value)
    return d.astimezone(UTC) if d.tzinfo else d.replace(tzinfo=UTC)


def _to_json(value: Any, _: WarehouseType) -> str:
    parsed = json.loads(value) if isinstance(value, str) else value
    return json.dumps(parsed, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value) if value != value.to_integral_value() else int(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _to_name_list(value: Any, _: WarehouseType) -> str | None:
    return value if isinstance(value, str) else encode_names(value)


_COERCE = {
    Kind.BOOL: _to_bool,
    Kind.INT64: _to_int,
    Kind.FLOAT64: _to_float,
    Kind.DECIMAL: _to_decimal,
    Kind.STRING: _to_string,
    Kind.BYTES: _to_bytes,
    Kind.DATE: _to_date,
    Kind.TIME: _to_time,
    Kind.DATETIME: _to_datetime,
    Kind.TIMESTAMP: _to_timestamp,
    Kind.JSON: _to_json,
    Kind.NAME_LIST: _to_name_list,
}


# --------------------------------------------------------------------------- printing


def render_value(value: Any, wtype: WarehouseType) -> Any:
    """A stored value (as either warehouse returns it) -> its JSON form for ``cdc history``.

    Timestamps are ISO-8601 UTC with microseconds and a ``Z``; wall-clock datetimes the same
    without the ``Z``; decimals are strings (exact); bytes are base64; JSON is the parsed value.
    Warehouses return slightly different Python types (a JSON column comes back as text from DuckDB
    and as a dict from BigQuery), so this also normalises them.
    """
    kind = wtype.kind
    if kind is Kind.NAME_LIST:
        return decode_names(value) if not isinstance(value, list) else sorted(value)
    if value is None:
        return None
    if kind is Kind.TIMESTAMP:
        return format_timestamp(_to_timestamp(value, wtype))
    if kind is Kind.DATETIME:
        return _to_datetime(value, wtype).isoformat(timespec="microseconds")
    if kind is Kind.DATE:
        return _to_date(value, wtype).isoformat()
    if kind is Kind.TIME:
        return _to_time(value, wtype).isoformat(timespec="microseconds")
    if kind is Kind.DECIMAL:
        return format(_to_decimal(value, wtype), "f")
    if kind is Kind.BYTES:
        return base64.b64encode(_to_bytes(value, wtype)).decode()
    if kind is Kind.JSON:
        return json.loads(value) if isinstance(value, str) else value
    if kind is Kind.FLOAT64:
        f = float(value)
        return f if math.isfinite(f) else str(f)  # NaN/Infinity are not JSON
    return value


def format_timestamp(value: dt.datetime) -> str:
    """ISO-8601 in UTC with microseconds: ``2026-11-15T12:00:00.000000Z``."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(timespec="microseconds") + "Z"


def micros_to_datetime(micros: int) -> dt.datetime:
    """Microseconds since the epoch -> UTC-aware datetime (commit times)."""
    return _EPOCH + dt.timedelta(microseconds=micros)


def warehouse_type_from_sql(type_text: str, dialect: str) -> WarehouseType:
    """A column type as a warehouse reports it (``DECIMAL(12,2)``, ``TIMESTAMP WITH TIME ZONE``,
    ``ARRAY<STRING>``) -> warehouse type; the inverse of :meth:`WarehouseType.to_sql`."""
    parsed = exp.DataType.build(type_text, dialect=dialect, udt=True)
    if parsed.this in _DECIMAL_TYPES or parsed.this is _T.BIGDECIMAL:
        return _decimal_of(parsed) if parsed.expressions else decimal(*UNBOUNDED_DECIMAL)
    for kind, name in _SQL_NAMES[dialect].items():
        if exp.DataType.build(name, dialect=dialect).this is parsed.this:
            return WarehouseType(kind)
    if parsed.this in (_T.TEXT, _T.VARCHAR, _T.CHAR):
        return STRING
    raise UnknownTypeError(f"unexpected {dialect} column type {type_text!r}")


# --------------------------------------------------------------------------- name lists


def name_token(name: str) -> str:
    """A column name as it appears in a name list: ``,`` and ``%`` percent-encoded."""
    return name.replace("%", "%25").replace(",", "%2C")


def encode_names(names: Iterable[str]) -> str | None:
    """Column names -> ``,a,b,`` (sorted; None for none), so that a plain substring test for
    ``,<token>,`` is an exact membership test in any SQL dialect."""
    tokens = sorted({name_token(n) for n in names})
    return f",{','.join(tokens)}," if tokens else None


def decode_names(text: str | None) -> list[str]:
    """The inverse of :func:`encode_names`."""
    if not text:
        return []
    return [t.replace("%2C", ",").replace("%25", "%") for t in text.strip(",").split(",") if t]

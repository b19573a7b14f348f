"""PostgreSQL text values (pgoutput, COPY) -> the canonical values Debezium's events decode to.

The native pgoutput reader must produce, for the same row, exactly the image ``decode_debezium``
produces from the Debezium connector's event (``decimal.handling.mode=precise``, adaptive time
precision, schemas on). Each supported type therefore has three parts:

- ``parse``: PostgreSQL's text output (session ``TimeZone=UTC``, ``DateStyle=ISO``,
  ``IntervalStyle=postgres``) -> canonical value (what the decoder yields);
- ``schema``: the Debezium field schema of the column (for the envelope we render);
- ``wire``: canonical value -> the JSON value Debezium would have sent.

Measured against Debezium 3.6 on this machine (see tests/integration/test_capture_differential.py).
Types whose output text is the value, exactly and whatever the session (``xml``, ``tsvector``,
``tsquery``, ranges and multiranges, geometric types printed with ``extra_float_digits=1``,
``pg_lsn``, snapshots, ``tid``, ``xid``, ``jsonpath``), are that text (:data:`TEXT_TYPES`); Debezium
sends the same text for ``xml``, ``tsvector`` and ranges and leaves the others out of its events
(``cdc register`` refuses them for engine debezium). Types without a rule here (composites,
extension types, ``reg*``) pass through as PostgreSQL text, marked unsupported so the capture can
warn once per column.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from connectors.capture.wire import days_since_epoch as _wire_date
from connectors.capture.wire import decimal_bytes as _decimal_bytes
from connectors.capture.wire import field_schema as _s
from connectors.capture.wire import micros_of_day as _wire_micro_time
from connectors.capture.wire import micros_since_epoch as _wire_micro_timestamp
from connectors.capture.wire import millis_of_day as _wire_milli_time
from connectors.capture.wire import millis_since_epoch as _wire_milli_timestamp

Parse = Callable[[str], Any]
Wire = Callable[[Any], Any]

_DAYS_PER_MONTH_AVG = 30.4375  # io.debezium.time.MicroDuration.DAYS_PER_MONTH_AVG


@dataclass(frozen=True)
class PgType:
    """How one column type is parsed, described and rendered."""

    name: str
    parse: Parse
    schema: dict[str, Any]
    wire: Wire | None = None  # None: the canonical value is the wire value
    supported: bool = True
    items: PgType | None = field(default=None, repr=False)


def _identity(v: Any) -> Any:
    return v


# --------------------------------------------------------------------------- parsers


def _bool(text: str) -> bool:
    return text == "t"


def _float(text: str) -> float:
    return float(text)


def _numeric_fixed(text: str) -> Decimal:
    # numeric(p,s) keeps the column's scale: PostgreSQL already prints it that way. NaN and
    # +/-Infinity stay what they are (Debezium's precise mode makes them null, silently): no
    # envelope can carry them, so the change is set aside as unreadable with its reason.
    return _finite(Decimal(text), text)


def _finite(value: Decimal, text: str) -> Decimal:
    if not value.is_finite():
        raise ValueError(f"numeric {text} is not a number any warehouse decimal can hold")
    return value


def _numeric_variable(text: str) -> Decimal | None:
    """Unconstrained numeric: Debezium strips trailing fraction zeros (3.14159000 -> 3.14159) but
    keeps integers at scale 0 (1.2E+21 stays 1200000000000000000000); NaN and infinities are
    refused (the change is set aside), never made null."""
    d = _finite(Decimal(text), text)
    if "." in text:
        d = d.normalize()
        if d.as_tuple().exponent > 0:  # type: ignore[operator]
            d = d.quantize(Decimal(1))
    return d


def _money(text: str) -> Decimal:
    neg = text.startswith("-") or text.startswith("(")
    digits = re.sub(r"[^0-9.]", "", text)
    d = Decimal(digits)
    return -d if neg else d


def _bytea(text: str) -> str:
    if text.startswith("\\x"):
        raw = bytes.fromhex(text[2:])
    else:  # escape format (bytea_output=escape)
        raw = text.encode("latin-1").decode("unicode_escape").encode("latin-1")
    return base64.b64encode(raw).decode()


def _pad_fraction(clock: str, width: int) -> str:
    """'10:11:12.5' -> '10:11:12.500000' (width 6); width 0 drops the fraction."""
    main, _, frac = clock.partition(".")
    if width == 0:
        return main
    return f"{main}.{(frac + '000000')[:width]}"


def _time(text: str) -> str:
    return _pad_fraction(text, 6)


def _timestamp(text: str) -> str:
    if len(text) < 19 or text[4] != "-" or text.endswith(" BC"):
        return _timestamp_slow(text)
    return text[:10] + "T" + _pad_fraction(text[11:], 6)


def _timestamp_slow(text: str) -> str:
    if text in ("infinity", "-infinity"):
        return text
    raise ValueError(f"unsupported timestamp {text!r}")


def _timestamptz(width: int) -> Parse:
    def parse(text: str) -> str:
        # TimeZone=UTC on our sessions: '2024-02-29 08:11:12.123+00'
        if not text.endswith("+00") or len(text) < 22 or text[4] != "-":
            return _timestamptz_slow(text, width)
        return text[:10] + "T" + _pad_fraction(text[11:-3], width) + "Z"

    return parse


def _timestamptz_slow(text: str, width: int) -> str:
    if text in ("infinity", "-infinity"):
        return text
    m = re.match(
        r"^(\d{4,})-(\d\d)-(\d\d) (\d\d:\d\d:\d\d(?:\.\d+)?)([+-]\d\d(?::?\d\d){0,2})$", text
    )
    if not m:
        raise ValueError(f"unsupported timestamptz {text!r}")
    moment = dt.datetime.fromisoformat(
        f"{m.group(1)}-{m.group(2)}-{m.group(3)}T{_pad_fraction(m.group(4), 6)}{_offset(m.group(5))}"
    ).astimezone(dt.UTC)
    clock = moment.strftime("%H:%M:%S") + f".{moment.microsecond:06d}"
    return moment.strftime("%Y-%m-%d") + "T" + _pad_fraction(clock, width) + "Z"


def _offset(text: str) -> str:
    sign, rest = text[0], text[1:].replace(":", "")
    rest = (rest + "0000")[:6] if len(rest) > 4 else (rest + "00")[:4]
    return f"{sign}{rest[:2]}:{rest[2:4]}" + (f":{rest[4:6]}" if len(rest) > 4 else "")


def _timetz(text: str) -> str:
    """'10:11:12.5+02' -> '08:11:12.5Z': shifted to UTC, fraction as PostgreSQL printed it."""
    m = re.match(r"^(\d\d):(\d\d):(\d\d)(\.\d+)?([+-]\d\d(?::?\d\d){0,2})$", text)
    if not m:
        raise ValueError(f"unsupported timetz {text!r}")
    h, mi, s = int(m.group(1)), int(m.group(2)), int(m.group(3))
    off = _offset(m.group(5))
    sign = -1 if off[0] == "-" else 1
    parts = [int(p) for p in off[1:].split(":")]
    shift = sign * (parts[0] * 3600 + parts[1] * 60 + (parts[2] if len(parts) > 2 else 0))
    secs = (h * 3600 + mi * 60 + s - shift) % 86400
    return f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}{m.group(4) or ''}Z"


_INTERVAL_RE = re.compile(
    r"^(?:([+-]?\d+) years? ?)?(?:([+-]?\d+) mons? ?)?(?:([+-]?\d+) days? ?)?"
    r"(?:([+-])?(\d+):(\d\d):(\d\d(?:\.\d+)?))?$"
)


def _interval(text: str) -> int:
    """Debezium's MicroDuration: months count 30.4375 days; computed in doubles, as Java does."""
    m = _INTERVAL_RE.match(text)
    if not m:
        raise ValueError(f"unsupported interval {text!r} (expected IntervalStyle=postgres)")
    years, months, days = (int(g) if g else 0 for g in m.group(1, 2, 3))
    hours = minutes = 0
    seconds = 0.0
    if m.group(5) is not None:
        sign = -1 if m.group(4) == "-" else 1
        hours, minutes, seconds = (
            sign * int(m.group(5)),
            sign * int(m.group(6)),
            sign * float(m.group(7)),
        )
    number_of_days = float(years * 12 + months) * _DAYS_PER_MONTH_AVG + days
    number_of_seconds = ((number_of_days * 24.0 + hours) * 60.0 + minutes) * 60.0 + seconds
    return int(number_of_seconds * 1000000.0)


def _bit_one(text: str) -> bool:
    return text == "1"


def _bits(text: str) -> str:
    """io.debezium.data.Bits: the value's bits as little-endian bytes (java.util.BitSet)."""
    n = int(text, 2) if text else 0
    return base64.b64encode(n.to_bytes((n.bit_length() + 7) // 8, "little")).decode()


# --------------------------------------------------------------------------- wire renderers


def _wire_variable(value: Decimal) -> dict[str, Any]:
    exponent = value.as_tuple().exponent
    scale = max(0, -exponent) if isinstance(exponent, int) else 0
    return {"scale": scale, "value": _decimal_bytes(value)}


# --------------------------------------------------------------------------- the type table


_VSD_SCHEMA = {
    "type": "struct",
    "fields": [
        {"type": "int32", "optional": False, "field": "scale"},
        {"type": "bytes", "optional": False, "field": "value"},
    ],
    "name": "io.debezium.data.VariableScaleDecimal",
    "version": 1,
    "doc": "Variable scaled decimal",
}

_STRING = PgType("text", str, _s("string"))

#: OID -> name of the built-in types whose output text is the value (nothing to parse): every
#: session of ours prints them the same way (TimeZone=UTC for tstzrange, extra_float_digits=1 for
#: the geometric types' doubles: the shortest text that reads back exactly)
TEXT_TYPES: dict[int, str] = {
    27: "tid", 28: "xid", 29: "cid", 5069: "xid8",
    600: "point", 601: "lseg", 602: "path", 603: "box", 604: "polygon", 628: "line", 718: "circle",
    2970: "txid_snapshot", 5038: "pg_snapshot", 3220: "pg_lsn",
    3614: "tsvector", 3615: "tsquery", 4072: "jsonpath",
    3904: "int4range", 3906: "numrange", 3908: "tsrange", 3910: "tstzrange", 3912: "daterange",
    3926: "int8range",
    4451: "int4multirange", 4532: "nummultirange", 4533: "tsmultirange",
    4534: "tstzmultirange", 4535: "datemultirange", 4536: "int8multirange",
}  # fmt: skip
#: Debezium's schema name for the text types it names (the others are a plain string)
_TEXT_SCHEMA_NAMES = {3614: "io.debezium.data.Tsvector"}

# OID -> PgType for types whose form does not depend on the type modifier
_FIXED: dict[int, PgType] = {
    **{
        oid: PgType(name, str, _s("string", _TEXT_SCHEMA_NAMES.get(oid)))
        for oid, name in TEXT_TYPES.items()
    },
    16: PgType("bool", _bool, _s("boolean")),
    17: PgType("bytea", _bytea, _s("bytes")),
    18: PgType('"char"', str, _s("string")),
    19: PgType("name", str, _s("string")),
    20: PgType("int8", int, _s("int64")),
    21: PgType("int2", int, _s("int16")),
    23: PgType("int4", int, _s("int32")),
    25: _STRING,
    26: PgType("oid", int, _s("int64")),
    114: PgType("json", str, _s("string", "io.debezium.data.Json")),
    142: PgType("xml", str, _s("string", "io.debezium.data.Xml")),
    650: PgType("cidr", str, _s("string")),
    700: PgType("float4", _float, _s("float")),
    701: PgType("float8", _float, _s("double")),
    790: PgType(
        "money",
        _money,
        _s("bytes", "org.apache.kafka.connect.data.Decimal", scale="2"),
        _decimal_bytes,
    ),
    829: PgType("macaddr", str, _s("string")),
    869: PgType("inet", str, _s("string")),
    1042: PgType("bpchar", str, _s("string")),
    1043: PgType("varchar", str, _s("string")),
    1082: PgType("date", str, _s("int32", "io.debezium.time.Date"), _wire_date),
    1186: PgType("interval", _interval, _s("int64", "io.debezium.time.MicroDuration")),
    1266: PgType("timetz", _timetz, _s("string", "io.debezium.time.ZonedTime")),
    2950: PgType("uuid", str, _s("string", "io.debezium.data.Uuid")),
    3802: PgType("jsonb", str, _s("string", "io.debezium.data.Json")),
}

#: array type OID -> element type OID, for the built-in element types above
ARRAY_ELEMENTS = {
    1000: 16, 1001: 17, 1002: 18, 1003: 19, 1016: 20, 1005: 21, 1007: 23, 1009: 25, 1028: 26,
    199: 114, 143: 142, 651: 650, 1021: 700, 1022: 701, 791: 790, 1040: 829, 1041: 869,
    1014: 1042, 1015: 1043, 1182: 1082, 1183: 1083, 1115: 1114, 1185: 1184, 1187: 1186,
    1270: 1266, 1231: 1700, 2951: 2950, 3807: 3802,
}  # fmt: skip


def _precision(typmod: int, default: int = 6) -> int:
    return default if typmod < 0 else typmod


def pg_type(oid: int, typmod: int, catalog: TypeCatalog | None = None) -> PgType:
    """The rules for one column type; unknown types fall back to PostgreSQL text."""
    if oid in _FIXED:
        return _FIXED[oid]
    if oid == 1700:  # numeric
        if typmod < 0:
            return PgType("numeric", _numeric_variable, dict(_VSD_SCHEMA), _wire_variable)
        precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF
        return PgType(
            f"numeric({precision},{scale})",
            _numeric_fixed,
            _s(
                "bytes",
                "org.apache.kafka.connect.data.Decimal",
                scale=str(scale),
                **{"connect.decimal.precision": str(precision)},
            ),
            _decimal_bytes,
        )
    if oid == 1083:  # time(p): adaptive precision
        if _precision(typmod) <= 3:
            return PgType("time", _time, _s("int32", "io.debezium.time.Time"), _wire_milli_time)
        return PgType("time", _time, _s("int64", "io.debezium.time.MicroTime"), _wire_micro_time)
    if oid == 1114:  # timestamp(p)
        if _precision(typmod) <= 3:
            return PgType(
                "timestamp",
                _timestamp,
                _s("int64", "io.debezium.time.Timestamp"),
                _wire_milli_timestamp,
            )
        return PgType(
            "timestamp",
            _timestamp,
            _s("int64", "io.debezium.time.MicroTimestamp"),
            _wire_micro_timestamp,
        )
    if oid == 1184:  # timestamptz(p): ISO text with exactly p fraction digits
        return PgType(
            "timestamptz",
            _timestamptz(_precision(typmod)),
            _s("string", "io.debezium.time.ZonedTimestamp"),
        )
    if oid == 1560:  # bit(n)
        if typmod == 1:
            return PgType("bit", _bit_one, _s("boolean"))
        return PgType(
            "bit", _bits, _s("bytes", "io.debezium.data.Bits", length=str(max(typmod, 0)))
        )
    if oid == 1562:  # varbit
        return PgType("varbit", _bits, _s("bytes", "io.debezium.data.Bits", length="2147483647"))
    if oid in ARRAY_ELEMENTS:
        return array_type(pg_type(ARRAY_ELEMENTS[oid], -1))
    if catalog is not None:
        resolved = catalog.resolve(oid, typmod)
        if resolved is not None:
            return resolved
    return PgType(f"oid {oid}", str, _s("string"), supported=False)


# --------------------------------------------------------------------------- arrays


def array_type(element: PgType, delimiter: str = ",") -> PgType:
    """Arrays of ``element``, whose elements PostgreSQL separates by ``delimiter`` (its type's
    ``typdelim``: ``;`` for ``box``, whose text holds commas)."""
    parse_element = element.parse
    wire_element = element.wire

    def parse(text: str) -> list[Any]:
        return [None if v is None else parse_element(v) for v in parse_array(text, delimiter)]

    wire = None
    if wire_element is not None:
        we = wire_element

        def wire(values: list[Any]) -> list[Any]:
            return [None if v is None else we(v) for v in values]

    items = {**element.schema, "optional": True}
    return PgType(
        f"{element.name}[]",
        parse,
        {"type": "array", "items": items},
        wire,
        supported=element.supported,
        items=element,
    )


def parse_array(text: str, delimiter: str = ",") -> list[str | None]:
    """A one-dimensional PostgreSQL array literal -> its elements as text (None for NULL)."""
    if text.startswith("["):  # explicit bounds: '[0:1]={a,b}'
        text = text[text.index("=") + 1 :]
    if not (text.startswith("{") and text.endswith("}")):
        raise ValueError(f"not an array literal: {text!r}")
    body = text[1:-1]
    if not body:
        return []
    if body.startswith("{"):
        raise ValueError("multi-dimensional arrays are not supported")
    out: list[str | None] = []
    i, n = 0, len(body)
    while i <= n:
        if i < n and body[i] == '"':
            i += 1
            chars = []
            while body[i] != '"':
                if body[i] == "\\":
                    i += 1
                chars.append(body[i])
                i += 1
            out.append("".join(chars))
            i += 2  # closing quote and comma
        else:
            j = body.find(delimiter, i)
            j = n if j < 0 else j
            token = body[i:j]
            out.append(None if token == "NULL" else token)
            i = j + 1
    return out


# --------------------------------------------------------------------------- catalog types


class TypeCatalog:
    """Non-built-in types (enums, domains, arrays of them) resolved from ``pg_type``."""

    def __init__(
        self, lookup: Callable[[int], tuple[str, str, int, int, int, str | None, str] | None]
    ):
        # lookup(oid) -> (typname, typtype, typbasetype, typtypmod, typelem of a true array else
        # 0, enum labels, the element type's typdelim) or None
        self._lookup = lookup
        self._cache: dict[tuple[int, int], PgType | None] = {}

    def resolve(self, oid: int, typmod: int) -> PgType | None:
        key = (oid, typmod)
        if key not in self._cache:
            self._cache[key] = self._resolve(oid, typmod)
        return self._cache[key]

    def _resolve(self, oid: int, typmod: int) -> PgType | None:
        row = self._lookup(oid)
        if row is None:
            return None
        name, typtype, base, base_typmod, elem, labels, delimiter = row
        if typtype == "e":
            return PgType(name, str, _s("string", "io.debezium.data.Enum", allowed=labels or ""))
        if typtype == "d":
            return pg_type(base, base_typmod if base_typmod >= 0 else typmod, self)
        if elem:
            return array_type(pg_type(elem, -1, self), delimiter)
        return None

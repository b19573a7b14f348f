"""One canonical text for every column value, computed inside each database (``cdc reconcile``).

Reconciling a source table with its state table compares checksums that each database computes
itself, so each side needs a SQL expression that renders a value as text, and the two texts must be
identical whenever the state table holds what our capture and merge stored for that source value.
:func:`render` builds that expression per column (sqlglot, dialects ``postgres``, ``mysql``,
``duckdb``, ``bigquery``), :func:`row_text` joins a row's texts unambiguously, :func:`row_hash`
makes a 60-bit integer of it that callers combine with ``BIT_XOR``, and :func:`session_settings`
lists what a source session sets first so that no user setting changes the text.

The canonical forms, by the state table's type (``WarehouseType.kind``); NULL stays NULL:

=========  ===================================================================================
int64      decimal text: ``-9223372036854775808``. A PostgreSQL ``interval`` (stored as
           Debezium's MicroDuration: months of 30.4375 days, computed in doubles, truncated) is
           that number too, whether the state table holds it as int64 or as text.
decimal    plain decimal text without trailing fraction zeros and without a bare point; zero
           is ``0``: ``-0.01``, ``1200000000000000000000``, ``3.14159``. (PostgreSQL ``money``
           is its numeric value.)
float64    the shortest decimal that reads back as the same double (nearest on a tie, as
           Python's repr), written as C's ``%.{n-1}e`` for its n digits: ``1e-01``,
           ``1.1e+00``, ``5e-324``, ``1.0000000000000002e+00``; ``nan``, ``inf``, ``-inf``;
           both zeros are ``0e+00``. MySQL and DuckDB print that shortest text themselves
           (dtoa, Ryu): it is re-spelt. BigQuery prints 15 or 17 digits and PostgreSQL's Ryu
           misses a shorter text lying exactly on the rounding boundary, so there the first
           correctly rounded ``%.{k}e`` (``FORMAT`` / ``TO_CHAR ... EEEE``) that casts back is
           taken, with the 46 powers of two where that text is one digit longer than the
           shortest listed apart. A PostgreSQL ``real`` is its own shortest 32-bit text,
           re-spelt (that text is what the capture read).
bool       ``true`` / ``false`` (PostgreSQL ``bit(1)`` and MySQL ``bit(1)`` too).
string     the text itself: PostgreSQL output text (``text``, ``varchar``, ``uuid``, enums,
           domains, ``cidr``, ``macaddr``...; ``char(n)`` with its padding and ``inet`` as the
           capture reads it), MySQL text converted to utf8mb4 (collations never change the
           bytes; ``char(n)`` without trailing spaces, as MySQL returns it). PostgreSQL
           ``timetz`` is the capture's ``HH:MM:SS[.f]Z`` in UTC, ``numeric`` wider than 38
           digits its plain text.
bytes      lower-case hex. PostgreSQL ``bit(n)`` (n <= 64) and MySQL ``bit(n)`` are the bytes
           the capture stores: Debezium's BitSet, little-endian (PostgreSQL: minimal length,
           MySQL: ``(n + 7) / 8`` bytes).
date       ``YYYY-MM-DD``.
time       ``HH:MM:SS.ffffff``.
datetime   ``YYYY-MM-DD HH:MM:SS.ffffff`` (a wall-clock time: PostgreSQL ``timestamp``, MySQL
           ``datetime``).
timestamp  microseconds since the epoch (an instant: ``timestamptz``, MySQL ``timestamp``).
json       the capture's compact JSON text (Python's ``json.dumps`` with no spaces, keys in the
           source's order). PostgreSQL renders ``jsonb`` / ``json`` text with the spaces outside
           strings removed and fraction zeros trimmed (``1.50`` -> ``1.5``, ``2.000`` ->
           ``2.0``), arrays of text, integers, booleans, uuids or dates with
           ``array_to_json``; the warehouses render the stored text (BigQuery:
           ``TO_JSON_STRING``).
=========  ===================================================================================

What cannot be made equal raises :class:`NotComparableError` (a ``ValueError``) from
:func:`render`, naming the type and the reason, so the caller leaves the column out and says so:
MySQL ``FLOAT`` (MySQL prints 6 digits and has no 32-bit cast, the capture stores the shortest
decimal of the 32-bit value), PostgreSQL ``varbit`` and ``bit(n > 64)``, arrays of other element
types (numbers and times are re-printed by the capture), PostgreSQL date/time types and floats held
in a string column (an undeclared type: declare the columns, ``cdc register``), MySQL 8 binary
``JSON`` (MariaDB's JSON is ``longtext`` and compares as text), and the ``name_list`` metadata.

Known residual differences, where :func:`render` still renders (they show up as differences):

- JSON numbers: the capture re-reads them as Python floats, so a fraction with more than 15
  significant digits, or outside 1e-4..1e16, and in ``json`` (not ``jsonb``) any exponent
  (``1e2`` -> ``100.0``) or ``-0`` differ; ``json`` also keeps ``\\u`` escapes and duplicate
  keys that the capture decodes and merges.
- BigQuery's JSON type: verified against bqemulator, which keeps the loaded text. Real BigQuery
  may re-serialise a JSON value (object key order, number text); such a value then differs.

Requires PostgreSQL 14+ (``EXTRACT(EPOCH ...)`` exact) and a UTF-8 database (``server_encoding``).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence

import sqlglot
from sqlglot import exp

from state_models.types import Kind, WarehouseType

SOURCE_DIALECTS = ("postgres", "mysql")
WAREHOUSE_DIALECTS = ("duckdb", "bigquery")
DIALECTS = SOURCE_DIALECTS + WAREHOUSE_DIALECTS


class NotComparableError(ValueError):
    """A column whose value cannot be rendered identically on both sides."""


# --------------------------------------------------------------------------- SQL templates

#: The column a template names where the value goes.
_VALUE = "__v"

Rule = Callable[[exp.Expr, str], exp.Expr]


@functools.lru_cache(maxsize=512)
def _parsed(sql: str, dialect: str) -> exp.Expr:
    return sqlglot.parse_one(sql, read=dialect)


def _fill(sql: str, dialect: str, value: exp.Expr) -> exp.Expr:
    """The template ``sql`` (in ``dialect``) with ``value`` wherever it names ``__v``."""
    if not isinstance(value, exp.Column | exp.Literal | exp.Paren | exp.Null | exp.Func):
        value = exp.Paren(this=value)

    def put(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Column) and node.name == _VALUE and not node.table:
            return value.copy()
        return node

    return _parsed(sql, dialect).transform(put)  # transform copies the cached tree


def _template(**by_dialect: str) -> Rule:
    """A rule from one SQL template per dialect (the dialect's own spelling)."""

    def rule(value: exp.Expr, dialect: str) -> exp.Expr:
        return _fill(by_dialect[dialect], dialect, value)

    return rule


def _str(text: str) -> exp.Literal:
    return exp.Literal.string(text)


def _num(n: int) -> exp.Expr:
    return exp.Literal.number(n)


def _concat(*parts: exp.Expr) -> exp.Expr:
    return exp.Concat(expressions=list(parts), safe=False)


def _text_type(dialect: str) -> exp.DataType:
    return exp.DataType.build("TEXT" if dialect != "mysql" else "CHAR", dialect=dialect)


def _as_text(value: exp.Expr, dialect: str) -> exp.Expr:
    return exp.Cast(this=value, to=_text_type(dialect))


# --------------------------------------------------------------------------- decimals


def _decimal(value: exp.Expr, dialect: str) -> exp.Expr:
    """Plain decimal text without trailing fraction zeros (a number's text never has an exponent
    here: PostgreSQL, MySQL, DuckDB and BigQuery print decimals plainly)."""
    text = _as_text(value.copy(), dialect)
    trimmed = exp.Trim(
        this=exp.Trim(this=text.copy(), expression=_str("0"), position="TRAILING"),
        expression=_str("."),
        position="TRAILING",
    )
    return exp.Case(
        ifs=[
            exp.If(this=exp.Is(this=value.copy(), expression=exp.Null()), true=exp.Null()),
            exp.If(this=exp.EQ(this=value.copy(), expression=_num(0)), true=_str("0")),
            exp.If(
                this=exp.GT(
                    this=exp.StrPosition(this=text.copy(), substr=_str(".")), expression=_num(0)
                ),
                true=trimmed,
            ),
        ],
        default=text,
    )


def _mysql_decimal(scale: int) -> Rule:
    """MySQL ``DECIMAL(p, s)``: MySQL prints exactly s fraction digits, so with s > 0 the text
    always has a point and is trimmed without looking for one (the text is computed once), and
    with s = 0 it is the text. Zero stays ``0`` whatever its sign."""
    text = "CAST(__v AS CHAR)"
    if scale > 0:
        text = f"TRIM(TRAILING '.' FROM TRIM(TRAILING '0' FROM {text}))"
    return _template(mysql=f"CASE WHEN __v = 0 THEN '0' ELSE {text} END")


# --------------------------------------------------------------------------- floats


def _printf_e(digits: str, exponent: int) -> str:
    """C's ``%.{n-1}e`` spelling of d1.d2...dn x 10^exponent: ``1.5e-07``."""
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{mantissa}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"


def _shortest(x: float) -> str:
    """Python's repr is the shortest round-trip text, nearest on ties (as Ryu and dtoa)."""
    m, _, e = repr(abs(x)).partition("e")
    whole, _, frac = m.partition(".")
    digits = (whole + frac).lstrip("0")
    lead = len(whole + frac) - len(digits)
    exponent = len(whole) - 1 - lead + (int(e) if e else 0)
    return _printf_e(digits.rstrip("0") or "0", exponent)


@functools.cache
def _power_of_two_exceptions() -> tuple[tuple[float, str], ...]:
    """Doubles whose shortest text has fewer digits than the first correctly rounded ``%.{k}e``
    that reads back: powers of two, whose lower rounding interval is half as wide."""
    out = []
    for k in range(-1074, 1024):
        x = math.ldexp(1.0, k)
        for p in range(17):
            text = f"{x:.{p}e}"
            if float(text) == x:
                break
        if text != _shortest(x):
            out.append((x, _shortest(x)))
    return tuple(out)


def _float_from_text(
    value: exp.Expr,
    text: exp.Expr,
    dialect: str,
    finite: Callable[[exp.Expr], exp.Expr] | None = None,
) -> exp.Expr:
    """The canonical form from a database's own shortest text of ``value`` (``0.1``, ``1e+300``,
    ``1.6777216e+07``, ``0.00000005960464477539063``, ``-0``, ``NaN``, ``-Infinity``, ``inf``);
    ``finite`` makes the text of a finite non-zero value from that re-spelling instead."""

    def t() -> exp.Expr:
        return text.copy()

    def sub(s: exp.Expr, start: exp.Expr, length: exp.Expr | None = None) -> exp.Expr:
        return exp.Substring(this=s, start=start, length=length)

    def length(s: exp.Expr) -> exp.Expr:
        return exp.Length(this=s)

    def pos(s: exp.Expr, needle: str) -> exp.Expr:
        return exp.StrPosition(this=s, substr=_str(needle))

    def gt0(e: exp.Expr) -> exp.Expr:
        return exp.GT(this=e, expression=_num(0))

    def case(cond: exp.Expr, yes: exp.Expr, no: exp.Expr) -> exp.Expr:
        return exp.Case(ifs=[exp.If(this=cond, true=yes)], default=no)

    def unsigned() -> exp.Expr:
        return exp.Trim(this=t(), expression=_str("-"), position="LEADING")

    def e_pos() -> exp.Expr:
        return pos(exp.Lower(this=unsigned()), "e")

    def mantissa() -> exp.Expr:
        return case(
            gt0(e_pos()),
            sub(unsigned(), _num(1), exp.Sub(this=e_pos(), expression=_num(1))),
            unsigned(),
        )

    def shift() -> exp.Expr:
        int_type = exp.DataType.build("SIGNED" if dialect == "mysql" else "INT", dialect=dialect)
        return case(
            gt0(e_pos()),
            exp.Cast(this=sub(unsigned(), exp.Add(this=e_pos(), expression=_num(1))), to=int_type),
            _num(0),
        )

    def whole_length() -> exp.Expr:  # digits before the point
        dot = pos(mantissa(), ".")
        return case(gt0(dot), exp.Sub(this=dot.copy(), expression=_num(1)), length(mantissa()))

    def all_digits() -> exp.Expr:
        return exp.Replace(this=mantissa(), expression=_str("."), replacement=_str(""))

    def significant() -> exp.Expr:
        return exp.Trim(this=all_digits(), expression=_str("0"), position="LEADING")

    def digits() -> exp.Expr:
        return exp.Trim(this=significant(), expression=_str("0"), position="TRAILING")

    # exponent of the first significant digit
    exponent = exp.Add(
        this=exp.Sub(
            this=exp.Sub(this=whole_length(), expression=_num(1)),
            expression=exp.Paren(
                this=exp.Sub(this=length(all_digits()), expression=length(significant()))
            ),
        ),
        expression=shift(),
    )
    spelt = _concat(
        case(exp.Like(this=t(), expression=_str("-%")), _str("-"), _str("")),
        sub(digits(), _num(1), _num(1)),
        case(
            exp.GT(this=length(digits()), expression=_num(1)),
            _concat(_str("."), sub(digits(), _num(2))),
            _str(""),
        ),
        _str("e"),
        case(exp.LT(this=exponent.copy(), expression=_num(0)), _str("-"), _str("+")),
        # at least two digits (not LPAD: it cuts longer text to the width)
        case(exp.LT(this=exp.Abs(this=exponent.copy()), expression=_num(10)), _str("0"), _str("")),
        _as_text(exp.Abs(this=exponent.copy()), dialect),
    )
    lowered = exp.Lower(this=t())
    return exp.Case(
        ifs=[
            exp.If(this=exp.Is(this=value.copy(), expression=exp.Null()), true=exp.Null()),
            exp.If(this=exp.Like(this=lowered.copy(), expression=_str("%nan%")), true=_str("nan")),
            exp.If(this=exp.Like(this=lowered.copy(), expression=_str("-inf%")), true=_str("-inf")),
            exp.If(this=exp.Like(this=lowered.copy(), expression=_str("inf%")), true=_str("inf")),
            exp.If(this=exp.EQ(this=value.copy(), expression=_num(0)), true=_str("0e+00")),
        ],
        default=finite(spelt) if finite is not None else spelt,
    )


def _float_native(value: exp.Expr, dialect: str) -> exp.Expr:
    return _float_from_text(value, _as_text(value.copy(), dialect), dialect)


def _float_search(value: exp.Expr, dialect: str) -> exp.Expr:
    """The first correctly rounded ``%.{k}e`` text (k = 0..16) that reads back as the value,
    except for the listed powers of two. For where the database's own text is not the shortest:
    BigQuery prints 15 or 17 digits; PostgreSQL's Ryu leaves out a shorter text that lies exactly
    on the rounding boundary (5.299064834871378e+16 prints as 5.2990648348713776e+16)."""

    def v() -> exp.Expr:
        return value.copy()

    if dialect == "bigquery":
        float_type = exp.DataType.build("FLOAT64", dialect=dialect)

        def fmt(k: int) -> exp.Expr:
            return exp.Anonymous(this="FORMAT", expressions=[_str(f"%.{k}e"), v()])

        def reads_back(text: exp.Expr) -> exp.Expr:  # SAFE_CAST: '2e+308' overflows
            return exp.EQ(this=exp.TryCast(this=text, to=float_type.copy()), expression=v())

    else:
        float_type = exp.DataType.build("DOUBLE PRECISION", dialect=dialect)

        def fmt(k: int) -> exp.Expr:  # TO_CHAR's EEEE is C's %e, with a space for the sign
            pattern = "9." + "9" * k + "EEEE" if k else "9EEEE"
            return exp.Trim(this=exp.Anonymous(this="TO_CHAR", expressions=[v(), _str(pattern)]))

        def reads_back(text: exp.Expr) -> exp.Expr:
            return exp.EQ(this=exp.Cast(this=text, to=float_type.copy()), expression=v())

    search = exp.Case(
        ifs=[exp.If(this=reads_back(fmt(k)), true=fmt(k)) for k in range(16)],
        default=fmt(16),
    )
    exception = _concat(
        exp.Case(
            ifs=[exp.If(this=exp.LT(this=v(), expression=_num(0)), true=_str("-"))],
            default=_str(""),
        ),
        exp.Case(
            this=exp.Abs(this=v()),
            ifs=[
                exp.If(this=exp.Literal.number(repr(x)), true=_str(t))
                for x, t in _power_of_two_exceptions()
            ],
            default=exp.Null(),
        ),
    )
    return exp.Coalesce(this=exception, expressions=[search])


def _float_bigquery(value: exp.Expr, dialect: str) -> exp.Expr:
    def v() -> exp.Expr:
        return value.copy()

    return exp.Case(
        ifs=[
            exp.If(this=exp.Is(this=v(), expression=exp.Null()), true=exp.Null()),
            exp.If(this=exp.Anonymous(this="IS_NAN", expressions=[v()]), true=_str("nan")),
            exp.If(
                this=exp.Anonymous(this="IS_INF", expressions=[v()]),
                true=exp.Case(
                    ifs=[exp.If(this=exp.GT(this=v(), expression=_num(0)), true=_str("inf"))],
                    default=_str("-inf"),
                ),
            ),
            exp.If(this=exp.EQ(this=v(), expression=_num(0)), true=_str("0e+00")),
        ],
        default=_float_search(value, dialect),
    )


def _float_postgres(value: exp.Expr, dialect: str) -> exp.Expr:
    """float8: the search (specials from PostgreSQL's text). Beyond 1e308 a rounded candidate
    can overflow the cast, so there PostgreSQL's own shortest text is used."""

    def finite(spelt: exp.Expr) -> exp.Expr:
        huge = exp.GTE(this=exp.Abs(this=value.copy()), expression=exp.Literal.number("1e308"))
        return exp.Case(ifs=[exp.If(this=huge, true=spelt)], default=_float_search(value, dialect))

    return _float_from_text(value, _as_text(value.copy(), dialect), dialect, finite)


# --------------------------------------------------------------------------- bit strings


def _hex_byte(byte: str) -> str:
    """Two lower-case hex digits of an integer 0..255 (PostgreSQL's TO_HEX does not survive
    sqlglot: it comes back as HEX)."""
    digits, b = "'0123456789abcdef'", f"CAST({byte} AS INT)"
    return f"SUBSTRING({digits}, {b} / 16 + 1, 1) || SUBSTRING({digits}, {b} % 16 + 1, 1)"


def _pg_bits(value: exp.Expr, dialect: str) -> exp.Expr:
    """PostgreSQL ``bit(n)`` (n <= 64) as the capture stores it: the value's bytes, little-endian,
    as few as hold it (none for zero)."""
    n = "CAST(__v AS BIGINT)"
    pieces = [
        f"CASE WHEN {n} >> {8 * i} <> 0 THEN {_hex_byte(f'({n} >> {8 * i}) & 255')} ELSE '' END"
        for i in range(8)
    ]
    return _fill(f"CASE WHEN __v IS NULL THEN NULL ELSE {' || '.join(pieces)} END", dialect, value)


def _mysql_bits(width: int) -> Rule:
    """MySQL ``bit(n)`` as the capture stores it: ``(n + 7) / 8`` bytes, little-endian."""
    pieces = [f"LPAD(HEX((__v >> {8 * i}) & 255), 2, '0')" for i in range((width + 7) // 8)]
    return _template(
        mysql=f"CASE WHEN __v IS NULL THEN NULL ELSE LOWER(CONCAT({', '.join(pieces)})) END"
    )


# --------------------------------------------------------------------------- the rules

_TEXT_SQL = {"postgres": "CAST(__v AS TEXT)", "mysql": "CAST(__v AS CHAR)"}
_BOOL_SQL = "CASE WHEN __v IS NULL THEN NULL WHEN __v THEN 'true' ELSE 'false' END"
#: PostgreSQL JSON text, compacted by two regexes (PostgreSQL AREs, standard strings): whitespace
#: outside strings removed (a string is matched whole and put back, so its inside is kept), then
#: fraction zeros trimmed the way Python prints the floats the capture reads (1.50 -> 1.5,
#: 2.000 -> 2.0). Each costs about a microsecond a value, ten times the rest of the rendering, so
#: each runs only where it can change the text (:func:`_pg_json_compact`).
_PG_JSON_SPACES_RE = r"""("(?:[^"\\]|\\.)*")|[[:space:]]+"""
_PG_JSON_ZEROS_RE = r"""("(?:[^"\\]|\\.)*")|(\.[0-9]*[1-9])0+\M|(\.0)0+\M"""
#: what every number the zero-trim changes holds: a point, digits, a 0 ending the word
_PG_JSON_ZEROS_TEST = r"\.[0-9]*0\M"
#: From the start, whole tokens (characters outside strings, whole strings), then a string that
#: holds ", " or ": ". (A match without captures is one pass of a DFA, a replace is not.)
_PG_JSON_SPACED_STRING = r"""^(?:[^"]|"(?:[^"\\]|\\.)*")*"(?:[^"\\]|\\.)*[,:] """
#: ... or, outside strings, a tab, newline or return (inside one they are escaped), or whitespace
#: at the start, after a string or after anything but "," and ":" (another whitespace too).
_PG_JSON_IRREGULAR = (
    r"""^(?:[^"]|"(?:[^"\\]|\\.)*")*(?:"(?:[^"\\]|\\.)*[,:] |[\t\n\r]"""
    r"""|(?:^|[^",:]|"(?:[^"\\]|\\.)*")[[:space:]])"""
)


def _pg_json_compact(irregular: str) -> str:
    """The compact text of a PostgreSQL JSON value, as the two regexes make it, with each regex
    run only where it can change the text.

    Where the only whitespace outside strings is one space after each "," and ":" and no string
    holds ", " or ": ", dropping the space of every ", " and ": " (two REPLACEs) is removing the
    whitespace outside strings; ``irregular`` matches the other texts. ``jsonb`` text is always
    spaced that way outside strings (:data:`_PG_JSON_SPACED_STRING`), ``json`` text keeps what was
    written (:data:`_PG_JSON_IRREGULAR`). The zero-trim runs only on a text that holds
    :data:`_PG_JSON_ZEROS_TEST` (the whitespace removal never makes one: numbers hold none);
    where that is inside a string, the regex keeps the string as it is."""
    text = "CAST(__v AS TEXT)"

    def spaces(t: str) -> str:
        return rf"REGEXP_REPLACE({t}, '{_PG_JSON_SPACES_RE}', '\1', 'g')"

    def zeros(t: str) -> str:
        return rf"REGEXP_REPLACE({t}, '{_PG_JSON_ZEROS_RE}', '\1\2\3', 'g')"

    dropped = f"REPLACE(REPLACE({text}, ', ', ','), ': ', ':')"
    has_zeros = f"STRPOS({text}, '.') > 0 AND {text} ~ '{_PG_JSON_ZEROS_TEST}'"
    return (
        f"CASE WHEN {text} ~ '{irregular}' THEN CASE WHEN {has_zeros} THEN "
        f"{zeros(spaces(text))} ELSE {spaces(text)} END "
        f"WHEN {has_zeros} THEN {zeros(dropped)} ELSE {dropped} END"
    )


#: Debezium's MicroDuration: months of 30.4375 days, in doubles in this order, truncated
_PG_INTERVAL_MICROS = (
    "CAST(CAST(TRUNC(((((CAST(EXTRACT(YEAR FROM __v) * 12 + EXTRACT(MONTH FROM __v) AS DOUBLE "
    "PRECISION) * 30.4375 + CAST(EXTRACT(DAY FROM __v) AS DOUBLE PRECISION)) * 24 + CAST(EXTRACT("
    "HOUR FROM __v) AS DOUBLE PRECISION)) * 60 + CAST(EXTRACT(MINUTE FROM __v) AS DOUBLE "
    "PRECISION)) * 60 + CAST(EXTRACT(SECOND FROM __v) AS DOUBLE PRECISION)) * 1000000.0) AS BIGINT)"
    " AS TEXT)"
)
#: PostgreSQL array elements whose JSON text is what the capture stores
_PG_JSON_ARRAY_ELEMENTS = frozenset({"int", "text", "bool", "date"})


def _plain_text(value: exp.Expr, dialect: str) -> exp.Expr:
    return _fill(_TEXT_SQL[dialect], dialect, value)


_WAREHOUSE_RULES: dict[str, dict[Kind, Rule]] = {
    "duckdb": {
        Kind.INT64: _template(duckdb="CAST(__v AS TEXT)"),
        Kind.DECIMAL: _decimal,
        Kind.FLOAT64: _float_native,
        Kind.BOOL: _template(duckdb=_BOOL_SQL),
        Kind.STRING: _template(duckdb="__v"),
        Kind.BYTES: _template(duckdb="LOWER(HEX(__v))"),
        Kind.DATE: _template(duckdb="CAST(__v AS TEXT)"),
        Kind.TIME: _template(duckdb="STRFTIME(CAST('2000-01-01' AS DATE) + __v, '%H:%M:%S.%f')"),
        Kind.DATETIME: _template(duckdb="STRFTIME(__v, '%Y-%m-%d %H:%M:%S.%f')"),
        Kind.TIMESTAMP: _template(duckdb="CAST(EPOCH_US(__v) AS TEXT)"),
        Kind.JSON: _template(duckdb="CAST(__v AS TEXT)"),
    },
    "bigquery": {
        Kind.INT64: _template(bigquery="CAST(__v AS STRING)"),
        Kind.DECIMAL: _decimal,
        Kind.FLOAT64: _float_bigquery,
        Kind.BOOL: _template(bigquery=_BOOL_SQL),
        Kind.STRING: _template(bigquery="__v"),
        Kind.BYTES: _template(bigquery="TO_HEX(__v)"),
        Kind.DATE: _template(bigquery="CAST(__v AS STRING)"),
        Kind.TIME: _template(bigquery="FORMAT_TIME('%H:%M:%E6S', __v)"),
        Kind.DATETIME: _template(
            bigquery="CONCAT(CAST(DATE(__v) AS STRING), ' ', FORMAT_DATETIME('%H:%M:%E6S', __v))"
        ),
        Kind.TIMESTAMP: _template(bigquery="CAST(UNIX_MICROS(__v) AS STRING)"),
        Kind.JSON: _template(bigquery="TO_JSON_STRING(__v)"),
    },
}

#: source dialect -> type family -> state-table kind -> rule
_SOURCE_RULES: dict[str, dict[str, dict[Kind, Rule]]] = {
    "postgres": {
        # an integer's text has no point; TRIM_SCALE (PostgreSQL 13+) drops fraction zeros
        "int": {Kind.INT64: _plain_text, Kind.DECIMAL: _plain_text, Kind.STRING: _plain_text},
        "numeric": {
            Kind.DECIMAL: _template(postgres="CAST(TRIM_SCALE(__v) AS TEXT)"),
            Kind.STRING: _plain_text,
        },
        "money": {
            Kind.DECIMAL: _template(postgres="CAST(TRIM_SCALE(CAST(__v AS NUMERIC)) AS TEXT)")
        },
        # real: its own shortest text is what the capture read (a double cannot print it)
        "float4": {Kind.FLOAT64: _float_native},
        "float": {Kind.FLOAT64: _float_postgres},
        "bool": {
            Kind.BOOL: _template(postgres=_BOOL_SQL),
            Kind.STRING: _template(postgres=_BOOL_SQL),
        },
        "text": {Kind.STRING: _plain_text},
        # the output function's text: char(n) keeps its padding, inet drops a host's /32
        "output": {
            Kind.STRING: _template(
                postgres="CASE WHEN __v IS NULL THEN NULL ELSE FORMAT('%s', __v) END"
            )
        },
        "bytea": {Kind.BYTES: _template(postgres="ENCODE(__v, 'hex')")},
        "bit": {
            Kind.BOOL: _template(
                postgres="CASE WHEN __v IS NULL THEN NULL WHEN __v = B'1' THEN 'true' ELSE 'false' END"
            ),
            Kind.BYTES: _pg_bits,
        },
        "date": {Kind.DATE: _template(postgres="CAST(__v AS TEXT)")},
        "time": {Kind.TIME: _template(postgres="TO_CHAR(__v, 'HH24:MI:SS.US')")},
        "timestamp": {
            Kind.DATETIME: _template(postgres="TO_CHAR(__v, 'YYYY-MM-DD HH24:MI:SS.US')")
        },
        "timestamptz": {
            Kind.TIMESTAMP: _template(
                postgres="CAST(CAST(EXTRACT(EPOCH FROM __v) * 1000000 AS BIGINT) AS TEXT)"
            )
        },
        "timetz": {
            Kind.STRING: _template(
                postgres=r"REGEXP_REPLACE(CAST(__v AT TIME ZONE 'UTC' AS TEXT), '\+00$', 'Z')"
            )
        },
        "interval": {
            Kind.INT64: _template(postgres=_PG_INTERVAL_MICROS),
            Kind.STRING: _template(postgres=_PG_INTERVAL_MICROS),
        },
        "json": {Kind.JSON: _template(postgres=_pg_json_compact(_PG_JSON_IRREGULAR))},
        "jsonb": {Kind.JSON: _template(postgres=_pg_json_compact(_PG_JSON_SPACED_STRING))},
        "array": {Kind.JSON: _template(postgres="CAST(ARRAY_TO_JSON(__v) AS TEXT)")},
    },
    "mysql": {
        "int": {Kind.INT64: _plain_text, Kind.DECIMAL: _decimal, Kind.STRING: _plain_text},
        "bool": {
            Kind.INT64: _plain_text,
            Kind.BOOL: _template(
                mysql="CASE WHEN __v IS NULL THEN NULL WHEN __v <> 0 THEN 'true' ELSE 'false' END"
            ),
        },
        "decimal": {Kind.DECIMAL: _decimal, Kind.STRING: _plain_text},
        "float": {Kind.FLOAT64: _float_native},
        "bit": {
            Kind.BOOL: _template(
                mysql="CASE WHEN __v IS NULL THEN NULL WHEN __v <> 0 THEN 'true' ELSE 'false' END"
            )
        },
        "text": {Kind.STRING: _template(mysql="CONVERT(__v USING utf8mb4)")},
        "binary": {Kind.BYTES: _template(mysql="LOWER(HEX(__v))")},
        # the zero date ('0000-00-00') is null in the capture, as in Debezium
        "date": {Kind.DATE: _template(mysql="NULLIF(DATE_FORMAT(__v, '%Y-%m-%d'), '0000-00-00')")},
        "datetime": {
            Kind.DATETIME: _template(
                mysql="NULLIF(DATE_FORMAT(__v, '%Y-%m-%d %H:%i:%s.%f'), '0000-00-00 00:00:00.000000')"
            )
        },
        "time": {Kind.TIME: _template(mysql="TIME_FORMAT(__v, '%H:%i:%s.%f')")},
        "timestamp": {
            Kind.TIMESTAMP: _template(
                mysql="CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', NULLIF(__v, 0)) AS CHAR)"
            )
        },
    },
}

#: pairs that cannot be made equal, with the reason
_REFUSED: dict[tuple[str, str], str] = {
    ("mysql", "float32"): (
        "MySQL FLOAT is a 32-bit float that MySQL prints with 6 significant digits and cannot cast "
        "to a 32-bit float in SQL, while the capture stores the shortest decimal that reads back as "
        "the same 32-bit float; no SQL on MySQL renders that decimal"
    ),
    ("mysql", "json"): (
        "MySQL 8 binary JSON is printed by MySQL with its own key order and spacing, and the "
        "capture re-serialises it; this rendering is not verified (MariaDB's JSON is longtext and "
        "compares as text)"
    ),
    ("postgres", "varbit"): (
        "PostgreSQL varbit is stored as Debezium's BitSet bytes (little-endian, minimal length); "
        "a varbit of unknown length cannot be turned into those bytes in SQL"
    ),
    ("postgres", "array"): (
        "arrays of numbers, times and other element types are re-printed by the capture (numbers "
        "as Python floats, times padded), so PostgreSQL's array_to_json text differs; only arrays "
        "of integers, text, booleans, uuids and dates compare"
    ),
}

_UNDECLARED = (
    "the state table holds this {source} column as {kind}, as happens when its type was not "
    "declared (the first value decided): the capture's text of a {source} value is not what "
    "{dialect} prints. Declare the column types (`cdc register` fills them in) so the state table "
    "holds a typed column"
)


# --------------------------------------------------------------------------- source type names

_PG_FAMILIES = {
    **dict.fromkeys(
        ["smallint", "int2", "integer", "int", "int4", "bigint", "int8", "smallserial", "serial",
         "serial2", "serial4", "bigserial", "serial8", "oid"],
        "int",
    ),
    **dict.fromkeys(["numeric", "decimal"], "numeric"),
    "money": "money",
    **dict.fromkeys(["real", "float4"], "float4"),
    **dict.fromkeys(["double precision", "float8", "float"], "float"),
    **dict.fromkeys(["boolean", "bool"], "bool"),
    **dict.fromkeys(["char", "character", "bpchar", "inet"], "output"),
    "bytea": "bytea",
    "bit": "bit",
    **dict.fromkeys(["varbit", "bit varying"], "varbit"),
    "date": "date",
    **dict.fromkeys(["time", "time without time zone"], "time"),
    **dict.fromkeys(["timetz", "time with time zone"], "timetz"),
    **dict.fromkeys(["timestamp", "timestamp without time zone"], "timestamp"),
    **dict.fromkeys(["timestamptz", "timestamp with time zone"], "timestamptz"),
    "interval": "interval",
    "json": "json",
    "jsonb": "jsonb",
}  # fmt: skip
#: anything else (text, varchar, uuid, enums, domains, cidr, macaddr, ranges...) is its text
_PG_DEFAULT = "text"

_MY_FAMILIES = {
    **dict.fromkeys(
        ["tinyint", "smallint", "mediumint", "int", "integer", "bigint", "year"], "int"
    ),
    **dict.fromkeys(["bool", "boolean"], "bool"),
    **dict.fromkeys(["decimal", "numeric", "dec", "fixed"], "decimal"),
    "float": "float32",
    **dict.fromkeys(["double", "double precision", "real"], "float"),
    "bit": "bit",
    **dict.fromkeys(
        ["char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set"], "text"
    ),
    "json": "json",
    **dict.fromkeys(
        ["binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"], "binary"
    ),
    "date": "date",
    "datetime": "datetime",
    "timestamp": "timestamp",
    "time": "time",
}
_MY_DEFAULT = "text"

#: the family a kind comes from when the source type is not given
_NATURAL: dict[str, dict[Kind, str]] = {
    "postgres": {
        Kind.INT64: "int", Kind.DECIMAL: "numeric", Kind.FLOAT64: "float", Kind.BOOL: "bool",
        Kind.STRING: "text", Kind.BYTES: "bytea", Kind.DATE: "date", Kind.TIME: "time",
        Kind.DATETIME: "timestamp", Kind.TIMESTAMP: "timestamptz", Kind.JSON: "json",
    },
    "mysql": {
        Kind.INT64: "int", Kind.DECIMAL: "decimal", Kind.FLOAT64: "float", Kind.BOOL: "bool",
        Kind.STRING: "text", Kind.BYTES: "binary", Kind.DATE: "date", Kind.TIME: "time",
        Kind.DATETIME: "datetime", Kind.TIMESTAMP: "timestamp", Kind.JSON: "json",
    },
}  # fmt: skip

_PARAMS_RE = re.compile(r"\s*\(([^)]*)\)")
_TINYINT1_RE = re.compile(r"^(tinyint|bool|boolean)\s*\(\s*1\s*\)")


def _source_family(source_type: str, dialect: str) -> tuple[str, list[int], str | None]:
    """(family, numeric type parameters, array element family) of a source type name."""
    text = " ".join(source_type.strip().lower().replace('"', "").split())
    params = [
        int(p)
        for m in _PARAMS_RE.finditer(text)
        for p in m.group(1).split(",")
        if p.strip().isdigit()
    ]
    if dialect == "mysql":
        if _TINYINT1_RE.match(text):
            return "bool", params, None
        base = _PARAMS_RE.sub("", text).replace(" unsigned", "").replace(" zerofill", "")
        base = base.split(" character set")[0].split(" collate")[0].strip()
        if base == "float" and params and params[0] > 24:
            base = "double"  # float(p) with p > 24 is a double
        return _MY_FAMILIES.get(base, _MY_DEFAULT), params, None
    element: str | None = None
    base = _PARAMS_RE.sub("", text).strip()
    if base.endswith("[]") or base.startswith("_"):
        element_type = base.removesuffix("[]").removeprefix("_")
        element = _PG_FAMILIES.get(element_type.strip(), _PG_DEFAULT)
        if element_type.strip() == "uuid":
            element = "text"
        elif element == "text" and element_type.strip() not in (
            "text",
            "varchar",
            "character varying",
        ):
            element = "other"  # enums, domains...: their JSON is their text, but unverified
        return "array", params, element
    if base == "float" and params and params[0] <= 24:
        return "float4", params, None  # float(p <= 24) is real
    return _PG_FAMILIES.get(base, _PG_DEFAULT), params, None


# --------------------------------------------------------------------------- public API


def render(
    column: exp.Expr, wtype: WarehouseType, dialect: str, source_type: str | None = None
) -> exp.Expr:
    """Text expression: the value's canonical text (NULL stays NULL). wtype: the state table's
    type of the column (:class:`state_models.types.WarehouseType`); source_type: the source
    column's type name when ``dialect`` is a source (e.g. ``jsonb``, ``numeric``,
    ``timestamp with time zone``, ``tinyint(1)``, ``datetime(6)``).

    Raises :class:`NotComparableError` (a ``ValueError``) naming the type and why, for a pair
    that cannot be rendered identically on both sides (see the module docstring).
    """
    if dialect not in DIALECTS:
        raise ValueError(f"unknown dialect {dialect!r}; expected one of {', '.join(DIALECTS)}")
    kind = wtype.kind
    if kind is Kind.NAME_LIST:
        raise NotComparableError(
            f"{wtype} is a metadata column (a list of column names), not source data"
        )
    if dialect in WAREHOUSE_DIALECTS:
        return _WAREHOUSE_RULES[dialect][kind](column, dialect)
    return _source_rule(wtype, dialect, source_type)(column, dialect)


def _source_rule(wtype: WarehouseType, dialect: str, source_type: str | None) -> Rule:
    kind = wtype.kind
    params: list[int] = []
    element: str | None = None
    if source_type is None:
        family = _NATURAL[dialect][kind]
    else:
        family, params, element = _source_family(source_type, dialect)
    named = source_type or family
    refused = _REFUSED.get((dialect, family))
    if family == "array" and element in _PG_JSON_ARRAY_ELEMENTS and kind is Kind.JSON:
        refused = None
    if family == "bit" and kind is Kind.BYTES:
        width = params[0] if params else 1
        if dialect == "postgres" and width > 64:
            raise NotComparableError(
                f"{dialect} {named}: bit strings longer than 64 bits are stored as Debezium's "
                "BitSet bytes, which SQL here builds only from a 64-bit integer"
            )
        if dialect == "mysql":
            return _mysql_bits(width)
    if dialect == "mysql" and family == "decimal" and kind is Kind.DECIMAL and source_type:
        return _mysql_decimal(params[1] if len(params) > 1 else 0)  # DECIMAL is DECIMAL(10, 0)
    if refused is not None:
        raise NotComparableError(f"{dialect} {named}: {refused}")
    rule = _SOURCE_RULES[dialect].get(family, {}).get(kind)
    if rule is None:
        natural = {f: k for k, f in _NATURAL[dialect].items()}.get(family)
        if kind is Kind.STRING and natural not in (None, kind):
            raise NotComparableError(
                f"{dialect} {named}: "
                + _UNDECLARED.format(source=named, kind=wtype, dialect=dialect)
            )
        raise NotComparableError(
            f"{dialect} {named}: a state-table column of type {wtype} does not hold what the "
            f"capture makes of a {named} value; no rendering compares them"
        )
    return rule


#: Kinds whose canonical text never holds a comma and never starts with ``~`` (numbers, times,
#: booleans, hex): in a row text they end with a comma instead of carrying their length.
DELIMITED_KINDS = frozenset(
    {
        Kind.BOOL,
        Kind.INT64,
        Kind.FLOAT64,
        Kind.DECIMAL,
        Kind.BYTES,
        Kind.DATE,
        Kind.TIME,
        Kind.DATETIME,
        Kind.TIMESTAMP,
    }
)


def row_text(columns: Sequence[exp.Expr], dialect: str, delimited: Sequence[bool] = ()) -> exp.Expr:
    """Unambiguous concatenation of already rendered texts: per column ``N`` when NULL, else
    ``L`` + char length + ``:`` + text (so NULL differs from '' and 'a|b','c' differs from
    'a','b|c'). A column marked in ``delimited`` (its kind in :data:`DELIMITED_KINDS`, on both
    sides) is its text + ``,``, or ``~`` when NULL: a cheaper form that stays unambiguous because
    such a text holds no comma and no text starts with ``~``.

    Each text appears twice in the result: pass column references of a derived table
    that renders the columns when the renderings are long (floats on BigQuery).
    """
    if dialect not in DIALECTS:
        raise ValueError(f"unknown dialect {dialect!r}; expected one of {', '.join(DIALECTS)}")
    plain = [*delimited, *[False] * len(columns)][: len(columns)]
    parts: list[exp.Expr] = [
        exp.Coalesce(this=_concat(c.copy(), _str(",")), expressions=[_str("~")])
        if short
        else exp.Coalesce(
            this=_concat(
                _str("L"), _as_text(exp.Length(this=c.copy()), dialect), _str(":"), c.copy()
            ),
            expressions=[_str("N")],
        )
        for c, short in zip(columns, plain, strict=True)
    ]
    if not parts:
        return _str("")
    return parts[0] if len(parts) == 1 else _concat(*parts)


_ROW_HASH = _template(
    # the database's text is UTF-8 (the snapshot checks server_encoding), so MD5 hashes the
    # same bytes as everywhere else without a CONVERT_TO copy
    postgres="CAST(CAST('x' || SUBSTRING(MD5(__v), 1, 15) AS BIT(60)) AS BIGINT)",
    mysql="CAST(CONV(SUBSTRING(MD5(CONVERT(__v USING utf8mb4)), 1, 15), 16, 10) AS SIGNED)",
    duckdb="CAST('0x' || SUBSTRING(MD5(__v), 1, 15) AS BIGINT)",
    bigquery="CAST(CONCAT('0x', SUBSTRING(TO_HEX(MD5(__v)), 1, 15)) AS INT64)",
)


def row_hash(text: exp.Expr, dialect: str) -> exp.Expr:
    """A non-negative 60-bit integer: the first 15 hex digits of md5(text) (UTF-8), the same
    number in every dialect. Sums are not used: callers combine row hashes with ``BIT_XOR``
    (PostgreSQL 14+, MySQL, DuckDB, BigQuery)."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown dialect {dialect!r}; expected one of {', '.join(DIALECTS)}")
    return _ROW_HASH(text, dialect)


_SESSION: Mapping[str, list[str]] = {
    "postgres": [
        "SET TimeZone = 'UTC'",
        "SET DateStyle = 'ISO, YMD'",
        "SET IntervalStyle = 'postgres'",
        "SET extra_float_digits = 1",  # 1 or more: the shortest exact text of a float (PG 12+)
        "SET bytea_output = 'hex'",
        "SET standard_conforming_strings = on",  # backslashes in the regexes are literal
        "SET client_encoding = 'UTF8'",
    ],
    "mysql": [
        "SET time_zone = '+00:00'",
        "SET NAMES utf8mb4 COLLATE utf8mb4_bin",
        # none of PAD_CHAR_TO_FULL_LENGTH, NO_BACKSLASH_ESCAPES, ANSI_QUOTES, PIPES_AS_CONCAT
        "SET sql_mode = 'NO_ENGINE_SUBSTITUTION'",
    ],
    "duckdb": [],
    "bigquery": [],
}


def session_settings(dialect: str) -> list[str]:
    """Statements a source session runs first so rendering does not depend on user settings
    (PostgreSQL: TimeZone UTC, DateStyle ISO, IntervalStyle, extra_float_digits; MySQL: time_zone
    '+00:00', sql_mode, character set utf8mb4). The warehouses need none."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown dialect {dialect!r}; expected one of {', '.join(DIALECTS)}")
    return list(_SESSION[dialect])

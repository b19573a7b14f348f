"""MySQL/MariaDB values from either driver -> one canonical value, and back to Debezium's wire form."""

from __future__ import annotations

import datetime as dt
import math
import random
import struct
from decimal import Decimal
from types import SimpleNamespace

import pytest

from connectors.capture.binlog import GtidState
from connectors.capture.binlogs import BinlogStatus, default_server_id
from connectors.capture.mytypes import (
    ColumnSpec,
    my_type,
    spec_from_binlog,
    spec_from_information_schema,
)
from state_models.debezium import convert_value


def _roundtrip(spec: ColumnSpec, driver_value: object) -> object:
    """canonical value, checked to decode back to itself from the wire form."""
    t = my_type(spec)
    canonical = t.parse(driver_value)
    wire = t.wire(canonical) if t.wire else canonical
    field = {**t.schema, "field": "x"}
    assert convert_value(wire, field, None) == canonical
    return canonical


@pytest.mark.parametrize(
    ("spec", "snapshot_value", "binlog_value", "canonical"),
    [
        (ColumnSpec("decimal", precision=10, scale=2), Decimal("9.99"), Decimal("9.99"), Decimal("9.99")),
        (ColumnSpec("float"), 1.1, 1.100000023841858, 1.1),
        (ColumnSpec("datetime", fsp=6), dt.datetime(2026, 1, 2, 3, 4, 5, 6), dt.datetime(2026, 1, 2, 3, 4, 5, 6), "2026-01-02T03:04:05.000006"),
        (ColumnSpec("datetime"), dt.datetime(2026, 1, 2, 3, 4, 5), dt.datetime(2026, 1, 2, 3, 4, 5), "2026-01-02T03:04:05.000000"),
        (ColumnSpec("timestamp", fsp=3), dt.datetime(2026, 1, 2, 3, 4, 5, 123000), dt.datetime(2026, 1, 2, 3, 4, 5, 123000), "2026-01-02T03:04:05.123Z"),
        (ColumnSpec("timestamp"), dt.datetime(2026, 1, 2, 3, 4, 5), dt.datetime(2026, 1, 2, 3, 4, 5), "2026-01-02T03:04:05Z"),
        (ColumnSpec("date"), dt.date(2026, 2, 3), dt.date(2026, 2, 3), "2026-02-03"),
        (ColumnSpec("date"), "0000-00-00", None, None),
        (ColumnSpec("time", fsp=6), dt.timedelta(hours=13, microseconds=5), dt.timedelta(hours=13, microseconds=5), "13:00:00.000005"),
        (ColumnSpec("set", labels=("p", "q", "r")), "p,r", {"r", "p"}, "p,r"),
        (ColumnSpec("enum", labels=("x", "y")), "y", "y", "y"),
        (ColumnSpec("bit", precision=1), b"\x01", "1", True),
        (ColumnSpec("bit", precision=10), b"\x02\x01", "1000000001", "AQI="),
        (ColumnSpec("blob", binary=True), b"\x00\xff", b"\x00\xff", "AP8="),
        # the binlog drops a binary(n)'s trailing 0x00 bytes; an all-zero one arrives as ''
        (ColumnSpec("binary", binary=True, length=4), b"\x01\x00\x00\x00", b"\x01", "AQAAAA=="),
        (ColumnSpec("binary", binary=True, length=4), b"\x00\x00\x00\x00", "", "AAAAAA=="),
        (ColumnSpec("varbinary", binary=True), b"\x01\x00", b"\x01\x00", "AQA="),
        (ColumnSpec("set", labels=("p", "q", "r")), "", set(), ""),
        (ColumnSpec("json"), '{"k": [1]}', {b"k": [1]}, '{"k": [1]}'),
        (ColumnSpec("year"), 2024, 2024, 2024),
        (ColumnSpec("bigint", unsigned=True), 2**64 - 1, 2**64 - 1, 2**64 - 1),
    ],
)  # fmt: skip
def test_snapshot_and_binlog_values_meet_in_one_canonical_value(
    spec: ColumnSpec, snapshot_value: object, binlog_value: object, canonical: object
) -> None:
    if snapshot_value is not None and binlog_value is not None:
        assert _roundtrip(spec, snapshot_value) == canonical
        assert _roundtrip(spec, binlog_value) == canonical
    else:
        assert (
            my_type(spec).parse(snapshot_value if binlog_value is None else binlog_value)
            == canonical
        )


def test_information_schema_and_table_map_describe_a_column_alike() -> None:
    info = spec_from_information_schema("enum", "enum('a','it''s')", None, None, None, "utf8mb4")
    assert info.labels == ("a", "it's")
    assert spec_from_information_schema("int", "int(10) unsigned", 10, 0, None, None).unsigned
    column = SimpleNamespace(
        type=246, precision=12, decimals=2, unsigned=False, character_set_name=None, fsp=0
    )
    assert my_type(spec_from_binlog(column)) == my_type(
        spec_from_information_schema("decimal", "decimal(12,2)", 12, 2, None, None)
    )
    text = SimpleNamespace(type=252, unsigned=False, character_set_name="utf8")
    blob = SimpleNamespace(type=252, unsigned=False, character_set_name="binary")
    assert my_type(spec_from_binlog(text)).schema == {"type": "string"}
    assert my_type(spec_from_binlog(blob)).schema == {"type": "bytes"}


def test_a_binary_n_knows_its_length_from_either_source_and_a_varbinary_has_none() -> None:
    fixed = SimpleNamespace(type=254, max_length=4, unsigned=False, character_set_name="binary")
    info = spec_from_information_schema(
        "binary", "binary(4)", None, None, None, None, octet_length=4
    )
    assert spec_from_binlog(fixed).length == info.length == 4
    assert my_type(spec_from_binlog(fixed)) == my_type(info)
    assert my_type(info).parse(b"\x01") == "AQAAAA=="
    varying = SimpleNamespace(type=15, max_length=4, unsigned=False, character_set_name="binary")
    assert spec_from_binlog(varying).length is None
    assert my_type(spec_from_binlog(varying)).parse(b"\x01") == "AQ=="
    text = SimpleNamespace(type=254, max_length=12, unsigned=False, character_set_name="utf8mb4")
    assert my_type(spec_from_binlog(text)).parse("ab") == "ab"


def test_a_binary_n_value_longer_than_n_is_refused_not_cut() -> None:
    with pytest.raises(ValueError, match=r"5 bytes .* binary\(4\)"):
        my_type(ColumnSpec("binary", binary=True, length=4)).parse(b"\x01" * 5)


def test_gtid_state_keeps_the_last_gtid_of_each_mariadb_domain() -> None:
    state = GtidState("0-1-5,1-2-9", mariadb=True)
    state.add("0-1-6")
    state.add("2-1-1")
    assert state.text() == "0-1-6,1-2-9,2-1-1"
    assert GtidState(None, mariadb=True).text() is None


def test_binlog_lag_and_a_purged_file() -> None:
    files = [("mysql-bin.000002", 1000), ("mysql-bin.000003", 500)]
    status = BinlogStatus(
        files, "mysql-bin.000003", 500, "0-1-9", {"file": "mysql-bin.000002", "pos": 400}
    )
    assert status.lag_bytes == 600 + 500 and not status.purged and not status.warnings("pay")
    gone = BinlogStatus(
        files, "mysql-bin.000003", 500, None, {"file": "mysql-bin.000001", "pos": 4}
    )
    assert gone.purged and gone.lag_bytes is None
    assert "re-snapshot the source" in gone.warnings("pay")[0]
    assert 1 <= default_server_id("pay") < 2**32 and default_server_id("pay") == default_server_id(
        "pay"
    )


@pytest.mark.parametrize(
    "duration",
    [
        dt.timedelta(hours=25, microseconds=5),
        dt.timedelta(hours=838, minutes=59, seconds=59),
        -dt.timedelta(seconds=1),
    ],
)
def test_a_time_outside_one_day_is_refused_not_wrapped(duration: dt.timedelta) -> None:
    # TIME is a duration in MySQL; as a time of day, 25:00 would become 01:00 (a different value)
    with pytest.raises(ValueError, match="outside one day"):
        my_type(ColumnSpec("time", fsp=6)).parse(duration)


# --------------------------------------------------------------------------- FLOAT: 32-bit values

FLT_MAX = struct.unpack("<f", b"\xff\xff\x7f\x7f")[0]
FLT_MIN = struct.unpack("<f", b"\x00\x00\x80\x00")[0]  # the smallest normal float32
FLT_TRUE_MIN = struct.unpack("<f", b"\x01\x00\x00\x00")[0]  # the smallest subnormal


def _shortest_float32(bits: bytes) -> float:
    """The shortest decimal that reads back as the same float32 (numpy's Dragon4, an oracle
    independent of ours), as the double that decimal is."""
    import numpy as np

    (value,) = np.frombuffer(bits, dtype="<f4")
    return float(np.format_float_scientific(value, unique=True))


@pytest.mark.parametrize(
    ("driver_value", "canonical"),
    [
        (0.0, 0.0),
        (FLT_TRUE_MIN, 1e-45),
        (1e-45, 1e-45),  # the snapshot's text of it
        (FLT_MIN, 1.1754944e-38),
        (FLT_MAX, 3.4028235e38),  # 3.403e38, a shorter candidate, is past FLT_MAX: no overflow
        (-FLT_MAX, -3.4028235e38),
        (struct.unpack("<f", b"\xfe\xff\x7f\x7f")[0], 3.4028233e38),  # the float below FLT_MAX
        (1 / 3, 0.33333334),
        (float(struct.unpack("<f", struct.pack("<f", 1 / 3))[0]), 0.33333334),
        (0.1, 0.1),
        (16777216.0, 16777216.0),
        (2.0**-149 * 3, 4e-45),
    ],
)
def test_a_float_is_the_shortest_decimal_of_its_32_bit_value(
    driver_value: float, canonical: float
) -> None:
    parsed = my_type(ColumnSpec("float")).parse(driver_value)
    assert parsed == canonical and math.copysign(1, parsed) == math.copysign(1, canonical)
    assert struct.pack("<f", parsed) == struct.pack("<f", driver_value)


def test_negative_zero_infinities_and_nan_pass_through_a_float() -> None:
    parse = my_type(ColumnSpec("float")).parse
    assert math.copysign(1, parse(-0.0)) == -1 and parse(-0.0) == 0
    assert parse(math.inf) == math.inf and parse(-math.inf) == -math.inf
    assert math.isnan(parse(math.nan))


def test_a_value_outside_a_float_is_refused_not_made_infinite() -> None:
    with pytest.raises(ValueError, match="FLOAT"):
        my_type(ColumnSpec("float")).parse(1e39)


def test_every_finite_32_bit_float_is_its_shortest_decimal() -> None:
    rng = random.Random(20260214)
    patterns = [rng.getrandbits(32) for _ in range(20_000)]
    # every exponent, both ends of each binade, subnormals
    patterns += [e << 23 | m for e in range(255) for m in (0, 1, 0x7FFFFF, 0x400000)]
    patterns += list(range(1, 64))
    parse = my_type(ColumnSpec("float")).parse
    for pattern in patterns:
        for sign in (0, 1 << 31):
            bits = struct.pack("<I", pattern | sign)
            (value,) = struct.unpack("<f", bits)
            if not math.isfinite(value):
                continue
            parsed = parse(value)
            assert struct.pack("<f", parsed) == bits, hex(pattern | sign)
            assert parsed == _shortest_float32(bits), hex(pattern | sign)
            assert parse(float(repr(parsed))) == parsed  # the canonical value is its own

import pytest
from hypothesis import given
from hypothesis import strategies as st

from state_models.seq import (
    binlog_file_number,
    binlog_seq,
    int_to_pg_lsn,
    make_seq,
    parse_seq,
    pg_lsn_to_int,
    pg_seq,
)

u64 = st.integers(min_value=0, max_value=2**64 - 1)
u32 = st.integers(min_value=0, max_value=2**32 - 1)


@given(st.tuples(u64, u64), st.tuples(u64, u64))
def test_pg_seq_string_order_is_numeric_order(a, b):
    sa, sb = pg_seq(*a), pg_seq(*b)
    assert (sa < sb) == (a < b)
    assert (sa == sb) == (a == b)


@given(st.tuples(u32, u64, u32), st.tuples(u32, u64, u32))
def test_binlog_seq_string_order_is_numeric_order(a, b):
    sa = binlog_seq(f"mysql-bin.{a[0]:06d}", a[1], a[2])
    sb = binlog_seq(f"mysql-bin.{b[0]:06d}", b[1], b[2])
    assert (sa < sb) == (a < b)


@given(u64)
def test_lsn_text_round_trip(v):
    assert pg_lsn_to_int(int_to_pg_lsn(v)) == v
    assert pg_lsn_to_int(str(v)) == v


@given(st.lists(u64, min_size=1, max_size=4))
def test_parse_inverts_make(sections):
    assert parse_seq(make_seq(*sections)) == tuple(sections)


def test_lsn_text_that_sorts_wrong_as_a_string_sorts_right_as_seq():
    # 'F/FFFFFFFF' > '10/0' as strings, but it is the smaller LSN (ingestr#733)
    assert "F/FFFFFFFF" > "10/0"
    assert pg_seq("F/FFFFFFFF", "F/FFFFFFFF") < pg_seq("10/0", "10/0")


def test_binlog_file_number_orders_by_index_not_name():
    assert binlog_file_number("mysql-bin.000010") == 10
    assert binlog_seq("mysql-bin.000009", 999999) < binlog_seq("mysql-bin.000010", 4)


def test_null_lsn_is_zero_and_bad_input_is_refused():
    assert pg_seq(None, "16/B374D848") == make_seq(0, 0x16B374D848)
    with pytest.raises(ValueError):
        pg_lsn_to_int("not-an-lsn")
    with pytest.raises(ValueError):
        make_seq(-1)
    with pytest.raises(ValueError):
        parse_seq("00ff")

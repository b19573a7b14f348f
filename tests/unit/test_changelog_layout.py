import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from state_models.changelog import (
    ChangeRange,
    Partition,
    file_name,
    file_path,
    parse_date_dir,
    parse_file_name,
    parse_partition,
    partition_of,
    table_dir,
    table_id_of_dir,
)
from state_models.seq import make_seq

u64 = st.integers(min_value=0, max_value=2**64 - 1)
seqs = st.lists(u64, min_size=1, max_size=3).map(lambda xs: make_seq(*xs))
writer_ids = st.from_regex(r"[A-Za-z0-9_.~]{1,20}", fullmatch=True)


@given(seqs, seqs, writer_ids)
def test_file_name_round_trips(a, b, writer_id):
    first, last = min(a, b), max(a, b)
    parsed = parse_file_name(file_name(first, last, writer_id))
    assert parsed is not None
    assert (parsed.first_seq, parsed.last_seq, parsed.writer_id) == (first, last, writer_id)


def test_file_name_has_no_slash_and_follows_the_layout():
    name = file_name(make_seq(1, 2), make_seq(3, 4), "w1")
    assert "/" not in name
    assert name == "0000000000000001_0000000000000002-0000000000000003_0000000000000004-w1.parquet"
    part = Partition(dt.date(2024, 5, 1), 7)
    assert (
        file_path("billing.public.subscriptions", part, name)
        == f"billing/public.subscriptions/dt=2024-05-01/hour=07/{name}"
    )


@pytest.mark.parametrize(
    "name",
    [
        "notes.txt",
        "x.parquet",
        "0000000000000001-0000000000000002.parquet",  # no writer id
        "0000000000000003-0000000000000002-w.parquet",  # first after last
        "000000000000000g-0000000000000002-w.parquet",
        "0000000000000001-0000000000000002-w-x.parquet",  # '-' in writer id
    ],
)
def test_names_outside_the_layout_are_not_parsed(name):
    assert parse_file_name(name) is None


def test_writer_id_must_fit_a_file_name():
    with pytest.raises(ValueError, match="writer id"):
        file_name(make_seq(1), make_seq(2), "a-b")


@given(st.integers(min_value=0, max_value=4_102_444_800_000_000))
def test_partition_contains_its_commit_time(ts):
    p = partition_of(ts)
    assert p.start_us <= ts < p.end_us
    assert parse_partition(*p.path.split("/")) == p


def test_partition_is_utc_hour():
    ts = int(dt.datetime(2024, 5, 1, 23, 59, 59, tzinfo=dt.UTC).timestamp() * 1_000_000)
    assert partition_of(ts).path == "dt=2024-05-01/hour=23"
    assert partition_of(ts + 1_000_000).path == "dt=2024-05-02/hour=00"


def test_partition_and_table_names_parse_back():
    assert parse_partition("dt=2024-05-01", "hour=24") is None
    assert parse_partition("dt=2024-13-01", "hour=01") is None
    assert parse_date_dir("dt=2024-02-30") is None
    assert table_dir("billing.public.subscriptions") == "billing/public.subscriptions"
    assert table_id_of_dir("billing", "public.subscriptions") == "billing.public.subscriptions"
    assert table_id_of_dir("_tmp", "x.y") is None
    with pytest.raises(ValueError, match=r"source\.schema\.table"):
        table_dir("public.subscriptions")


def test_range_overlap_and_cover():
    r = ChangeRange(since_us=100, until_us=200, from_seq=make_seq(5), to_seq=make_seq(9))
    assert r.overlaps_time(150, 400) and r.overlaps_time(0, 100)
    assert not r.overlaps_time(200, 300) and not r.overlaps_time(0, 99)
    assert r.covers_time(100, 199) and not r.covers_time(100, 200)
    assert r.overlaps_seqs(make_seq(9), make_seq(20)) and not r.overlaps_seqs(
        make_seq(10), make_seq(20)
    )
    assert r.covers_seqs(make_seq(5), make_seq(9)) and not r.covers_seqs(make_seq(4), make_seq(9))
    assert ChangeRange().is_everything and not r.is_everything


def test_range_rejects_nonsense():
    with pytest.raises(ValueError, match="from_seq"):
        ChangeRange(from_seq="12")
    with pytest.raises(ValueError, match="after"):
        ChangeRange(from_seq=make_seq(2), to_seq=make_seq(1))
    with pytest.raises(ValueError, match="before"):
        ChangeRange(since_us=5, until_us=5)

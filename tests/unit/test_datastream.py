"""The Datastream decoder: golden records from Google's documented format, ordering, malformed input."""

from __future__ import annotations

import itertools
import json
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from state_models.datastream import DatastreamChange, decode_datastream, fold_update_halves
from state_models.errors import DecodeError, UnknownTableError
from state_models.events import Op
from state_models.seq import int_to_pg_lsn, make_seq, parse_seq
from state_models.tables import TableInfo, resolver_for
from tests.scenario_orders import ORDERS

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "datastream"

SUBSCRIPTIONS = TableInfo(
    "billing.public.subscriptions",
    ("id",),
    {"id": "bigint", "plan": "text", "amount": "numeric(12,2)", "renews_at": "timestamptz"},
)
SHOP = resolver_for([ORDERS], "shop")
BILLING = resolver_for([SUBSCRIPTIONS], "billing")


def lines(name: str) -> list[str]:
    return [ln for ln in (GOLDEN / name).read_text().splitlines() if ln.strip()]


def docs(name: str) -> list[dict]:
    return [json.loads(ln) for ln in lines(name)]


def decode_file(name: str, resolve=SHOP):
    return fold_update_halves(decode_datastream(ln, resolve) for ln in lines(name))


def mysql_record(**changes) -> dict:
    doc = docs("mysql_binlog.jsonl")[2]  # the CDC insert of id 3 at mysql-bin.000041:1200
    for path, value in changes.items():
        target = doc
        *parents, leaf = path.split("__")
        for p in parents:
            target = target[p]
        if value is ...:
            del target[leaf]
        else:
            target[leaf] = value
    return doc


# --------------------------------------------------------------------------- golden files


def test_mysql_binlog_golden_ops_keys_seq_and_values():
    events = decode_file("mysql_binlog.jsonl")
    assert [(e.op, e.key["id"]) for e in events] == [
        (Op.READ, 1),
        (Op.READ, 2),
        (Op.INSERT, 3),
        (Op.UPDATE, 1),
        (Op.DELETE, 2),  # primary key 2 -> 20: the old key is deleted ...
        (Op.INSERT, 20),  # ... and the new key inserted, as Debezium reports a key change
        (Op.UPDATE, 1),  # UPDATE-DELETE + UPDATE-INSERT of one key: one version
        (Op.DELETE, 3),
    ]
    read, _, insert, _, pk_old, pk_new, folded, delete = events
    assert read.table == "shop.shop.orders"
    assert read.seq == make_seq(0, 0, 1771338598000)
    assert read.after == {
        "id": 1,
        "customer_id": 678,
        "total": Decimal("99.99"),
        "status": "placed",
        "created_at": "2026-02-17T14:00:00.000000",
    }
    assert insert.seq == make_seq(41, 1200, 1)
    assert insert.commit_ts == 1771338600000 * 1000
    assert (pk_old.seq, pk_new.seq) == (make_seq(41, 1990, 0), make_seq(41, 1990, 1))
    assert pk_old.before["id"] == 2 and pk_old.after is None
    assert folded.seq == make_seq(42, 300, 1)
    assert folded.before["total"] == Decimal("99.99")
    assert folded.after["total"] == Decimal("109.99")
    assert folded.raw.count("\n") == 1 and '"UPDATE-DELETE"' in folded.raw
    assert delete.before["id"] == 3 and delete.after is None and delete.seq == make_seq(42, 780, 1)
    assert delete.image is None


def test_postgres_golden_ops_lsn_and_values():
    events = decode_file("postgres.jsonl", BILLING)
    assert [(e.op, e.key["id"]) for e in events] == [
        (Op.READ, 1),
        (Op.INSERT, 2),
        (Op.UPDATE, 1),
        (Op.UPDATE, 1),
        (Op.DELETE, 2),
    ]
    assert events[0].after["renews_at"] == "2026-04-01T00:00:00.000000Z"
    assert events[0].after["amount"] == Decimal("9.99")
    lsns = [parse_seq(e.seq)[0] for e in events[1:]]
    assert [int_to_pg_lsn(v) for v in lsns] == ["F/FFFFFF28", "F/FFFFFFE0", "10/98", "10/1A0"]
    assert events[1].tx_id == "90412"
    assert events[4].before["plan"] is None  # REPLICA IDENTITY DEFAULT: only the key is known


def test_postgres_lsn_boundary_orders_numerically_not_as_text():
    events = decode_file("postgres.jsonl", BILLING)
    cdc = events[1:]
    texts = [d["source_metadata"]["lsn"] for d in docs("postgres.jsonl")[1:]]
    # the template's string comparison puts every 10/... before every F/...
    assert sorted(texts) != texts
    assert sorted(cdc, key=lambda e: e.seq) == cdc
    latest = max((e for e in events if e.key == {"id": 1}), key=lambda e: e.seq)
    assert latest.after["plan"] == "team"

    def at(lsn: str):
        doc = docs("postgres.jsonl")[2]
        doc["sort_keys"][1] = doc["source_metadata"]["lsn"] = lsn
        return decode_datastream(doc, BILLING).event.seq

    assert at("F/FFFFFFFF") < at("10/0") < at("10/1")
    assert "F/FFFFFFFF" > "10/0"


def test_gtid_mode_records_order_by_binlog_position_whatever_the_delivery_order():
    """The Dataflow template orders by seconds and reads log_file/log_position, which GTID mode
    renames (DataflowTemplates#3554): all four changes tie, and by milliseconds the delete sorts
    before two updates, resurrecting the row. The binlog position gives the commit order."""
    raw = lines("mysql_gtid.jsonl")
    status_in_binlog_order = ["placed", "paid", "shipped", None]

    template_keys = set()
    for d in docs("mysql_gtid.jsonl"):
        meta = d["source_metadata"]
        seconds = int(d["sort_keys"][0]) // 1000
        template_keys.add((seconds, meta.get("log_file"), meta.get("log_position")))
    assert len(template_keys) == 1  # the template cannot tell them apart

    by_millis = sorted(docs("mysql_gtid.jsonl"), key=lambda d: d["sort_keys"][0])
    assert by_millis[-1]["source_metadata"]["change_type"] != "DELETE"  # ms order is wrong too

    for delivery in itertools.permutations(raw):
        events = sorted(
            fold_update_halves(decode_datastream(r, SHOP) for r in delivery), key=lambda e: e.seq
        )
        assert [e.image["status"] if e.image else None for e in events] == status_in_binlog_order
        assert events[-1].op is Op.DELETE


def test_gtid_mode_falls_back_to_source_metadata_when_sort_keys_carry_no_position():
    doc = docs("mysql_gtid.jsonl")[1]
    doc["sort_keys"] = [doc["sort_keys"][0]]
    event = decode_datastream(doc, SHOP).event
    assert event.seq == make_seq(7, 5650, 1)


# --------------------------------------------------------------------------- semantics


def test_unknown_fields_are_kept_in_raw_and_gtid_becomes_tx_id():
    doc = mysql_record(source_metadata__gtid="3E11FA47-71CA-11E1-9E33-C80AA9429562:23")
    doc["future_field"] = {"x": 1}
    event = decode_datastream(json.dumps(doc), SHOP).event
    assert "future_field" in event.raw and '"x":1' in event.raw.replace(" ", "")
    assert event.tx_id == "3E11FA47-71CA-11E1-9E33-C80AA9429562:23"
    assert decode_datastream(doc, SHOP, keep_raw=False).event.raw is None


def test_backfill_reads_sort_before_cdc_and_by_read_time_among_themselves():
    first = docs("mysql_binlog.jsonl")[0]
    again = json.loads(json.dumps(first))
    again["source_timestamp"] = "2026-02-18T09:00:00.000"
    again["payload"]["status"] = "shipped"
    cdc = decode_datastream(mysql_record(), SHOP).event
    a, b = (decode_datastream(d, SHOP).event for d in (first, again))
    assert a.op is b.op is Op.READ
    assert a.seq < b.seq < cdc.seq
    assert a.event_id != b.event_id


def test_generic_read_method_takes_the_source_from_the_metadata():
    doc = docs("postgres.jsonl")[1]
    doc["read_method"] = "cdc"
    assert (
        decode_datastream(doc, BILLING).event.seq == decode_file("postgres.jsonl", BILLING)[1].seq
    )
    doc["read_method"] = "backfill"
    assert decode_datastream(doc, BILLING).event.op is Op.READ


@pytest.mark.parametrize(("is_deleted", "op"), [(True, Op.DELETE), (False, Op.UPDATE)])
def test_missing_change_type_falls_back_to_is_deleted(is_deleted, op):
    doc = mysql_record(source_metadata__change_type=..., source_metadata__is_deleted=is_deleted)
    assert decode_datastream(doc, SHOP).event.op is op


def test_key_from_record_primary_keys_when_the_registry_has_none():
    resolve = resolver_for([TableInfo("shop.shop.orders")], "shop")
    assert decode_datastream(mysql_record(), resolve).event.key == {"id": 3}


def test_fold_keeps_an_unpaired_update_before_as_a_delete_that_sorts_first():
    raw = lines("mysql_binlog.jsonl")
    before_half = decode_datastream(raw[6], SHOP)
    after_half = decode_datastream(raw[7], SHOP)
    [alone] = fold_update_halves([before_half])
    assert alone.op is Op.DELETE and alone.key == {"id": 1}
    [later] = fold_update_halves([after_half])
    assert alone.seq < later.seq
    [one] = fold_update_halves([before_half, after_half])
    assert one.op is Op.UPDATE and one.seq == later.seq and one.event_id == later.event_id


def test_fold_pairs_the_halves_whichever_comes_first():
    raw = lines("mysql_binlog.jsonl")
    before_half, after_half = (decode_datastream(raw[i], SHOP) for i in (6, 7))
    assert fold_update_halves([after_half, before_half]) == [
        fold_update_halves([before_half, after_half])[0]
    ]


def test_fold_turns_a_multi_row_key_change_into_deletes_and_inserts():
    raw = lines("mysql_binlog.jsonl")

    def half(i: int, key: int):
        doc = json.loads(raw[i])
        doc["payload"]["id"] = key
        return decode_datastream(doc, SHOP)

    # UPDATE orders SET id = id + 100 WHERE id IN (1, 2): one rows event, four records
    out = fold_update_halves([half(4, 1), half(5, 101), half(4, 2), half(5, 102)])
    assert [(e.op, e.key["id"]) for e in out] == [
        (Op.DELETE, 1),
        (Op.INSERT, 101),
        (Op.DELETE, 2),
        (Op.INSERT, 102),
    ]
    assert all(e.before is None for e in out if e.op is Op.INSERT)


def test_fold_only_pairs_halves_at_the_same_position():
    raw = lines("mysql_binlog.jsonl")
    before_half = decode_datastream(raw[6], SHOP)  # mysql-bin.000042:300
    other = decode_datastream(raw[3], SHOP)  # mysql-bin.000041:1590, same key
    out = fold_update_halves([before_half, other])
    assert [e.op for e in out] == [Op.DELETE, Op.UPDATE]
    assert isinstance(before_half, DatastreamChange) and before_half.is_update_before


@given(st.integers(0, 2**64 - 2), st.integers(0, 2**64 - 2))
def test_lsn_seq_order_is_numeric_order(a, b):
    def seq(v: int) -> str:
        doc = docs("postgres.jsonl")[1]
        doc["sort_keys"][1] = doc["source_metadata"]["lsn"] = int_to_pg_lsn(v)
        return decode_datastream(doc, BILLING).event.seq

    assert (seq(a) < seq(b)) == (a < b)


# --------------------------------------------------------------------------- malformed input

MALFORMED = [
    ("not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ("", "empty record"),
    (mysql_record(source_metadata=...), "source_metadata"),
    (mysql_record(payload=[1]), "payload"),
    (mysql_record(read_method=...), "read_method"),
    (mysql_record(read_method="oracle-cdc-logminer"), "unsupported Datastream source 'oracle'"),
    (mysql_record(source_metadata__change_type="UPSERT"), "unknown change_type 'UPSERT'"),
    (mysql_record(source_metadata__table=...), "does not name the table"),
    (
        mysql_record(
            sort_keys=[1], source_metadata__log_file=..., source_metadata__log_position=...
        ),
        "without a log position",
    ),
    (mysql_record(source_metadata__log_position=1201), "name different log positions"),
    (mysql_record(source_metadata__log_file="binlog", sort_keys=[1]), "not a binlog position"),
    (mysql_record(source_timestamp="yesterday"), "'source_timestamp' is not a timestamp"),
    (mysql_record(payload__id=...), "key column(s) ['id']"),
    (mysql_record(payload__total="abc"), "column 'total'"),
    (mysql_record(payload__created_at="soon"), "column 'created_at'"),
]


@pytest.mark.parametrize(("record", "message"), MALFORMED)
def test_malformed_records_raise_decode_error_with_the_raw_record(record, message):
    text = record if isinstance(record, str) else json.dumps(record)
    with pytest.raises(DecodeError) as err:
        decode_datastream(text, SHOP)
    assert message in str(err.value)
    assert err.value.raw == text


def test_bad_lsn_is_a_decode_error():
    doc = docs("postgres.jsonl")[1]
    doc["sort_keys"] = [doc["sort_keys"][0]]
    doc["source_metadata"]["lsn"] = "xyz"
    with pytest.raises(DecodeError, match="not a PostgreSQL LSN"):
        decode_datastream(doc, BILLING)


def test_unknown_table_keeps_the_raw_record():
    text = json.dumps(mysql_record(source_metadata__table="refunds"))
    with pytest.raises(UnknownTableError, match=r"shop\.refunds is not registered") as err:
        decode_datastream(text, SHOP)
    assert err.value.raw == text


def test_record_from_the_wrong_kind_of_source_is_rejected():
    with pytest.raises(DecodeError, match="registered as kind: postgres"):
        decode_datastream(mysql_record(), SHOP, kind="postgres")

"""The binlog reader's envelopes decode exactly like Debezium's MySQL connector's (golden files)."""

from __future__ import annotations

import json
from pathlib import Path

from connectors.capture.binlog import make_shape, source_block
from connectors.capture.mytypes import my_type, spec_from_information_schema
from state_models.debezium import decode_debezium
from state_models.tables import TableInfo, resolver_for

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "debezium" / "mysql_docs.jsonl"
COLUMNS = [  # inventory.customers of Debezium's MySQL documentation, as information_schema has it
    ("id", "int", "int(11)", 10, 0, None),
    ("first_name", "varchar", "varchar(255)", None, None, "utf8mb4"),
    ("last_name", "varchar", "varchar(255)", None, None, "utf8mb4"),
    ("email", "varchar", "varchar(255)", None, None, "utf8mb4"),
    ("balance", "decimal", "decimal(10,2)", 10, 2, None),
]


def test_our_envelope_of_a_documented_change_decodes_to_the_same_event() -> None:
    # declared types, as `cdc register` writes them, decode the envelopes without a schema block
    declared = {"id": "int", "balance": "decimal(10,2)"}
    info = TableInfo("shop.inventory.customers", ("id",), declared)
    resolve = resolver_for([info], "shop")
    types = [
        my_type(spec_from_information_schema(t, ct, p, s, None, cs))
        for _, t, ct, p, s, cs in COLUMNS
    ]
    names = [c[0] for c in COLUMNS]
    shape = make_shape(
        "shop",
        info,
        ("id",),
        "inventory",
        "customers",
        names,
        types,
        [n == "balance" for n in names],
    )
    lines = GOLDEN.read_text().splitlines()
    documented = json.loads(lines[0])
    # the schema of every column is Debezium's
    ours = json.loads(shape.envelope.render("c", None, {n: None for n in names}, {}, 0))  # type: ignore[union-attr]
    assert ours["schema"]["fields"][1]["fields"] == documented["schema"]["fields"][1]["fields"]
    ours_source = {f["field"] for f in ours["schema"]["fields"][2]["fields"]}
    assert {f["field"] for f in documented["schema"]["fields"][2]["fields"]} <= ours_source

    for line in lines[:3]:  # create (schema block, base64 decimal), update with a GTID, delete
        golden = decode_debezium(line, resolve)
        doc = json.loads(line)
        payload = doc.get("payload", doc)
        src = payload["source"]
        source = source_block(
            "shop",
            shape,
            golden.commit_ts,
            src["server_id"],
            src["gtid"],
            src["file"],
            src["pos"],
            src["row"],
            "false",
        )
        rendered = shape.envelope.render(  # type: ignore[union-attr]
            golden.op.value, golden.before, golden.after, source, golden.commit_ts
        )
        assert decode_debezium(rendered, resolve) == golden


def _event(cls: type, end: int, size: int, **attrs: object) -> object:
    """A mysql-replication event as the stream hands it over, without a packet to parse."""
    from types import SimpleNamespace

    ev = cls.__new__(cls)
    ev.packet = SimpleNamespace(log_pos=end, event_size=size, server_id=1)
    ev.timestamp = 1_700_000_000
    rows = attrs.pop("rows", None)
    if rows is not None:
        ev._RowsEvent__rows = rows
    ev.__dict__.update(attrs)
    return ev


def _transaction(gtid: str, start: int, ids: list[int]) -> list[object]:
    from types import SimpleNamespace

    from pymysqlreplication.event import MariadbGtidEvent, XidEvent
    from pymysqlreplication.row_event import WriteRowsEvent

    column = SimpleNamespace(
        name="id",
        type=8,
        unsigned=False,
        character_set_name=None,
        enum_values=None,
        set_values=None,
    )
    rows = [{"values": {"id": i}} for i in ids]
    return [
        _event(MariadbGtidEvent, start + 40, 40, gtid=gtid),
        _event(
            WriteRowsEvent, start + 100, 60, schema="shop", table="t", columns=[column], rows=rows
        ),
        _event(XidEvent, start + 130, 30),
    ]


def test_positions_inside_and_after_a_transaction_and_a_resume_skips_what_was_delivered() -> None:
    from connectors.capture.binlog import BinlogDecoder
    from state_models.events import ChangeEvent

    tables = {("shop", "t"): (TableInfo("pay.shop.t", ("id",)), ("id",))}
    start = {"file": "mysql-bin.000002", "pos": 1000, "gtid": "0-1-9", "last_seq": None}
    decoder = BinlogDecoder("pay", tables, start)
    gtid_ev, rows_ev, xid_ev = _transaction("0-1-10", 1000, [1, 2, 3])
    out: list[ChangeEvent] = []
    decoder.feed(gtid_ev, out)
    decoder.feed(rows_ev, out)
    mid = decoder.position()  # acknowledged here: reconnect at the transaction, skip its 3 rows
    assert (mid["file"], mid["pos"], mid["gtid"]) == ("mysql-bin.000002", 1000, "0-1-9")
    assert mid["last_seq"] == out[-1].seq and [e.key["id"] for e in out] == [1, 2, 3]
    assert [e.tx_id for e in out] == ["0-1-10"] * 3
    decoder.feed(xid_ev, out)
    assert decoder.position() == {**mid, "pos": 1130, "gtid": "0-1-10"}
    decoder.feed(rows_ev, out)  # replayed by a reconnect: seen already
    assert len(out) == 3

    # a restart from a position saved after the first two rows delivers only the third
    resumed = BinlogDecoder("pay", tables, {**mid, "last_seq": out[1].seq})
    again: list[ChangeEvent] = []
    for ev in _transaction("0-1-10", 1000, [1, 2, 3]):
        resumed.feed(ev, again)
    assert [e.key["id"] for e in again] == [3] and again[0] == out[2]


def _set_column(name: str, members: list[str] | None) -> object:
    from types import SimpleNamespace

    return SimpleNamespace(
        name=name, type=248, unsigned=False, character_set_name="utf8mb4", enum_values=None,
        set_values=members,
    )  # fmt: skip


def test_an_empty_set_is_the_empty_string_and_a_null_set_stays_null() -> None:
    # mysql-replication reads both as None and tells them apart only in its none_sources
    from pymysqlreplication.event import XidEvent
    from pymysqlreplication.row_event import UpdateRowsEvent, WriteRowsEvent

    from connectors.capture.binlog import BinlogDecoder
    from state_models.events import ChangeEvent

    id_column = _transaction("0-1-1", 0, [])[1].columns[0]  # type: ignore[attr-defined]
    columns = [id_column, _set_column("st", ["x", "y"]), _set_column("sn", ["x", "y"])]
    write = _event(
        WriteRowsEvent, 1100, 60, schema="shop", table="t", columns=columns,
        rows=[
            {"values": {"id": 1, "st": None, "sn": None},
             "none_sources": {"st": "empty set", "sn": "null"}},
            {"values": {"id": 2, "st": {"y", "x"}, "sn": None}, "none_sources": {"sn": "null"}},
        ],
    )  # fmt: skip
    update = _event(
        UpdateRowsEvent, 1200, 60, schema="shop", table="t", columns=columns,
        rows=[
            {"before_values": {"id": 2, "st": {"x", "y"}, "sn": None},
             "before_none_sources": {"sn": "null"},
             "after_values": {"id": 2, "st": None, "sn": None},
             "after_none_sources": {"st": "empty set", "sn": "empty set"}},
        ],
    )  # fmt: skip
    tables = {("shop", "t"): (TableInfo("pay.shop.t", ("id",)), ("id",))}
    decoder = BinlogDecoder("pay", tables, {"file": "mysql-bin.000002", "pos": 1000})
    out: list[ChangeEvent] = []
    for ev in (write, update, _event(XidEvent, 1230, 30)):
        decoder.feed(ev, out)
    assert [(e.before, e.after) for e in out] == [
        (None, {"id": 1, "st": "", "sn": None}),
        (None, {"id": 2, "st": "x,y", "sn": None}),
        ({"id": 2, "st": "x,y", "sn": None}, {"id": 2, "st": "", "sn": ""}),
    ]
    resolve = resolver_for([TableInfo("pay.shop.t", ("id",))], "pay")
    back = [decode_debezium(e.raw, resolve, record_key=dict(e.key)) for e in out]
    assert back == out
    # the types the envelope states travel with the event (the merge types undeclared columns)
    assert [e.source_types for e in out] == [e.source_types for e in back]
    assert out[0].source_types == {
        "id": "int64",
        "st": "io.debezium.data.EnumSet",
        "sn": "io.debezium.data.EnumSet",
    }


def test_a_set_without_its_members_in_the_binlog_stops_the_capture() -> None:
    # without them mysql-replication reads every value as an empty set
    import pytest
    from pymysqlreplication.row_event import WriteRowsEvent

    from connectors.capture.base import CaptureError
    from connectors.capture.binlog import BinlogDecoder

    id_column = _transaction("0-1-1", 0, [])[1].columns[0]  # type: ignore[attr-defined]
    write = _event(
        WriteRowsEvent, 1100, 60, schema="shop", table="t",
        columns=[id_column, _set_column("st", None)],
        rows=[{"values": {"id": 1, "st": None}, "none_sources": {"st": "empty set"}}],
    )  # fmt: skip
    tables = {("shop", "t"): (TableInfo("pay.shop.t", ("id",)), ("id",))}
    decoder = BinlogDecoder("pay", tables, {"file": "mysql-bin.000002", "pos": 1000})
    with pytest.raises(CaptureError, match="binlog_row_metadata = FULL"):
        decoder.feed(write, [])

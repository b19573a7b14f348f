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

"""The Debezium decoder, on real captured output (tests/golden/debezium) and on malformed input."""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from state_models.debezium import TOMBSTONE, decode_debezium
from state_models.errors import DecodeError, UnknownTableError
from state_models.events import Op, image_to_json
from state_models.seq import parse_seq
from state_models.tables import TableInfo, resolver_for

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "debezium"
VARIANTS = ["schemas_precise", "noschemas_precise", "noschemas_string", "schemas_string"]

SUBSCRIPTION_COLUMNS = {
    "id": "bigint",
    "user_id": "bigint",
    "plan": "text",
    "status": "text",
    "amount": "numeric(12,2)",
    "renews_at": "timestamptz",
    "started_on": "date",
    "trial_ends": "timestamp",
    "notes": "text",
    "meta": "jsonb",
}
TABLES = [
    TableInfo("billing.public.subscriptions", ("id",), SUBSCRIPTION_COLUMNS),
    TableInfo(
        "billing.public.plan_prices",
        ("plan", "currency"),
        {"plan": "text", "currency": "text", "price": "numeric(10,2)"},
    ),
]
RESOLVE = resolver_for(TABLES, "billing")
#: The same tables of a source whose Debezium sends decimals as base64 without value schemas
#: (`debezium: {decimal.handling.mode: precise}` in the registry).
RESOLVE_BASE64 = resolver_for(
    [dataclasses.replace(t, base64_decimals=True) for t in TABLES], "billing"
)


def resolver(variant: str):
    return RESOLVE_BASE64 if variant == "noschemas_precise" else RESOLVE


def golden(variant: str) -> list[dict]:
    return [json.loads(line) for line in (GOLDEN / f"pg_{variant}.jsonl").read_text().splitlines()]


def decode_all(variant: str, with_keys: bool = False):
    out = []
    for rec in golden(variant):
        out.append(
            decode_debezium(
                rec["value"], resolver(variant), record_key=rec["key"] if with_keys else None
            )
        )
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_golden_ops_keys_and_values(variant):
    events = decode_all(variant)
    ops = [e if e is TOMBSTONE else e.op for e in events]
    assert ops == [Op.READ] * 4 + [
        Op.INSERT,
        Op.UPDATE,
        Op.UPDATE,
        Op.UPDATE,
        Op.UPDATE,
        Op.INSERT,
        Op.INSERT,
        Op.DELETE,
        TOMBSTONE,
        Op.TRUNCATE,
    ]
    first = events[0]
    assert first.table == "billing.public.subscriptions"
    assert first.key == {"id": 1}
    assert first.after["amount"] == Decimal("9.99")
    assert first.after["renews_at"] == "2026-12-01T00:00:00.000000Z"
    assert first.after["started_on"] == "2026-11-01"
    assert first.after["trial_ends"] == "2026-11-15T12:00:00.000000"
    assert json.loads(first.after["meta"]) == {"src": "web"}
    assert first.tx_id is not None and first.commit_ts > 1_700_000_000_000_000


@pytest.mark.parametrize("variant", VARIANTS)
def test_golden_toast_placeholder_is_marked_not_stored(variant):
    events = decode_all(variant)
    insert, toast_update = events[4], events[6]
    assert insert.after["notes"].startswith("long note long note")
    assert toast_update.key == {"id": 3}
    assert toast_update.after["status"] == "past_due"
    assert toast_update.unavailable == ("notes",)
    assert "notes" not in toast_update.after
    assert "__debezium_unavailable_value" not in json.dumps(image_to_json(toast_update.after))


@pytest.mark.parametrize("variant", VARIANTS)
def test_golden_delete_truncate_and_composite_keys(variant):
    events = decode_all(variant)
    delete, truncate = events[11], events[13]
    assert delete.op is Op.DELETE and delete.key == {"id": 2} and delete.after is None
    assert (
        truncate.op is Op.TRUNCATE
        and truncate.table == "billing.public.plan_prices"
        and truncate.key == {}
    )
    ab_c, a_bc = events[9], events[10]
    assert ab_c.key == {"plan": "ab", "currency": "c"} and a_bc.key == {
        "plan": "a",
        "currency": "bc",
    }
    assert ab_c.event_id != a_bc.event_id
    assert ab_c.after["price"] == Decimal("1.00")


@pytest.mark.parametrize("variant", VARIANTS)
def test_golden_streaming_seq_follows_delivery_order(variant):
    events = [e for e in decode_all(variant) if e is not TOMBSTONE]
    streamed = events[4:]
    seqs = [e.seq for e in streamed]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(parse_seq(s)[0] > 0 for s in seqs)
    snapshot = events[:4]
    assert all(
        parse_seq(e.seq)[0] == 0 for e in snapshot
    )  # [null, lsn]: before every streamed change
    assert max(e.seq for e in snapshot) < min(seqs)
    # one transaction: same commit-ordering section, increasing change LSN
    tx = streamed[3:7]
    assert len({parse_seq(e.seq)[0] for e in tx}) == 1 and len({e.tx_id for e in tx}) == 1


def test_every_wire_format_decodes_to_the_same_events():
    """Schemas on/off and decimal precise/string are the same changes: identical after decoding."""

    def canonical(variant):
        return [
            (
                e.table,
                e.op,
                e.key,
                image_to_json(e.before),
                image_to_json(e.after),
                e.unavailable,
                e.seq if parse_seq(e.seq)[0] else None,
                e.commit_ts if parse_seq(e.seq)[0] else None,
            )
            for e in decode_all(variant)
            if e is not TOMBSTONE
        ]

    reference = canonical(VARIANTS[0])
    for v in VARIANTS[1:]:
        assert canonical(v) == reference, v


def test_record_key_gives_the_same_key_and_event_id():
    for with_key, without in zip(
        decode_all("schemas_precise", with_keys=True), decode_all("schemas_precise"), strict=True
    ):
        if with_key is TOMBSTONE:
            continue
        assert with_key.key == without.key and with_key.event_id == without.event_id


def test_decoding_is_stable():
    """Decoding the same message twice (or its re-serialised dict) gives equal events and ids."""
    for rec in golden("schemas_string"):
        if rec["value"] is None:
            continue
        a = decode_debezium(rec["value"], RESOLVE)
        b = decode_debezium(json.loads(rec["value"]), RESOLVE)
        assert a == b and a.event_id == b.event_id


def test_without_declared_types_base64_decimals_need_a_schema():
    bare = resolver_for([TableInfo("billing.public.subscriptions", ("id",))], "billing")
    value = golden("noschemas_precise")[0]["value"]
    event = decode_debezium(value, bare)
    assert event.after["amount"] == "A+c="  # undecodable without a type: left as sent, not guessed
    with_schema = decode_debezium(golden("schemas_precise")[0]["value"], bare)
    assert with_schema.after["amount"] == Decimal("9.99")


def test_mysql_documented_envelopes():
    resolve = resolver_for([TableInfo("shop.inventory.customers", ("id",))], "shop")
    lines = (GOLDEN / "mysql_docs.jsonl").read_text().splitlines()
    events = [decode_debezium(line, resolve) for line in lines]
    create, update, delete, tomb, later = events
    assert (
        create.op is Op.INSERT
        and create.after["balance"] == Decimal("7.83")
        and create.key == {"id": 1004}
    )
    assert (
        update.after["first_name"] == "Anne Marie"
        and update.tx_id == "3E11FA47-71CA-11E1-9E33-C80AA9429562:23"
    )
    assert parse_seq(update.seq) == (3, 484, 0)
    assert delete.op is Op.DELETE and delete.key == {"id": 1004}
    assert tomb is TOMBSTONE
    assert create.seq < update.seq < delete.seq < later.seq  # file .000004 after .000003
    assert create.commit_ts == 0 and update.commit_ts == 1465581029100 * 1000


@pytest.mark.parametrize(
    "message, reason",
    [
        ("{not json", "not valid JSON"),
        ('["a"]', "expected a JSON object"),
        ('{"after": {"id": 1}, "source": {}}', "missing field 'op'"),
        ('{"op": "x", "source": {}}', "unsupported op 'x'"),
        ('{"op": "c", "after": {"id": 1}}', "missing or invalid field 'source'"),
        (
            '{"op": "c", "after": {"id": 1}, "source": {"connector": "postgresql", "schema": "public"}}',
            "does not name the table",
        ),
        (
            '{"op": "c", "after": null, "source": {"connector": "postgresql", "schema": "public", '
            '"table": "plan_prices", "lsn": 5, "ts_us": 1}}',
            "without an 'after' image",
        ),
        (
            '{"op": "c", "after": {"plan": "a"}, "source": {"connector": "postgresql", "schema": "public", '
            '"table": "plan_prices", "lsn": 5, "ts_us": 1}}',
            "missing from the row image",
        ),
        (
            '{"op": "c", "after": {"plan": "a", "currency": "b"}, "source": {"connector": "postgresql", '
            '"schema": "public", "table": "plan_prices", "ts_us": 1}}',
            "without source.sequence or source.lsn",
        ),
        (
            '{"op": "c", "after": {"plan": "a", "currency": "b"}, "source": {"connector": "oracle", '
            '"schema": "public", "table": "plan_prices", "ts_us": 1}}',
            "unsupported connector",
        ),
        (
            '{"op": "c", "after": {"plan": "a", "currency": "b", "price": "!!"}, "source": {"connector": '
            '"postgresql", "schema": "public", "table": "plan_prices", "lsn": 5, "ts_us": 1}}',
            "column 'price'",
        ),
        (
            '{"op": "c", "after": {"plan": "a", "currency": "b"}, "source": {"connector": "postgresql", '
            '"schema": "public", "table": "plan_prices", "sequence": "[1]", "ts_us": 1}}',
            "not [lastCommitLsn, lsn]",
        ),
    ],
)
def test_malformed_input_raises_a_typed_error_that_keeps_the_raw_message(message, reason):
    with pytest.raises(DecodeError) as exc:
        decode_debezium(message, RESOLVE)
    assert reason in str(exc.value)
    assert exc.value.raw == message


def test_unregistered_table_is_its_own_error_and_keeps_the_raw_message():
    value = golden("noschemas_string")[0]["value"]
    only_prices = resolver_for([TABLES[1]], "billing")
    with pytest.raises(UnknownTableError, match=r"public\.subscriptions is not registered") as exc:
        decode_debezium(value, only_prices)
    assert exc.value.raw == value


@settings(max_examples=200)
@given(st.text(max_size=200))
def test_arbitrary_text_never_crashes_the_decoder(text):
    try:
        result = decode_debezium(text, RESOLVE)
    except (DecodeError, UnknownTableError) as exc:
        assert exc.raw == text
    else:
        assert result is TOMBSTONE or result.table.startswith("billing.")


def test_events_survive_the_record_round_trip():
    from state_models.events import event_from_record, event_to_record

    for e in decode_all("schemas_precise"):
        if e is TOMBSTONE:
            continue
        back = event_from_record(json.loads(json.dumps(event_to_record(e))))
        assert back.event_id == e.event_id and back.seq == e.seq and back.op == e.op
        assert image_to_json(back.after) == image_to_json(e.after)
        assert image_to_json(back.before) == image_to_json(e.before)
        assert back.unavailable == e.unavailable and back.raw == e.raw


def test_key_values_come_typed_from_the_image_when_the_record_key_has_no_schema():
    value = {
        "before": None,
        "after": {"ref": "AMc=", "n": 1},
        "source": {
            "connector": "postgresql",
            "schema": "public",
            "table": "ledger",
            "sequence": '["10","20"]',
            "lsn": 20,
            "ts_us": 1,
        },
        "op": "c",
    }
    info = TableInfo(
        id="billing.public.ledger",
        columns={"ref": "numeric(10,2)", "n": "int"},
        base64_decimals=True,  # schemaless decimal.handling.mode=precise
    )
    event = decode_debezium(value, lambda s, t: info, record_key='{"ref":"AMc="}')
    assert event.key == {"ref": Decimal("1.99")}


@pytest.mark.parametrize(
    "text, base64_decimals, expected",
    [
        ("12.34", False, Decimal("12.34")),
        ("-1e3", False, Decimal("-1E+3")),
        ("NaN", False, Decimal("NaN")),  # kept as NaN: the warehouse coercion refuses it by name
        ("-Infinity", False, Decimal("-Infinity")),
        ("oops", False, "not a decimal number"),
        ("oops!", True, "cannot decode 'oops!'"),  # not base64 either
        ("AMc=", True, Decimal("1.99")),  # base64 of the unscaled 199, scale 2
        ("1234", False, Decimal("1234")),
    ],
)
def test_a_decimal_column_is_never_guessed(text, base64_decimals, expected):
    value = {
        "before": None,
        "after": {"id": 1, "amount": text},
        "source": {
            "connector": "postgresql",
            "schema": "public",
            "table": "ledger",
            "sequence": '["10","20"]',
            "lsn": 20,
            "ts_us": 1,
        },
        "op": "c",
    }
    info = TableInfo(
        id="billing.public.ledger",
        primary_key=("id",),
        columns={"id": "bigint", "amount": "numeric(10,2)"},
        base64_decimals=base64_decimals,
    )
    if isinstance(expected, str):
        with pytest.raises(DecodeError, match=expected):
            decode_debezium(value, lambda s, t: info)
    else:
        got = decode_debezium(value, lambda s, t: info).after["amount"]
        assert got == expected or (got.is_nan() and expected.is_nan())

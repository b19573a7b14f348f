"""``encode_debezium``: the envelope our native readers publish decodes back to the same event."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from state_models.debezium import decode_debezium, encode_debezium
from state_models.events import ChangeEvent, Op
from state_models.seq import make_seq
from state_models.tables import TableInfo, resolver_for

COLUMNS = {
    "id": "bigint",
    "amount": "numeric(12,2)",
    "note": "text",
    "at": "timestamptz",
    "score": "double precision",
    "meta": "jsonb",
}
KINDS = {"billing": "postgres", "payments": "mysql"}
TABLES = {
    "billing": TableInfo("billing.public.accounts", ("id",), COLUMNS),
    "payments": TableInfo("payments.payments.accounts", ("id",), COLUMNS),
}

sections = st.integers(min_value=0, max_value=2**63)
rows = st.fixed_dictionaries(
    {
        "id": st.integers(min_value=-(2**62), max_value=2**62),
        "amount": st.decimals(
            min_value=-(10**9), max_value=10**9, places=2, allow_nan=False, allow_infinity=False
        ),
        "note": st.one_of(st.none(), st.text(max_size=20)),
        "at": st.datetimes().map(lambda d: d.isoformat(timespec="microseconds")),
        "score": st.floats(allow_nan=False),
        "meta": st.one_of(
            st.none(), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3)
        ),
    }
)


@st.composite
def events(draw: st.DrawFn) -> tuple[ChangeEvent, str]:
    source = draw(st.sampled_from(sorted(KINDS)))
    kind = KINDS[source]
    op = draw(st.sampled_from(list(Op)))
    before = draw(rows) if op in (Op.UPDATE, Op.DELETE) else None
    after = draw(rows) if op in (Op.INSERT, Op.UPDATE, Op.READ) else None
    unavailable: tuple[str, ...] = ()
    if op is Op.UPDATE and after is not None and draw(st.booleans()):
        unavailable = ("note",)  # an unchanged TOAST value
        after = {k: v for k, v in after.items() if k != "note"}
    if before is not None and op is Op.UPDATE:
        before = {**before, "id": after["id"]} if after else before
    image = before if op is Op.DELETE else after
    key = {} if op is Op.TRUNCATE else {"id": image["id"]}
    n = 2 if kind == "postgres" else 3
    event = ChangeEvent(
        table=TABLES[source].id,
        op=op,
        key=key,
        before=before,
        after=after,
        seq=make_seq(*draw(st.lists(sections, min_size=n, max_size=n))),
        commit_ts=draw(st.integers(min_value=0, max_value=2**52)),
        tx_id=draw(st.one_of(st.none(), st.text(min_size=1, max_size=12))),
        unavailable=unavailable,
    )
    return event, kind


@settings(max_examples=300)
@given(events())
def test_encode_then_decode_is_the_same_event(case):
    event, kind = case
    text = encode_debezium(event, kind)
    assert text == encode_debezium(event, kind)  # deterministic
    source = event.table.split(".", 1)[0]
    decoded = decode_debezium(text, resolver_for([TABLES[source]], source))
    assert decoded == event
    assert decoded.event_id == event.event_id


def test_envelope_has_debeziums_shape():
    event = ChangeEvent(
        table="billing.public.accounts",
        op=Op.UPDATE,
        key={"id": 7},
        before=None,
        after={"id": 7, "amount": Decimal("12.50"), "score": float("inf")},
        seq=make_seq(0x10, 0x20),
        commit_ts=1_700_000_000_123_456,
        tx_id="771",
        unavailable=("note",),
    )
    doc = json.loads(encode_debezium(event, "postgres"))
    assert doc["op"] == "u"
    assert doc["after"] == {
        "id": 7,
        "amount": "12.50",
        "score": "Infinity",
        "note": "__debezium_unavailable_value",
    }
    assert doc["source"]["connector"] == "postgresql"
    assert doc["source"]["schema"] == "public" and doc["source"]["table"] == "accounts"
    assert json.loads(doc["source"]["sequence"]) == ["16", "32"]
    assert doc["source"]["ts_us"] == 1_700_000_000_123_456
    assert doc["transaction"] == {"id": "771"}


def test_seq_must_fit_the_source_kind():
    event = ChangeEvent(
        table="billing.public.accounts",
        op=Op.INSERT,
        key={"id": 1},
        before=None,
        after={"id": 1},
        seq=make_seq(1, 2, 3),
        commit_ts=0,
    )
    with pytest.raises(ValueError, match="PostgreSQL seq has 2 sections"):
        encode_debezium(event, "postgres")
    with pytest.raises(ValueError, match="unknown source kind"):
        encode_debezium(event, "oracle")

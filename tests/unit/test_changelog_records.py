import datetime as dt
import json
import math
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from connectors.changelog.records import SCHEMA, dump_json, from_batch, load_json, to_batch
from state_models.events import ChangeEvent, Op, image_to_json
from state_models.seq import make_seq

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.decimals(allow_nan=False, allow_infinity=False, places=4),
    st.datetimes(timezones=st.just(dt.UTC)),
    st.binary(max_size=10),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
images = st.dictionaries(st.text(max_size=8), values, max_size=6)


def _same(a, b):
    """Equal, with NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@given(images)
def test_dump_json_reads_back_like_image_to_json(image):
    assert _same(load_json(dump_json(image)), json.loads(image_to_json(image)))


def test_dump_json_keeps_nan_and_big_integers():
    image = {"x": float("nan"), "y": 2**70, "z": None, "nested": [float("inf")]}
    back = load_json(dump_json(image))
    assert math.isnan(back["x"]) and back["y"] == 2**70 and back["z"] is None
    assert back["nested"] == [float("inf")]


def test_dump_json_writes_exact_decimals_and_iso_times():
    text = dump_json(
        {"a": Decimal("12.50"), "t": dt.datetime(2024, 5, 1, 7, 0, 1, 5, tzinfo=dt.UTC)}
    )
    assert text == '{"a":"12.50","t":"2024-05-01T07:00:01.000005+00:00"}'


def _event(i, **kw):
    base = dict(
        table="billing.public.subscriptions",
        op=Op.UPDATE,
        key={"id": i},
        before={"id": i, "plan": "basic"},
        after={"id": i, "plan": "pro", "amount": Decimal("9.90")},
        seq=make_seq(10, i),
        commit_ts=1_714_550_400_000_000 + i,
        tx_id="t1",
    )
    base.update(kw)
    return ChangeEvent(**base)


def test_events_round_trip_through_arrow_rows():
    events = [
        _event(1),
        _event(2, op=Op.DELETE, after=None, tx_id=None),
        _event(3, unavailable=("notes",), source_types={"id": "int8"}, raw='{"op":"u"}'),
        ChangeEvent(
            table="billing.public.subscriptions",
            op=Op.TRUNCATE,
            key={},
            before=None,
            after=None,
            seq=make_seq(11),
            commit_ts=5,
        ),
    ]
    batch = to_batch(events, [42] * len(events))
    assert batch.schema == SCHEMA
    back = from_batch(batch)
    assert [e.event_id for e in back] == [e.event_id for e in events]
    assert back[0].after == {"id": 1, "plan": "pro", "amount": "9.90"}
    assert back[1].op is Op.DELETE and back[1].after is None and back[1].tx_id is None
    assert back[2].unavailable == ("notes",)
    assert back[2].source_types == {"id": "int8"} and back[2].raw == '{"op":"u"}'
    assert back[3].key == {} and back[3].commit_ts == 5
    for a, b in zip(events, back, strict=True):
        assert image_to_json(a.after) == image_to_json(b.after)
        assert (a.seq, a.commit_ts, a.table, a.op) == (b.seq, b.commit_ts, b.table, b.op)


def test_integers_beyond_64_bits_read_back_exactly():
    for n in (2**63, -(2**63) - 1, 2**64, 10**30):
        assert load_json(dump_json({"n": n})) == {"n": n}
    assert load_json('{"s":"1234567890123456789012","f":1.5}') == {
        "s": "1234567890123456789012",
        "f": 1.5,
    }


def test_rows_with_nan_and_big_integers_read_back_from_arrow():
    events = [
        _event(1, after={"id": 1, "x": float("nan")}),
        _event(2, after={"id": 2, "big": 2**70}),
        _event(3),
    ]
    back = from_batch(to_batch(events, [0, 0, 0]))
    assert math.isnan(back[0].after["x"])
    assert back[1].after["big"] == 2**70
    assert back[2].after["amount"] == "9.90"

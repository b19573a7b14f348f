"""pii: hash, mask and drop on one event; the key; idempotence; sealed dead letters."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
from decimal import Decimal

import pytest

from connectors.deadletter import DeadLetterStore, NewDeadLetter, Sealing
from state_models.debezium import decode_debezium, encode_debezium
from state_models.errors import ConfigError
from state_models.events import ChangeEvent, Op, make_event_id
from state_models.pii import PiiKey, TablePolicy, canonical_text, key_from_environment, mask
from state_models.seq import make_seq
from state_models.tables import TableInfo, resolver_for

KEY = "unit-test-pii-key-0123456789"
POLICY = TablePolicy(columns={"email": "hash", "card": "mask", "note": "drop"}, kind="postgres")


@pytest.fixture(autouse=True)
def pii_key(monkeypatch):
    monkeypatch.setenv("CDC_PII_KEY", KEY)


def event(**after: object) -> ChangeEvent:
    image = {"id": 1, **after}
    return ChangeEvent(
        table="billing.public.customers",
        op=Op.UPDATE,
        key={"id": 1},
        before=dict(image),
        after=image,
        seq=make_seq(5, 9),
        commit_ts=1_790_000_000_000_000,
        unavailable=("note",),
        source_types={"id": "int64", "email": "string", "card": "string", "note": "string"},
        raw='{"clear": "alice@example.com"}',
    )


def test_hash_is_the_keyed_hmac_of_the_value_full_length():
    protected = POLICY.protect(event(email="alice@example.com", card="4111111111111111", note="n"))
    expected = hmac.new(KEY.encode(), b"alice@example.com", hashlib.sha256).hexdigest()
    assert protected.after is not None and protected.before is not None
    assert protected.after["email"] == "h1:" + expected
    assert protected.before["email"] == protected.after["email"]
    assert protected.after["card"] == "************1111"
    assert "note" not in protected.after and "note" not in protected.before
    assert protected.unavailable == () and protected.source_types == {
        "id": "int64",
        "email": "string",
        "card": "string",
    }
    assert (
        protected.raw is not None and "alice" not in protected.raw and "4111" not in protected.raw
    )


def test_protecting_twice_changes_nothing_and_equal_values_give_equal_tokens():
    once = POLICY.protect(event(email="a@b.c", card="12345", note="x"))
    twice = POLICY.protect(once)
    assert twice == once and twice.raw == once.raw
    other = TablePolicy(columns={"contact": "hash"}).protect(
        dataclasses.replace(event(), table="crm.public.leads", after={"id": 1, "contact": "a@b.c"})
    )
    assert other.after is not None and once.after is not None
    assert other.after["contact"] == once.after["email"]  # joins across tables still work


def test_a_hashed_key_changes_the_key_and_the_event_id():
    policy = TablePolicy(columns={"email": "hash"})
    e = ChangeEvent(
        table="billing.public.subscribers",
        op=Op.INSERT,
        key={"email": "bob@x.org"},
        before=None,
        after={"email": "bob@x.org", "plan": "pro"},
        seq=make_seq(1, 2),
        commit_ts=1,
    )
    protected = policy.protect(e)
    token = protected.key["email"]
    assert token.startswith("h1:") and protected.after == {"email": token, "plan": "pro"}
    assert protected.event_id == make_event_id(e.table, {"email": token}, e.seq) != e.event_id


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("4111111111111111", "************1111"),
        ("1234", "****"),
        ("ab", "**"),
        ("", ""),
        (12345, "*2345"),
    ],
)
def test_mask_keeps_the_last_four_of_a_longer_value_only(value, masked):
    assert mask(value) == masked and mask(mask(value)) == masked


def test_values_of_other_types_hash_as_the_text_the_changelog_holds():
    assert canonical_text(Decimal("12.50")) == "12.50"
    assert canonical_text(dt.date(2026, 1, 2)) == "2026-01-02"
    assert canonical_text(True) == "true" and canonical_text(7) == "7"
    assert canonical_text({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'


def test_a_missing_or_short_key_is_refused_and_never_shown():
    with pytest.raises(ConfigError, match="set the environment variable CDC_PII_KEY"):
        key_from_environment({}, None, ["billing.public.customers"])
    with pytest.raises(ConfigError, match="at least 16"):
        key_from_environment({"K": "short"}, "K", ["t"])
    assert key_from_environment({}, None, []) is None
    key = PiiKey(b"a-secret-of-enough-length")
    assert "a-secret" not in repr(key) and len(key.fingerprint) == 16


def test_the_debezium_decoder_protects_what_it_decodes():
    info = TableInfo(id="billing.public.customers", primary_key=("id",), pii=POLICY)
    clear = event(email="alice@example.com", card="4111111111111111", note="n")
    decoded = decode_debezium(encode_debezium(clear, "postgres"), resolver_for([info], "billing"))
    assert isinstance(decoded, ChangeEvent) and decoded.after is not None
    assert decoded.after["email"].startswith("h1:") and "note" not in decoded.after
    assert (
        decoded.raw is not None
        and "alice" not in decoded.raw
        and "4111111111111111" not in decoded.raw
    )


def test_dead_letters_of_a_pii_table_are_sealed_and_still_retryable(tmp_path):
    sealing = Sealing(
        tables=frozenset({"billing.public.customers"}),
        sources=frozenset({"billing"}),
        names=frozenset({"email", "id"}),
    )
    store = DeadLetterStore(tmp_path, sealing=sealing)
    clear = '{"after": {"email": "alice@example.com"}}'
    [sealed, unparsed, other] = store.put_many(
        [
            NewDeadLetter(
                "column 'email': 'alice@example.com' is not valid",
                "E",
                clear,
                "billing",
                "billing.public.customers",
            ),
            NewDeadLetter(
                "not valid JSON", "DecodeError", b"\xff alice@example.com", "billing", None
            ),
            NewDeadLetter("bad 'x'", "E", "plain", "billing", "billing.public.plain"),
        ]
    )
    text = "".join(p.read_text() for p in tmp_path.glob("*.jsonl"))
    assert "alice" not in text
    assert sealed.reason == "column 'email': '<hidden>' is not valid"
    assert (
        sealed.raw_bytes() == clear.encode() and unparsed.raw_bytes() == b"\xff alice@example.com"
    )
    assert other.raw_encoding == "text" and other.reason == "bad 'x'"  # not a pii table
    [reread, *_] = store.list()
    assert reread.sealed and reread.raw_bytes() == clear.encode()


def test_cdc_apply_stores_no_clear_value_and_keeps_the_protected_form_of_a_bad_event(
    tmp_path, capsys
):
    import json

    import duckdb

    from cdc.cli import main

    (tmp_path / "cdc.yaml").write_text(
        "warehouse: duckdb:///w.duckdb\nstate_dir: ./state\nsources:\n  billing:\n"
        "    kind: postgres\n    engine: debezium\n    dsn: postgresql://u@h/db\n    tables:\n"
        "      - name: public.customers\n        primary_key: [id]\n"
        "        columns: {id: bigint, email: text, card: text, note: text, score: 'numeric(8,2)'}\n"
        "        pii: {email: hash, card: mask, note: drop}\n"
    )
    clear = event(email="alice@example.com", card="4111111111111111", note="never-land")
    good = encode_debezium(dataclasses.replace(clear, op=Op.INSERT, before=None), "postgres")
    update = encode_debezium(dataclasses.replace(clear, seq=make_seq(6, 1)), "postgres")
    bad_after = {**(clear.after or {}), "score": "not-a-number"}
    bad = encode_debezium(
        dataclasses.replace(clear, seq=make_seq(7, 1), after=bad_after), "postgres"
    )
    lines = [good, update, bad, "{not json alice@example.com 4111111111111111"]
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")

    args = ["--config", str(tmp_path / "cdc.yaml")]
    assert main(["apply", *args, "--source", "billing", str(tmp_path / "events.jsonl")]) == 1
    assert main(["dead-letters", "ls", *args]) == 0
    assert main(["history", *args, "billing.public.customers"]) == 0
    output = capsys.readouterr()
    texts = [output.out, output.err]
    for path in tmp_path.rglob("*"):
        if path.suffix == ".duckdb":
            with duckdb.connect(str(path), read_only=True) as con:
                for (name,) in con.sql(
                    "SELECT table_name FROM information_schema.tables"
                ).fetchall():
                    texts.append(
                        json.dumps(con.sql(f'SELECT * FROM "{name}"').fetchall(), default=str)
                    )
        elif path.is_file() and path.name != "events.jsonl":
            texts.append(path.read_text(errors="replace"))
    for secret in ("alice@example.com", "4111111111111111", "never-land"):
        assert not any(secret in t for t in texts), secret
    letters = DeadLetterStore(tmp_path / "state" / "dead_letters").list()
    assert len(letters) == 2 and all(letter.sealed for letter in letters), [
        (letter.table, letter.reason) for letter in letters
    ]
    by_table = {letter.table: letter for letter in letters}
    # the bad value failed the decoder: the message is kept as sent, sealed, the reason hides it
    assert by_table["billing.public.customers"].raw_bytes() == bad.encode()
    assert "'<hidden>' is not a decimal" in by_table["billing.public.customers"].reason
    assert by_table[None].raw_bytes() == lines[-1].encode()


def test_equal_python_values_of_other_types_keep_their_own_tokens_in_one_batch():
    policy = TablePolicy(columns={"v": "hash"})
    events = [
        dataclasses.replace(event(), after={"id": 1, "v": v}, before=None, seq=make_seq(1, i))
        for i, v in enumerate([1, True, 1.0, Decimal("1.0"), "1"])
    ]
    alone = [TablePolicy(columns={"v": "hash"}).protect(e).after for e in events]
    together = [e.after for e in policy.protect_many(events)]
    assert together == alone  # a batch's cache never mixes up equal values of other types
    texts = {"1": [0, 4], "true": [1], "1.0": [2, 3]}  # what each value is hashed as
    for text, places in texts.items():
        assert {together[i]["v"] for i in places} == {policy.protect_value("v", text)}  # type: ignore[index]


def test_debezium_leaves_dropped_columns_in_the_database():
    from connectors.capture.debezium import connector_properties
    from state_models.registry import Registry, Source, TableSpec, table_infos

    source = Source(
        kind="postgres",
        engine="debezium",
        dsn="postgresql://u@h/db",
        tables=[
            TableSpec(name="public.customers", pii={"note": "drop", "email": "hash"}),
            TableSpec(name="public.plain"),
        ],
    )
    registry = Registry(sources={"billing": source})
    props = connector_properties("billing", source, table_infos(registry, "billing"))
    assert props["column.exclude.list"] == r"public\.customers\.note"
    plain = Source(kind="postgres", engine="debezium", dsn="postgresql://u@h/db")
    assert "column.exclude.list" not in connector_properties("billing", plain, [])


def test_the_datastream_decoder_protects_what_it_decodes():
    """Datastream's own files hold clear values; what we decode from them is protected at once
    (changelog, state, dead letters), its raw record included (the file keeps the original)."""
    from state_models.datastream import decode_datastream
    from tests.scenario_orders import ORDERS
    from tests.unit.test_datastream import mysql_record

    info = dataclasses.replace(
        ORDERS, pii=TablePolicy(columns={"status": "hash", "customer_id": "drop"}, kind="mysql")
    )
    doc = mysql_record()
    event = decode_datastream(doc, resolver_for([info], "shop")).event
    assert event.after is not None and "customer_id" not in event.after
    assert event.after["status"] == PiiKey(KEY.encode()).token("placed")
    assert event.raw is None or ('"placed"' not in event.raw and "680" not in event.raw)

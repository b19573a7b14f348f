"""The watermark of transactions that arrive in any order (Debezium's END records over Pub/Sub)."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from state_models.debezium import decode_debezium, decode_transaction_end
from state_models.errors import DecodeError
from state_models.seq import make_seq
from state_models.tables import TableInfo, resolver_for
from state_models.watermark import (
    NOTHING,
    Applied,
    TransactionChain,
    TransactionEnd,
    applied_prev,
    chain_cut,
    chain_position,
    seq_before,
)

# measured from Debezium 3 (embedded PostgreSQL connector, provide.transaction.metadata=true)
END = {
    "status": "END",
    "id": "727:22141576",
    "event_count": 3,
    "data_collections": [
        {"data_collection": "public.a", "event_count": 2},
        {"data_collection": "public.b", "event_count": 1},
    ],
    "ts_ms": 1796681773365,
}
CHANGE = {
    "before": None,
    "after": {"id": 2, "v": "y"},
    "source": {
        "connector": "postgresql",
        "ts_ms": 1796681773000,
        "lsn": 22141176,
        "sequence": '[null,"22141176"]',
        "txId": 727,
        "schema": "public",
        "table": "a",
    },
    "transaction": {"id": "727:22141176", "total_order": 2, "data_collection_order": 2},
    "op": "c",
    "ts_ms": 1796681773365,
}


def test_an_end_record_gives_its_xid_commit_lsn_and_counts_per_table():
    end = decode_transaction_end(json.dumps(END), "x")
    assert end == TransactionEnd("x", "727", 22141576, (("x.public.a", 2), ("x.public.b", 1)))
    wrapped = {"schema": {"type": "struct"}, "payload": END}
    assert decode_transaction_end(json.dumps(wrapped), "x") == end
    assert decode_transaction_end(json.dumps({**END, "status": "BEGIN"}), "x") is None


@pytest.mark.parametrize(
    "doc",
    [
        {**END, "status": "COMMIT"},
        {**END, "id": "727"},
        {**END, "id": "727:abc"},
        {**END, "data_collections": None},
        {**END, "data_collections": [{"data_collection": "public.a", "event_count": "2"}]},
        {**END, "data_collections": [{"data_collection": "public.a", "event_count": -1}]},
        {**END, "id": f"727:{1 << 64}"},  # no LSN is that large
        {**END, "id": "727:0"},
        [1, 2],
    ],
)
def test_a_malformed_transaction_record_is_a_decode_error_with_its_bytes(doc):
    text = json.dumps(doc)
    with pytest.raises(DecodeError) as info:
        decode_transaction_end(text, "x")
    assert info.value.raw == text


def test_a_postgres_change_with_transaction_metadata_belongs_to_its_xid():
    """Debezium's PostgreSQL transaction id is "xid:<this change's LSN>" (it differs between the
    changes of one transaction): the transaction is the xid."""
    resolve = resolver_for([TableInfo("x.public.a", ("id",))], "x")
    event = decode_debezium(json.dumps(CHANGE), resolve)
    assert event.tx_id == "727"
    no_tx_id = {**CHANGE, "source": {k: v for k, v in CHANGE["source"].items() if k != "txId"}}
    assert decode_debezium(json.dumps(no_tx_id), resolve).tx_id == "727"


def test_a_recorded_cut_continues_the_chain_where_it_stands():
    assert chain_position(None) == 0 and chain_position(NOTHING) == 0
    for commit in (1, 22141576, 2**40):
        assert chain_position(chain_cut(commit)) == commit
    # a replay's cut: just before the transaction whose changes start with commit 500
    assert chain_position(seq_before(make_seq(500, 512))) == 500


def transactions(n: int, rng: random.Random) -> list[tuple[TransactionEnd, int, list[str]]]:
    """n chained transactions: (END, prev commit, the table of each change)."""
    out, prev, lsn = [], 0, 1000
    for i in range(n):
        tables = [rng.choice(["s.public.a", "s.public.b", "s.public.c"]) for _ in range(3)]
        tables = tables[: rng.randint(1, 3)]
        lsn += rng.randint(10, 500)
        counts = tuple(sorted((t, tables.count(t)) for t in set(tables)))
        out.append((TransactionEnd("s", str(700 + i), lsn, counts), prev, tables))
        prev = lsn
    return out


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 12), st.integers(0, 10**6), st.booleans())
def test_the_watermark_never_passes_a_transaction_that_is_not_whole(n, seed, drop_one):
    rng = random.Random(seed)
    txs = transactions(n, rng)
    lost = rng.randrange(n) if drop_one else None  # one change dead-lettered: never applied
    arrivals: list[tuple[str, int, int]] = []  # ("end", i, -) or ("change", i, change index)
    for i, (_, _, tables) in enumerate(txs):
        arrivals.append(("end", i, -1))
        arrivals += [("change", i, j) for j in range(len(tables))]
    arrivals += rng.sample(arrivals, k=min(len(arrivals), 5))  # redeliveries
    rng.shuffle(arrivals)
    chain = TransactionChain(0)
    held: dict[tuple[str, str], set[int]] = {}
    for kind, i, j in arrivals:
        end, _, tables = txs[i]
        if kind == "end":
            chain.add(end)
        elif not (i == lost and j == 0):
            held.setdefault((end.tx_id, tables[j]), set()).add(j)
        applied = {
            (tx, table): Applied(len(changes), txs[int(tx) - 700][1])
            for (tx, table), changes in held.items()
        }
        chain.advance(applied)
        whole = 0  # the commit of the last transaction before the first one not whole
        for e, _, _ in txs:
            if any(len(held.get((e.tx_id, t), ())) < c for t, c in e.counts):
                break
            whole = e.commit
        assert chain.position <= whole
    expected = txs[-1][0].commit if lost is None else (txs[lost - 1][0].commit if lost else 0)
    assert chain.position == expected
    if chain.position:  # the cut takes in every change of the transactions through it
        assert chain_cut(chain.position) < make_seq(chain.position, 0)


def test_a_fresh_engines_first_transaction_starts_the_chain():
    """Debezium's first transaction after a fresh start follows no commit; the decoder then orders
    each change by its own LSN, so its changes differ in their first section: position 0."""
    assert applied_prev(make_seq(500, 500), 3) == 0
    assert applied_prev(make_seq(480, 500), 1) == 480  # follows the commit at 480
    first = TransactionEnd("s", "9", 900, (("s.public.a", 1), ("s.public.b", 1)))
    second = TransactionEnd("s", "10", 950, (("s.public.a", 1),))
    chain = TransactionChain(0)
    chain.add(first)
    chain.add(second)
    applied = {
        ("9", "s.public.a"): Applied(1, 610),  # one change in each table: own LSNs differ
        ("9", "s.public.b"): Applied(1, 640),
        ("10", "s.public.a"): Applied(1, 900),
    }
    assert chain.advance(applied) and chain.position == 950
    # a transaction whose tables agree on a commit no END names: the chain waits
    stuck = TransactionChain(0)
    stuck.add(second)
    assert not stuck.advance(applied) and stuck.position == 0


def test_what_the_merges_report_reads_like_the_state_tables():
    from merge_jobs.watermark import applied_from_notices

    notices = [
        ("9", "s.public.a", make_seq(480, 500)),
        ("9", "s.public.a", make_seq(480, 500)),  # a redelivery, merged again
        ("9", "s.public.a", make_seq(480, 530)),
        ("9", "s.public.b", make_seq(480, 510)),
        ("7", "s.public.a", make_seq(300, 300)),  # a fresh engine's first: own LSNs
        ("7", "s.public.a", make_seq(320, 320)),
    ]
    assert applied_from_notices(notices) == {
        ("9", "s.public.a"): Applied(2, 480),
        ("9", "s.public.b"): Applied(1, 480),
        ("7", "s.public.a"): Applied(2, 0),
    }


def test_a_walk_keeps_what_it_may_still_need_and_a_bounded_rest():
    from merge_jobs.watermark import kept_notices

    below = make_seq(500, (1 << 64) - 1)  # through the commit at 501
    notices = [
        ("5", "s.public.a", make_seq(480, 490)),  # passed
        ("9", "s.public.a", make_seq(501, 520)),  # its END waits
        ("11", "s.public.a", make_seq(600, 610)),  # no END yet
        ("12", "s.public.a", make_seq(700, 710)),  # no END yet, newer
    ]
    assert kept_notices(notices, below, {"9"}) == notices[1:]
    assert kept_notices(notices, below, {"9"}, limit=1) == [notices[1], notices[3]]


def test_a_change_with_an_impossible_commit_time_is_refused_with_its_bytes():
    """Year 33658 fits no warehouse, changelog partition or clock: refused at decode, before it
    can reach the changelog or the progress of the changes around it."""
    resolve = resolver_for([TableInfo("x.public.a", ("id",))], "x")
    wild = {**CHANGE, "source": {**CHANGE["source"], "ts_ms": 10**15}}
    text = json.dumps(wild)
    with pytest.raises(DecodeError, match="not a time in years 1 to 9999") as info:
        decode_debezium(text, resolve)
    assert info.value.raw == text

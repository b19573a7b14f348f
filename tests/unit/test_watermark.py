"""The watermark's pieces: cuts before a seq, transaction starts in log order, holds."""

from __future__ import annotations

from cdc.runtime import SourceWatermark
from state_models.events import ChangeEvent, Op
from state_models.seq import make_seq
from state_models.watermark import NOTHING, TransactionCuts, hold_for, later, seq_before


def event(seq: str, tx: str | None, key: int = 1) -> ChangeEvent:
    return ChangeEvent(
        table="billing.public.t",
        op=Op.UPDATE,
        key={"id": key},
        before=None,
        after={"id": key},
        seq=seq,
        commit_ts=0,
        tx_id=tx,
    )


def test_seq_before_borrows_across_sections() -> None:
    assert seq_before(make_seq(5, 0)) == make_seq(4, (1 << 64) - 1)
    assert seq_before(make_seq(5, 7)) == make_seq(5, 6)
    assert seq_before(make_seq(1, 0, 0)) == make_seq(0, (1 << 64) - 1, (1 << 64) - 1)
    assert seq_before(make_seq(0, 0)) == make_seq(0, 0)  # nothing below it


def test_cuts_wait_for_a_boundary_then_stop_before_the_open_transaction() -> None:
    cuts = TransactionCuts()
    a1, a2 = event(make_seq(10, 11), "a"), event(make_seq(10, 12), "a", 2)
    # the first transaction after a start may have begun before it: no cut yet
    starts = cuts.observe([a1, a2])
    assert starts == {a1.event_id: None, a2.event_id: None}
    assert cuts.complete_through() is None
    b1 = event(make_seq(20, 21), "b")
    assert cuts.observe([b1]) == {b1.event_id: b1.seq}
    # a is complete, b may go on in the next batch
    assert cuts.complete_through() == seq_before(b1.seq)
    assert a2.seq <= cuts.complete_through() < b1.seq
    b2 = event(make_seq(20, 22), "b", 2)
    assert cuts.observe([b2]) == {b2.event_id: b1.seq}  # b goes on: same start
    c1 = event(make_seq(30, 31), None)
    c2 = event(make_seq(30, 32), None, 2)
    cuts.observe([c1, c2])  # changes without an id: one run, complete only after it
    assert cuts.complete_through() == seq_before(c1.seq)


def test_a_dead_letter_holds_the_watermark_before_its_transaction() -> None:
    mark = SourceWatermark()
    assert mark.advance(make_seq(5, 0))
    mark.holds["letter-1"] = hold_for(make_seq(7, 3), mark.through)
    assert mark.advance(make_seq(9, 0))
    assert mark.through == seq_before(make_seq(7, 3))  # not past the held transaction
    assert not mark.advance(make_seq(4, 0))  # never back
    mark.holds.clear()  # the letter was replayed
    assert mark.advance(make_seq(9, 0)) and mark.through == make_seq(9, 0)
    # a transaction whose start is unknown holds the watermark where it stands
    assert hold_for(None, make_seq(9, 0)) == make_seq(9, 0)
    assert hold_for(None, None) == NOTHING
    assert later(None, make_seq(1)) == make_seq(1) and later(make_seq(2), None) == make_seq(2)


def test_through_a_transaction_takes_in_its_changes_and_nothing_after() -> None:
    from state_models.watermark import through_transaction

    # PostgreSQL: the next transaction is ordered by a later commit LSN
    cut = through_transaction(make_seq(10, 15))
    assert make_seq(10, 15) < make_seq(10, 99) <= cut < make_seq(11, 0)
    # binlog: every later change has a later position
    cut = through_transaction(make_seq(3, 400, 2))
    assert make_seq(3, 400, 7) <= cut < make_seq(3, 401, 0)


def test_a_cdc_progress_table_of_an_older_version_gets_the_watermark_columns(tmp_path) -> None:
    from connectors.warehouse.duckdb import DuckDBWarehouse
    from state_models.progress import Progress

    wh = DuckDBWarehouse(f"duckdb:///{tmp_path / 'w.duckdb'}")
    try:
        wh.con.execute(
            "CREATE TABLE cdc_progress (source TEXT, table_id TEXT, state_table TEXT, "
            "applied_seq TEXT, applied_commit_at TIMESTAMPTZ, caught_up_at TIMESTAMPTZ, "
            "commit_to_visible_s DOUBLE, updated_at TIMESTAMPTZ, writer TEXT)"
        )
        wh.con.execute(
            "INSERT INTO cdc_progress (source, table_id, state_table, applied_seq) "
            "VALUES ('billing', 'billing.public.t', 'billing_t', '0000000001')"
        )
        import datetime as dt

        wh.record_progress(
            [Progress("billing", "billing.public.t", "billing_t", watermark_seq=make_seq(3))],
            dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
        )
        (row,) = wh.progress()
    finally:
        wh.close()
    assert row["applied_seq"] == "0000000001" and row["watermark_seq"] == make_seq(3)


def test_mysql_transactions_without_gtid_get_their_start_position_as_id() -> None:
    from connectors.capture.binlog import transaction_id

    assert transaction_id("0-1-42", "mysql-bin.000003", 120) == "0-1-42"
    first = transaction_id(None, "mysql-bin.000003", 120)
    second = transaction_id(None, "mysql-bin.000003", 977)
    assert (first, second) == ("mysql-bin.000003:120", "mysql-bin.000003:977")
    assert transaction_id(None, "mysql-bin.000003", 120) == first  # the same on every read
    # so anonymous transactions have boundaries: the watermark stops before the open one
    cuts = TransactionCuts()
    a = [event(make_seq(3, 200, i), first, i) for i in range(2)]
    b = [event(make_seq(3, 1000, i), second, i) for i in range(2)]
    cuts.observe([*a[:1]])
    cuts.observe([a[1], *b])
    assert cuts.complete_through() == seq_before(b[0].seq)


def test_a_replay_settles_no_watermark_from_a_changelog_the_streaming_job_wrote() -> None:
    """The streaming job archives each table's changes in its own windows: at the tail a table may
    hold a transaction whose other changes are not archived yet, so log order cannot be assumed."""
    from merge_jobs.replay import unordered_changelog
    from state_models.pubsub import PubSubSettings
    from state_models.registry import Registry

    sources = {
        "billing": {
            "kind": "postgres",
            "engine": "debezium",
            "dsn": "postgresql://x@h/db",
            "tables": [{"name": "public.a"}],
        },
        "payments": {
            "kind": "mysql",
            "engine": "binlog",
            "dsn": "mysql://x@h/p",
            "tables": [{"name": "p.refunds"}],
        },
    }
    local = Registry.model_validate({"sources": sources})
    assert unordered_changelog(local, "billing") is None  # cdc run archives in log order
    with_pubsub = Registry.model_validate(
        {"sources": sources, "pubsub": PubSubSettings(project="acme-data").model_dump()}
    )
    reason = unordered_changelog(with_pubsub, "billing")
    assert reason is not None and "streaming job" in reason
    assert unordered_changelog(with_pubsub, "payments") is None

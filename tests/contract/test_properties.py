"""Properties of the SCD2 merge, on every warehouse, against the reference fold and the source.

Whatever order, duplication and batching the events arrive in, the warehouse must hold exactly
what ``state_models.oracle.fold`` computes from the events; the rows live at the end of each
source transaction must be the source's own rows then; validity intervals must chain without
gaps or overlaps; and applying everything again must change nothing at all.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from state_models.oracle import fold
from state_models.scd2 import render_version
from tests.scd2_histories import (
    INGESTED,
    History,
    canonical,
    deliveries,
    histories,
    without_ingested_at,
)


def examples(warehouse: Any) -> int:
    """How many histories per property: BigQuery (even the emulator) is far slower per MERGE."""
    if warehouse.caps.dialect == "bigquery":
        return int(os.environ.get("CDC_PROPERTY_EXAMPLES_BIGQUERY", "6"))
    return int(os.environ.get("CDC_PROPERTY_EXAMPLES", "60"))


def check(warehouse: Any, prop: Any) -> None:
    """Run ``prop(warehouse, data)`` over generated histories, as many as the backend affords."""

    @settings(
        max_examples=examples(warehouse),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        derandomize=warehouse.caps.dialect == "bigquery",
    )
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        prop(warehouse, data)

    run()


def apply_all(warehouse: Any, history: History, batches: list[list[Any]]) -> None:
    for batch in batches:
        result = warehouse.apply(history.table, batch, INGESTED)
        assert result.rejected == []


def rendered_history(warehouse: Any, history: History) -> list[dict[str, Any]]:
    state = warehouse.state_table(history.table)
    return [render_version(state, r) for r in warehouse.history(history.table)]


def test_any_delivery_gives_the_reference_fold(warehouse):
    check(warehouse, any_delivery_gives_the_reference_fold)


def test_as_of_a_commit_time_is_the_source_after_its_last_transaction(warehouse):
    check(warehouse, as_of_a_commit_time_is_the_source_after_its_last_transaction)


def any_delivery_gives_the_reference_fold(warehouse: Any, data: st.DataObject) -> None:
    history = data.draw(histories())
    batches = data.draw(deliveries(history.events))
    apply_all(warehouse, history, batches)

    state = warehouse.state_table(history.table)
    got = rendered_history(warehouse, history)
    expected = [render_version(state, r) for r in fold(state, history.events, INGESTED)]
    assert without_ingested_at(got) == without_ingested_at(expected)

    _assert_validity_chains(got, state.key)

    # as of the end of every source transaction: exactly the source's rows
    for seq, rows in history.snapshots:
        live = warehouse.as_of(history.table, seq=seq)
        assert _business(state, live) == _source_rows(state, rows), seq

    # everything again, in one batch: nothing changes, not even _ingested_at
    again = warehouse.apply(
        history.table, [e for b in batches for e in b], INGESTED.replace(year=2030)
    )
    assert (again.inserted, again.updated, again.deleted) == (0, 0, 0)
    assert rendered_history(warehouse, history) == got


def as_of_a_commit_time_is_the_source_after_its_last_transaction(
    warehouse: Any, data: st.DataObject
) -> None:
    # Across keys, "as of a time" is a prefix of the log only while commit times rise with it;
    # where they fall back (whole-second binlog times after a snapshot's clock time) each key is
    # still exact by itself (the fold property above), and `as of a seq` is always a prefix.
    history = data.draw(histories(rising_times=True))
    apply_all(warehouse, history, data.draw(deliveries(history.events)))
    state = warehouse.state_table(history.table)
    by_seq = {e.seq: e.commit_ts for e in history.events}
    last_at_time: dict[int, dict[Any, Any]] = {}
    for seq, rows in history.snapshots:  # commit order: a later transaction at the same time wins
        last_at_time[by_seq[seq]] = rows
    for ts, rows in last_at_time.items():
        from state_models.types import micros_to_datetime

        live = warehouse.as_of(history.table, at=micros_to_datetime(ts))
        assert _business(state, live) == _source_rows(state, rows), ts


def _assert_validity_chains(rows: list[dict[str, Any]], key: tuple[str, ...]) -> None:
    for _, group in itertools.groupby(rows, key=lambda r: tuple(r[k] for k in key)):
        versions = list(group)
        assert sum(v["_is_current"] for v in versions) == 1
        assert versions[-1]["_is_current"] and versions[-1]["_valid_to"] is None
        for before, after in itertools.pairwise(versions):
            assert before["_seq"] < after["_seq"]
            assert before["_next_seq"] == after["_seq"]
            assert before["_valid_to"] == after["_valid_from"]  # contiguous: no gap, no overlap
            assert before["_valid_from"] <= before["_valid_to"]
            assert not before["_is_current"]


def _business(state: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names = state.business_names
    out = [
        {n: v for n, v in render_version(state, r).items() if n in names and v is not None}
        for r in rows
    ]
    return sorted(out, key=repr)


def _source_rows(state: Any, rows: dict[Any, dict[str, Any]]) -> list[dict[str, Any]]:
    out = [{n: canonical(v) for n, v in r.items() if v is not None} for r in rows.values()]
    return sorted(out, key=repr)

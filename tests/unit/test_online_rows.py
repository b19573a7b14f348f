"""The online syncer sends each key's newest version of a batch only."""

from __future__ import annotations

from connectors.online import OnlineRow, _newest_per_key


def row(table: str, key: int, seq: str, plan: str) -> OnlineRow:
    return OnlineRow(table, f'{{"id":{key}}}', seq, False, {"plan": f'"{plan}"'})


def test_a_batch_keeps_each_keys_newest_version() -> None:
    batch = [
        row("a", 1, "0002", "team"),
        row("a", 1, "0001", "basic"),  # older, later in the batch
        row("a", 2, "0001", "basic"),
        row("b", 1, "0001", "other table"),  # the same key in another table is another row
        row("a", 1, "0003", "pro"),
    ]
    kept = {(r.table_id, r.key): r for r in _newest_per_key(batch)}
    assert len(kept) == 3
    assert kept[("a", '{"id":1}')].fields["plan"] == '"pro"'
    assert kept[("a", '{"id":2}')].seq == "0001"
    assert kept[("b", '{"id":1}')].fields["plan"] == '"other table"'

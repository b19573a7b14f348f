"""Replay and rebuild from the changelog into DuckDB state tables (changelog local and on GCS)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest

from cdc.cli import main
from connectors.changelog import ChangelogWriter
from connectors.changelog.reader import ChangelogReader
from connectors.changelog.storage import open_root
from connectors.deadletter import DeadLetterStore
from connectors.warehouse import open_warehouse
from merge_jobs.apply import apply_events
from merge_jobs.replay import rebatch, rebuild, replay, shadow_of
from state_models.changelog import ChangeRange
from state_models.events import ChangeEvent, Op
from state_models.scd2 import TableDef
from state_models.seq import make_seq

TABLE = "billing.public.subscriptions"
T0 = 1_714_550_400_000_000  # 2024-05-01T08:00:00Z
NOW = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)


def history_events(n: int, keys: int = 40) -> list[ChangeEvent]:
    """Inserts, updates, deletes and re-inserts over ``keys`` keys, 20 s apart (several hours)."""
    out, live = [], {}
    for i in range(n):
        k = i % keys
        seq, ts = make_seq(7000 + i, i), T0 + i * 20_000_000
        row = {"id": k, "amount": Decimal(i) / 100, "plan": f"p{i % 3}"}
        if k not in live:
            op, before, after = Op.INSERT, None, row
        elif i % 9 == 0:
            op, before, after = Op.DELETE, live[k], None
        else:
            op, before, after = Op.UPDATE, live[k], row
        if after is None:
            live.pop(k)
        else:
            live[k] = after
        out.append(
            ChangeEvent(TABLE, op, {"id": k}, before, after, seq, ts, tx_id=str(i), raw=f"m{i}")
        )
    return out


REGISTRY = """
changelog: {changelog}
warehouse: duckdb:///{warehouse}
state_dir: {state}
sources:
  billing:
    kind: postgres
    engine: debezium
    dsn: postgresql://localhost/billing
    tables:
      - name: public.subscriptions
        primary_key: [id]
        columns: {{id: bigint, amount: "numeric(12,2)", plan: text}}
"""


@pytest.fixture
def setup(changelog_root, tmp_path):
    """A changelog of 1,200 events and a live state table that already holds all of them."""
    cfg = tmp_path / "cdc.yaml"
    wh_path = tmp_path / "wh.duckdb"
    cfg.write_text(
        REGISTRY.format(changelog=changelog_root, warehouse=wh_path, state=tmp_path / "state")
    )
    table = TableDef(
        TABLE,
        "billing_subscriptions",
        primary_key=("id",),
        declared={"id": "bigint", "amount": "numeric(12,2)", "plan": "text"},
    )
    evs = history_events(1200)
    writer = ChangelogWriter(changelog_root, row_group_rows=100, max_file_bytes=8_000)
    for chunk in rebatch([evs], 150):  # like a capture: one durable write per batch
        writer.write(chunk)
    assert len(writer.published) > 8
    wh = open_warehouse(f"duckdb:///{wh_path}")
    report = apply_events(
        wh,
        {TABLE: table},
        evs,
        ingested_at=NOW,
        dead_letters=DeadLetterStore(tmp_path / "dl"),
        batch_size=500,
    )
    assert not report.dead_letters
    wh.close()
    return {
        "cfg": str(cfg),
        "wh": f"duckdb:///{wh_path}",
        "table": table,
        "events": evs,
        "writer": writer,
        "root": changelog_root,
        "dl": tmp_path / "dl",
    }


def state(url: str, table: TableDef) -> list[tuple]:
    """Every version of the table, without ``_ingested_at`` (when it was written)."""
    wh = open_warehouse(url)
    try:
        rows = wh.history(table)
    finally:
        wh.close()
    return [tuple(v for k, v in r.items() if k != "_ingested_at") for r in rows]


def test_replaying_overlapping_ranges_twice_on_live_data_changes_nothing(setup, capsys):
    before = state(setup["wh"], setup["table"])
    assert len(before) == 1200
    evs = setup["events"]
    # 1. a seq range, through the library
    wh = open_warehouse(setup["wh"])
    rng = ChangeRange(from_seq=evs[300].seq, to_seq=evs[899].seq)
    for _ in range(2):
        report = replay(
            ChangelogReader(setup["root"]),
            wh,
            setup["table"],
            rng,
            dead_letters=DeadLetterStore(setup["dl"]),
            batch_size=250,
            ingested_at=NOW + dt.timedelta(days=1),
        )
        assert report.ok and report.events == 600
        counts = report.applied.tables[TABLE]
        assert counts.inserted == 0 and counts.updated == 0 and counts.unchanged == 600
    wh.close()
    assert state(setup["wh"], setup["table"]) == before

    # 2. an overlapping time range, twice, through the command (progress on stderr)
    since = dt.datetime.fromtimestamp(evs[600].commit_ts / 1e6, dt.UTC).isoformat()
    for _ in range(2):
        assert main(["replay", "subscriptions", "--config", setup["cfg"], "--since", since]) == 0
        captured = capsys.readouterr()
        assert "replayed into billing_subscriptions: 600 events" in captured.out
        assert "0 versions inserted, 0 repaired, 600 already there" in captured.out
        assert "events/s" in captured.err
    assert state(setup["wh"], setup["table"]) == before


def test_replay_repairs_a_table_that_missed_events(setup):
    wh = open_warehouse(setup["wh"])
    wh.con.execute("DELETE FROM billing_subscriptions WHERE _seq >= ?", [setup["events"][1000].seq])
    wh.close()
    damaged = state(setup["wh"], setup["table"])
    assert len(damaged) == 1000
    assert (
        main(["replay", TABLE, "--config", setup["cfg"], "--from-seq", setup["events"][950].seq])
        == 0
    )
    repaired = state(setup["wh"], setup["table"])
    assert len(repaired) == 1200
    reference = open_warehouse("duckdb:///:memory:")
    apply_events(
        reference,
        {TABLE: setup["table"]},
        setup["events"],
        ingested_at=NOW,
        dead_letters=DeadLetterStore(setup["dl"]),
    )
    expected = [
        tuple(v for k, v in r.items() if k != "_ingested_at")
        for r in reference.history(setup["table"])
    ]
    assert repaired == expected


def test_rebuild_shadow_verify_and_swap(setup, capsys):
    cfg = setup["cfg"]
    assert main(["rebuild", "subscriptions", "--shadow", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "rebuilt billing_subscriptions__shadow from the changelog: 1,200 events" in out

    assert (
        main(
            [
                "verify",
                "subscriptions",
                "--config",
                cfg,
                "--against",
                "billing_subscriptions__shadow",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "1,200 vs 1,200 versions in 16 key ranges" in out and out.rstrip().endswith("equal")

    assert main(["rebuild", "subscriptions", "--swap", "--config", cfg]) == 0
    assert "swapped" in capsys.readouterr().out
    assert len(state(setup["wh"], setup["table"])) == 1200
    wh = open_warehouse(setup["wh"])
    assert wh.state_table(shadow_of(setup["table"])) is None  # the shadow became the live table
    assert len(wh.current(setup["table"])) == len({e.key["id"] for e in setup["events"]}) - sum(
        1
        for k in {e.key["id"] for e in setup["events"]}
        if _last_op(setup["events"], k) is Op.DELETE
    )
    wh.close()


def _last_op(events, key):
    return [e for e in events if e.key["id"] == key][-1].op


def test_verify_reports_the_difference_when_a_changelog_file_is_missing(setup, capsys):
    victim = setup["writer"].published[3]
    root = open_root(setup["root"])
    root.fs.rm(root.fs._strip_protocol(victim.path))
    cfg = setup["cfg"]

    assert main(["rebuild", "subscriptions", "--shadow", "--config", cfg]) == 0
    capsys.readouterr()
    assert main(["verify", "subscriptions", "--config", cfg, "--format", "json"]) == 1
    import json

    report = json.loads(capsys.readouterr().out)
    assert not report["equal"]
    assert report["rows"] == 1200 and report["other_rows"] == 1200 - victim.rows
    assert any(not r["equal"] for r in report["ranges"])
    lost = {e.seq for e in setup["events"] if victim.first_seq <= e.seq <= victim.last_seq}
    # the lost versions are only in the live table; the versions next to them differ in validity
    assert any(d["seq"] in lost and d["in_other"] is None for d in report["differences"])

    assert main(["verify", "subscriptions", "--config", cfg]) == 1
    out = capsys.readouterr().out
    assert "DIFFERS" in out and "only in billing_subscriptions:" in out

    assert main(["rebuild", "subscriptions", "--swap", "--config", cfg]) == 1
    assert "not swapping" in capsys.readouterr().err
    assert len(state(setup["wh"], setup["table"])) == 1200  # the live table is untouched


def test_rebuild_into_the_live_table_only_when_it_does_not_exist(setup, tmp_path, capsys):
    assert main(["rebuild", "subscriptions", "--config", setup["cfg"]]) == 2
    assert "exists: rebuild into a shadow" in capsys.readouterr().err
    fresh = tmp_path / "fresh.yaml"
    fresh.write_text(Path(setup["cfg"]).read_text().replace("wh.duckdb", "fresh.duckdb"))
    assert main(["rebuild", "subscriptions", "--config", str(fresh)]) == 0
    assert state(setup["wh"], setup["table"]) == state(
        setup["wh"].replace("wh.duckdb", "fresh.duckdb"), setup["table"]
    )


def test_rebuild_library_refuses_the_live_table(setup):
    wh = open_warehouse(setup["wh"])
    with pytest.raises(ValueError, match="shadow"):
        rebuild(
            ChangelogReader(setup["root"]),
            wh,
            setup["table"],
            into=setup["table"],
            dead_letters=DeadLetterStore(setup["dl"]),
        )
    wh.close()


def test_an_unreadable_file_fails_the_replay_and_says_which(setup, capsys):
    victim = setup["writer"].published[2]
    root = open_root(setup["root"])
    path = root.fs._strip_protocol(victim.path)
    data = root.fs.cat_file(path)
    root.fs.rm(path)
    root.fs.pipe_file(path, data[:100])
    assert main(["replay", "subscriptions", "--config", setup["cfg"]]) == 1
    err = capsys.readouterr().err
    assert victim.path.rsplit("/", 1)[-1] in err and "could not be read" in err

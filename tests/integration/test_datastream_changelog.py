"""An ``engine: datastream`` source's files as its raw changelog: ``cdc replay``, ``cdc rebuild``,
``cdc verify`` and ``cdc changelog ls|show`` read them, from a local folder and from GCS (emulator).

The files hold the scripted ``shop.orders`` history of the Debezium-vs-Datastream equivalence
test (tests/scenario_orders.py): replaying them gives the state table the Debezium events give.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import fsspec
import pytest

from cdc.cli import main
from connectors.changelog.datastream import DatastreamChangelogReader
from connectors.changelog.reader import ReadStats
from connectors.deadletter import DeadLetterStore
from connectors.warehouse import open_warehouse
from state_models.changelog import ChangeRange
from state_models.scd2 import TableDef
from tests.scenario_orders import ORDERS, datastream_files
from tests.unit.test_datastream_equivalence import _PER_DELIVERY, debezium_events, state_table_rows

TABLE = "shop.shop.orders"
MINUTE = "shop_orders/2026/02/17/14/00"
COLUMNS = json.dumps(dict(ORDERS.columns))


def registry(tmp_path: Path, output: str) -> str:
    path = tmp_path / "cdc.yaml"
    path.write_text(
        f"""
changelog: ./lake
warehouse: duckdb:///{tmp_path}/wh.duckdb
sources:
  shop:
    kind: mysql
    engine: datastream
    dsn: mysql://datastream@10.0.0.5/shop
    tables:
      - name: shop.orders
        primary_key: [id]
        columns: {COLUMNS}
    datastream:
      project: acme-data
      location: us-central1
      bucket: acme-cdc-datastream
      output: {output}
"""
    )
    return str(path)


@pytest.fixture(params=["local", "gcs"])
def output(request: Any, tmp_path: Path) -> str:
    """Where the stream's files are: a local folder, then gs:// on the emulator."""
    if request.param == "local":
        return str(tmp_path / "datastream" / "shop")
    bucket = request.getfixturevalue("gcs_bucket")
    return f"gs://{bucket}/datastream/shop"


def put(url: str, data: bytes) -> None:
    with fsspec.open(url, "wb") as f:
        f.write(data)


def write_stream(output: str, *, duplicate: bool = True) -> list[str]:
    """The three files of the scripted history, one gzip'd; file 0 a second time under another
    name (Datastream re-wrote it) when ``duplicate``."""
    files = datastream_files()
    names = []
    for n, text in enumerate(files):
        name = f"{output}/{MINUTE}/mysql-cdc-binlog_{n}.jsonl"
        data = text.encode()
        if n == 1:
            name, data = name + ".gz", gzip.compress(data)
        put(name, data)
        names.append(name)
    if duplicate:
        put(f"{output}/{MINUTE}/mysql-cdc-binlog_0_again.jsonl", files[0].encode())
    return names


def state(tmp_path: Path, state_table: str = "shop_orders") -> list[dict[str, Any]]:
    table = TableDef(TABLE, state_table, "mysql", ORDERS.primary_key, dict(ORDERS.columns))
    wh = open_warehouse(f"duckdb:///{tmp_path}/wh.duckdb")
    try:
        return [{k: v for k, v in r.items() if k not in _PER_DELIVERY} for r in wh.history(table)]
    finally:
        wh.close()


def debezium_state() -> list[dict[str, Any]]:
    history, _ = state_table_rows([debezium_events()])
    return history


def test_replay_and_rebuild_of_datastream_files_give_the_debezium_state(
    output: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = registry(tmp_path, output)
    write_stream(output)

    assert main(["replay", "orders", "--config", cfg]) == 0
    assert "from 4 files" in capsys.readouterr().out
    expected = debezium_state()
    assert state(tmp_path) == expected
    # replaying again (and so re-reading the duplicate file once more) changes nothing
    assert main(["replay", "orders", "--config", cfg]) == 0
    assert state(tmp_path) == expected

    assert main(["rebuild", "orders", "--shadow", "--config", cfg]) == 0
    assert state(tmp_path, "shop_orders__shadow") == expected
    assert main(["verify", "orders", "--config", cfg]) == 0
    assert "equal" in capsys.readouterr().out

    assert main(["changelog", "ls", "--config", cfg, "--format", "json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["table"], row["files"], row["partitions"]) == (TABLE, 4, 1)
    assert row["events"] == "" and row["first_commit"] == "2026-02-17 14:00:00"
    assert main(["changelog", "show", "orders", "--files", "--config", cfg]) == 0
    assert capsys.readouterr().out.count("mysql-cdc-binlog_") == 4


def test_a_malformed_record_is_dead_lettered_with_its_file_and_offset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = str(tmp_path / "datastream" / "shop")
    cfg = registry(tmp_path, output)
    write_stream(output, duplicate=False)
    first, *rest = datastream_files()[0].splitlines(keepends=True)
    bad = '{"uuid": "broken", "source_metadata": {"table": "orders"\n'
    put(f"{output}/{MINUTE}/mysql-cdc-binlog_0.jsonl", "".join([first, bad, *rest]).encode())

    assert main(["replay", "orders", "--config", cfg]) == 1
    assert "1 records could not be decoded" in capsys.readouterr().err
    assert state(tmp_path) == debezium_state()  # every other record of the file was applied
    [letter] = DeadLetterStore(tmp_path / ".cdc" / "dead_letters").list()
    assert letter.error_type == "DecodeError" and "not valid JSON" in letter.reason
    assert letter.raw_text() == bad
    assert letter.context["file"] == f"{output}/{MINUTE}/mysql-cdc-binlog_0.jsonl"
    assert letter.context["offset"] == len(first.encode())
    assert letter.context["where"] == f"line 2 (byte {len(first.encode())})"
    assert letter.source == "shop"


def test_folders_are_pruned_by_time_and_strays_are_reported(tmp_path: Path) -> None:
    root = tmp_path / "shop"
    text = datastream_files()[0].encode()
    for minute in ("2026/02/17/14/00", "2026/02/17/18/30", "2026/03/01/00/00"):
        put(f"{root}/shop_orders/{minute}/f.jsonl", text)
    put(f"{root}/shop_orders/2026/02/17/notes.txt", b"x")
    reader = DatastreamChangelogReader(str(root), "shop", [ORDERS], kind="mysql", margin_s=600)

    def listed(rng: ChangeRange) -> list[str]:
        stats = ReadStats()
        return [f.display.split("shop_orders/")[1][:16] for f in reader.files(TABLE, rng, stats)]

    assert reader.tables() == [TABLE]
    at = ChangeRange(since_us=_us("2026-02-17T18:00:00"), until_us=_us("2026-02-17T19:00:00"))
    assert listed(at) == ["2026/02/17/18/30"]
    # the margin keeps a file started just before the range: it may hold events inside it
    assert listed(ChangeRange(since_us=_us("2026-02-17T14:05:00"), until_us=at.until_us)) == [
        "2026/02/17/14/00",
        "2026/02/17/18/30",
    ]
    assert listed(ChangeRange(since_us=_us("2026-02-20T00:00:00"))) == ["2026/03/01/00/00"]

    stats = ReadStats()
    batches = list(
        reader.events(TABLE, ChangeRange(until_us=_us("2026-02-17T14:00:02")), stats=stats)
    )
    assert [e.commit_ts for b in batches for e in b] == [_us("2026-02-17T14:00:01")]
    assert [u.path.rsplit("/", 1)[-1] for u in stats.unreadable] == ["notes.txt"]


def _us(text: str) -> int:
    import datetime as dt

    t = dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)
    return int(t.timestamp()) * 1_000_000

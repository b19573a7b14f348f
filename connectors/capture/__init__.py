"""Capture engines: a registered source becomes batches of change events (see ``base``).

``make_capture`` picks the engine the registry names; engines import their heavy dependencies
(the JVM for Debezium, mysql-replication for binlog) only when chosen.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from connectors.capture.base import (
    Capture,
    CaptureError,
    CaptureStats,
    CountingSink,
    EventSink,
    MemorySink,
    PositionLostError,
)
from state_models.errors import ConfigError
from state_models.registry import Source
from state_models.tables import TableInfo

__all__ = [
    "Capture",
    "CaptureError",
    "CaptureStats",
    "CountingSink",
    "EventSink",
    "MemorySink",
    "PositionLostError",
    "make_capture",
    "prepare_engines",
]


def make_capture(
    source_name: str,
    source: Source,
    tables: Sequence[TableInfo],
    state_dir: str | Path,
    **options: Any,
) -> Capture:
    """The capture engine the registry names for this source.

    The native readers render no Debezium envelope into ``ChangeEvent.raw`` unless
    ``keep_raw=True`` is passed: ``cdc run``'s journal, merge and changelog keep the event's own
    columns, and the sinks that need Debezium JSON encode it when they need it (Pub/Sub:
    ``state_models.pubsub.message_for``; a dead letter: ``merge_jobs.apply``). The envelope with
    its schema block was ~3 KiB of every ~3.4 KiB event. The Debezium engine's records are the
    engine's own messages and are kept."""
    engine = source.engine
    if engine in ("pgoutput", "binlog"):
        options.setdefault("keep_raw", False)
    if engine == "debezium" and source.kind == "postgres":
        from connectors.capture.debezium import DebeziumCapture

        return DebeziumCapture(source_name, source, tables, state_dir, **options)
    if engine == "pgoutput":
        from connectors.capture.pgoutput import PgoutputCapture

        return PgoutputCapture(source_name, source, tables, state_dir, **options)
    if engine == "binlog":
        from connectors.capture.binlog import BinlogCapture

        return BinlogCapture(source_name, source, tables, state_dir, **options)
    if engine == "debezium":
        raise ConfigError(
            f"sources.{source_name}: the embedded Debezium engine here captures PostgreSQL only "
            "(Debezium's MySQL connector refuses MariaDB 10.11); use engine: binlog, or run Debezium "
            "Server (`cdc debezium-config`) against MySQL"
        )
    raise ConfigError(
        f"sources.{source_name}: engine {engine!r} has no local capture (Datastream runs in Google Cloud)"
    )


def prepare_engines(sources: Iterable[Source]) -> None:
    """Start, on the calling thread, what the captures of these sources share per process.

    Call it from the main thread before running captures on worker threads: the JVM that hosts
    the Debezium engines must be started by the main thread, or the process hangs at exit
    (see ``connectors.capture.jvm``). Idempotent; nothing to do for the native readers.
    """
    if any(s.engine == "debezium" and s.kind == "postgres" and s.tables for s in sources):
        from connectors.capture.jvm import start_jvm

        start_jvm()

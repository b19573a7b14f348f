"""Embedded Debezium for PostgreSQL, through pydbzengine on the process's JVM.

``connector_properties`` is the one definition of how a registered source becomes Debezium connector
settings; the embedded engine here and the Debezium Server config (``debezium_server``) are both
built from it, so both paths capture identically.

The engine hands us batches on its own thread; we decode each record once (``decode_debezium``),
give the batch to the sink, and only then mark the records processed. Offsets are committed after
every batch (``offset.flush.interval.ms=0``) into our durable store (``java/``), and the connector
confirms the slot LSN only after that commit. Connector failures that the engine would only log
reach us through its completion callback and are raised with Debezium's own reason.

Freshness (``source_contact_at``, ``caught_up_at``): Debezium's heartbeat records are no proof that
the server still answers. Its PostgreSQL connector (3.6) emits one whenever a poll of the replication
stream finds nothing, and ``heartbeat.action.query`` runs on a separate JDBC connection, so a frozen
walsender stops neither (measured: a SIGSTOPped walsender stayed "idle" with heartbeats alone). What
the server does attest is ``pg_stat_replication.reply_time``: the send time of the last standby status
update the walsender of our slot took in from the engine, which sends one every second. A watcher
thread reads it (a read-only query, nothing written to the source) into ``source_contact_at``, and
so does every change batch. A heartbeat means the engine had nothing unread when it emitted it: once
its batch is acknowledged, the capture was caught up then, as far as the source was last heard from.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import psycopg

from connectors.capture.base import Capture, CaptureError, EventSink
from connectors.capture.offsets import offsets_dir
from connectors.capture.retry import Backoff
from connectors.capture.slots import check_resumable, connect_source, read_slot
from connectors.sources import refused, require_dsn, sqlalchemy_url
from state_models.debezium import Tombstone, decode_debezium
from state_models.errors import CdcError, SourceUnavailableError
from state_models.events import ChangeEvent
from state_models.registry import Source, default_publication, default_slot
from state_models.seq import make_seq
from state_models.tables import TableInfo, resolver_for
from state_models.watermark import seq_before, through_transaction

log = logging.getLogger("cdc.capture.debezium")

POSTGRES_CONNECTOR = "io.debezium.connector.postgresql.PostgresConnector"
HEARTBEAT_PREFIX = "__debezium-heartbeat"
#: how long a stopping capture waits for its engine to end after closing it (a SIGTERM's budget is
#: often 30 s: Kubernetes' default grace period)
ENGINE_STOP_S = 15
#: Converter settings: in the embedded engine they are plain properties, in Debezium Server they are
#: ``debezium.format.*``. Value schemas travel with every event so that types (and columns added
#: mid-stream) decode exactly without depending on the registry's declared column types.
FORMAT_KEYS = ("key.converter.schemas.enable", "value.converter.schemas.enable")
#: When the walsender serving our slot last took in a status update from its client (the engine).
REPLY_TIME_SQL = (
    "SELECT extract(epoch FROM r.reply_time)::float8 FROM pg_replication_slots s "
    "JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = %s"
)
#: How often the capture reads ``REPLY_TIME_SQL`` (the engine sends a status update every second).
WATCH_SECONDS = 2.0


# --------------------------------------------------------------------------- connector settings


def connector_properties(
    source_name: str, source: Source, tables: Sequence[TableInfo] | None = None
) -> dict[str, str]:
    """Debezium connector settings for one PostgreSQL source (without engine/offset/format keys).

    The registry's ``debezium:`` mapping is applied last, verbatim, so a user can override anything.
    """
    if source.kind != "postgres":
        raise CaptureError(f"source {source_name!r}: the Debezium capture here reads PostgreSQL")
    url = sqlalchemy_url(source.kind, require_dsn(source, source_name))
    names = [f"{t.schema_table[0]}.{t.schema_table[1]}" for t in tables or []] or [
        t.name for t in source.tables
    ]
    props = {
        "connector.class": POSTGRES_CONNECTOR,
        "topic.prefix": source_name,
        "database.hostname": url.host or "localhost",
        "database.port": str(url.port or 5432),
        "database.user": url.username or "postgres",
        "database.password": url.password or "",
        "database.dbname": url.database or "postgres",
        "plugin.name": "pgoutput",
        "slot.name": default_slot(source_name, source),
        "publication.name": default_publication(source_name, source),
        "publication.autocreate.mode": "filtered",
        "table.include.list": ",".join(_java_regex_literal(n) for n in names),
        "snapshot.mode": "initial" if source.snapshot == "initial" else "no_data",
        "decimal.handling.mode": "precise",
        "skipped.operations": "none",  # truncates are changes too
        "tombstones.on.delete": "false",  # the delete event already carries the key
        # Heartbeats let the slot advance while our tables are quiet and mark the capture caught up
        # (module docstring); every 5 s keeps `idle (caught up Ns ago)` well inside stall_after
        # (default 20 s). They do not show that the source answers: the status updates do.
        "heartbeat.interval.ms": "5000",
        # the walsender stamps each status update it takes in as pg_stat_replication.reply_time,
        # which the capture reads as source contact; the default (10 s) is too coarse for stall_after
        "status.update.interval.ms": "1000",
        # Debezium 3.6's queue holds every batch for the whole poll interval unless 2,048 records
        # arrive first (default 500 ms: half a second on every change's latency at moderate rates).
        "poll.interval.ms": "100",
    }
    dropped = [
        f"{_java_regex_literal(t.spec_name)}\\.{_java_regex_literal(column)}"
        for t in tables or []
        if t.pii is not None
        for column, policy in t.pii.columns.items()
        if policy == "drop"
    ]
    if dropped:  # pii: drop: the column never leaves the database (nor reaches a topic)
        props["column.exclude.list"] = ",".join(dropped)
    sslmode = url.query.get("sslmode")
    if sslmode:
        props["database.sslmode"] = str(sslmode)
    props.update({k: str(v) for k, v in (source.debezium or {}).items() if k not in FORMAT_KEYS})
    return props


#: Values carry their schema (exact types); keys stay bare JSON (``{"id":1}``), which Debezium
#: Server uses as the Pub/Sub ordering key (limited to 1 KB) and the decoder reads typed from the image.
DEFAULT_FORMAT = {"key.converter.schemas.enable": "false", "value.converter.schemas.enable": "true"}


def format_properties(source: Source) -> dict[str, str]:
    """Converter settings: ``DEFAULT_FORMAT`` unless the registry's ``debezium:`` says otherwise."""
    overrides = source.debezium or {}
    return {k: str(overrides.get(k, v)) for k, v in DEFAULT_FORMAT.items()}


def engine_properties(
    source_name: str, source: Source, tables: Sequence[TableInfo], offsets_file: Path
) -> dict[str, str]:
    """Everything the embedded engine gets: connector settings, formats, our durable offsets."""
    from connectors.capture.jvm import OFFSET_STORE_CLASS

    return {
        "name": f"cdc-{source_name}",
        **connector_properties(source_name, source, tables),
        **format_properties(source),
        "offset.storage": OFFSET_STORE_CLASS,
        "offset.storage.file.filename": str(offsets_file),
        "offset.flush.interval.ms": "0",  # commit after every batch the sink acknowledged
    }


def _java_regex_literal(name: str) -> str:
    """Debezium reads include lists as regular expressions; table names are literals."""
    return re.sub(r"([\\.$^*+?()\[\]{}|])", r"\\\1", name)


# --------------------------------------------------------------------------- offsets file


def read_offsets(path: Path) -> dict[str, dict[str, Any]]:
    """The Debezium offsets our store wrote: {partition key JSON: offset dict}."""
    if not path.exists():
        return {}
    lines = path.read_text().splitlines()
    if not lines or not lines[0].startswith("# cdc-history debezium offsets"):
        raise CaptureError(f"{path} is not a cdc-history Debezium offsets file")
    out: dict[str, dict[str, Any]] = {}
    for line in lines[1:]:
        if not line:
            continue
        key_b64, _, value_b64 = line.partition("\t")
        key = base64.b64decode(key_b64).decode()
        out[key] = {} if value_b64 == "-" else json.loads(base64.b64decode(value_b64))
    return out


def stored_lsn(path: Path) -> int | None:
    """The furthest LSN any stored offset names (what the connector may have confirmed to the slot)."""
    lsns = [
        int(v[k])
        for v in read_offsets(path).values()
        for k in ("lsn", "lsn_proc", "lsn_commit")
        if isinstance(v.get(k), int)
    ]
    return max(lsns) if lsns else None


# --------------------------------------------------------------------------- the capture


@dataclass
class _Outcome:
    """What the engine's completion callback reported."""

    success: bool = True
    message: str = ""
    error: Any = None  # a Java Throwable


class DebeziumCapture(Capture):
    """The embedded Debezium PostgreSQL connector as a ``Capture``."""

    engine = "debezium"

    def __init__(
        self,
        source_name: str,
        source: Source,
        tables: Sequence[TableInfo],
        state_dir: str | Path,
        *,
        keep_raw: bool = True,
        heap: str | None = None,
        max_retry_seconds: float | None = None,
        retry_initial_seconds: float = 1.0,
        retry_max_seconds: float = 60.0,
    ):
        super().__init__(source_name, source, tables, state_dir)
        self.keep_raw = keep_raw
        self.heap = heap
        self.backoff = Backoff(
            self, max_retry_seconds, retry_initial_seconds, retry_max_seconds, log
        )
        self.offsets_file = offsets_dir(self.state_dir) / f"{source_name}.debezium"
        self._resolve = resolver_for(self.tables, source_name)

    def _stored_cut(self) -> str | None:
        """The cut before the next transaction, from the stored offset: Debezium orders that
        transaction's changes by ``lsn_commit`` (its ``source.sequence[0]``)."""
        commits = [
            int(v["lsn_commit"])
            for v in read_offsets(self.offsets_file).values()
            if isinstance(v.get("lsn_commit"), int)
        ]
        return seq_before(make_seq(max(commits), 0)) if commits else None

    def properties(self) -> dict[str, str]:
        return engine_properties(self.source_name, self.source, self.tables, self.offsets_file)

    # -- the run loop: start the engine, restart it while the source is unreachable

    def _run(self, sink: EventSink, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self._check_source()
                self._run_engine(sink, stop)
                return
            except SourceUnavailableError as exc:
                if not self.backoff.wait(exc, stop):
                    return

    def _check_source(self) -> None:
        """Reachable, and our stored position still servable by the slot (else PositionLostError)."""
        with connect_source(self.source_name, self.source) as conn:
            slot = read_slot(conn, default_slot(self.source_name, self.source))
        check_resumable(self.source_name, slot, stored_lsn(self.offsets_file))

    def _run_engine(self, sink: EventSink, stop: threading.Event) -> None:
        """Run one engine until ``stop`` (returns) or until it fails (raises with its reason)."""
        from connectors.capture.jvm import java_threads, start_jvm

        start_jvm(self.heap)
        bridge = _bridge()
        outcome = _Outcome()
        done = threading.Event()

        delivered: list[str | None] = [None]  # the seq of the last change handed to the sink
        abandoned = threading.Event()  # set when the engine did not stop within ENGINE_STOP_S

        def on_batch(lines: str) -> None:
            if abandoned.is_set():  # not marked processed: redelivered after the next start
                raise CaptureError("the engine was left behind at stop; batch not taken")
            events, heartbeat_at, before_heartbeat = self._decode(lines)
            if events:
                sink.write(events)
                self._acknowledged(events)
                self._heard_from_source(contact=time.time())  # they came through the stream
            if heartbeat_at is not None:
                self._heard_from_source(caught_up=heartbeat_at)
                # nothing was unread when the heartbeat was emitted: the transaction of the last
                # change before it is complete
                last = events[before_heartbeat - 1].seq if before_heartbeat else delivered[0]
                if last is not None:
                    self._update(complete_through=through_transaction(last))
                else:  # nothing delivered since a restart: before the next transaction
                    self._update(complete_through=self._stored_cut())
            if events:
                delivered[0] = events[-1].seq

        def on_complete(success: bool, message: str, error: Any) -> None:
            outcome.success, outcome.message, outcome.error = success, message, error
            done.set()

        def on_task_started() -> None:
            self.backoff.reset()
            self._update(phase="streaming", last_error=None)

        consumer = bridge.Consumer(on_batch)
        engine = bridge.build(self.properties(), consumer, on_complete, on_task_started)
        runner = threading.Thread(
            target=engine.run, name=f"debezium-{self.source_name}", daemon=True
        )
        engine_ended = threading.Event()
        watcher = threading.Thread(
            target=self._watch_walsender,
            args=(engine_ended,),
            name=f"debezium-{self.source_name}-walsender",
            daemon=True,  # not joined: a query to a frozen server may hang, and only stalls this
        )
        runner.start()
        watcher.start()
        try:
            while runner.is_alive():
                if stop.wait(0.2):
                    # on a thread of its own: close() may itself wait for the engine's tasks
                    threading.Thread(
                        target=_close, args=(engine, self.source_name), daemon=True
                    ).start()
                    break
            runner.join(ENGINE_STOP_S if stop.is_set() else None)
            if runner.is_alive():
                # whatever the engine still delivers is refused (and so redelivered at the next
                # start, from the position saved with the last batch taken); the threads are left
                # behind and do not hold up the process's exit (connectors.capture.jvm)
                abandoned.set()
                log.error(
                    "the Debezium engine of source %r did not stop within %d s of being closed; "
                    "leaving it behind. Its threads:\n%s",
                    self.source_name,
                    ENGINE_STOP_S,
                    java_threads(),
                )
                return
        finally:
            engine_ended.set()
        if consumer.error is not None:
            # our handler failed (the sink refused the batch, an event did not decode): the batch
            # was not marked processed, so its offset was not committed
            raise consumer.error
        if stop.is_set() and (outcome.success or not done.is_set()):
            return
        reason = _reason(outcome) if done.is_set() else "the engine stopped without telling why"
        if _looks_unreachable(outcome):
            raise SourceUnavailableError(f"source {self.source_name!r} is unreachable: {reason}")
        raise CaptureError(f"Debezium stopped capturing source {self.source_name!r}: {reason}")

    def _watch_walsender(self, engine_ended: threading.Event) -> None:
        """Until ``engine_ended``, read when the walsender of our slot last took in a status update
        from the engine (``REPLY_TIME_SQL``) as source contact. No row while the slot is not being
        streamed (snapshot, restart); a failed read leaves the contact to age into STALLED."""
        slot = default_slot(self.source_name, self.source)
        conn: psycopg.Connection[Any] | None = None
        failing = False
        try:
            while not engine_ended.wait(WATCH_SECONDS):
                try:
                    if conn is None:
                        conn = connect_source(self.source_name, self.source)
                    row = conn.execute(REPLY_TIME_SQL, (slot,)).fetchone()
                except (psycopg.Error, CdcError) as exc:
                    (log.debug if failing else log.warning)(
                        "source %r: cannot read when its walsender last answered: %s",
                        self.source_name,
                        exc,
                    )
                    failing = True
                    if conn is not None:
                        conn.close()
                        conn = None
                    continue
                failing = False
                if row is not None and row[0] is not None and not engine_ended.is_set():
                    self._heard_from_source(contact=float(row[0]))
        finally:
            if conn is not None:
                conn.close()

    def _heard_from_source(
        self, *, contact: float | None = None, caught_up: float | None = None
    ) -> None:
        """Move ``source_contact_at`` and ``caught_up_at`` forward (never back). Caught up is known
        only as far as the source was last heard from: a frozen walsender keeps it where it was."""
        with self._stats_lock:
            s = self._stats
            contact_at = max(s.source_contact_at or 0.0, contact or 0.0) or None
            caught_up_at = s.caught_up_at
            if caught_up is not None and contact_at is not None:
                caught_up_at = max(caught_up_at or 0.0, min(caught_up, contact_at))
            self._stats = replace(s, source_contact_at=contact_at, caught_up_at=caught_up_at)

    def _decode(self, lines: str) -> tuple[list[ChangeEvent], float | None, int]:
        """Decode a batch given as ``BatchBridge.lines`` text (destination, key, value per line):
        its change events, when the last heartbeat among them was emitted (epoch seconds), and
        how many of the events came before that heartbeat."""
        events: list[ChangeEvent] = []
        heartbeat_at: float | None = None
        before_heartbeat = 0
        for line in lines.split("\n"):
            if not line:
                continue
            destination, key, value = line.split("\t", 2)
            if destination.startswith(HEARTBEAT_PREFIX):
                heartbeat_at = _emitted_at(value)
                before_heartbeat = len(events)
                continue
            if value == "-":
                continue  # a tombstone
            event = decode_debezium(
                value,
                self._resolve,
                record_key=None if key == "-" else _loads(key),
                keep_raw=self.keep_raw,
                parsed=_loads(value),
            )
            if not isinstance(event, Tombstone):
                events.append(event)
        return events, heartbeat_at, before_heartbeat


def _close(engine: Any, source_name: str) -> None:
    try:
        engine.close()
    except Exception as exc:  # the engine's end (or not) is what _run_engine waits for
        log.warning("closing the Debezium engine of source %r failed: %s", source_name, exc)


def _emitted_at(heartbeat: str) -> float:
    """A heartbeat's ``ts_ms`` (the engine's clock, which is ours), in seconds; now if it has none."""
    try:
        doc = _loads(heartbeat)
        payload = doc.get("payload", doc) if isinstance(doc, dict) else {}
        return float(payload["ts_ms"]) / 1000.0
    except (ValueError, TypeError, KeyError, AttributeError):
        return time.time()


def _loads(text: str) -> Any:
    """orjson is several times faster than json on Debezium's 4 KB events (schema included); what
    it refuses (NaN, integers beyond 64 bits) goes to json, which ``decode_debezium`` uses."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _reason(outcome: _Outcome) -> str:
    """The engine's message and the distinct messages of the exception chain behind it."""
    parts = [outcome.message] if outcome.message else []
    for c in _java_cause_chain(outcome.error):
        if not any(c in p for p in parts):
            parts.append(c)
    return "; ".join(parts) or "unknown reason"


def _java_cause_chain(error: Any) -> list[str]:
    """Messages of a (Java or Python) exception and its causes, outermost first."""
    out: list[str] = []
    seen = 0
    while error is not None and seen < 8:
        seen += 1
        try:
            message = str(error.getMessage()) if hasattr(error, "getMessage") else str(error)
        except Exception:
            message = str(error)
        if message and message != "None":
            out.append(message)
        error = error.getCause() if hasattr(error, "getCause") else error.__cause__
    return out


_UNREACHABLE = re.compile(
    r"Connection refused|connection attempt failed|could not connect|Connection to .* refused|"
    r"terminating connection|connection has been closed|This connection has been closed|"
    r"Unable to connect|unreachable|No route to host|Connection reset|timed out",
    re.I,
)


def _looks_unreachable(outcome: _Outcome) -> bool:
    """A network failure (retried), not a refusal: "Unable to connect ... password authentication
    failed" is the password, and no retry can fix it."""
    messages = [outcome.message, *_java_cause_chain(outcome.error)]
    if any(refused(m) for m in messages):
        return False
    return any(_UNREACHABLE.search(m) for m in messages)


# --------------------------------------------------------------------------- the JPype bridge


class _Bridge:
    """Java-facing classes; they can only be defined once the JVM runs."""

    Consumer: Callable[[Callable[[str], None]], Any]
    build: Callable[..., Any]


_BRIDGE: _Bridge | None = None


def _bridge() -> _Bridge:
    global _BRIDGE
    if _BRIDGE is not None:
        return _BRIDGE
    import jpype

    from connectors.capture.jvm import BATCH_BRIDGE_CLASS

    JDebeziumEngine = jpype.JClass("io.debezium.engine.DebeziumEngine")
    JBatchBridge = jpype.JClass(BATCH_BRIDGE_CLASS)
    JJson = jpype.JClass("io.debezium.engine.format.Json")
    JProperties = jpype.JClass("java.util.Properties")

    @jpype.JImplements("io.debezium.engine.DebeziumEngine$ChangeConsumer")
    class Consumer:
        def __init__(self, on_batch: Callable[[str], None]):
            self.on_batch = on_batch
            self.error: BaseException | None = None

        @jpype.JOverride
        def handleBatch(self, records: Any, committer: Any) -> None:
            try:
                self.on_batch(str(JBatchBridge.lines(records)))
            except BaseException as exc:
                # Not marking the batch processed keeps its offset uncommitted; raising stops the
                # engine, and run() reports this exception rather than Java's wrapper of it.
                self.error = exc
                raise
            JBatchBridge.commit(records, committer)

        @jpype.JOverride
        def supportsTombstoneEvents(self) -> bool:
            return True

    @jpype.JImplements("io.debezium.engine.DebeziumEngine$CompletionCallback")
    class Completion:
        def __init__(self, fn: Callable[[bool, str, Any], None]):
            self.fn = fn

        @jpype.JOverride
        def handle(self, success: Any, message: Any, error: Any) -> None:
            self.fn(bool(success), "" if message is None else str(message), error)

    @jpype.JImplements("io.debezium.engine.DebeziumEngine$ConnectorCallback")
    class Started:
        def __init__(self, fn: Callable[[], None]):
            self.fn = fn

        @jpype.JOverride
        def taskStarted(self) -> None:
            self.fn()

    def build(
        props: dict[str, str],
        consumer: Any,
        on_complete: Callable[[bool, str, Any], None],
        on_task_started: Callable[[], None],
    ) -> Any:
        jprops = JProperties()
        for k, v in props.items():
            jprops.setProperty(k, v)
        return (
            JDebeziumEngine.create(JJson)
            .using(jprops)
            .using(Completion(on_complete))
            .using(Started(on_task_started))
            .notifying(consumer)
            .build()
        )

    bridge = _Bridge()
    bridge.Consumer = Consumer
    bridge.build = build
    _BRIDGE = bridge
    return bridge

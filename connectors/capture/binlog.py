"""Native MySQL/MariaDB capture: the ROW binlog read as a replica with ``mysql-replication``.

First start: a consistent snapshot whose binlog position is taken *before* any row is read, so the
stream resumes exactly where the snapshot's view ends —

- MariaDB: ``START TRANSACTION WITH CONSISTENT SNAPSHOT`` and the status variables
  ``binlog_snapshot_file`` / ``binlog_snapshot_position`` (the binlog position of exactly that view;
  no lock), its GTID position from ``BINLOG_GTID_POS()``;
- MySQL: ``FLUSH TABLES WITH READ LOCK``, the transaction, ``SHOW MASTER STATUS`` (+ ``gtid_executed``),
  ``UNLOCK TABLES`` (the lock is held only while the position is read; needs RELOAD).

Snapshot rows are ``op='r'`` with seq (snapshot file, snapshot position, 0); streamed rows have seq
(binlog file number, start position of the rows event, row index in it) (docs/architecture.md §4), so
every streamed change sorts after the snapshot. Every event carries the Debezium MySQL envelope
(``source``: file, pos, row, gtid, server_id, ts_ms, db, table) in ``ChangeEvent.raw``;
``decode_debezium`` turns it back into the same event. An update that changes the primary key is a
delete of the old key plus a create of the new one, as Debezium emits it.

Positions: the saved position is where a restart reconnects — the start of the transaction in
progress (or the end of the last complete one) as binlog file/position and, with ``gtid: true`` in
the registry, as the GTID state (MariaDB ``domain-server-seq`` list, MySQL GTID set) given to the
server as ``auto_position`` — plus the seq of the last delivered event: after a restart the rows up
to it are skipped, so a batch acknowledged in the middle of a transaction is not delivered twice. It
is saved only after the sink acknowledged the batch (at-least-once).

Connection handling: the reader blocks in a socket read, and ``close()`` from another thread hangs
there, so the capture's own thread does all the reading and asks the server for heartbeats
(``MASTER_HEARTBEAT_PERIOD``): when no change comes, a heartbeat returns control at least every
``heartbeat`` seconds to flush a pending batch or notice ``stop``. An unreachable server is retried
with backoff from the last saved position; a position the server can no longer serve (binlog purged,
GTID state gone) is ``PositionLostError``.

Needs ``binlog_format=ROW``, ``binlog_row_image=FULL`` and ``binlog_row_metadata=FULL`` (column
names and types in the log, MySQL 8.0.14+ / MariaDB 10.5+); checked before streaming.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import pymysql.cursors
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.constants import NONE_SOURCE
from pymysqlreplication.event import (
    GtidEvent,
    HeartbeatLogEvent,
    MariadbGtidEvent,
    QueryEvent,
    RotateEvent,
    XidEvent,
)
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from connectors.capture.base import (
    UNREADABLE,
    Capture,
    CaptureError,
    EventSink,
    PositionLostError,
    unreadable_change,
)
from connectors.capture.binlogs import (
    check_resumable,
    default_server_id,
    master_status,
    read_binlogs,
    resnapshot_fix,
)
from connectors.capture.envelope import VERSION, EnvelopeColumn, TableEnvelope, json_text
from connectors.capture.mytypes import (
    MyType,
    my_type,
    spec_from_binlog,
    spec_from_information_schema,
)
from connectors.capture.offsets import OffsetStore
from connectors.capture.retry import Backoff
from connectors.deadletter import NewDeadLetter
from connectors.sources import MYSQL_REFUSALS, mysql_params, require_dsn
from state_models.errors import SourceAccessError, SourceUnavailableError
from state_models.events import ChangeEvent, Op, make_event_id
from state_models.registry import Source
from state_models.seq import binlog_file_number, binlog_seq
from state_models.tables import TableInfo

log = logging.getLogger("cdc.capture.binlog")

STREAM_EVENTS = [
    WriteRowsEvent,
    UpdateRowsEvent,
    DeleteRowsEvent,
    RotateEvent,
    XidEvent,
    QueryEvent,
    GtidEvent,
    MariadbGtidEvent,
    HeartbeatLogEvent,
]
#: MySQL/MariaDB server errors that mean "the log you ask for is not here any more".
_POSITION_ERRORS = (1236,)
#: Client errors of a connection that could not be made or broke (transient).
_CONNECTION_ERRORS = (2002, 2003, 2006, 2013, 2055, 1040, 1053, 1927)
#: Query events that do not end the transaction they appear in.
_IN_TRANSACTION = ("BEGIN", "SAVEPOINT", "ROLLBACK TO", "XA ")


# --------------------------------------------------------------------------- tables


@dataclass
class Shape:
    """One version of a registered table's columns, with how to type, key and render its rows."""

    info: TableInfo
    schema: str
    table: str
    names: list[str]
    types: list[MyType]
    key: tuple[str, ...]
    envelope: TableEnvelope | None

    @property
    def source_types(self) -> dict[str, str] | None:
        """The column types its envelope states (shared by its events)."""
        return None if self.envelope is None else self.envelope.source_types

    def __post_init__(self) -> None:
        # columns whose driver values are already canonical (integers) are copied as they are
        self._parsers = [
            (n, t.parse) for n, t in zip(self.names, self.types, strict=True) if not t.exact
        ]

    def image(self, values: dict[str, Any]) -> dict[str, Any]:
        out = {n: values.get(n) for n in self.names}
        for n, parse in self._parsers:
            v = out[n]
            if v is not None:
                out[n] = parse(v)
        return out


def make_shape(
    source_name: str,
    info: TableInfo,
    key: tuple[str, ...],
    schema: str,
    table: str,
    names: list[str],
    types: list[MyType],
    optional: Sequence[bool] | None = None,
) -> Shape:
    missing = [k for k in key if k not in names]
    if missing:
        raise CaptureError(
            f"table {schema}.{table} of source {source_name!r}: key column(s) {missing} are not in "
            f"its columns {names}"
        )
    opt = list(optional) if optional is not None else [n not in key for n in names]
    envelope = TableEnvelope(
        "mysql",
        f"{source_name}.{schema}.{table}",
        [EnvelopeColumn(n, t, o) for n, t, o in zip(names, types, opt, strict=True)],
        key=key,
    )
    return Shape(info, schema, table, names, types, key, envelope)


# --------------------------------------------------------------------------- the decoder


def cut_at(position: tuple[str, int]) -> str:
    """The cut at a binlog position where a transaction starts (its GTID or BEGIN event): every
    change before it, and a snapshot taken there (whose rows share its seq, with row 0), but no
    row of that transaction, whose rows events all lie after that event."""
    return binlog_seq(position[0], position[1], 0)


def _row_set_aside(
    source_name: str, table_id: str, row: Any, exc: Exception, **context: Any
) -> NewDeadLetter:
    """A row the reader could not read, holding the row as the library gave it."""
    raw = json.dumps({"row": row}, default=repr, ensure_ascii=False)
    return unreadable_change(
        "the binlog reader", exc, raw, source=source_name, table=table_id, **context
    )


class BinlogDecoder:
    """mysql-replication events -> ChangeEvents, tracking the resumable position. No I/O.

    ``tables`` maps (database, table) of every registered table to its TableInfo and key columns.
    """

    def __init__(
        self,
        source_name: str,
        tables: dict[tuple[str, str], tuple[TableInfo, tuple[str, ...]]],
        position: dict[str, Any],
        *,
        keep_raw: bool = True,
        mariadb: bool = True,
    ):
        self.source_name = source_name
        self.tables = tables
        self.keep_raw = keep_raw
        self.mariadb = mariadb
        self.file: str = position["file"]
        self.file_no = binlog_file_number(self.file)
        self.done: tuple[str, int] = (self.file, int(position["pos"]))
        self.gtids = GtidState(position.get("gtid"), mariadb)
        self.last_seq: str | None = position.get("last_seq")
        self._skip_to = self.last_seq  # rows up to here were delivered before a restart
        self.in_tx = False
        self.tx_start: tuple[str, int] = self.done
        self.tx_gtid: str | None = None
        self.tx_id: str | None = None  # its GTID, else where it starts in the binlog
        self._highest: tuple[int, int] = (self.file_no, int(position["pos"]) - 1)
        self._shapes: dict[tuple[Any, ...], Shape] = {}
        #: changes that could not be read, waiting to be stored before the position moves on
        self.unreadable: list[NewDeadLetter] = []

    def position(self) -> dict[str, Any]:
        """Where to reconnect after everything decoded so far is acknowledged."""
        file, pos = self.tx_start if self.in_tx else self.done
        return {"file": file, "pos": pos, "gtid": self.gtids.text(), "last_seq": self.last_seq}

    def feed(self, ev: Any, out: list[ChangeEvent]) -> None:
        if isinstance(ev, RotateEvent):
            self.file = ev.next_binlog
            self.file_no = binlog_file_number(self.file)
            done_at = (binlog_file_number(self.done[0]), self.done[1])
            # a real rotate moves on to the next file; the one a GTID resume starts with may name
            # the file's start, which is no progress
            if not self.in_tx and (self.file_no, int(ev.position)) > done_at:
                self.done = (self.file, int(ev.position))
            return
        end = int(ev.packet.log_pos)
        start = end - int(ev.packet.event_size)
        here = (self.file_no, start)
        if here <= self._highest:
            return  # replayed after mysql-replication reconnected on its own: seen already
        self._highest = here
        if isinstance(ev, WriteRowsEvent | UpdateRowsEvent | DeleteRowsEvent):
            self._rows(ev, start, out)
        elif isinstance(ev, MariadbGtidEvent | GtidEvent):
            self._begin(start, ev.gtid)
        elif isinstance(ev, XidEvent):
            self._commit(end)
        elif isinstance(ev, QueryEvent):
            query = (ev.query or "").lstrip().upper()
            if query.startswith(_IN_TRANSACTION):
                if not self.in_tx:
                    self._begin(start, None)
            else:  # DDL (its own transaction) or the COMMIT of a non-transactional table
                self._commit(end)

    def _begin(self, start: int, gtid: str | None) -> None:
        self.in_tx = True
        self.tx_start = (self.file, start)
        if gtid is not None and not gtid.endswith(":0"):  # MySQL anonymous GTIDs are ...:0
            self.tx_gtid = gtid
        self.tx_id = transaction_id(self.tx_gtid, self.file, start)

    def _commit(self, end: int) -> None:
        if self.tx_gtid is not None:
            self.gtids.add(self.tx_gtid)
        self.in_tx = False
        self.tx_gtid = None
        self.tx_id = None
        self.done = (self.file, end)

    # -- rows

    def shape(self, ev: Any) -> Shape | None:
        registered = self.tables.get((ev.schema, ev.table))
        if registered is None:
            return None
        columns = ev.columns
        signature = (ev.schema, ev.table, *(_column_signature(c) for c in columns))
        shape = self._shapes.get(signature)
        if shape is None:
            names = [c.name for c in columns]
            if any(not n or n.startswith("UNKNOWN_COL") for n in names):
                raise CaptureError(
                    f"the binlog of source {self.source_name!r} carries no column names for "
                    f"{ev.schema}.{ev.table}: set binlog_row_metadata = FULL on the server "
                    "(SET GLOBAL binlog_row_metadata = 'FULL'; and in my.cnf) and re-snapshot"
                )
            specs = [spec_from_binlog(c) for c in columns]
            unlabelled = [
                n
                for n, spec in zip(names, specs, strict=True)
                if spec.data_type in ("enum", "set") and not spec.labels
            ]
            if unlabelled:
                # without its members mysql-replication reads every ENUM value as NULL and every
                # SET value as the empty set
                raise CaptureError(
                    f"the binlog of source {self.source_name!r} carries no members for the "
                    f"ENUM/SET column(s) {unlabelled} of {ev.schema}.{ev.table}: set "
                    "binlog_row_metadata = FULL on the server and re-snapshot"
                )
            info, key = registered
            types = [my_type(spec) for spec in specs]
            shape = make_shape(self.source_name, info, key, ev.schema, ev.table, names, types)
            self._shapes[signature] = shape
        return shape

    def _rows(self, ev: Any, start: int, out: list[ChangeEvent]) -> None:
        shape = self.shape(ev)
        if shape is None:
            return
        ts = int(ev.timestamp) * 1_000_000
        server_id = int(ev.packet.server_id)
        prefix = binlog_seq(self.file_no, start, 0)[:-16]  # seq of row i: prefix + i in hex
        source_head = ""  # the serialised source block up to its row number, once per event
        if self.keep_raw:
            block = source_block(
                self.source_name, shape, ts, server_id, self.tx_gtid, self.file, start, 0, "false"
            )
            del block["row"], block["thread"], block["query"]
            source_head = json_text(block)[:-1]
        for i, row in enumerate(ev.rows):
            seq = f"{prefix}{i:016x}"
            if self._skip_to is not None:
                if seq <= self._skip_to:
                    continue
                self._skip_to = None
            source = f'{source_head},"row":{i},"thread":null,"query":null}}' if source_head else ""
            emitted = len(out)
            try:
                self._row(ev, row, shape, seq, ts, source, out)
            except UNREADABLE as exc:
                # a value this reader cannot read or render: that row is set aside, the rest goes on
                del out[emitted:]
                self.unreadable.append(
                    _row_set_aside(
                        self.source_name,
                        shape.info.id,
                        row,
                        exc,
                        seq=seq,
                        file=self.file,
                        tx_id=self.tx_id,
                        # the source's watermark stays before this change's transaction
                        watermark_hold=cut_at(self.tx_start),
                    )
                )
            self.last_seq = seq

    def _row(
        self,
        ev: Any,
        row: dict[str, Any],
        shape: Shape,
        seq: str,
        ts: int,
        source: str,
        out: list[ChangeEvent],
    ) -> None:
        """One row of a rows event as its change event(s)."""
        if isinstance(ev, WriteRowsEvent):
            after = shape.image(_row_image(row, ""))
            self._emit(out, shape, Op.INSERT, None, after, seq, ts, source)
        elif isinstance(ev, DeleteRowsEvent):
            before = shape.image(_row_image(row, ""))
            self._emit(out, shape, Op.DELETE, before, None, seq, ts, source)
        else:
            before = shape.image(_row_image(row, "before_"))
            after = shape.image(_row_image(row, "after_"))
            if any(before[k] != after[k] for k in shape.key):
                # a primary-key change: Debezium emits a delete of the old key, then a create
                self._emit(out, shape, Op.DELETE, before, None, seq, ts, source)
                self._emit(out, shape, Op.INSERT, None, after, seq, ts, source)
            else:
                self._emit(out, shape, Op.UPDATE, before, after, seq, ts, source)

    def _emit(
        self,
        out: list[ChangeEvent],
        shape: Shape,
        op: Op,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        seq: str,
        ts: int,
        source: str,
    ) -> None:
        image = before if op is Op.DELETE else after
        assert image is not None
        key = {k: image[k] for k in shape.key}
        raw = None
        if self.keep_raw and shape.envelope is not None:
            raw = shape.envelope.render(op.value, before, after, source, ts)
        out.append(
            ChangeEvent(
                table=shape.info.id,
                op=op,
                key=key,
                before=before,
                after=after,
                seq=seq,
                commit_ts=ts,
                tx_id=self.tx_id,
                event_id=make_event_id(shape.info.id, key, seq),
                source_types=shape.source_types,
                raw=raw,
            )
        )


def source_block(
    source_name: str,
    shape: Shape,
    ts: int,
    server_id: int,
    gtid: str | None,
    file: str,
    pos: int,
    row: int,
    snapshot: str,
) -> dict[str, Any]:
    """The ``source`` block of Debezium's MySQL connector for one row."""
    return {
        "version": VERSION,
        "connector": "mysql",
        "name": source_name,
        "ts_ms": ts // 1000,
        "snapshot": snapshot,
        "db": shape.schema,
        "ts_us": ts,
        "ts_ns": ts * 1000,
        "table": shape.table,
        "server_id": server_id,
        "gtid": gtid,
        "file": file,
        "pos": pos,
        "row": row,
        "thread": None,
        "query": None,
    }


def _row_image(row: dict[str, Any], image: str) -> dict[str, Any]:
    """One image of a mysql-replication row (``image``: "", "before_" or "after_"), a SET with no
    member as the empty set: the library reads it as None, as it reads NULL, and tells the two
    apart only in the image's ``none_sources``."""
    values: dict[str, Any] = row[f"{image}values"]
    empty = [
        name
        for name, why in row.get(f"{image}none_sources", {}).items()
        if why == NONE_SOURCE.EMPTY_SET
    ]
    return {**values, **dict.fromkeys(empty, frozenset())} if empty else values


def _column_signature(c: Any) -> tuple[Any, ...]:
    return (
        c.name,
        c.type,
        getattr(c, "max_length", None),
        getattr(c, "fsp", None),
        getattr(c, "precision", None),
        getattr(c, "decimals", None),
        getattr(c, "bits", None),
        c.unsigned,
        c.character_set_name,
        tuple(c.enum_values or ()),
        tuple(c.set_values or ()),
    )


def snapshot_event(
    source_name: str,
    shape: Shape,
    row: dict[str, Any],
    file: str,
    pos: int,
    ts: int,
    server_id: int,
    keep_raw: bool,
) -> ChangeEvent:
    """A snapshot read of one row: seq (snapshot file, snapshot position, 0), ``op='r'``."""
    seq = binlog_seq(file, pos, 0)
    key = {k: row[k] for k in shape.key}
    raw = None
    if keep_raw and shape.envelope is not None:
        source = source_block(source_name, shape, ts, server_id, None, file, pos, 0, "true")
        raw = shape.envelope.render("r", None, row, source, ts)
    return ChangeEvent(
        table=shape.info.id,
        op=Op.READ,
        key=key,
        before=None,
        after=row,
        seq=seq,
        commit_ts=ts,
        tx_id=None,
        event_id=make_event_id(shape.info.id, key, seq),
        source_types=shape.source_types,
        raw=raw,
    )


def transaction_id(gtid: str | None, file: str, start: int) -> str:
    """A binlog transaction's id: its GTID, else (MySQL without GTIDs: anonymous transactions)
    where it starts, ``mysql-bin.000042:1234``, the same however often the binlog is read. Every
    change of one transaction carries it, so transaction boundaries (the watermark, ``cdc history
    --tx``) work without GTIDs too."""
    return gtid if gtid is not None else f"{file}:{start}"


class GtidState:
    """The GTIDs a position has seen: MariaDB's list of the last ``domain-server-seq`` per domain,
    or a MySQL GTID set (``uuid:1-42,...``)."""

    def __init__(self, text: str | None, mariadb: bool):
        self.mariadb = mariadb
        self.domains: dict[str, str] = {}
        self.mysql: str | None = None
        if text and mariadb:
            for g in text.split(","):
                g = g.strip()
                if g:
                    self.domains[g.split("-", 1)[0]] = g
        elif text:
            self.mysql = text

    def add(self, gtid: str) -> None:
        if self.mariadb:
            self.domains[gtid.split("-", 1)[0]] = gtid
            return
        from pymysqlreplication.gtid import Gtid, GtidSet

        self.mysql = str(GtidSet(self.mysql or "") + Gtid(gtid))

    def text(self) -> str | None:
        if self.mariadb:
            return ",".join(self.domains[d] for d in sorted(self.domains, key=int)) or None
        return self.mysql


# --------------------------------------------------------------------------- the capture


def table_columns(cur: Any, db: str, table: str) -> tuple[list[str], list[MyType], list[bool]]:
    """Names, types and nullability of a table's columns, in order (information_schema)."""
    cur.execute(
        "SELECT column_name, data_type, column_type, numeric_precision, numeric_scale, "
        "datetime_precision, character_set_name, is_nullable, character_octet_length "
        "FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
        (db, table),
    )
    names, types, optional = [], [], []
    for name, data_type, column_type, precision, scale, fsp, charset, nullable, octets in cur:
        spec = spec_from_information_schema(
            str(data_type),
            str(column_type),
            None if precision is None else int(precision),
            None if scale is None else int(scale),
            None if fsp is None else int(fsp),
            charset,
            None if octets is None else int(octets),
        )
        t = my_type(spec)
        if not t.supported:
            log.warning(
                "%s.%s.%s: type %s has no typed conversion; values pass as text",
                db,
                table,
                name,
                column_type,
            )
        names.append(str(name))
        types.append(t)
        optional.append(nullable == "YES")
    return names, types, optional


def consistent_snapshot(cur: Any, mariadb: bool, source_name: str) -> tuple[str, int, str | None]:
    """Open the snapshot transaction and return the binlog position of exactly its view."""
    cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    if mariadb:
        cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        cur.execute("SHOW STATUS LIKE 'binlog_snapshot_%'")
        status = {str(k).lower(): v for k, v in cur.fetchall()}
        file = str(status["binlog_snapshot_file"])
        pos = int(status["binlog_snapshot_position"])
        cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", (file, pos))
        row = cur.fetchone()
        return file, pos, (str(row[0]) if row and row[0] else None)
    try:
        cur.execute("FLUSH TABLES WITH READ LOCK")
    except pymysql.err.MySQLError as exc:
        raise CaptureError(
            f"source {source_name!r}: cannot take the snapshot lock ({exc.args[-1]}); "
            "the user needs the RELOAD privilege (GRANT RELOAD ON *.* TO ...)"
        ) from exc
    try:
        cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        at_file, at_pos = master_status(cur)
        cur.execute("SELECT @@GLOBAL.gtid_executed")
        row = cur.fetchone()
    finally:
        cur.execute("UNLOCK TABLES")
    if at_file is None or at_pos is None:
        raise CaptureError(f"source {source_name!r}: the binary log is off")
    gtid = str(row[0]).replace("\n", "") if row and row[0] else None
    return at_file, at_pos, gtid


@dataclass(frozen=True)
class Server:
    """What one session learned about the source server."""

    version: str
    mariadb: bool
    server_id: int


class BinlogCapture(Capture):
    """Snapshot, then the ROW binlog, of a MySQL/MariaDB source."""

    engine = "binlog"

    def __init__(
        self,
        source_name: str,
        source: Source,
        tables: Sequence[TableInfo],
        state_dir: str | Path,
        *,
        keep_raw: bool = True,
        batch_size: int = 10_000,
        batch_delay: float = 0.1,
        heartbeat: float | None = None,
        read_timeout: float = 30.0,
        max_retry_seconds: float | None = None,
        retry_initial_seconds: float = 1.0,
        retry_max_seconds: float = 60.0,
    ):
        super().__init__(source_name, source, tables, state_dir)
        if source.kind != "mysql":
            raise CaptureError(f"source {source_name!r}: engine binlog reads MySQL/MariaDB only")
        self.keep_raw = keep_raw
        self.batch_size = batch_size
        self.batch_delay = batch_delay
        self.heartbeat = heartbeat if heartbeat is not None else min(1.0, max(0.05, batch_delay))
        self.read_timeout = read_timeout
        self.by_gtid = bool(source.gtid)
        self.server_id = source.server_id or default_server_id(source_name)
        self.offsets = OffsetStore(self.state_dir, source_name, self.engine)
        self.backoff = Backoff(
            self, max_retry_seconds, retry_initial_seconds, retry_max_seconds, log
        )
        self._keys: dict[tuple[str, str], tuple[TableInfo, tuple[str, ...]]] = {}

    def _run(self, sink: EventSink, stop: threading.Event) -> None:
        self.backoff.run(lambda: self._session(sink, stop), stop)

    # -- connections

    def _params(self) -> dict[str, Any]:
        params = mysql_params(require_dsn(self.source, self.source_name))
        params.pop("database", None)
        return params

    def _connect(self, **kwargs: Any) -> pymysql.Connection[Any]:
        params = self._params()
        try:
            return pymysql.connect(
                **{
                    "connect_timeout": 5,
                    "charset": "utf8mb4",
                    "autocommit": True,
                    "init_command": "SET time_zone = '+00:00'",
                    **params,
                    **kwargs,
                }
            )
        except pymysql.err.MySQLError as exc:
            raise self._error(exc, "connect") from exc

    def _error(self, exc: BaseException, doing: str) -> Exception:
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        reason = exc.args[-1] if exc.args else str(exc)
        params = self._params()
        where = f"source {self.source_name!r} at {params['host']}:{params['port']}"
        if code in _POSITION_ERRORS:
            return PositionLostError(
                f"{where} cannot serve the stored binlog position: {reason}. "
                + resnapshot_fix(self.source_name)
            )
        if code in MYSQL_REFUSALS:
            return SourceAccessError(
                f"{where} refused {doing}: {reason} (the user needs SELECT, RELOAD, REPLICATION "
                "SLAVE and REPLICATION CLIENT / BINLOG MONITOR; see `cdc preflight`)"
            )
        if code in _CONNECTION_ERRORS or isinstance(exc, OSError) or code is None:
            return SourceUnavailableError(f"{where} is unreachable ({doing}): {reason}")
        return CaptureError(f"{where}: {doing} failed: {reason}")

    # -- one connected session

    def _session(self, sink: EventSink, stop: threading.Event) -> None:
        with self._connect() as conn, conn.cursor() as cur:
            server = self._inspect(cur)
            position = self.offsets.load()
            if position is not None:
                check_resumable(
                    self.source_name, read_binlogs(cur, server.mariadb, position), self.by_gtid
                )
        if position is None:
            position = self._start_fresh(server, sink, stop)
            if position is None:
                return  # stopped during the snapshot; it starts over next time
        self.backoff.reset()
        self._stream(server, position, sink, stop)

    def _inspect(self, cur: Any) -> Server:
        """Check the server's binlog settings and the registered tables; find their keys."""
        cur.execute("SELECT VERSION(), @@GLOBAL.server_id")
        version, server_id = cur.fetchone()
        mariadb = "mariadb" in str(version).lower()
        if int(server_id) == self.server_id:
            raise CaptureError(
                f"source {self.source_name!r}: the server's own server_id is {server_id}, the same "
                "as the capture's replica server_id; set another server_id for the source in the registry"
            )
        settings = {
            "log_bin": ("ON", "log_bin = mysql-bin (and a server_id) in my.cnf, then restart"),
            "binlog_format": ("ROW", "SET GLOBAL binlog_format = 'ROW'; and in my.cnf"),
            "binlog_row_image": ("FULL", "SET GLOBAL binlog_row_image = 'FULL'; and in my.cnf"),
            "binlog_row_metadata": (
                "FULL",
                "SET GLOBAL binlog_row_metadata = 'FULL'; and in my.cnf (MySQL 8.0.14+, MariaDB 10.5+)",
            ),
        }
        for name, (want, fix) in settings.items():
            cur.execute("SHOW GLOBAL VARIABLES LIKE %s", (name,))
            row = cur.fetchone()
            have = str(row[1]).upper() if row else "unsupported"
            if have != want and not (name == "log_bin" and have == "1"):
                raise CaptureError(
                    f"source {self.source_name!r}: {name} is {have}, the binlog capture needs "
                    f"{want}: {fix}"
                )
        for info in self.tables:
            db, table = info.schema_table
            cur.execute(
                "SELECT COUNT(*) FROM information_schema.tables "
                "WHERE table_schema = %s AND table_name = %s",
                (db, table),
            )
            if not cur.fetchone()[0]:
                raise CaptureError(
                    f"table {db}.{table} of source {self.source_name!r} does not exist"
                )
            key = tuple(info.primary_key or self._primary_key(cur, db, table))
            if not key:
                raise CaptureError(
                    f"table {db}.{table} of source {self.source_name!r} has no primary key: declare "
                    f"primary_key for it in the registry (`cdc register --key COL ...`) or add one "
                    f"(ALTER TABLE {db}.{table} ADD PRIMARY KEY (...))"
                )
            self._keys[(db, table)] = (info, key)
        return Server(str(version), mariadb, int(server_id))

    @staticmethod
    def _primary_key(cur: Any, db: str, table: str) -> list[str]:
        cur.execute(
            "SELECT column_name FROM information_schema.statistics WHERE table_schema = %s "
            "AND table_name = %s AND index_name = 'PRIMARY' ORDER BY seq_in_index",
            (db, table),
        )
        return [str(r[0]) for r in cur.fetchall()]

    def _columns(self, cur: Any, db: str, table: str) -> tuple[list[str], list[MyType], list[bool]]:
        return table_columns(cur, db, table)

    # -- first start: snapshot

    def _start_fresh(
        self, server: Server, sink: EventSink, stop: threading.Event
    ) -> dict[str, Any] | None:
        with self._connect(autocommit=False) as conn, conn.cursor() as cur:
            if self.source.snapshot != "initial":
                file, pos = master_status(cur)
                gtid = read_binlogs(cur, server.mariadb).gtid_pos
                if file is None or pos is None:
                    raise CaptureError(f"source {self.source_name!r}: the binary log is off")
                position = {"file": file, "pos": pos, "gtid": gtid, "last_seq": None}
                self.offsets.save(position)
                return position
            self._update(phase="snapshot")
            file, pos, gtid = self._snapshot_position(cur, server)
            log.info(
                "source %s: snapshot at binlog %s:%d%s",
                self.source_name,
                file,
                pos,
                f" (gtid {gtid})" if gtid else "",
            )
            if not self._snapshot(conn, cur, server, file, pos, sink, stop):
                conn.rollback()
                return None
            conn.commit()
        position = {"file": file, "pos": pos, "gtid": gtid, "last_seq": None}
        self.offsets.save(position)
        return position

    def _snapshot_position(self, cur: Any, server: Server) -> tuple[str, int, str | None]:
        """Open the snapshot transaction and return the binlog position of exactly its view."""
        return consistent_snapshot(cur, server.mariadb, self.source_name)

    def _snapshot(
        self,
        conn: Any,
        cur: Any,
        server: Server,
        file: str,
        pos: int,
        sink: EventSink,
        stop: threading.Event,
    ) -> bool:
        ts = time.time_ns() // 1000
        for (db, table), (info, key) in self._keys.items():
            names, types, optional = self._columns(cur, db, table)
            shape = make_shape(self.source_name, info, key, db, table, names, types, optional)
            selected = ", ".join(_selected(n, t) for n, t in zip(names, types, strict=True))
            with conn.cursor(pymysql.cursors.SSCursor) as rows:
                rows.execute(f"SELECT {selected} FROM {_quote(db)}.{_quote(table)}")
                while True:
                    chunk = rows.fetchmany(self.batch_size)
                    if not chunk:
                        break
                    batch, unreadable = [], []
                    for values in chunk:
                        row = dict(zip(names, values, strict=True))
                        try:
                            batch.append(
                                snapshot_event(
                                    self.source_name,
                                    shape,
                                    shape.image(row),
                                    file,
                                    pos,
                                    ts,
                                    server.server_id,
                                    self.keep_raw,
                                )
                            )
                        except UNREADABLE as exc:
                            unreadable.append(
                                _row_set_aside(
                                    self.source_name, shape.info.id, row, exc, snapshot=True
                                )
                            )
                    self.set_aside(unreadable)
                    sink.write(batch)
                    self._acknowledged(batch, snapshot=True)
                    if stop.is_set():
                        return False
        return True

    # -- streaming

    def _reader(self, server: Server, position: dict[str, Any]) -> BinLogStreamReader:
        settings = {
            **self._params(),
            "connect_timeout": 5,
            "read_timeout": self.read_timeout,
            "charset": "utf8mb4",
        }
        schemas = sorted({db for db, _ in self._keys})
        tables = sorted({t for _, t in self._keys})
        common: dict[str, Any] = {
            "connection_settings": settings,
            "server_id": self.server_id,
            "resume_stream": True,
            "blocking": True,
            "only_events": STREAM_EVENTS,
            "only_schemas": schemas,
            "only_tables": tables,
            "slave_heartbeat": self.heartbeat,
            "enable_logging": False,
        }
        if self.by_gtid:
            if not position.get("gtid"):
                raise CaptureError(
                    f"source {self.source_name!r} has gtid: true but its stored position has no "
                    "GTID (the server has GTIDs off, or the position was saved in file mode); "
                    f"enable GTIDs on the server or set gtid: false. {resnapshot_fix(self.source_name)}"
                )
            # MariaDB: mysql-replication sends the GTID state as @slave_connect_state
            return BinLogStreamReader(
                auto_position=position["gtid"], is_mariadb=server.mariadb, **common
            )
        # file/position: is_mariadb must stay False, else mysql-replication ignores log_file/log_pos
        return BinLogStreamReader(
            log_file=position["file"], log_pos=int(position["pos"]), is_mariadb=False, **common
        )

    def _stream(
        self, server: Server, position: dict[str, Any], sink: EventSink, stop: threading.Event
    ) -> None:
        decoder = BinlogDecoder(
            self.source_name,
            self._keys,
            position,
            keep_raw=self.keep_raw,
            mariadb=server.mariadb,
        )
        reader = self._reader(server, position)
        self._update(phase="streaming", last_error=None)
        pending: list[ChangeEvent] = []
        pending_since = 0.0
        saved = dict(position)
        published = 0.0  # when the source's last answer went into the stats
        try:
            while True:
                if stop.is_set():
                    saved = self._ack(sink, pending, decoder, saved)
                    return
                try:
                    ev = reader.fetchone()
                except (pymysql.err.MySQLError, OSError) as exc:
                    raise self._error(exc, "read the binlog") from exc
                if ev is None:
                    raise SourceUnavailableError(
                        f"source {self.source_name!r}: the server ended the binlog stream"
                    )
                # every event, a heartbeat too (asked for with slave_heartbeat), is the source
                # answering; a heartbeat with nothing pending: everything written is read
                now = time.time()
                if now - published >= 1.0 or isinstance(ev, HeartbeatLogEvent):
                    published = now
                    caught = isinstance(ev, HeartbeatLogEvent) and not pending
                    self._update(source_contact_at=now, **({"caught_up_at": now} if caught else {}))
                if not isinstance(ev, HeartbeatLogEvent):
                    had = len(pending)
                    decoder.feed(ev, pending)
                    if not had and pending:
                        pending_since = time.monotonic()
                    if len(pending) < self.batch_size and (
                        not pending or time.monotonic() - pending_since < self.batch_delay
                    ):
                        continue
                # a heartbeat (the server has nothing more right now), a full or an old batch
                saved = self._ack(sink, pending, decoder, saved)
                if self.by_gtid and saved.get("gtid"):
                    # where mysql-replication reconnects by itself after a dropped connection
                    # (it would otherwise replay the session from its first GTID state)
                    reader.auto_position = saved["gtid"]
        finally:
            reader.close()

    def _ack(
        self,
        sink: EventSink,
        pending: list[ChangeEvent],
        decoder: BinlogDecoder,
        saved: dict[str, Any],
    ) -> dict[str, Any]:
        """Deliver the pending batch, then make the position after it durable (what could not be
        read is stored first)."""
        self.set_aside(decoder.unreadable)
        position = decoder.position()
        # everything decoded is delivered (below): the transactions before the position (the
        # open transaction's start, else the last commit's end) are complete
        cut = cut_at((position["file"], int(position["pos"])))
        if pending:
            batch = list(pending)
            sink.write(batch)
            pending.clear()
            self.offsets.save(position)
            self._acknowledged(batch)
        elif position != saved:
            self.offsets.save(position)
        self._update(complete_through=cut)
        return position


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _selected(name: str, t: MyType) -> str:
    """A column as the snapshot selects it. The text protocol prints a FLOAT with 6 digits, which
    is another 32-bit value (16777216 reads back as 16777200); as a DOUBLE it is printed exactly."""
    if t.name == "float":
        return f"CAST({_quote(name)} AS DOUBLE)"
    return _quote(name)

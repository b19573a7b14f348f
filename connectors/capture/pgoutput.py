"""Native PostgreSQL capture: logical replication with the built-in ``pgoutput`` plugin, no JVM.

psycopg 3 has no high-level replication API, but its libpq binding (``psycopg.pq``) speaks the
streaming replication protocol (``replication=database`` connections, COPY BOTH), so libpq still
handles connection and authentication; we frame the stream and decode pgoutput ourselves.

For the same WAL this produces the same events as the Debezium connector, field by field:

- ``seq`` = (end LSN of the previous commit in the stream, LSN of the change). Debezium's
  ``source.sequence`` is ``[lastCommitLsn, lsn]`` with exactly these values (verified with
  interleaved transactions), null for the first transaction after a fresh start, which the decoder
  (and we) replace by the change's own LSN. Snapshot rows: (0, the slot's consistent point).
- images: values typed from the relation's type OIDs by ``pgtypes`` to what ``decode_debezium``
  yields for Debezium's event; unchanged TOAST values are marked unavailable; a primary-key change
  is a delete of the old key plus an insert of the new one, as Debezium emits it.

Delivery: a batch goes to the sink; then the position is saved (``offsets``) and only then is the
slot told it may recycle WAL. A position inside a transaction records how many of its changes were
delivered, so a restart (which makes PostgreSQL resend the whole transaction) skips exactly those.
The first start creates the publication and the slot, snapshots every table in the slot's exported
snapshot (``COPY``), then streams from the slot's consistent point.
"""

from __future__ import annotations

import logging
import select
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg import pq, sql
from psycopg.conninfo import make_conninfo
from psycopg.pq.abc import PGconn, PGresult

from connectors.capture.base import (
    UNREADABLE,
    Capture,
    CaptureError,
    EventSink,
    PositionLostError,
    unreadable_change,
)
from connectors.capture.envelope import EnvelopeColumn, TableEnvelope
from connectors.capture.offsets import OffsetStore
from connectors.capture.pgtypes import PgType, TypeCatalog, pg_type
from connectors.capture.retry import Backoff
from connectors.capture.slots import (
    check_resumable,
    connect_source,
    connection_error,
    read_slot,
)
from connectors.deadletter import NewDeadLetter
from connectors.loss_windows import LossWindow, LossWindows
from connectors.sources import libpq_dsn, require_dsn
from state_models.errors import SourceUnavailableError
from state_models.events import ChangeEvent, Op, make_event_id
from state_models.registry import Source, default_publication, default_slot
from state_models.seq import int_to_pg_lsn, make_seq
from state_models.tables import TableInfo
from state_models.watermark import seq_before

log = logging.getLogger("cdc.capture.pgoutput")

#: Session settings that make PostgreSQL's text output the shapes ``pgtypes`` parses.
SESSION_OPTIONS = (
    "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=postgres -c extra_float_digits=1"
)
PG_EPOCH_MICROS = 946_684_800_000_000  # 2000-01-01 in Unix microseconds

_XLOG_HEADER = struct.Struct(">QQq").unpack_from
_KEEPALIVE = struct.Struct(">QqB").unpack_from
_BEGIN = struct.Struct(">QqI").unpack_from
_COMMIT = struct.Struct(">BQQq").unpack_from
_U32 = struct.Struct(">I").unpack_from
_I32 = struct.Struct(">i").unpack_from
_U16 = struct.Struct(">H").unpack_from
_STATUS = struct.Struct(">QQQqB").pack
#: With no message from the server for this long, a status update asks it to answer at once (a
#: keepalive): an idle stream still shows the source alive, a frozen one shows it stalled, and the
#: tables' caught-up time (``cdc_progress``) keeps within a few seconds of now.
HEARTBEAT_S = 2.0


# --------------------------------------------------------------------------- relations


@dataclass
class Relation:
    """One table as the stream describes it, with how to type, key and render its rows."""

    schema: str
    table: str
    names: list[str]
    types: list[PgType]
    identity: list[str]  # replica identity columns (sent in 'K' tuples)
    info: TableInfo | None  # None: not registered, changes are skipped
    key: tuple[str, ...] = ()
    envelope: TableEnvelope | None = None
    readers: list[Callable[[bytes], Any]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.readers = [_reader(t) for t in self.types]

    @property
    def source_types(self) -> dict[str, str] | None:
        """The column types its envelope states (shared by its events)."""
        return None if self.envelope is None else self.envelope.source_types


def _reader(t: PgType) -> Callable[[bytes], Any]:
    """The column's parser, applied to the value's bytes as they come in the message."""
    if t.parse is str:
        return bytes.decode  # UTF-8, the encoding of our sessions
    if t.parse is int:
        return int  # int() reads ASCII digits from bytes as well
    parse = t.parse
    return lambda raw: parse(raw.decode())


Describe = Callable[[str, str, list[tuple[str, int, int]], list[str]], Relation]


class PgoutputDecoder:
    """pgoutput messages -> ChangeEvents, tracking the transaction and the resumable position.

    Pure: no I/O. ``describe`` builds a Relation from a relation message (it may query the catalog).
    """

    def __init__(
        self,
        source_name: str,
        dbname: str,
        describe: Describe,
        *,
        keep_raw: bool = True,
        position: dict[str, Any] | None = None,
    ):
        self.source_name = source_name
        self.dbname = dbname
        self.describe = describe
        self.keep_raw = keep_raw
        self.relations: dict[int, Relation] = {}
        #: changes that could not be read, waiting to be stored before the position moves on
        self.unreadable: list[NewDeadLetter] = []
        pos = position or {}
        self.flushed: int = int(pos.get("flushed") or 0)
        self.last_commit: int | None = pos.get("last_commit")
        tx = pos.get("tx") or None
        self._resume_final_lsn: int | None = tx["final_lsn"] if tx else None
        self._resume_delivered: int = tx["delivered"] if tx else 0
        self.in_tx = False
        self.final_lsn = 0
        self.xid = ""
        self.xid_int = 0
        self.commit_ts = 0
        self.tx_messages = 0
        self._skip = 0
        self._sources: dict[int, tuple[str, str]] = {}

    # -- position

    def position(self) -> dict[str, Any]:
        """Where to resume after everything decoded so far is acknowledged."""
        return {
            "flushed": self.flushed,
            "last_commit": self.last_commit,
            "tx": (
                {"final_lsn": self.final_lsn, "delivered": self.tx_messages}
                if self.in_tx and self.tx_messages
                else None
            ),
        }

    # -- messages

    def feed(self, lsn: int, msg: bytes, out: list[ChangeEvent]) -> None:
        kind = msg[0]
        if kind == 0x42:  # B
            self.final_lsn, ts, xid = _BEGIN(msg, 1)
            self.in_tx = True
            self.commit_ts = ts + PG_EPOCH_MICROS
            self.xid_int = xid
            self.xid = str(xid)
            self.tx_messages = 0
            self._skip = self._resume_delivered if self.final_lsn == self._resume_final_lsn else 0
            self._sources.clear()
        elif kind == 0x43:  # C
            _, _commit_lsn, end_lsn, _ts = _COMMIT(msg, 1)
            self.in_tx = False
            # Debezium's lastCommitLsn is the stream position of the COMMIT message (its XLogData
            # start, which PostgreSQL sets to the commit record's end), so take exactly that.
            self.last_commit = lsn
            self.flushed = max(self.flushed, end_lsn)
            self.tx_messages = 0
            self._resume_final_lsn = None
        elif kind == 0x52:  # R
            self._relation(msg)
        elif kind in (0x49, 0x55, 0x44, 0x54):  # I U D T
            self.tx_messages += 1
            if self._skip:
                self._skip -= 1
                return
            emitted = len(out)
            try:
                if kind == 0x49:
                    self._insert(lsn, msg, out)
                elif kind == 0x55:
                    self._update(lsn, msg, out)
                elif kind == 0x44:
                    self._delete(lsn, msg, out)
                else:
                    self._truncate(lsn, msg, out)
            except UNREADABLE as exc:
                # a value this reader cannot parse or render (a BC timestamp, NaN in a numeric):
                # that change is set aside with its exact bytes, the stream goes on
                del out[emitted:]
                self._set_aside(lsn, msg, exc)
        # 'Y' (type), 'O' (origin), 'M' (message): nothing to capture

    def _set_aside(self, lsn: int, msg: bytes, exc: Exception) -> None:
        rel = self.relations.get(_U32(msg, 1)[0]) if len(msg) >= 5 else None
        table = rel.info.id if rel is not None and rel.info is not None else None
        self.unreadable.append(
            unreadable_change(
                "the pgoutput reader",
                exc,
                bytes(msg),  # the pgoutput message exactly as the server sent it
                source=self.source_name,
                table=table,
                lsn=_lsn_text(lsn),
                xid=self.xid,
                message=chr(msg[0]),
                # the source's watermark stays before this change's transaction (ordered by the
                # commit before it)
                watermark_hold=seq_before(make_seq(self.last_commit or lsn, 0)),
            )
        )

    def keepalive(self, wal_end: int) -> bool:
        """Outside a transaction, everything before ``wal_end`` was sent: the position may advance."""
        if not self.in_tx and wal_end > self.flushed:
            self.flushed = wal_end
            return True
        return False

    def _relation(self, msg: bytes) -> None:
        relid = _U32(msg, 1)[0]
        schema, pos = _cstring(msg, 5)
        table, pos = _cstring(msg, pos)
        pos += 1  # replica identity setting
        ncols = _U16(msg, pos)[0]
        pos += 2
        columns: list[tuple[str, int, int]] = []
        identity: list[str] = []
        for _ in range(ncols):
            flags = msg[pos]
            name, pos = _cstring(msg, pos + 1)
            oid = _U32(msg, pos)[0]
            typmod = _I32(msg, pos + 4)[0]
            pos += 8
            columns.append((name, oid, typmod))
            if flags & 1:
                identity.append(name)
        self.relations[relid] = self.describe(schema, table, columns, identity)
        self._sources.clear()

    def _tuple(self, rel: Relation, msg: bytes, pos: int) -> tuple[dict[str, Any], list[str], int]:
        ncols = _U16(msg, pos)[0]
        pos += 2
        names, readers = rel.names, rel.readers
        row: dict[str, Any] = {}
        unchanged: list[str] = []
        for i in range(ncols):
            kind = msg[pos]
            if kind == 0x74:  # t: text value
                end = pos + 5 + _U32(msg, pos + 1)[0]
                row[names[i]] = readers[i](msg[pos + 5 : end])
                pos = end
                continue
            pos += 1
            if kind == 0x6E:  # n: null
                row[names[i]] = None
            elif kind == 0x75:  # u: unchanged TOAST value, not sent
                unchanged.append(names[i])
            else:
                raise CaptureError(f"pgoutput: unsupported tuple value kind {chr(kind)!r}")
        return row, unchanged, pos

    def _insert(self, lsn: int, msg: bytes, out: list[ChangeEvent]) -> None:
        rel = self.relations[_U32(msg, 1)[0]]
        if rel.info is None:
            return
        after, unchanged, _ = self._tuple(rel, msg, 6)
        self._emit(out, rel, Op.INSERT, None, after, lsn, unchanged)

    def _update(self, lsn: int, msg: bytes, out: list[ChangeEvent]) -> None:
        rel = self.relations[_U32(msg, 1)[0]]
        if rel.info is None:
            return
        pos = 5
        before: dict[str, Any] | None = None
        old_kind = msg[pos]
        if old_kind in (0x4B, 0x4F):  # K: old key, O: old row (REPLICA IDENTITY FULL)
            before, _, pos = self._tuple(rel, msg, pos + 1)
            if old_kind == 0x4B:
                before = {c: before[c] for c in rel.identity if c in before}
        after, unchanged, _ = self._tuple(rel, msg, pos + 1)  # skip 'N'
        if before is not None and any(before.get(k) != after.get(k) for k in rel.key):
            # a primary-key change: Debezium emits a delete of the old key and an insert of the new
            self._emit(out, rel, Op.DELETE, before, None, lsn, ())
            self._emit(out, rel, Op.INSERT, None, after, lsn, unchanged)
            return
        self._emit(out, rel, Op.UPDATE, before, after, lsn, unchanged)

    def _delete(self, lsn: int, msg: bytes, out: list[ChangeEvent]) -> None:
        rel = self.relations[_U32(msg, 1)[0]]
        if rel.info is None:
            return
        before, _, _ = self._tuple(rel, msg, 6)
        if msg[5] == 0x4B:
            before = {c: before[c] for c in rel.identity if c in before}
        self._emit(out, rel, Op.DELETE, before, None, lsn, ())

    def _truncate(self, lsn: int, msg: bytes, out: list[ChangeEvent]) -> None:
        nrels = _U32(msg, 1)[0]
        for i in range(nrels):
            rel = self.relations[_U32(msg, 6 + 4 * i)[0]]
            if rel.info is not None:
                self._emit(out, rel, Op.TRUNCATE, None, None, lsn, ())

    def _emit(
        self,
        out: list[ChangeEvent],
        rel: Relation,
        op: Op,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        lsn: int,
        unchanged: Sequence[str],
    ) -> None:
        assert rel.info is not None
        first = self.last_commit if self.last_commit is not None else lsn
        # make_seq's form, without its checks: both are unsigned 64-bit values from the stream
        seq = f"{first:016x}/{lsn:016x}"
        if op is Op.TRUNCATE:
            key: dict[str, Any] = {}
        else:
            image = before if op is Op.DELETE else after
            assert image is not None
            names = rel.key
            key = {names[0]: image[names[0]]} if len(names) == 1 else {k: image[k] for k in names}
        raw = None
        if self.keep_raw and rel.envelope is not None:
            raw = rel.envelope.render(
                op,  # a StrEnum: renders as its code
                before,
                after,
                self._source(rel, lsn, snapshot=None),
                self.commit_ts,
                unchanged,
            )
        out.append(
            ChangeEvent(
                table=rel.info.id,
                op=op,
                key=key,
                before=before,
                after=after,
                seq=seq,
                commit_ts=self.commit_ts,
                tx_id=self.xid,
                event_id=make_event_id(rel.info.id, key, seq),
                source_types=rel.source_types,
                unavailable=tuple(unchanged) if unchanged else (),
                raw=raw,
            )
        )

    def _source(
        self, rel: Relation, lsn: int, snapshot: str | None, ordering: int | None = None
    ) -> str:
        """Debezium's ``source`` block as JSON. In a transaction only the LSNs change from one event
        to the next, so the rest is rendered once per table and transaction (emptied by Begin and
        Relation messages)."""
        cache_key = id(rel) if snapshot is None else -id(rel)
        template = self._sources.get(cache_key)
        if template is None:
            template = self._sources[cache_key] = self._source_template(rel, snapshot)
        head, middle = template
        if ordering is not None:  # a snapshot taken again: ordered at its consistent point
            sequence = f'"[\\"{ordering}\\",\\"{lsn}\\"]"'
        elif self.last_commit is not None and snapshot is None:
            sequence = f'"[\\"{self.last_commit}\\",\\"{lsn}\\"]"'
        else:
            sequence = f'"[null,\\"{lsn}\\"]"'
        return f'{head}{sequence}{middle}{lsn},"xmin":null}}'

    def _source_template(self, rel: Relation, snapshot: str | None) -> tuple[str, str]:
        """The source block's JSON before ``sequence`` and between it and ``lsn``."""
        ts = self.commit_ts
        head = orjson.dumps(
            {
                "version": "cdc-history",
                "connector": "postgresql",
                "name": self.source_name,
                "ts_ms": ts // 1000,
                "snapshot": snapshot or "false",
                "db": self.dbname,
            }
        ).decode()
        middle = orjson.dumps(
            {
                "ts_us": ts,
                "ts_ns": ts * 1000,
                "schema": rel.schema,
                "table": rel.table,
                "txId": self.xid_int,
            }
        ).decode()
        return head[:-1] + ',"sequence":', "," + middle[1:-1] + ',"lsn":'

    def snapshot_event(
        self, rel: Relation, row: dict[str, Any], lsn: int, ts: int, xid: int, again: bool = False
    ) -> ChangeEvent:
        """A snapshot read of one row: seq (0, the slot's consistent point), like Debezium's.

        ``again``: a snapshot taken after the position was lost, over a history that already
        holds versions: seq (consistent point, 0), after every change committed before it and,
        since the stream then starts with ``last_commit`` at the consistent point, before every
        change committed after it."""
        assert rel.info is not None
        seq = make_seq(lsn, 0) if again else make_seq(0, lsn)
        key = {k: row[k] for k in rel.key}
        raw = None
        if self.keep_raw and rel.envelope is not None:
            if (self.commit_ts, self.xid_int) != (ts, xid):
                self.commit_ts, self.xid_int = ts, xid
                self._sources.clear()
            source = (
                self._source(rel, 0, snapshot="true", ordering=lsn)
                if again
                else self._source(rel, lsn, snapshot="true")
            )
            raw = rel.envelope.render("r", None, row, source, ts)
        return ChangeEvent(
            table=rel.info.id,
            op=Op.READ,
            key=key,
            before=None,
            after=row,
            seq=seq,
            commit_ts=ts,
            tx_id=str(xid),
            event_id=make_event_id(rel.info.id, key, seq),
            source_types=rel.source_types,
            raw=raw,
        )


def _cstring(msg: bytes, pos: int) -> tuple[str, int]:
    end = msg.index(0, pos)
    return msg[pos:end].decode(), end + 1


# --------------------------------------------------------------------------- catalog


class Catalog:
    """What the stream does not say about a table, read from the source's catalog."""

    def __init__(
        self, conn: psycopg.Connection[Any], source_name: str, tables: Sequence[TableInfo]
    ):
        self.conn = conn
        self.source_name = source_name
        self.by_name = {t.schema_table: t for t in tables}
        self.types = TypeCatalog(self._type_row)
        self._warned: set[tuple[str, str, str]] = set()

    def _type_row(self, oid: int) -> tuple[str, str, int, int, int, str | None, str] | None:
        row = self.conn.execute(
            # typelem only of a true array (variable length): point, line, lseg, box and name
            # have one too (their fixed-length parts can be subscripted) but are not arrays
            "SELECT t.typname, t.typtype, t.typbasetype::int, t.typtypmod, "
            "CASE WHEN t.typlen = -1 THEN t.typelem::int ELSE 0 END, "
            "(SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) FROM pg_enum e "
            " WHERE e.enumtypid = t.oid), "
            "COALESCE((SELECT e.typdelim::text FROM pg_type e WHERE e.oid = t.typelem), ',') "
            "FROM pg_type t WHERE t.oid = %s",
            (oid,),
        ).fetchone()
        if row is None:
            return None
        name, typtype, base, base_typmod, elem, labels, delimiter = row
        return name, typtype, base, base_typmod, elem, labels, delimiter

    def primary_key(self, schema: str, table: str) -> list[str]:
        rows = self.conn.execute(
            "SELECT a.attname FROM pg_index i "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
            "WHERE i.indrelid = (SELECT c.oid FROM pg_class c JOIN pg_namespace n "
            "  ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s) "
            "AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)",
            (schema, table),
        ).fetchall()
        return [r[0] for r in rows]

    def columns(self, schema: str, table: str) -> list[tuple[str, int, int, bool]]:
        """(name, type oid, typmod, not null) in table order; [] if the table does not exist."""
        rows = self.conn.execute(
            "SELECT a.attname, a.atttypid::int, a.atttypmod, a.attnotnull FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY a.attnum",
            (schema, table),
        ).fetchall()
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def key_of(self, info: TableInfo, schema: str, table: str) -> tuple[str, ...]:
        key = tuple(info.primary_key or self.primary_key(schema, table))
        if not key:
            raise CaptureError(
                f"table {schema}.{table} of source {self.source_name!r} has no primary key: declare "
                f"primary_key for it in the registry (`cdc register --key COL ...`) and give it "
                f"REPLICA IDENTITY FULL so that updates and deletes carry the whole row"
            )
        return key

    def describe(
        self, schema: str, table: str, columns: list[tuple[str, int, int]], identity: list[str]
    ) -> Relation:
        info = self.by_name.get((schema, table))
        types = [pg_type(oid, typmod, self.types) for _, oid, typmod in columns]
        names = [c[0] for c in columns]
        if info is None:
            return Relation(schema, table, names, types, identity, None)
        for name, t in zip(names, types, strict=True):
            if not t.supported and (schema, table, name) not in self._warned:
                self._warned.add((schema, table, name))
                log.warning(
                    "%s.%s.%s: type %s has no typed conversion; values pass as PostgreSQL text",
                    schema,
                    table,
                    name,
                    t.name,
                )
        key = self.key_of(info, schema, table)
        not_null = {c[0] for c in self.columns(schema, table) if c[3]}
        envelope = TableEnvelope(
            "postgresql",
            f"{self.source_name}.{schema}.{table}",
            [EnvelopeColumn(n, t, n not in not_null) for n, t in zip(names, types, strict=True)],
            key=key,
        )
        return Relation(schema, table, names, types, identity, info, key, envelope)


# --------------------------------------------------------------------------- the capture


class PgoutputCapture(Capture):
    """Logical replication with pgoutput, decoded in Python."""

    engine = "pgoutput"

    def __init__(
        self,
        source_name: str,
        source: Source,
        tables: Sequence[TableInfo],
        state_dir: str | Path,
        *,
        keep_raw: bool = True,
        batch_size: int = 10_000,
        batch_delay: float = 0.02,
        batch_max_age: float = 0.05,
        status_interval: float = 10.0,
        max_retry_seconds: float | None = None,
        retry_initial_seconds: float = 1.0,
        retry_max_seconds: float = 60.0,
    ):
        super().__init__(source_name, source, tables, state_dir)
        if source.kind != "postgres":
            raise CaptureError(f"source {source_name!r}: engine pgoutput reads PostgreSQL only")
        self.keep_raw = keep_raw
        self.batch_size = batch_size
        # A batch goes to the sink when it is full, when the stream has been quiet for
        # batch_delay, or when its oldest event has waited batch_max_age. Every batch costs a
        # sink write and two fsyncs of the offset file, so a busy stream must not be cut into
        # batches of whatever arrived within batch_delay.
        self.batch_delay = batch_delay
        self.batch_max_age = max(batch_max_age, batch_delay)
        self.status_interval = status_interval
        self.offsets = OffsetStore(self.state_dir, source_name, self.engine)
        self.slot = default_slot(source_name, source)
        self.publication = default_publication(source_name, source)
        self.backoff = Backoff(
            self, max_retry_seconds, retry_initial_seconds, retry_max_seconds, log
        )

    def _run(self, sink: EventSink, stop: threading.Event) -> None:
        self.backoff.run(lambda: self._session(sink, stop), stop)

    # -- one connected session

    def _session(self, sink: EventSink, stop: threading.Event) -> None:
        with connect_source(self.source_name, self.source, options=SESSION_OPTIONS) as meta:
            catalog = Catalog(meta, self.source_name, self.tables)
            self._check_tables(catalog)
            self._ensure_publication(meta)
            position = self.offsets.load()
            slot = read_slot(meta, self.slot)
            if position is not None:
                try:
                    check_resumable(self.source_name, slot, int(position["flushed"]))
                except PositionLostError as exc:
                    self._lost(exc, position)  # raises unless on_position_lost: resnapshot
                    if slot.exists and slot.active:
                        raise CaptureError(
                            f"replication slot {self.slot} is in use by another consumer; stop "
                            f"it or set `slot:` for source {self.source_name!r}"
                        ) from exc
                    if slot.exists:
                        meta.execute("SELECT pg_drop_replication_slot(%s)", (self.slot,))
                    self.offsets.delete()
                    position = None
            elif slot.exists:
                # no position of ours: an interrupted first snapshot (or offsets deleted to re-snapshot)
                if slot.active:
                    raise CaptureError(
                        f"replication slot {self.slot} is in use by another consumer; stop it or "
                        f"set `slot:` for source {self.source_name!r}"
                    )
                log.warning("dropping slot %s left without a position; re-snapshotting", self.slot)
                meta.execute("SELECT pg_drop_replication_slot(%s)", (self.slot,))
            dbname = str(meta.info.dbname)
            repl = self._replication_connection()
            try:
                decoder = PgoutputDecoder(
                    self.source_name,
                    dbname,
                    catalog.describe,
                    keep_raw=self.keep_raw,
                    position=position,
                )
                if position is None:
                    window = self._unhealed_window()
                    position = self._start_fresh(
                        repl, catalog, decoder, sink, stop, again=window is not None
                    )
                    if position is None:
                        return  # stopped during the snapshot; it restarts from scratch next time
                    if window is not None:
                        LossWindows(self.state_dir).resnapshotted(
                            window.id, int_to_pg_lsn(int(position["snapshot_lsn"]))
                        )
                self.backoff.reset()
                self._stream(repl, decoder, position, sink, stop)
            finally:
                repl.finish()

    def _lost(self, exc: PositionLostError, position: dict[str, Any]) -> None:
        """Record the loss window; go on (a new snapshot) only with on_position_lost: resnapshot."""
        window = LossWindows(self.state_dir).record(
            self.source_name,
            [t.id for t in self.tables],
            str(exc).split(". ")[0],
            int_to_pg_lsn(int(position["flushed"])),
        )
        if self.source.on_position_lost != "resnapshot":
            lost = PositionLostError(
                f"{exc} (recorded as loss window {window.id}; with on_position_lost: resnapshot "
                "the capture takes a new snapshot and goes on; then `cdc reconcile --repair`)"
            )
            lost.window_id = window.id
            raise lost from exc
        log.warning(
            "%s; loss window %s recorded, taking a new snapshot (on_position_lost: resnapshot)",
            exc,
            window.id,
        )

    def _unhealed_window(self) -> LossWindow | None:
        """An open loss window of this source whose new snapshot is not taken yet: the next
        snapshot is taken *again*, over the history the state tables hold."""
        for w in LossWindows(self.state_dir).all():
            if w.source == self.source_name and w.to_position is None and w.open_tables():
                return w
        return None

    def _check_tables(self, catalog: Catalog) -> None:
        for info in self.tables:
            schema, table = info.schema_table
            if not catalog.columns(schema, table):
                raise CaptureError(
                    f"table {schema}.{table} of source {self.source_name!r} does not exist"
                )
            catalog.key_of(info, schema, table)

    def _ensure_publication(self, meta: psycopg.Connection[Any]) -> None:
        wanted = {t.schema_table for t in self.tables}
        have = {
            (r[0], r[1])
            for r in meta.execute(
                "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s",
                (self.publication,),
            ).fetchall()
        }
        exists = meta.execute(
            "SELECT 1 FROM pg_publication WHERE pubname = %s", (self.publication,)
        ).fetchone()
        tables = sql.SQL(", ").join(sql.Identifier(s, t) for s, t in sorted(wanted - have))
        if not exists:
            meta.execute(
                sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
                    sql.Identifier(self.publication), tables
                )
            )
        elif wanted - have:
            meta.execute(
                sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                    sql.Identifier(self.publication), tables
                )
            )

    def _replication_connection(self) -> PGconn:
        dsn = libpq_dsn(require_dsn(self.source, self.source_name))
        conninfo = make_conninfo(
            dsn, replication="database", options=SESSION_OPTIONS, connect_timeout=5
        )
        conn = pq.PGconn.connect(conninfo.encode())
        if conn.status != pq.ConnStatus.OK:
            reason = (conn.error_message or b"").decode(errors="replace")
            conn.finish()
            raise connection_error(self.source_name, dsn, reason)
        return conn

    def _command(self, conn: PGconn, command: str) -> PGresult:
        res = conn.exec_(command.encode())
        if res.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
            reason = (res.error_message or conn.error_message or b"").decode(errors="replace")
            _raise_for(self.source_name, command.split()[0], reason.strip())
        return res

    # -- first start: slot, snapshot

    def _start_fresh(
        self,
        repl: PGconn,
        catalog: Catalog,
        decoder: PgoutputDecoder,
        sink: EventSink,
        stop: threading.Event,
        *,
        again: bool = False,
    ) -> dict[str, Any] | None:
        snapshot = self.source.snapshot == "initial" or again
        res = self._command(
            repl,
            f'CREATE_REPLICATION_SLOT "{self.slot}" LOGICAL pgoutput '
            + ("(SNAPSHOT 'export')" if snapshot else "(SNAPSHOT 'nothing')"),
        )
        consistent_point = _lsn(res.get_value(0, 1))
        if again:  # the first transaction after the snapshot sorts after its rows (snapshot_event)
            decoder.last_commit = consistent_point
        if snapshot:
            name = (res.get_value(0, 2) or b"").decode()
            if not self._snapshot(
                name, consistent_point, catalog, decoder, sink, stop, again=again
            ):
                return None
        decoder.flushed = consistent_point
        position = {**decoder.position(), "slot": self.slot, "snapshot_lsn": consistent_point}
        self.offsets.save(position)
        return position

    def _snapshot(
        self,
        snapshot_name: str,
        lsn: int,
        catalog: Catalog,
        decoder: PgoutputDecoder,
        sink: EventSink,
        stop: threading.Event,
        *,
        again: bool = False,
    ) -> bool:
        self._update(phase="snapshot")
        try:
            dsn = libpq_dsn(require_dsn(self.source, self.source_name))
            ts = time.time_ns() // 1000
            with psycopg.connect(dsn, options=SESSION_OPTIONS, connect_timeout=5) as conn:
                conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                conn.execute(
                    sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_name))
                )
                row = conn.execute("SELECT txid_current()").fetchone()
                xid = int(row[0]) if row else 0
                for info in self.tables:
                    schema, table = info.schema_table
                    columns = catalog.columns(schema, table)
                    rel = catalog.describe(schema, table, [(c[0], c[1], c[2]) for c in columns], [])
                    names, parsers = rel.names, [t.parse for t in rel.types]
                    query = sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT").format(
                        sql.SQL(", ").join(sql.Identifier(c) for c in names),
                        sql.Identifier(schema, table),
                    )
                    batch: list[ChangeEvent] = []
                    with conn.cursor().copy(query) as copy:
                        for values in copy.rows():
                            try:
                                image = {
                                    c: None if v is None else p(v)
                                    for c, p, v in zip(names, parsers, values, strict=True)
                                }
                                batch.append(
                                    decoder.snapshot_event(rel, image, lsn, ts, xid, again)
                                )
                            except UNREADABLE as exc:
                                decoder.unreadable.append(
                                    unreadable_change(
                                        "the snapshot",
                                        exc,
                                        orjson.dumps(
                                            dict(zip(names, values, strict=True))
                                        ).decode(),
                                        source=self.source_name,
                                        table=info.id,
                                        snapshot=True,
                                    )
                                )
                            if len(batch) >= self.batch_size:
                                self._deliver(
                                    sink, batch, snapshot=True, unreadable=decoder.unreadable
                                )
                                batch = []
                                if stop.is_set():
                                    # leaving by an exception makes psycopg cancel the COPY and roll
                                    # back; a plain return left it running ("another command is
                                    # already in progress" at the connection's commit)
                                    raise _SnapshotStopped
                    self._deliver(sink, batch, snapshot=True, unreadable=decoder.unreadable)
        except _SnapshotStopped:
            return False
        return True

    def _deliver(
        self,
        sink: EventSink,
        events: list[ChangeEvent],
        *,
        snapshot: bool,
        unreadable: list[NewDeadLetter] | None = None,
    ) -> None:
        self.set_aside(unreadable or [])
        if events:
            sink.write(events)
            self._acknowledged(events, snapshot=snapshot)

    # -- streaming

    def _stream(
        self,
        repl: PGconn,
        decoder: PgoutputDecoder,
        position: dict[str, Any],
        sink: EventSink,
        stop: threading.Event,
    ) -> None:
        start = int(position["flushed"])
        command = (
            f'START_REPLICATION SLOT "{self.slot}" LOGICAL {_lsn_text(start)} '
            f"(proto_version '1', publication_names '{self.publication}')"
        )
        repl.send_query(command.encode())
        res = repl.get_result()
        if res is None or res.status != pq.ExecStatus.COPY_BOTH:
            reason = ((res.error_message if res else b"") or repl.error_message or b"").decode(
                errors="replace"
            )
            _raise_for(self.source_name, "START_REPLICATION", reason.strip())
        repl.nonblocking = 1
        self._update(phase="streaming", last_error=None)
        stream = _Stream(self, repl, decoder, sink)
        stream.run(stop)


class _SnapshotStopped(Exception):
    """``stop`` was set during the snapshot: abandon it (the next start snapshots again)."""


class _Stream:
    """The receive loop of one START_REPLICATION session."""

    def __init__(
        self, capture: PgoutputCapture, conn: PGconn, decoder: PgoutputDecoder, sink: EventSink
    ):
        self.capture = capture
        self.conn = conn
        self.decoder = decoder
        self.sink = sink
        self.pending: list[ChangeEvent] = []
        self.pending_since = 0.0
        self.received = decoder.flushed
        self.confirmed = decoder.flushed
        self.last_status = 0.0
        self.contact = time.time()  # the server's last message
        self.caught_up = 0.0
        self.published = 0.0  # when contact/caught-up last went into the capture's stats

    def run(self, stop: threading.Event) -> None:
        conn, decoder, pending = self.conn, self.decoder, self.pending
        batch_size, delay = self.capture.batch_size, self.capture.batch_delay
        max_age = self.capture.batch_max_age
        self._send_status()
        while True:
            if stop.is_set():
                self._ack()
                self._send_status()
                return
            try:
                n, data = conn.get_copy_data(1)
            except psycopg.OperationalError as exc:
                raise self._lost(str(exc)) from exc
            if n > 0:
                msg = bytes(data)
                self.contact = time.time()
                if msg[0] == 0x77:  # w: XLogData
                    data_start, wal_end, _ = _XLOG_HEADER(msg, 1)
                    self.received = max(self.received, wal_end)
                    before = len(pending)
                    decoder.feed(data_start, msg[25:], pending)
                    if before == 0 and pending:
                        self.pending_since = time.monotonic()
                    if len(pending) >= batch_size:
                        self._ack()
                elif msg[0] == 0x6B:  # k: keepalive
                    wal_end, _, reply = _KEEPALIVE(msg, 1)
                    self.received = max(self.received, wal_end)
                    if not pending and decoder.keepalive(wal_end):
                        self._save()
                    if not pending and not decoder.in_tx:
                        self.caught_up = self.contact  # everything up to the server's end is read
                    if reply:
                        self._send_status()
                continue
            if n < 0:
                res = conn.get_result()
                reason = ((res.error_message if res else b"") or conn.error_message or b"").decode(
                    errors="replace"
                )
                raise self._lost(reason.strip() or "the server ended the replication stream")
            # nothing buffered: flush what is pending once it is old enough, then wait for data
            wall, now = time.time(), time.monotonic()
            if wall - self.contact >= HEARTBEAT_S and now - self.last_status >= HEARTBEAT_S:
                self._send_status(reply=True)  # the server answers with a keepalive: a heartbeat
            if wall - self.published >= 1.0:
                self.published = wall
                self.capture._update(
                    source_contact_at=self.contact, caught_up_at=self.caught_up or None
                )
            if pending and now - self.pending_since >= max_age:
                self._ack()
            if now - self.last_status >= self.capture.status_interval:
                self._send_status()
            wait = delay if pending else min(1.0, self.capture.status_interval)
            readable, _, _ = select.select([conn.socket], [], [], wait)
            if not readable and pending:
                self._ack()  # the stream has been quiet for batch_delay
            try:
                conn.consume_input()
            except psycopg.OperationalError as exc:
                raise self._lost(str(exc)) from exc

    def _ack(self) -> None:
        """Deliver the pending batch; then make its position durable; then confirm it to the slot."""
        if self.pending:
            batch = list(self.pending)
            # what could not be read is stored before the changes after it reach the journal,
            # so its hold on the watermark is known before they are merged
            self.capture.set_aside(self.decoder.unreadable)
            self.sink.write(batch)
            self.pending.clear()
            self._save()
            self.capture._acknowledged(batch)
            self._send_status()
        elif self.decoder.flushed > self.confirmed:
            self._save()
            self._send_status()

    def _save(self) -> None:
        # what could not be read is stored before the position moves past it
        self.capture.set_aside(self.decoder.unreadable)
        self.capture.offsets.save({**self.decoder.position(), "slot": self.capture.slot})
        self.confirmed = self.decoder.flushed
        if self.decoder.last_commit is not None:
            # everything decoded is delivered: the transactions ordered before the next one (the
            # one after the last COMMIT, whose changes' seqs begin with it) are complete
            cut = seq_before(make_seq(self.decoder.last_commit, 0))
            self.capture._update(complete_through=cut)

    def _send_status(self, reply: bool = False) -> None:
        now = time.time_ns() // 1000 - PG_EPOCH_MICROS
        flushed = self.confirmed
        msg = b"r" + _STATUS(max(self.received, flushed), flushed, flushed, now, int(reply))
        try:
            if self.conn.put_copy_data(msg) != 1:
                raise self._lost("could not send the standby status")
            while self.conn.flush() == 1:
                select.select([], [self.conn.socket], [], 1.0)
        except psycopg.OperationalError as exc:
            raise self._lost(str(exc)) from exc
        self.last_status = time.monotonic()

    def _lost(self, reason: str) -> SourceUnavailableError:
        return SourceUnavailableError(
            f"replication stream of source {self.capture.source_name!r} broke: {reason}"
        )


def _raise_for(source_name: str, command: str, reason: str) -> None:
    transient = ("is active for PID", "could not connect", "terminating connection", "timeout")
    if any(t in reason for t in transient):
        raise SourceUnavailableError(f"source {source_name!r}: {command} failed: {reason}")
    raise CaptureError(f"source {source_name!r}: {command} failed: {reason}")


def _lsn(value: bytes | None) -> int:
    hi, _, lo = (value or b"0/0").decode().partition("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def _lsn_text(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"

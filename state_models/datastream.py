"""Decode Google Datastream change records (MySQL and PostgreSQL sources) into ``ChangeEvent``.

A Datastream record has generic metadata (``uuid``, ``read_timestamp``, ``source_timestamp``,
``object``, ``read_method``, ``stream_name``, ``schema_key``, ``sort_keys``), a ``source_metadata``
object (``database``/``schema``, ``table``, ``change_type``, ``is_deleted``, ``primary_keys`` and the
log position) and the row as ``payload``. The same record arrives as one JSON line or one Avro
record; the file readers in ``connectors.datastream_files`` hand either form to ``decode_datastream``
as a mapping.

Where the format facts come from (re-check these when Datastream changes):

- Field names and types: Google's "Events and streams" page
  (https://cloud.google.com/datastream/docs/events-and-streams): ``sort_keys`` is
  ``{"type": "array", "items": ["string", "long"]}``, "values that can be used to sort the events in
  the order in which they occurred"; timestamps are ``timestamp-millis`` in Avro and strings in JSON;
  ``read_method`` values such as ``mysql-cdc-binlog``, ``mysql-backfill-fulldump``,
  ``postgres-cdc-wal``, ``postgresql-backfill``.
- Layout of ``sort_keys``: the source timestamp first, then the log position. Google's own consumers
  read it that way: the Dataflow templates' ``FormatDatastreamRecordToJson`` (Oracle
  ``[timestamp, scn, rs_id, ssn]``), ``MySqlChangeEventSequence`` (timestamp, log file, log
  position) and ``PostgresChangeEventSequence`` (timestamp, LSN text such as ``16/2A50F3``) in
  GoogleCloudPlatform/DataflowTemplates. So MySQL is ``[ts_ms, log_file, log_position]`` and
  PostgreSQL ``[ts_ms, lsn]``.
- GTID mode (MySQL): ``source_metadata`` names the position ``binlog_file``/``binlog_position``
  instead of ``log_file``/``log_position`` (GoogleCloudPlatform/DataflowTemplates#3554; the template
  reads only the binlog-mode names, finds NULLs and cannot order records).

How ``seq`` is built (docs/architecture.md §4), always from the log position, never from a timestamp:

- MySQL: ``binlog file number / position / half``. ``source_timestamp`` is the time of the row
  event, not of the commit (DataflowTemplates#2867 moved its MySQL ordering to file, position,
  then timestamp for that reason), and the template's seconds truncation makes ties the rule.
- PostgreSQL: ``lsn / lsn / half``, the LSN parsed as a 64-bit number (``F/FFFFFFFF`` < ``10/0``).
  Datastream reports no commit LSN, so the change LSN stands in for it, as for pre-1.9 Debezium.
  That orders the versions of one key correctly: a row lock serialises every writer of a key, so a
  later change of the same key always has a larger LSN.
- ``half`` orders the two records one UPDATE can produce at one position: 0 for ``UPDATE-DELETE``
  (the row before), 1 for everything else. ``fold_update_halves`` turns such a pair back into one
  version.
- Backfill reads carry no log position: ``0 / 0 / source time in ms``. They sort before every CDC
  change, as in Google's Spanner template (Datastream backfills while CDC runs, so a CDC change
  that reaches us after the backfill row is the newer state); the time only orders two backfills of
  one row against each other.

Known limits: Datastream reports no row index inside a binlog rows event, so two changes of one key
at the same position cannot be ordered; after a GTID-mode failover the new primary's binlog file
numbers are not comparable with the old one's.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from state_models.errors import DecodeError, UnknownTableError
from state_models.events import ChangeEvent, Op
from state_models.seq import binlog_file_number, make_seq, parse_seq, pg_lsn_to_int
from state_models.tables import TableInfo, TableResolver

SourceKind = Literal["mysql", "postgres"]

#: change_type values and the op each becomes (UPDATE-DELETE is the before-half of an update).
CHANGE_TYPES: dict[str, Op] = {
    "INSERT": Op.INSERT,
    "UPDATE": Op.UPDATE,
    "UPDATE-INSERT": Op.UPDATE,
    "UPDATE-DELETE": Op.DELETE,
    "DELETE": Op.DELETE,
}
UPDATE_BEFORE = "UPDATE-DELETE"
_BEFORE_HALF, _AFTER_HALF = 0, 1

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_BINLOG_FILE_RE = re.compile(r"^\S+\.\d+$")
_LSN_TEXT_RE = re.compile(r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")


@dataclass(frozen=True, slots=True)
class DatastreamChange:
    """One decoded record: the event, plus what ``fold_update_halves`` needs to pair updates."""

    event: ChangeEvent
    change_type: str  # as sent ("" when the record has none)
    uuid: str | None = None

    @property
    def is_update_before(self) -> bool:
        return self.change_type == UPDATE_BEFORE and self.event.op is Op.DELETE


def decode_datastream(
    record: str | bytes | Mapping[str, Any],
    resolve: TableResolver,
    *,
    kind: SourceKind | None = None,
    columns_for: Mapping[str, Mapping[str, str]] | None = None,
    keep_raw: bool = True,
) -> DatastreamChange:
    """Decode one Datastream record (a JSON line, or a record read from an Avro file).

    ``kind`` is the registry's source kind; it is checked against ``read_method`` and used when the
    record does not say. Raises ``DecodeError`` (with the raw record) for anything malformed and
    ``UnknownTableError`` for a table that is not registered.
    """
    raw = _raw_text(record)
    try:
        return _decode(record, raw, resolve, kind, keep_raw)
    except (DecodeError, UnknownTableError):
        raise
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        raise DecodeError(
            f"malformed Datastream record: {type(exc).__name__}: {exc}", raw=raw
        ) from exc


def fold_update_halves(changes: Iterable[DatastreamChange]) -> list[ChangeEvent]:
    """Turn the records of one file into events, making each UPDATE one version, not two.

    An ``UPDATE-DELETE`` (the row before) is paired with an ``UPDATE``/``UPDATE-INSERT`` of the
    same table at the same log position, whichever of the two comes first in the file:

    - same key: one update version, whose ``before`` is the old row;
    - another key (the primary key changed): a delete of the old key and an insert of the new one,
      as Debezium reports a key change;
    - no partner in the file: the delete stands (it sorts just before its partner, so if the
      partner arrives in another file the tombstone is valid for zero time and never shows as
      current or in an as-of query).

    Pairing per file keeps the result independent of how files are batched later.
    """
    items = list(changes)
    halves: dict[tuple[str, tuple[int, ...]], tuple[list[int], list[int]]] = {}
    for i, ch in enumerate(items):
        ev = ch.event
        if ch.is_update_before or ev.op is Op.UPDATE:
            befores, afters = halves.setdefault((ev.table, parse_seq(ev.seq)[:-1]), ([], []))
            (befores if ch.is_update_before else afters).append(i)

    drop: set[int] = set()
    out: dict[int, ChangeEvent] = {}
    for befores, afters in halves.values():
        if not befores or not afters:
            continue
        # the same key first (an ordinary update), whatever order the two records came in ...
        for j in list(befores):
            match = next((i for i in afters if items[i].event.key == items[j].event.key), None)
            if match is not None:
                before, after = items[j].event, items[match].event
                out[match] = replace(after, before=before.before, raw=_joined_raw(before, after))
                drop.add(j)
                befores.remove(j)
                afters.remove(match)
        # ... then what is left is a key change: old key deleted, new key inserted, in file order
        for _j, i in zip(befores, afters, strict=False):
            out[i] = replace(items[i].event, op=Op.INSERT, before=None)
    return [out.get(i, ch.event) for i, ch in enumerate(items) if i not in drop]


def _joined_raw(before: ChangeEvent, after: ChangeEvent) -> str | None:
    # both original records, one per line, so nothing of the pair is lost from the changelog
    if before.raw is None or after.raw is None:
        return after.raw or before.raw
    return f"{before.raw}\n{after.raw}"


# --------------------------------------------------------------------------- decoding


def _raw_text(record: Any) -> str | None:
    if isinstance(record, bytes | bytearray):
        return bytes(record).decode("utf-8", errors="replace")
    if isinstance(record, str):
        return record
    try:
        return json.dumps(record, default=_json_default, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(record)


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _parse(record: Any, raw: str | None) -> dict[str, Any]:
    if isinstance(record, Mapping):
        return dict(record)
    text = raw or ""
    if not text.strip():
        raise DecodeError("empty record (expected a JSON object)", raw=raw)
    try:
        doc = json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise DecodeError(f"not valid JSON: {exc}", raw=raw) from None
    if not isinstance(doc, dict):
        raise DecodeError(
            f"expected a JSON object (a Datastream record), got {type(doc).__name__}", raw=raw
        )
    return doc


def _decode(
    record: Any, raw: str | None, resolve: TableResolver, kind: SourceKind | None, keep_raw: bool
) -> DatastreamChange:
    doc = _parse(record, raw)
    meta = doc.get("source_metadata")
    if not isinstance(meta, dict):
        raise DecodeError(
            "missing or invalid field 'source_metadata' (expected an object)", raw=raw
        )
    payload = doc.get("payload")
    if not isinstance(payload, dict):
        raise DecodeError("missing or invalid field 'payload' (expected an object)", raw=raw)
    read_method = doc.get("read_method")
    if not isinstance(read_method, str) or not read_method:
        raise DecodeError(
            "missing field 'read_method' (e.g. mysql-cdc-binlog, postgres-cdc-wal)", raw=raw
        )
    source_kind = _source_kind(read_method, meta, kind, raw)
    backfill = "backfill" in read_method

    schema_field = "database" if source_kind == "mysql" else "schema"
    schema_name, table_name = meta.get(schema_field), meta.get("table")
    if not schema_name or not table_name:
        raise DecodeError(
            f"source_metadata does not name the table (expected '{schema_field}' and 'table', "
            f"got {schema_name!r} and {table_name!r})",
            raw=raw,
        )
    try:
        info = resolve(str(schema_name), str(table_name))
    except UnknownTableError as exc:
        raise UnknownTableError(str(exc), raw=raw) from None

    change_type = meta.get("change_type") or ""
    if not isinstance(change_type, str):
        raise DecodeError(f"source_metadata.change_type must be text, got {change_type!r}", raw=raw)
    change_type = change_type.upper()
    op = _op(change_type, meta, backfill, raw)
    commit_us = _micros(doc.get("source_timestamp"), "source_timestamp", raw)

    if backfill:
        seq = make_seq(0, 0, commit_us // 1000)
    else:
        half = _BEFORE_HALF if change_type == UPDATE_BEFORE else _AFTER_HALF
        position = (
            _mysql_position(doc.get("sort_keys"), meta, raw)
            if source_kind == "mysql"
            else _pg_position(doc.get("sort_keys"), meta, raw)
        )
        seq = make_seq(*position, half)

    image = _convert_image(payload, info, raw)
    key = _key(info, image, meta, raw)
    before, after = (image, None) if op is Op.DELETE else (None, image)
    tx = meta.get("tx_id") if source_kind == "postgres" else meta.get("gtid")
    event = ChangeEvent(
        table=info.id,
        op=op,
        key=key,
        before=before,
        after=after,
        seq=seq,
        commit_ts=commit_us,
        tx_id=None if tx in (None, "") else str(tx),
        raw=raw if keep_raw else None,
    )
    event = info.protect(event)  # pii: before the event is held anywhere
    uuid = doc.get("uuid")
    return DatastreamChange(event, change_type, None if uuid is None else str(uuid))


def _source_kind(
    read_method: str, meta: Mapping[str, Any], kind: SourceKind | None, raw: str | None
) -> SourceKind:
    prefix = read_method.split("-", 1)[0].lower()
    found: SourceKind | None
    if prefix == "mysql":
        found = "mysql"
    elif prefix in ("postgres", "postgresql"):
        found = "postgres"
    elif prefix in ("cdc", "backfill"):
        # the generic read_method values name no source; the metadata fields do
        if "lsn" in meta or "schema" in meta:
            found = "postgres"
        elif "database" in meta or "log_file" in meta or "binlog_file" in meta:
            found = "mysql"
        else:
            found = kind
    else:
        raise DecodeError(
            f"unsupported Datastream source {prefix!r} in read_method {read_method!r} "
            "(this service reads MySQL and PostgreSQL streams)",
            raw=raw,
        )
    if found is None:
        raise DecodeError(
            f"cannot tell the source database from read_method {read_method!r}", raw=raw
        )
    if kind is not None and found != kind:
        raise DecodeError(
            f"record comes from a {found} stream (read_method {read_method!r}) but the source "
            f"is registered as kind: {kind}",
            raw=raw,
        )
    return found


def _op(change_type: str, meta: Mapping[str, Any], backfill: bool, raw: str | None) -> Op:
    if backfill:
        return Op.READ
    if not change_type:
        # Records written before change_type existed carry only is_deleted; without it we cannot
        # tell an insert from an update, and an update version is right for either in history.
        is_deleted = meta.get("is_deleted")
        if not isinstance(is_deleted, bool):
            raise DecodeError(
                "source_metadata has neither change_type nor is_deleted; cannot tell the operation",
                raw=raw,
            )
        return Op.DELETE if is_deleted else Op.UPDATE
    op = CHANGE_TYPES.get(change_type.upper())
    if op is None:
        raise DecodeError(
            f"unknown change_type {change_type!r} (expected one of {', '.join(CHANGE_TYPES)})",
            raw=raw,
        )
    return op


# --------------------------------------------------------------------------- positions


def _mysql_position(sort_keys: Any, meta: Mapping[str, Any], raw: str | None) -> tuple[int, int]:
    from_keys: tuple[int, int] | None = None
    if isinstance(sort_keys, list) and len(sort_keys) >= 3:
        file, pos = sort_keys[1], sort_keys[2]
        if isinstance(file, str) and _BINLOG_FILE_RE.match(file) and _is_int(pos):
            from_keys = (binlog_file_number(file), int(pos))
    # GTID mode renames the fields (DataflowTemplates#3554); binlog mode uses log_file/log_position
    file_field = "log_file" if meta.get("log_file") else "binlog_file"
    pos_field = "log_position" if meta.get("log_position") is not None else "binlog_position"
    file, pos = meta.get(file_field), meta.get(pos_field)
    from_meta: tuple[int, int] | None = None
    if file and pos is not None:
        if not isinstance(file, str) or not _BINLOG_FILE_RE.match(file) or not _is_int(pos):
            raise DecodeError(
                f"source_metadata.{file_field}/{pos_field} is not a binlog position "
                f"(expected e.g. 'mysql-bin.000042' and a number, got {file!r}, {pos!r})",
                raw=raw,
            )
        from_meta = (binlog_file_number(file), int(pos))
    return _agree(
        from_keys,
        from_meta,
        "log_file/log_position (binlog_file/binlog_position in GTID mode)",
        sort_keys,
        raw,
    )


def _pg_position(sort_keys: Any, meta: Mapping[str, Any], raw: str | None) -> tuple[int, int]:
    from_keys: tuple[int, int] | None = None
    if isinstance(sort_keys, list) and len(sort_keys) >= 2:
        lsn = sort_keys[1]
        if (isinstance(lsn, str) and _LSN_TEXT_RE.match(lsn)) or _is_int(lsn):
            value = pg_lsn_to_int(lsn if isinstance(lsn, str) else int(lsn))
            from_keys = (value, value)
    lsn = meta.get("lsn")
    from_meta: tuple[int, int] | None = None
    if lsn not in (None, ""):
        try:
            value = pg_lsn_to_int(lsn if isinstance(lsn, str) else int(lsn))
        except (TypeError, ValueError):
            raise DecodeError(
                f"source_metadata.lsn is not a PostgreSQL LSN (expected 'X/Y' hex, got {lsn!r})",
                raw=raw,
            ) from None
        from_meta = (value, value)
    return _agree(from_keys, from_meta, "lsn", sort_keys, raw)


def _agree(
    from_keys: tuple[int, int] | None,
    from_meta: tuple[int, int] | None,
    meta_fields: str,
    sort_keys: Any,
    raw: str | None,
) -> tuple[int, int]:
    if from_keys and from_meta and from_keys != from_meta:
        raise DecodeError(
            f"sort_keys {sort_keys!r} and source_metadata {meta_fields} name different log "
            f"positions ({from_keys} vs {from_meta})",
            raw=raw,
        )
    position = from_keys or from_meta
    if position is None:
        raise DecodeError(
            f"CDC record without a log position: sort_keys is {sort_keys!r} and source_metadata "
            f"has no {meta_fields}",
            raw=raw,
        )
    return position


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and value.isdigit()


# --------------------------------------------------------------------------- times


def _micros(value: Any, field: str, raw: str | None) -> int:
    """A Datastream timestamp (epoch ms number, Avro datetime, or JSON text) in microseconds."""
    if isinstance(value, dt.datetime):
        when = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return (when - _EPOCH) // dt.timedelta(microseconds=1)
    if _is_int(value):
        return int(value) * 1000
    if isinstance(value, Decimal):
        return int(value * 1000)
    if isinstance(value, str) and value.strip():
        text = value.strip().replace(" ", "T", 1)
        try:
            when = dt.datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            return _micros(when, field, raw)
    raise DecodeError(
        f"field '{field}' is not a timestamp (expected epoch milliseconds or ISO-8601 text, "
        f"got {value!r})",
        raw=raw,
    )


# --------------------------------------------------------------------------- rows


def _convert_image(payload: Mapping[str, Any], info: TableInfo, raw: str | None) -> dict[str, Any]:
    declared = info.columns or {}
    out: dict[str, Any] = {}
    for col, value in payload.items():
        try:
            out[col] = convert_value(value, declared.get(col))
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise DecodeError(
                f"column {col!r} of {info.id}: cannot decode {value!r}: {exc}", raw=raw
            ) from None
    return out


def convert_value(value: Any, declared: str | None) -> Any:
    """One payload value into the canonical form the Debezium decoder also produces.

    Exact numerics become ``Decimal``; times become ISO-8601 text (``...Z`` for instants, no zone
    for local date-times), so a JSON file and an Avro file of the same change decode alike.
    """
    if value is None:
        return None
    t = (declared or "").strip().lower()
    if isinstance(value, Decimal):
        if t.startswith(("float", "double", "real")):
            return float(value)
        if t.startswith(("int", "bigint", "smallint", "tinyint", "mediumint", "serial")):
            return int(value)
        return value
    if isinstance(value, float) and t.startswith(("numeric", "decimal", "dec", "money")):
        return Decimal(str(value))
    if isinstance(value, int) and not isinstance(value, bool) and t.startswith(("numeric", "dec")):
        return Decimal(value)
    if isinstance(value, str) and t.startswith(("numeric", "decimal", "dec", "money")):
        try:
            return Decimal(value)
        except InvalidOperation:
            raise ValueError(f"not a decimal number for type {declared!r}") from None
    if isinstance(value, dt.datetime):
        return _datetime_text(value, t)
    if isinstance(value, str) and _is_datetime_type(t):
        return _datetime_text(dt.datetime.fromisoformat(value.strip().replace(" ", "T", 1)), t)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dt.time):
        return value.isoformat(timespec="microseconds")
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return value


def _is_datetime_type(t: str) -> bool:
    return t.startswith(("timestamp", "datetime"))


def _datetime_text(value: dt.datetime, t: str) -> str:
    zoned = "with time zone" in t or t.startswith("timestamptz")
    local = _is_datetime_type(t) and not zoned
    if value.tzinfo is None:
        if zoned:
            value = value.replace(tzinfo=dt.UTC)
        else:
            return value.isoformat(timespec="microseconds")
    utc = value.astimezone(dt.UTC)
    if local:
        # a local date-time column: Avro carries it as an instant in UTC; the wall time is the value
        return utc.replace(tzinfo=None).isoformat(timespec="microseconds")
    return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _key(
    info: TableInfo, image: Mapping[str, Any], meta: Mapping[str, Any], raw: str | None
) -> dict[str, Any]:
    declared = meta.get("primary_keys")
    columns: Sequence[str] | None = info.primary_key or (
        [str(c) for c in declared] if isinstance(declared, list) and declared else None
    )
    if not columns:
        raise DecodeError(
            f"no primary key known for {info.id}: the record lists no primary_keys; set "
            "primary_key in the registry",
            raw=raw,
        )
    missing = [c for c in columns if c not in image]
    if missing:
        raise DecodeError(
            f"key column(s) {missing} of {info.id} are missing from the payload", raw=raw
        )
    return {c: image[c] for c in columns}

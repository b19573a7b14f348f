"""The SCD2 state table (ARCHITECTURE.md §5): its columns, how it evolves, and the rows a batch stages.

A state table holds one row per version of a key: the business columns (key columns first), then
the metadata columns of §5, then two columns the merge needs to stay order-free:

- ``_next_seq``: the ``_seq`` of the next version of the key (null while current). It lets a merge
  read, of each touched key, only the versions a late event can change (those whose next version
  comes after the event), and it makes "as of seq S" a plain filter.
- ``_unavailable``: the columns the source did not send for this version (PostgreSQL TOAST). Their
  stored value was carried forward from the previous version, so when an earlier version arrives
  late the merge knows which values to carry again.

Truncates are not versions of any key; each one is kept in a small ``<state table>__truncates``
table, so that a late event for a key, spliced in before a truncate, gets that truncate's
tombstone too.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from state_models.errors import SchemaChangeError, TerminalError
from state_models.events import ChangeEvent, Op, json_value
from state_models.types import (
    BOOL,
    STRING,
    STRING_ARRAY,
    TIMESTAMP,
    Kind,
    UnknownTypeError,
    ValueCoercionError,
    WarehouseType,
    coerce_value,
    infer_type,
    is_widening,
    map_debezium_type,
    map_source_type,
    micros_to_datetime,
    render_value,
)

VALID_FROM = "_valid_from"
VALID_TO = "_valid_to"
IS_CURRENT = "_is_current"
IS_DELETED = "_is_deleted"
OP = "_op"
SEQ = "_seq"
EVENT_ID = "_event_id"
TX_ID = "_tx_id"
INGESTED_AT = "_ingested_at"
NEXT_SEQ = "_next_seq"
UNAVAILABLE = "_unavailable"

#: The metadata columns every state table carries, in table order.
METADATA_COLUMNS: tuple[tuple[str, WarehouseType], ...] = (
    (VALID_FROM, TIMESTAMP),
    (VALID_TO, TIMESTAMP),
    (IS_CURRENT, BOOL),
    (IS_DELETED, BOOL),
    (OP, STRING),
    (SEQ, STRING),
    (EVENT_ID, STRING),
    (TX_ID, STRING),
    (INGESTED_AT, TIMESTAMP),
    (NEXT_SEQ, STRING),
    (UNAVAILABLE, STRING_ARRAY),
)
METADATA_NAMES = frozenset(name for name, _ in METADATA_COLUMNS)
#: Staging-only column: the event's position in its batch (the first delivery of a change wins).
ORD = "_ord"
#: BigQuery-only column: a hash bucket of the key, the table's partitioning column.
KEY_BUCKET = "_key_bucket"
RESERVED_NAMES = METADATA_NAMES | {ORD, KEY_BUCKET}

#: Columns of the truncate log ``<state table>__truncates``.
TRUNCATE_COLUMNS: tuple[tuple[str, WarehouseType], ...] = (
    (SEQ, STRING),
    (VALID_FROM, TIMESTAMP),
    (EVENT_ID, STRING),
    (TX_ID, STRING),
    (INGESTED_AT, TIMESTAMP),
)

#: Column kinds PostgreSQL can store out of line (TOAST), and so send as "unavailable": the merge
#: carries these forward. A fixed rule per type keeps the set stable from batch to batch, which the
#: repair of a later version (when its predecessor arrives late) relies on.
CARRY_KINDS = frozenset({Kind.STRING, Kind.BYTES, Kind.JSON, Kind.DECIMAL})


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: WarehouseType


@dataclass(frozen=True)
class StateTable:
    """The physical shape of one state table: business columns (key first) + metadata columns."""

    table_id: str  # registered table id, source.schema.table
    name: str  # state table name in the warehouse
    key: tuple[str, ...]
    columns: tuple[Column, ...]  # business columns, key columns first

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        if names[: len(self.key)] != list(self.key):
            raise ValueError(f"key columns {self.key} must come first in {names}")
        clash = [n for n in names if n in RESERVED_NAMES or n.startswith("__")]
        if clash:
            raise SchemaChangeError(
                f"{self.table_id}: column(s) {clash} clash with the state table's metadata columns "
                f"({', '.join(sorted(RESERVED_NAMES))}, and names starting with '__')"
            )

    @property
    def business_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def value_names(self) -> tuple[str, ...]:
        """Business columns that are not part of the key."""
        return tuple(c.name for c in self.columns if c.name not in self.key)

    @property
    def carry_names(self) -> tuple[str, ...]:
        """Columns whose unavailable values are carried forward from the previous version."""
        return tuple(
            c.name for c in self.columns if c.name not in self.key and c.type.kind in CARRY_KINDS
        )

    @property
    def truncate_table(self) -> str:
        return truncate_table_name(self.name)

    @property
    def current_view(self) -> str:
        return current_view_name(self.name)

    def column_type(self, name: str) -> WarehouseType:
        for c in self.columns:
            if c.name == name:
                return c.type
        for n, t in METADATA_COLUMNS:
            if n == name:
                return t
        raise KeyError(name)

    def all_columns(self) -> tuple[Column, ...]:
        return self.columns + tuple(Column(n, t) for n, t in METADATA_COLUMNS)


def truncate_table_name(state_table: str) -> str:
    return f"{state_table}__truncates"


def current_view_name(state_table: str) -> str:
    return f"{state_table}_current"


@dataclass(frozen=True)
class TableDef:
    """What the registry says about a table: everything the warehouse needs besides the events."""

    table_id: str
    state_table: str
    source_kind: str = "postgres"  # postgres | mysql: the dialect of the declared type names
    primary_key: tuple[str, ...] | None = None
    declared: Mapping[str, str] | None = None  # column -> source type name

    @classmethod
    def from_registered(cls, table: Any) -> TableDef:
        """From a ``state_models.registry.RegisteredTable``."""
        return cls(
            table_id=table.id,
            state_table=table.state_table,
            source_kind=table.source.kind,
            primary_key=tuple(table.primary_key) if table.primary_key else None,
            declared=dict(table.spec.columns) if table.spec.columns else None,
        )

    def declared_types(self) -> dict[str, WarehouseType]:
        out: dict[str, WarehouseType] = {}
        for name, type_name in (self.declared or {}).items():
            try:
                out[name] = map_source_type(type_name, self.source_kind)
            except UnknownTypeError as exc:
                raise SchemaChangeError(f"{self.table_id}: column {name!r}: {exc}") from None
        return out


# --------------------------------------------------------------------------- evolution


@dataclass(frozen=True)
class Rejected:
    """An event that cannot be applied, and why (it goes to the dead-letter store)."""

    event: ChangeEvent
    error: TerminalError


@dataclass
class Evolution:
    """What a batch needs done to the table before its MERGE."""

    table: StateTable  # the table after the changes below
    create: bool = False  # the table does not exist yet
    add: list[Column] = field(default_factory=list)
    widen: list[Column] = field(default_factory=list)  # columns with their new, wider type
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def changes_schema(self) -> bool:
        return self.create or bool(self.add or self.widen)


def plan_evolution(
    table: TableDef, existing: StateTable | None, events: Sequence[ChangeEvent]
) -> Evolution:
    """Decide the table's shape for a batch: new columns, safe widenings, events that do not fit.

    Types come from the registry's ``columns:`` first, then from an event's Debezium schema block,
    then from its values. A declared type that conflicts with the table raises
    ``SchemaChangeError`` (the whole batch waits for someone to fix the registry); an event whose
    schema says a column changed to an incompatible type is rejected on its own.
    """
    declared = table.declared_types()
    types: dict[str, WarehouseType] = {c.name: c.type for c in existing.columns} if existing else {}
    order: list[str] = list(types)
    widened: dict[str, WarehouseType] = {}
    added: list[str] = []

    def add(name: str, wtype: WarehouseType) -> None:
        types[name] = wtype
        order.append(name)
        added.append(name)

    for name, wtype in declared.items():
        if name not in types:
            add(name, wtype)
            continue
        merged = _merge_type(types[name], wtype)
        if merged is None:
            raise SchemaChangeError(
                f"{table.table_id}: column {name!r} is {types[name]} in the warehouse but "
                f"declared {table.declared[name] if table.declared else ''!s} ({wtype}) in the "
                "registry, which is not a safe widening; fix `columns:` or migrate the state table"
            )
        if merged != types[name]:
            types[name] = merged
            widened[name] = merged

    key = existing.key if existing else table.primary_key
    rejected: list[Rejected] = []
    accepted: list[ChangeEvent] = []
    for event in events:
        if event.op is Op.TRUNCATE:
            accepted.append(event)
            continue
        if key is None:
            key = tuple(event.key)
        problem = _key_problem(event, key)
        if problem is None:
            problem = _type_problem(event, declared, types, order, add, widened)
        if problem is not None:
            rejected.append(Rejected(event, problem))
        else:
            accepted.append(event)

    if key is None:
        key = ()
    missing_key = [k for k in key if k not in types]
    for k in missing_key:  # a key column no event carried a value for yet cannot happen; be safe
        add(k, STRING)
    ordered = list(key) + [n for n in order if n not in key]
    state = StateTable(
        table_id=table.table_id,
        name=table.state_table,
        key=tuple(key),
        columns=tuple(Column(n, types[n]) for n in ordered),
    )
    return Evolution(
        table=state,
        create=existing is None,
        add=[] if existing is None else [Column(n, types[n]) for n in added],
        widen=[] if existing is None else [Column(n, t) for n, t in widened.items()],
        rejected=rejected,
    )


def _merge_type(old: WarehouseType, new: WarehouseType) -> WarehouseType | None:
    """The column type that holds values of both: old, a widening of it, or None (conflict)."""
    if is_widening(new, old):
        return old
    if is_widening(old, new):
        return new
    if old.kind is Kind.DECIMAL and new.kind is Kind.DECIMAL:
        scale = max(old.scale or 0, new.scale or 0)
        digits = max(
            (old.precision or 0) - (old.scale or 0), (new.precision or 0) - (new.scale or 0)
        )
        if digits + scale <= 38:
            return WarehouseType(Kind.DECIMAL, digits + scale, scale)
    return None


def _key_problem(event: ChangeEvent, key: tuple[str, ...]) -> TerminalError | None:
    if tuple(event.key) != key and set(event.key) != set(key):
        return SchemaChangeError(
            f"{event.table}: event key columns {list(event.key)} differ from the state table's "
            f"key {list(key)}"
        )
    nulls = [k for k in key if event.key.get(k) is None]
    if nulls:
        return SchemaChangeError(f"{event.table}: key column(s) {nulls} are null")
    return None


def _type_problem(
    event: ChangeEvent,
    declared: Mapping[str, WarehouseType],
    types: dict[str, WarehouseType],
    order: list[str],
    add: Any,
    widened: dict[str, WarehouseType],
) -> TerminalError | None:
    image = {**(event.before or {}), **(event.after or {})}
    names = list(image) + [n for n in event.unavailable if n not in image]
    for name in names:
        if name in declared:
            continue  # the registry decides
        stated = (event.source_types or {}).get(name)
        wtype = map_debezium_type(stated) if stated else infer_type(image.get(name))
        if wtype is None:
            continue  # only nulls so far: add the column when a typed value arrives
        if name not in types:
            add(name, wtype)
            continue
        if stated is None:
            continue  # a guess from a value: the value's coercion decides whether it fits
        merged = _merge_type(types[name], wtype)
        if merged is None:
            return SchemaChangeError(
                f"{event.table}: column {name!r} is {types[name]} in the warehouse but this event "
                f"says {stated} ({wtype}); not a safe widening"
            )
        if merged != types[name]:
            types[name] = merged
            widened[name] = merged
    return None


# --------------------------------------------------------------------------- staging


@dataclass
class Staged:
    """A batch as rows for the staging table, plus the events that could not be staged."""

    rows: list[dict[str, Any]]
    rejected: list[Rejected]
    truncates: int = 0


def stage_rows(
    table: StateTable, events: Sequence[ChangeEvent], ingested_at: dt.datetime
) -> Staged:
    """One staging row per event, values coerced to the column types.

    Inserts, updates and snapshot reads carry their ``after`` image (unavailable values null and
    named in ``_unavailable``); a delete carries only its key; a truncate carries no key at all.
    """
    ingested = _utc(ingested_at)
    rows: list[dict[str, Any]] = []
    rejected: list[Rejected] = []
    truncates = 0
    value_names = set(table.value_names)
    for ord_, event in enumerate(events):
        if event.table != table.table_id:
            raise ValueError(f"event for {event.table} staged into {table.table_id}")
        row: dict[str, Any] = dict.fromkeys(table.business_names)
        try:
            if event.op is Op.TRUNCATE:
                truncates += 1
            else:
                for k in table.key:
                    row[k] = coerce_value(event.key[k], table.column_type(k))
            if event.op in (Op.INSERT, Op.UPDATE, Op.READ):
                for name, value in (event.after or {}).items():
                    if name in value_names:
                        row[name] = coerce_value(value, table.column_type(name))
        except (ValueCoercionError, KeyError) as exc:
            rejected.append(
                Rejected(event, SchemaChangeError(f"{event.table}: {exc}", raw=event.raw))
            )
            continue
        unavailable = (
            sorted(n for n in event.unavailable if n in value_names)
            if event.op in (Op.UPDATE, Op.INSERT, Op.READ)
            else []
        )
        row.update(
            {
                VALID_FROM: micros_to_datetime(event.commit_ts),
                OP: event.op.value,
                IS_DELETED: event.op in (Op.DELETE, Op.TRUNCATE),
                SEQ: event.seq,
                EVENT_ID: event.event_id,
                TX_ID: event.tx_id,
                INGESTED_AT: ingested,
                UNAVAILABLE: unavailable,
                ORD: ord_,
            }
        )
        rows.append(row)
    return Staged(rows=rows, rejected=rejected, truncates=truncates)


def key_bucket(table: StateTable, row: Mapping[str, Any], buckets: int) -> int:
    """A stable hash bucket in [0, buckets) of a staged row's (coerced) key values."""
    text = json.dumps([json_value(row[k]) for k in table.key], separators=(",", ":"))
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % buckets


def _utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        raise ValueError("ingested_at must be timezone-aware (UTC)")
    return value.astimezone(dt.UTC)


# --------------------------------------------------------------------------- printing


def render_version(table: StateTable, row: Mapping[str, Any]) -> dict[str, Any]:
    """A version row as JSON-ready values, in table column order (what ``cdc history`` prints)."""
    out: dict[str, Any] = {}
    for col in table.all_columns():
        if col.name in row:
            out[col.name] = render_value(row[col.name], col.type)
    return out


def sort_versions(table: StateTable, rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Versions ordered by key then ``_seq``: the history order."""
    return sorted(
        (dict(r) for r in rows),
        key=lambda r: (tuple(_sortable(r.get(k)) for k in table.key), r[SEQ]),
    )


def _sortable(value: Any) -> tuple[int, Any]:
    return (0, value) if value is not None else (1, 0)


def with_columns(table: StateTable, columns: Sequence[Column]) -> StateTable:
    return replace(table, columns=tuple(columns))

"""The SCD2 state table (docs/architecture.md §5): its columns, how it evolves, and the rows a batch stages.

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
from operator import attrgetter
from typing import Any

from state_models.errors import SchemaChangeError, TerminalError
from state_models.events import MAX_TIMESTAMP_US, MIN_TIMESTAMP_US, ChangeEvent, Op, json_value
from state_models.types import (
    BOOL,
    NAME_LIST,
    STRING,
    TIMESTAMP,
    Kind,
    UnknownTypeError,
    WarehouseType,
    encode_names,
    infer_type,
    is_widening,
    map_debezium_type,
    map_source_type,
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
    (UNAVAILABLE, NAME_LIST),
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
    #: Columns the source has ever sent as unavailable (TOAST): the merge carries these forward.
    #: Recorded with the table and only ever grown, so that a version whose value was carried can
    #: be repaired in any later batch (when its predecessor arrives late).
    carry: tuple[str, ...] = ()

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
    primary_key: tuple[str, ...] | None = None  # the state table's names (renamed)
    declared: Mapping[str, str] | None = None  # state-table column -> source type name
    #: source column -> state-table column (the registry's ``rename:``): events carry the source's
    #: names everywhere (Pub/Sub, the changelog, dead letters); only the state table renames
    renames: Mapping[str, str] | None = None
    #: the registry's ``pii:`` (source names): applied again before anything is stored, whatever
    #: path the events came by (applying it twice changes nothing)
    pii: Any = None  # a state_models.pii.TablePolicy
    #: state-table column -> BigQuery policy tag (column-level access control, dynamic masking)
    policy_tags: Mapping[str, str] | None = None
    source: str = ""  # the registry's source name (for ``cdc_progress``)

    @classmethod
    def from_registered(cls, table: Any) -> TableDef:
        """From a ``state_models.registry.RegisteredTable``.
        Hashed and masked columns are text whatever their source type; dropped ones are gone."""
        spec = table.spec
        pii = dict(spec.pii or {})
        declared = {n: t for n, t in (spec.columns or {}).items() if pii.get(n) != "drop"}
        declared.update({n: "text" for n, p in pii.items() if p != "drop"})
        policy = None
        if pii:
            from state_models.pii import TablePolicy

            policy = TablePolicy(
                columns=pii,
                kind=table.source.kind,
                key_env=table.pii_key_env,
            )
        return cls(
            table_id=table.id,
            state_table=table.state_table,
            source_kind=table.source.kind,
            primary_key=tuple(map(spec.state_column, table.primary_key))
            if table.primary_key
            else None,
            declared={spec.state_column(n): t for n, t in declared.items()} or None,
            renames=dict(spec.rename) if spec.rename else None,
            pii=policy,
            policy_tags={spec.state_column(c): t for c, t in table.policy_tags().items()} or None,
            source=table.source_name,
        )

    def declared_types(self) -> dict[str, WarehouseType]:
        out: dict[str, WarehouseType] = {}
        for name, type_name in (self.declared or {}).items():
            try:
                out[name] = map_source_type(type_name, self.source_kind)
            except UnknownTypeError as exc:
                raise SchemaChangeError(f"{self.table_id}: column {name!r}: {exc}") from None
        return out

    def protected(self, events: Sequence[ChangeEvent]) -> Sequence[ChangeEvent]:
        """The events with the table's ``pii:`` applied (a no-op on protected ones)."""
        if self.pii is None:
            return events
        return self.pii.protect_many(events)

    def source_column(self, name: str) -> str:
        """The source's name of a state-table column (the inverse of ``renames``)."""
        for source, stored in (self.renames or {}).items():
            if stored == name:
                return source
        return name

    def as_stored(self, events: Sequence[ChangeEvent]) -> Sequence[ChangeEvent]:
        """The events with their columns under the state table's names (``renames``)."""
        if not self.renames:
            return events
        return [rename_columns(e, self.renames) for e in events]


def rename_columns(event: ChangeEvent, renames: Mapping[str, str]) -> ChangeEvent:
    """``event`` with the columns of its key, images and names renamed; the same object when it
    has none of them. Its ``event_id`` and raw bytes stay those of the source's change."""

    def image(values: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if values is None:
            return None
        return {renames.get(n, n): v for n, v in values.items()}

    names = {*event.key, *(event.before or ()), *(event.after or ()), *event.unavailable}
    if names.isdisjoint(renames):
        return event
    return replace(
        event,
        key=image(event.key) or {},
        before=image(event.before),
        after=image(event.after),
        unavailable=tuple(renames.get(n, n) for n in event.unavailable),
        source_types=image(event.source_types),
    )


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
    carry_grew: bool = False  # a column was sent as unavailable for the first time
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
    # Most events of a batch share one shape (the same columns, no schema block): once every
    # column of a shape has a type, later events of that shape can change nothing.
    known_shapes: set[tuple[Any, ...]] = set()
    for event in events:
        if not isinstance(event.commit_ts, int) or not (
            MIN_TIMESTAMP_US <= event.commit_ts <= MAX_TIMESTAMP_US
        ):
            rejected.append(
                Rejected(
                    event,
                    SchemaChangeError(
                        f"{event.table}: commit time {event.commit_ts!r} µs is not a time in "
                        "years 1 to 9999 (the version's _valid_from could not be stored or read)"
                    ),
                )
            )
            continue
        if event.op is Op.TRUNCATE:
            accepted.append(event)
            continue
        if key is None:
            key = tuple(event.key)
        fits = tuple(event.key) == key and None not in event.key.values()
        problem = None if fits else _key_problem(event, key)
        if problem is None:
            stated = event.source_types
            shape = (
                tuple(event.after or ()),
                tuple(event.before or ()),
                event.unavailable,
                None if stated is None else tuple(stated.items()),
            )
            if shape in known_shapes:
                accepted.append(event)
                continue
            problem = _type_problem(event, declared, types, order, add, widened)
            if problem is None and all(
                n in types or n in declared for n in (*shape[0], *shape[1], *shape[2])
            ):
                known_shapes.add(shape)  # every column typed: later events of it change nothing
        if problem is not None:
            rejected.append(Rejected(event, problem))
        else:
            accepted.append(event)

    if key is None:
        key = ()
    if existing is None and any(k not in types for k in key):
        # no accepted event carried the key (every one was rejected) and the registry does not
        # type it: the table is created by the first event that does, with the key's real type
        key = ()
    ordered = list(key) + [n for n in order if n not in key]
    had = set(existing.carry) if existing else set()
    unavailable = {n for e in accepted if e.op in VERSION_OPS for n in e.unavailable}
    carry = tuple(n for n in ordered if n not in key and (n in had or n in unavailable))
    state = StateTable(
        table_id=table.table_id,
        name=table.state_table,
        key=tuple(key),
        columns=tuple(Column(n, types[n]) for n in ordered),
        carry=carry,
    )
    return Evolution(
        table=state,
        create=existing is None,
        add=[] if existing is None else [Column(n, types[n]) for n in added],
        widen=[] if existing is None else [Column(n, t) for n, t in widened.items()],
        carry_grew=set(carry) != had,
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


def column_name_problem(name: str, others: Iterable[str]) -> str | None:
    """Why a state table cannot hold a column of this name beside ``others``, or None.

    Warehouses compare column names without case (BigQuery, DuckDB), so ``name`` and ``NAME`` (two
    columns in PostgreSQL) would be one; the metadata names and ``__`` are ours; a name must have
    a character that is not blank.
    """
    if not name.strip():
        return f"column name {name!r} is empty"
    if name in RESERVED_NAMES or name.startswith("__"):
        return (
            f"column {name!r} clashes with the state table's metadata columns "
            f"({', '.join(sorted(RESERVED_NAMES))}, and names starting with '__')"
        )
    twins = sorted(o for o in others if o != name and o.lower() == name.lower())
    if twins:
        return (
            f"columns {name!r} and {twins[0]!r} differ only in case; a warehouse holds them as one"
        )
    return None


def _name_problem(
    event: ChangeEvent, new: Sequence[str], types: Mapping[str, WarehouseType]
) -> TerminalError | None:
    """A column this event would add that no state table can hold (the event alone is rejected)."""
    if not new:
        return None
    known = [*types, *new]
    for name in new:
        why = column_name_problem(name, known)
        if why is not None:
            return SchemaChangeError(
                f"{event.table}: {why}; keep it under another name with rename: in the "
                "registry (`cdc preflight` names it), then `cdc dead-letters retry`"
            )
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
    problem = _name_problem(event, [n for n in names if n not in types], types)
    if problem is not None:
        return problem
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
        if types[name].kind is Kind.STRING:
            # a string column holds any value as its exact text (a column made from an untyped
            # guess: before journals kept the stated types, `cdc run` made every undeclared
            # column but numbers a string); `cdc rebuild` gives it the stated type
            continue
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


_TABLE, _OP, _SEQ = attrgetter("table"), attrgetter("op"), attrgetter("seq")
_COMMIT_TS, _EVENT_ID, _TX_ID = attrgetter("commit_ts"), attrgetter("event_id"), attrgetter("tx_id")

_DELETES = {op: op in (Op.DELETE, Op.TRUNCATE) for op in Op}

#: Ops that make a version carrying the ``after`` image.
VERSION_OPS = frozenset({Op.INSERT, Op.UPDATE, Op.READ})


@dataclass
class StagedBatch:
    """A batch as columns for the staging table: row ``i`` comes from ``events[i]``.

    Business values are the decoded values as they are (the warehouse converts them to the column
    types in bulk, with :func:`state_models.types.coerce_value` deciding every doubtful value);
    ``_valid_from`` and ``_ingested_at`` are microseconds since the epoch.
    """

    columns: dict[str, list[Any]]
    events: list[ChangeEvent]
    truncates: int = 0

    @property
    def since_seq(self) -> str | None:
        """The earliest seq of the batch: no stored version whose next version comes before it
        can be affected by the batch."""
        return min(self.columns[SEQ]) if self.events else None


def stage_columns(
    table: StateTable, events: Sequence[ChangeEvent], ingested_at: dt.datetime
) -> StagedBatch:
    """The staging columns of a batch (see :class:`StagedBatch`).

    Inserts, updates and snapshot reads carry their ``after`` image (unavailable values null and
    named in ``_unavailable``); a delete carries only its key; a truncate carries no key at all.
    """
    ingested = _micros(_utc(ingested_at))
    value_names = set(table.value_names)
    if any(t != table.table_id for t in set(map(_TABLE, events))):
        raise ValueError(f"events of other tables staged into {table.table_id}")
    ops = list(map(_OP, events))
    # a delete stages its key, a truncate nothing (its key is {})
    images: list[Mapping[str, Any]] = [
        (e.after or {}) if op in VERSION_OPS else e.key for e, op in zip(events, ops, strict=True)
    ]
    unavailable = [
        encode_names(n for n in e.unavailable if n in value_names)
        if e.unavailable and op in VERSION_OPS
        else None
        for e, op in zip(events, ops, strict=True)
    ]
    columns: dict[str, list[Any]] = {
        name: [image.get(name) for image in images] for name in table.business_names
    }
    columns[VALID_FROM] = list(map(_COMMIT_TS, events))
    columns[OP] = ops  # an Op is its one-letter string
    columns[IS_DELETED] = list(map(_DELETES.__getitem__, ops))
    columns[SEQ] = list(map(_SEQ, events))
    columns[EVENT_ID] = list(map(_EVENT_ID, events))
    columns[TX_ID] = list(map(_TX_ID, events))
    columns[INGESTED_AT] = [ingested] * len(events)
    columns[UNAVAILABLE] = unavailable
    columns[ORD] = list(range(len(events)))
    truncates = ops.count(Op.TRUNCATE)
    return StagedBatch(columns=columns, events=list(events), truncates=truncates)


def key_bucket(key_values: Sequence[Any], buckets: int) -> int:
    """A stable hash bucket in [0, buckets) of a row's key values (as stored, i.e. coerced)."""
    text = json.dumps([json_value(v) for v in key_values], separators=(",", ":"))
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % buckets


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _micros(value: dt.datetime) -> int:
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


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

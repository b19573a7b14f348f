"""The registry: what a user writes in ``cdc.yaml`` (docs/architecture.md §7), as validated models.

Pure models only; reading the file, ``${VAR}`` interpolation and error rendering live in
``cdc.config``. Every model forbids unknown keys so that a typo is an error, never a silent default.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from state_models.pii import PiiPolicy, TablePolicy
from state_models.pubsub import PubSubLayout, PubSubSettings
from state_models.scd2 import column_name_problem
from state_models.tables import TableInfo
from state_models.types import UnknownTypeError, map_source_type

SourceKind = Literal["postgres", "mysql"]
Engine = Literal["debezium", "pgoutput", "binlog", "datastream"]
SnapshotMode = Literal["initial", "never"]
DatastreamFormat = Literal["avro", "json"]
DatastreamCdcMethod = Literal["binlog", "gtid"]

#: Which capture engines can read which source kinds.
ENGINES_BY_KIND: dict[str, tuple[str, ...]] = {
    "postgres": ("debezium", "pgoutput", "datastream"),
    "mysql": ("debezium", "binlog", "datastream"),
}

#: ``${VAR}`` or ``${VAR:-default}`` inside a registry value.
ENV_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
_POLICY_TAG_RE = re.compile(r"^projects/[^/]+/locations/[^/]+/taxonomies/[^/]+/policyTags/[^/]+$")
_COLUMN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,299}$")
_RESOURCE_ID_RE = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,221}[a-z0-9]$")
_LOCATION_RE = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(text: str) -> float:
    """``90s``, ``5m``, ``2h``, ``1d`` -> seconds."""
    m = _DURATION_RE.match(text.strip())
    if m is None:
        raise ValueError(f"expected a duration like 30s, 5m, 2h or 1d, got {text!r}")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$")
_SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_SIZE_UNITS.update({"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40})


def size_bytes(text: str) -> int:
    """``512MiB``, ``10GiB``, ``2GB`` -> bytes."""
    m = _SIZE_RE.match(text.strip())
    if m is None:
        raise ValueError(f"expected a size like 512MiB, 10GiB or 2GB, got {text!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])


class FreshnessSla(_Model):
    """How old a table's newest merged change may be before a warning, and before an error."""

    warn: str | None = None
    error: str | None = None

    @field_validator("warn", "error")
    @classmethod
    def _durations(cls, v: str | None) -> str | None:
        if v is not None:
            duration_seconds(v)
        return v


class Sla(_Model):
    """A table's (or a source's default) service levels: ``cdc monitoring rules`` turns them
    into alerting rules."""

    freshness: FreshnessSla | None = None
    stall_after: str | None = Field(
        default=None, description="a capture not streaming for this long is stalled (default 2m)"
    )
    max_retained_log: str | None = Field(
        default=None,
        description="source log held for the capture (WAL, binlogs) that is worth an alert while "
        "it grows (default 5GiB)",
    )

    @field_validator("stall_after")
    @classmethod
    def _duration(cls, v: str | None) -> str | None:
        if v is not None:
            duration_seconds(v)
        return v

    @field_validator("max_retained_log")
    @classmethod
    def _size(cls, v: str | None) -> str | None:
        if v is not None:
            size_bytes(v)
        return v


CheckLevel = Literal["error", "warn"]


class VolumeCheck(_Model):
    """``cdc check``'s volume check: the changes of the last complete hour against the median of
    the hours before it (from the changelog's per-hour counts)."""

    level: CheckLevel = "warn"
    min_ratio: float = Field(default=0.5, ge=0)
    max_ratio: float = Field(default=2.0, gt=0)
    baseline_hours: int = Field(default=24, ge=1, le=24 * 90)

    @model_validator(mode="after")
    def _ordered(self) -> VolumeCheck:
        if self.min_ratio >= self.max_ratio:
            raise ValueError(
                f"min_ratio ({self.min_ratio}) must be below max_ratio ({self.max_ratio})"
            )
        return self


class SchemaDriftCheck(_Model):
    """``cdc check``'s schema drift check: columns added or widened since the last check."""

    level: CheckLevel = "warn"


class Checks(_Model):
    """The checks ``cdc check`` runs besides the invariants (which always run)."""

    volume: VolumeCheck | None = None
    schema_drift: SchemaDriftCheck | None = None


class TableSpec(_Model):
    """One registered source table."""

    name: str = Field(description="schema.table (PostgreSQL) or database.table (MySQL)")
    primary_key: list[str] | None = Field(
        default=None, description="key columns; read from the database when omitted"
    )
    columns: dict[str, str] | None = Field(
        default=None, description="column name -> source type name; `cdc register` fills it"
    )
    pii: dict[str, PiiPolicy] | None = None
    rename: dict[str, str] | None = Field(
        default=None,
        description="source column -> state-table column, for a name no state table can hold "
        "(NAME beside name: warehouses compare names without case)",
    )
    state_table: str | None = Field(default=None, description="state table name in the warehouse")
    sla: Sla | None = None
    checks: Checks | None = None
    policy_tags: dict[str, str] | None = Field(
        default=None,
        description="column -> BigQuery policy tag (projects/P/locations/L/taxonomies/T/"
        "policyTags/G): BigQuery column-level access control and dynamic masking govern reads",
    )

    @field_validator("policy_tags")
    @classmethod
    def _policy_tag_names(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for column, tag in (v or {}).items():
            if not isinstance(tag, str) or not _POLICY_TAG_RE.match(tag):
                raise ValueError(
                    f"policy tag of {column!r}: expected projects/PROJECT/locations/LOCATION/"
                    f"taxonomies/TAXONOMY/policyTags/TAG, got {tag!r}"
                )
        return v

    @field_validator("name")
    @classmethod
    def _schema_dot_table(cls, v: str) -> str:
        parts = v.split(".")
        if len(parts) != 2 or not all(_IDENT_RE.match(p) for p in parts):
            raise ValueError(f"expected 'schema.table' (e.g. public.subscriptions), got {v!r}")
        return v

    @field_validator("primary_key")
    @classmethod
    def _non_empty_key(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v:
                raise ValueError(
                    "expected at least one column; omit the field to read it from the database"
                )
            if len(set(v)) != len(v):
                raise ValueError(f"a column is listed twice: {v}")
        return v

    @field_validator("rename")
    @classmethod
    def _valid_renames(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for old, new in (v or {}).items():
            if not isinstance(new, str) or not _COLUMN_RE.match(new):
                raise ValueError(
                    f"{old!r} is renamed to {new!r}: expected a plain column name (a letter or _, "
                    "then letters, digits, _)"
                )
        targets = [new.lower() for new in (v or {}).values()]
        twice = sorted({t for t in targets if targets.count(t) > 1})
        if twice:
            raise ValueError(f"two columns are renamed to the same name: {twice}")
        return v

    @field_validator("state_table")
    @classmethod
    def _valid_state_table(cls, v: str | None) -> str | None:
        if v is not None and not _IDENT_RE.match(v):
            raise ValueError(f"expected a plain identifier (letters, digits, _), got {v!r}")
        return v

    @model_validator(mode="after")
    def _columns_cover_key_and_pii(self) -> TableSpec:
        if self.columns:
            missing = [c for c in (self.primary_key or []) if c not in self.columns]
            if missing:
                raise ValueError(
                    f"primary_key column(s) {missing} are not in columns {sorted(self.columns)}"
                )
            missing = [c for c in (self.pii or {}) if c not in self.columns]
            if missing:
                raise ValueError(
                    f"pii column(s) {missing} are not in columns {sorted(self.columns)}"
                )
            missing = [c for c in (self.policy_tags or {}) if c not in self.columns]
            if missing:
                raise ValueError(
                    f"policy_tags column(s) {missing} are not in columns {sorted(self.columns)}"
                )
            missing = [c for c in (self.rename or {}) if c not in self.columns]
            if missing:
                raise ValueError(
                    f"rename column(s) {missing} are not in columns {sorted(self.columns)}"
                )
        unkeyable = [
            c for c, p in (self.pii or {}).items() if p != "hash" and c in (self.primary_key or [])
        ]
        if unkeyable:
            raise ValueError(
                f"key column(s) {unkeyable} cannot be masked or dropped: history is kept per key, "
                "so a key must stay unique and present; use hash (equal values, equal tokens)"
            )
        return self

    def state_column(self, name: str) -> str:
        """The state table's name for a source column (``rename:``, else the same)."""
        return self.rename.get(name, name) if self.rename else name

    @property
    def schema_name(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def table_name(self) -> str:
        return self.name.split(".", 1)[1]


class DatastreamSpec(_Model):
    """Where the Google Datastream stream of an ``engine: datastream`` source lives and writes.

    ``cdc datastream plan/apply`` turn this, the source's ``dsn`` (host, port, user, password) and
    its registered tables into two connection profiles and one stream.
    """

    project: str = Field(description="Google Cloud project that owns the stream")
    location: str = Field(description="Datastream region, e.g. us-central1")
    bucket: str = Field(description="GCS bucket the stream writes to")
    prefix: str = Field(default="datastream", description="folder in the bucket for all streams")
    format: DatastreamFormat = Field(default="avro", description="file format: avro | json (gzip)")
    stream: str | None = Field(default=None, description="stream id (default cdc-<source>)")
    source_profile: str | None = Field(
        default=None, description="source connection profile id (default cdc-<source>-source)"
    )
    destination_profile: str | None = Field(
        default=None, description="GCS connection profile id (default cdc-<source>-gcs)"
    )
    cdc_method: DatastreamCdcMethod | None = Field(
        default=None, description="MySQL only: binlog (default) or gtid"
    )
    private_connection: str | None = Field(
        default=None, description="private connection id; Datastream's static IPs when omitted"
    )
    file_rotation_mb: int | None = Field(default=None, ge=1, le=1000)
    file_rotation_interval_s: int | None = Field(default=None, ge=15, le=86400)
    output: str | None = Field(
        default=None,
        description="where `cdc replay` reads the stream's files when not from "
        "gs://<bucket>/<prefix>/<source> (a copy elsewhere, or a local folder)",
    )

    def folder(self, source_name: str) -> str:
        """The stream's folder in the bucket (no leading or trailing slash): ``<prefix>/<source>``."""
        return "/".join(p for p in (self.prefix, source_name) if p)

    def output_url(self, source_name: str) -> str:
        """Where the stream's files are read from: ``output``, else ``gs://<bucket>/<folder>``."""
        return self.output or f"gs://{self.bucket}/{self.folder(source_name)}"

    @field_validator("stream", "source_profile", "destination_profile", "private_connection")
    @classmethod
    def _resource_id(cls, v: str | None) -> str | None:
        if v is not None and not _RESOURCE_ID_RE.match(v):
            raise ValueError(
                f"expected a Datastream id: lower-case letters, digits and '-', starting with a "
                f"letter, at most 63 characters; got {v!r}"
            )
        return v

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, v: str) -> str:
        v = v.removeprefix("gs://").rstrip("/")
        if not _BUCKET_RE.match(v):
            raise ValueError(f"expected a GCS bucket name (e.g. acme-cdc), got {v!r}")
        return v

    @field_validator("location")
    @classmethod
    def _region(cls, v: str) -> str:
        if not _LOCATION_RE.match(v):
            raise ValueError(f"expected a Google Cloud region such as us-central1, got {v!r}")
        return v

    @field_validator("prefix")
    @classmethod
    def _clean_prefix(cls, v: str) -> str:
        return v.strip("/")


class OnlineStore(_Model):
    """``online:``: a Redis (Memorystore) store of each key's live row, written only when newer
    (by ``_seq``) than what it holds (``connectors/online.py``)."""

    url: str = Field(
        description="redis://[user:password@]host:port/db (rediss:// for TLS; use ${VAR} for "
        "the password), or bigtable://project/instance/table (Bigtable, through the official "
        "client; BIGTABLE_EMULATOR_HOST for its emulator)"
    )
    key_prefix: str = Field(default="cdc:", max_length=200, description="prefix of every key")
    tables: list[str] | None = Field(
        default=None,
        description="tables kept online (ids, or names within the source); default: all",
    )
    ttl_s: int = Field(default=0, ge=0, description="expire a live row after this long (0: never)")
    tombstone_ttl_s: int = Field(
        default=7 * 86400,
        ge=1,
        description="how long a deleted row's tombstone (its _seq) is kept, so that a late older "
        "change cannot bring the row back (default 7 days)",
    )

    @field_validator("url")
    @classmethod
    def _redis_url(cls, v: str) -> str:
        scheme, sep, rest = v.partition("://")
        if scheme == "bigtable" and sep:
            parts = rest.split("/")
            if len(parts) != 3 or not all(parts):
                raise ValueError(
                    "expected bigtable://project/instance/table, got "
                    f"{len(parts)} part(s) after bigtable:// ({'/'.join('…' for _ in parts)})"
                )
            return v
        if not sep or scheme not in ("redis", "rediss", "unix"):
            # the URL itself is never echoed: it may hold the password
            shown = f"scheme {scheme!r}" if sep and scheme.isalnum() else "no scheme"
            raise ValueError(
                "expected redis://host:port/db, rediss://, unix:// or "
                f"bigtable://project/instance/table, got {shown}"
            )
        return v


class Source(_Model):
    """One source database and the tables captured from it."""

    kind: SourceKind
    engine: Engine
    dsn: str = Field(
        description="connection URL, e.g. postgresql://user@host:5432/db; use ${VAR} for secrets"
    )
    tables: list[TableSpec] = Field(default_factory=list)
    snapshot: SnapshotMode = "initial"
    on_position_lost: Literal["stop", "resnapshot"] = Field(
        default="stop",
        description="when the source can no longer serve our position (slot dropped or "
        "recreated, binlog purged): stop and say why, or record the loss window, take a new "
        "snapshot and go on (engine pgoutput); either way `cdc reconcile --repair` closes it",
    )
    slot: str | None = Field(
        default=None, description="PostgreSQL replication slot (default cdc_<source>)"
    )
    publication: str | None = Field(
        default=None, description="PostgreSQL publication (default cdc_<source>)"
    )
    server_id: int | None = Field(
        default=None,
        ge=1,
        le=2**32 - 1,
        description="MySQL replica server id for the binlog reader (default: derived from the "
        "source name); unique among the server's replicas",
    )
    gtid: bool = Field(
        default=False,
        description="engine binlog: resume by GTID (MariaDB GTID state, MySQL gtid_mode=ON) "
        "instead of binlog file/position",
    )
    debezium: dict[str, str] | None = Field(
        default=None, description="extra Debezium connector properties, passed through verbatim"
    )
    sla: Sla | None = Field(default=None, description="the default sla: of the source's tables")
    checks: Checks | None = Field(
        default=None, description="the default checks: of the source's tables (per check)"
    )
    datastream: DatastreamSpec | None = Field(
        default=None, description="engine: datastream only: the stream's project, region, bucket"
    )
    online: OnlineStore | None = Field(
        default=None, description="keep these tables' live rows in Redis (overrides the top level)"
    )

    @model_validator(mode="after")
    def _engine_fits_kind(self) -> Source:
        allowed = ENGINES_BY_KIND[self.kind]
        if self.engine not in allowed:
            raise ValueError(
                f"engine {self.engine!r} cannot read a {self.kind} source; expected one of {list(allowed)}"
            )
        if (self.gtid or self.server_id is not None) and self.engine != "binlog":
            raise ValueError(
                f"gtid and server_id apply to engine: binlog only (engine is {self.engine!r})"
            )
        if self.on_position_lost == "resnapshot" and self.engine != "pgoutput":
            raise ValueError(
                f"on_position_lost: resnapshot is built for engine: pgoutput only (engine is "
                f"{self.engine!r}); keep the default (stop) and re-snapshot by hand"
            )
        if self.datastream is not None:
            if self.engine != "datastream":
                raise ValueError(
                    f"a datastream: section only applies to engine: datastream (engine is {self.engine!r})"
                )
            if self.datastream.cdc_method is not None and self.kind != "mysql":
                raise ValueError("datastream.cdc_method applies to MySQL sources only")
        seen: set[str] = set()
        for t in self.tables:
            if t.name in seen:
                raise ValueError(f"table {t.name!r} is registered twice")
            seen.add(t.name)
        return self

    @field_validator("slot", "publication")
    @classmethod
    def _pg_name(cls, v: str | None) -> str | None:
        if v is not None and not _NAME_RE.match(v):
            raise ValueError(f"expected lower-case letters, digits and _ (max 63), got {v!r}")
        return v


class Registry(_Model):
    """The whole ``cdc.yaml``."""

    changelog: str = "./.cdc/changelog"
    warehouse: str = "duckdb:///.cdc/warehouse.duckdb"
    state_dir: str = "./.cdc"
    sources: dict[str, Source] = Field(default_factory=dict)
    pubsub: PubSubSettings | None = Field(
        default=None, description="where the capture publishes (Pub/Sub); optional"
    )
    pii_policy_tags: dict[PiiPolicy, str] | None = Field(
        default=None,
        description="BigQuery policy tag for every column under pii: hash (or mask), unless the "
        "table's policy_tags names another",
    )
    online: OnlineStore | None = Field(
        default=None, description="keep the live rows of tables in Redis (Memorystore)"
    )
    pii_key_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="the environment variable holding the key pii: hashes with (default "
        "CDC_PII_KEY); the key itself never goes in this file",
    )

    @field_validator("pii_policy_tags")
    @classmethod
    def _kind_tags(cls, v: dict[PiiPolicy, str] | None) -> dict[PiiPolicy, str] | None:
        for kind, tag in (v or {}).items():
            if kind == "drop":
                raise ValueError("a dropped column is never stored: it takes no policy tag")
            if not isinstance(tag, str) or not _POLICY_TAG_RE.match(tag):
                raise ValueError(
                    f"policy tag of pii {kind}: expected projects/PROJECT/locations/LOCATION/"
                    f"taxonomies/TAXONOMY/policyTags/TAG, got {tag!r}"
                )
        return v

    def pii_tables(self) -> list[str]:
        """Ids of the tables with ``pii:`` columns."""
        return [table_id(name, t) for name, s in self.sources.items() for t in s.tables if t.pii]

    @field_validator("sources")
    @classmethod
    def _source_names(cls, v: dict[str, Source]) -> dict[str, Source]:
        for name in v:
            if not _NAME_RE.match(name):
                raise ValueError(
                    f"source name {name!r} must be lower-case letters, digits and _ (it names slots and topics)"
                )
        return v

    @field_validator("warehouse")
    @classmethod
    def _warehouse_url(cls, v: str) -> str:
        if not (v.startswith("duckdb://") or v.startswith("bigquery://")):
            raise ValueError(
                f"expected duckdb:///path.duckdb or bigquery://project/dataset, got {v!r}"
            )
        return v

    @model_validator(mode="after")
    def _state_tables_unique(self) -> Registry:
        owners: dict[str, str] = {}
        for source_name, source in self.sources.items():
            for t in source.tables:
                tid = table_id(source_name, t)
                name = state_table_name(source_name, t)
                if name in owners:
                    raise ValueError(
                        f"tables {owners[name]} and {tid} would both use state table {name!r}; "
                        "set `state_table:` on one of them"
                    )
                owners[name] = tid
        return self

    @model_validator(mode="after")
    def _pubsub_names_valid(self) -> Registry:
        layout = self.pubsub_layout()
        if layout is not None:
            try:
                layout.check()
            except ValueError as exc:
                raise ValueError(f"pubsub: {exc} (check topic_prefix, subscription)") from None
        return self

    def pubsub_layout(self) -> PubSubLayout | None:
        """Topic and subscription names of the published tables, when ``pubsub:`` is set.

        Tables of ``engine: datastream`` sources are not published: Datastream writes files to GCS.
        """
        if self.pubsub is None:
            return None
        published = [t.id for t in self.tables() if t.source.engine != "datastream"]
        with_transactions = [
            name
            for name, s in self.sources.items()
            if s.kind == "postgres" and s.engine == "debezium" and s.tables
        ]
        return PubSubLayout(self.pubsub, published, with_transactions)

    def online_for(self, table: RegisteredTable) -> OnlineStore | None:
        """The online store that keeps ``table``: its source's ``online:``, else the top level's,
        when its ``tables`` list names it (or is absent)."""
        for store in (table.source.online, self.online):
            if store is None:
                continue
            if store.tables is None or table.id in store.tables or table.spec.name in store.tables:
                return store
            if store is table.source.online:
                return None  # the source's own section decides for its tables
        return None

    @model_validator(mode="after")
    def _online_tables_known(self) -> Registry:
        known = {t.id for t in self.tables()}
        for where, store, names in [
            ("online", self.online, known),
            *[
                (
                    f"sources.{n}.online",
                    s.online,
                    {table_id(n, t) for t in s.tables} | {t.name for t in s.tables},
                )
                for n, s in self.sources.items()
            ],
        ]:
            unknown = [t for t in (store.tables or []) if t not in names] if store else []
            if unknown:
                raise ValueError(f"{where}.tables: {unknown} are not registered tables")
        return self

    def tables(self) -> list[RegisteredTable]:
        return [
            RegisteredTable(
                source_name=s_name,
                source=s,
                spec=t,
                pii_key_env=self.pii_key_env,
                pii_policy_tags=self.pii_policy_tags,
            )
            for s_name, s in self.sources.items()
            for t in s.tables
        ]

    def table(self, ref: str) -> RegisteredTable:
        """Find a table by id (billing.public.subscriptions), state table name, or unique schema.table."""
        tables = self.tables()
        for t in tables:
            if ref in (t.id, t.state_table):
                return t
        matches = [t for t in tables if t.spec.name == ref or t.spec.table_name == ref]
        if len(matches) == 1:
            return matches[0]
        from state_models.errors import ConfigError

        if len(matches) > 1:
            raise ConfigError(f"table {ref!r} is ambiguous: {', '.join(t.id for t in matches)}")
        known = [t.id for t in tables]
        import difflib

        close = difflib.get_close_matches(ref, known + [t.state_table for t in tables], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"no registered table {ref!r}{hint} (registered: {', '.join(known) or 'none'})"
        )


def column_problems(registry: Registry) -> list[tuple[tuple[str | int, ...], str]]:
    """What is wrong with the declared columns of every table, each with its place in the file
    (``("sources", "billing", "tables", 0, "columns", "NAME")``): names no state table can hold
    (empty, ours, twins in case), and type names the source does not have (with "did you mean")."""
    out: list[tuple[tuple[str | int, ...], str]] = []
    for source_name, source in registry.sources.items():
        for index, table in enumerate(source.tables):
            for bad in unholdable_columns(table, table.columns or table.rename or {}):
                if bad.fix is None:
                    where = ("sources", source_name, "tables", index, "rename", bad.name)
                    out.append((where, bad.why))
                else:
                    where = ("sources", source_name, "tables", index, "columns", bad.name)
                    hint = f"; keep it under another name: {bad.rename_entry()}"
                    out.append((where, bad.why + hint))
            for name, type_name in (table.columns or {}).items():
                where = ("sources", source_name, "tables", index, "columns", name)
                try:
                    map_source_type(type_name, source.kind)
                except UnknownTypeError as exc:
                    out.append((where, str(exc)))
    return out


def suggest_rename(name: str, others: Iterable[str]) -> str:
    """A name a state table can hold for column ``name`` beside ``others`` (``NAME`` -> ``name_2``
    beside ``name``)."""
    taken = {o.lower() for o in others}
    base = re.sub(r"\W", "_", name.lower()).strip("_") or "column"
    candidate, n = base, 1
    while candidate in taken or column_name_problem(candidate, ()) is not None:
        n += 1
        candidate = f"{base}_{n}"
    return candidate


@dataclass(frozen=True)
class Unholdable:
    """A source column a state table cannot hold under the name it would give it."""

    name: str
    why: str
    fix: str | None  # a name to keep it under, for a column not renamed yet

    def rename_entry(self) -> str:
        """The registry entry that keeps the column: ``rename: {"NAME": name_2}``."""
        return f"rename: {{{json.dumps(self.name)}: {self.fix}}}"


def unholdable_columns(spec: TableSpec, names: Iterable[str]) -> list[Unholdable]:
    """The columns of ``names`` (the source's, in its order) that the state table cannot hold,
    each with why and, unless the registry renames it already, a name to keep it under. Of two
    names a warehouse holds as one (``name``, ``NAME``), the one renamed in the registry, else the
    first, keeps its name; the other is reported."""
    names = list(names)
    renames = spec.rename or {}
    taken = [spec.state_column(n) for n in names]
    held: dict[str, str] = {}  # lower-cased state name -> the source column holding it
    out: list[Unholdable] = []
    for name in sorted(names, key=lambda n: n not in renames):  # stable: renamed ones first
        stored = spec.state_column(name)
        why = column_name_problem(stored, ())
        if why is not None and stored != name:
            why = f"{name!r} is renamed {stored!r}, but {why}"
        other = held.get(stored.lower())
        if why is None and other is not None:
            mine = repr(name) if stored == name else f"{name!r} (renamed {stored!r})"
            theirs = (
                repr(other) if other not in renames else f"{other!r} (renamed {renames[other]!r})"
            )
            why = (
                f"columns {mine} and {theirs} differ only in case; a warehouse holds them as one"
                if stored != spec.state_column(other)
                else f"columns {mine} and {theirs} would be one column"
            )
        if why is None:
            held[stored.lower()] = name
            continue
        fix = None if name in renames else suggest_rename(name, taken)
        taken.append(fix or stored)
        out.append(Unholdable(name, why, fix))
    return out


@dataclass(frozen=True)
class RegisteredTable:
    """A table with the source it belongs to: what most commands work on. A plain dataclass: its
    parts are validated already, and validating the source again for each of its tables made
    loading a registry quadratic in its tables."""

    source_name: str
    source: Source
    spec: TableSpec
    pii_key_env: str | None = None  # the registry's: where this table's pii: key comes from
    pii_policy_tags: Mapping[PiiPolicy, str] | None = None  # the registry's: kind -> policy tag

    def policy_tags(self) -> dict[str, str]:
        """Source column -> BigQuery policy tag: the table's own, else its pii: kind's."""
        by_kind = self.pii_policy_tags or {}
        tags = {c: by_kind[p] for c, p in (self.spec.pii or {}).items() if p in by_kind}
        tags.update(self.spec.policy_tags or {})
        return tags

    @property
    def id(self) -> str:
        return table_id(self.source_name, self.spec)

    @property
    def sla(self) -> Sla | None:
        """The table's own ``sla:``, else its source's."""
        return self.spec.sla or self.source.sla

    @property
    def checks(self) -> Checks:
        """The table's ``checks:``, each check its own else its source's."""
        own, default = self.spec.checks or Checks(), self.source.checks or Checks()
        return Checks(
            volume=own.volume or default.volume,
            schema_drift=own.schema_drift or default.schema_drift,
        )

    @property
    def state_table(self) -> str:
        return state_table_name(self.source_name, self.spec)

    @property
    def primary_key(self) -> list[str] | None:
        return self.spec.primary_key


def table_id(source_name: str, spec: TableSpec) -> str:
    return f"{source_name}.{spec.name}"


def state_table_name(source_name: str, spec: TableSpec) -> str:
    """Default state table: ``<source>_<table>`` (``billing_subscriptions``)."""
    return spec.state_table or f"{source_name}_{spec.table_name}".lower()


def default_slot(source_name: str, source: Source) -> str:
    """The PostgreSQL replication slot a source's capture uses: ``slot:``, else ``cdc_<source>``."""
    return source.slot or f"cdc_{source_name}"


def default_publication(source_name: str, source: Source) -> str:
    """The publication a source's capture reads: ``publication:``, else ``cdc_<source>``."""
    return source.publication or f"cdc_{source_name}"


def table_infos(registry: Registry, source_name: str) -> list[TableInfo]:
    """What the decoders need to know about each table of one source."""
    source = registry.sources[source_name]
    return [
        TableInfo(
            id=table_id(source_name, t),
            primary_key=tuple(t.primary_key) if t.primary_key else None,
            columns=dict(t.columns) if t.columns else None,
            base64_decimals=(source.debezium or {}).get("decimal.handling.mode") == "precise",
            pii=table_policy(registry, source, t),
        )
        for t in source.tables
    ]


def table_policy(registry: Registry, source: Source, spec: TableSpec) -> TablePolicy | None:
    """A table's ``pii:`` policy, or None."""
    if not spec.pii:
        return None
    return TablePolicy(columns=dict(spec.pii), kind=source.kind, key_env=registry.pii_key_env)


def unresolved_variables(value: str) -> list[str]:
    """Names of ``${VAR}`` references left in a value because the variable was not set."""
    return [m.group(1) for m in ENV_VAR_RE.finditer(value)]

"""Provision Google Datastream from the registry: two connection profiles and one stream per source.

``plan_for`` turns a registered ``engine: datastream`` source into the resources it needs;
``DatastreamProvisioner`` compares them with what exists (``diff``), creates or updates them with
an update mask naming exactly the fields that differ (``apply``, waiting on each long-running
operation) and reports a stream's state, its errors and the newest file it wrote (``status``).
Validation failures come back from the API inside the operation's metadata; they are reported as
plain sentences, one per failed check.

The client talks to ``datastream.googleapis.com`` with Application Default Credentials, or to
``$DATASTREAM_EMULATOR_HOST`` (host:port, plain gRPC, no credentials) for tests and stand-ins.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from google.api_core import exceptions as gexc
from google.cloud import datastream_v1 as ds
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message

from state_models.errors import CdcError, ConfigError, TransientError
from state_models.registry import Source

EMULATOR_ENV = "DATASTREAM_EMULATOR_HOST"
DEFAULT_TIMEOUT_S = 900.0
_DEFAULT_PORTS = {"mysql": 3306, "postgres": 5432}
_SECRET_PATHS = ("mysql_profile.password", "postgresql_profile.password")
#: Fields the API fills in or that we never manage; a difference there is not a change.
_UNMANAGED = frozenset(
    {"name", "create_time", "update_time", "state", "errors", "last_recovery_time"}
    | {"satisfies_pzs", "satisfies_pzi", *_SECRET_PATHS}
)
LABELS = {"managed-by": "cdc-history"}
#: Messages replaced as a whole: the table lists (a table added or dropped rewrites the list), times.
_WHOLE = frozenset({"include_objects", "exclude_objects", "file_rotation_interval", "ssl_config"})


class DatastreamApiError(CdcError):
    """The Datastream API refused or failed a request; the message says why in plain words."""


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Resource:
    kind: Literal["connection profile", "stream"]
    id: str
    name: str  # projects/P/locations/L/<collection>/<id>
    desired: Any  # ds.ConnectionProfile | ds.Stream


@dataclass(frozen=True)
class DatastreamPlan:
    """What one source needs in Datastream, in creation order (profiles before the stream)."""

    source_name: str
    kind: str
    parent: str
    source_profile: Resource
    destination_profile: Resource
    stream: Resource
    bucket: str
    path: str  # folder in the bucket the stream writes to, no leading slash

    @property
    def resources(self) -> list[Resource]:
        return [self.source_profile, self.destination_profile, self.stream]


def plan_for(source_name: str, source: Source) -> DatastreamPlan:
    """The connection profiles and stream a registered ``engine: datastream`` source needs."""
    spec = source.datastream
    if source.engine != "datastream" or spec is None:
        raise ConfigError(
            f"source {source_name!r} is not provisioned by Datastream: set `engine: datastream` and "
            "a `datastream:` section (project, location, bucket) in the registry"
        )
    if not source.tables:
        raise ConfigError(f"source {source_name!r} has no registered tables to stream")
    parent = f"projects/{spec.project}/locations/{spec.location}"
    src_id = spec.source_profile or f"cdc-{_dash(source_name)}-source"
    dst_id = spec.destination_profile or f"cdc-{_dash(source_name)}-gcs"
    stream_id = spec.stream or f"cdc-{_dash(source_name)}"
    labels = {**LABELS, "cdc-source": _dash(source_name)}

    source_profile = ds.ConnectionProfile(
        display_name=f"cdc {source_name}: {source.kind} source",
        labels=labels,
        **_database_profile(source_name, source),
    )
    if spec.private_connection:
        source_profile.private_connectivity = ds.PrivateConnectivity(
            private_connection=f"{parent}/privateConnections/{spec.private_connection}"
        )
    else:
        source_profile.static_service_ip_connectivity = ds.StaticServiceIpConnectivity()

    root = "/" + spec.prefix if spec.prefix else "/"
    destination_profile = ds.ConnectionProfile(
        display_name=f"cdc {source_name}: gs://{spec.bucket}{root}",
        labels=labels,
        gcs_profile=ds.GcsProfile(bucket=spec.bucket, root_path=root),
    )

    gcs = ds.GcsDestinationConfig(path=f"/{source_name}")
    if spec.format == "avro":
        gcs.avro_file_format = ds.AvroFileFormat()
    else:
        gcs.json_file_format = ds.JsonFileFormat(
            schema_file_format=ds.JsonFileFormat.SchemaFileFormat.NO_SCHEMA_FILE,
            compression=ds.JsonFileFormat.JsonCompression.GZIP,
        )
    if spec.file_rotation_mb:
        gcs.file_rotation_mb = spec.file_rotation_mb
    if spec.file_rotation_interval_s:
        gcs.file_rotation_interval = dt.timedelta(seconds=spec.file_rotation_interval_s)

    stream = ds.Stream(
        display_name=f"cdc {source_name}",
        labels=labels,
        source_config=ds.SourceConfig(
            source_connection_profile=f"{parent}/connectionProfiles/{src_id}",
            **_source_config(source_name, source),
        ),
        destination_config=ds.DestinationConfig(
            destination_connection_profile=f"{parent}/connectionProfiles/{dst_id}",
            gcs_destination_config=gcs,
        ),
    )
    if source.snapshot == "initial":
        stream.backfill_all = ds.Stream.BackfillAllStrategy()
    else:
        stream.backfill_none = ds.Stream.BackfillNoneStrategy()

    def resource(kind: Any, rid: str, collection: str, desired: Any) -> Resource:
        return Resource(kind, rid, f"{parent}/{collection}/{rid}", desired)

    return DatastreamPlan(
        source_name=source_name,
        kind=source.kind,
        parent=parent,
        source_profile=resource("connection profile", src_id, "connectionProfiles", source_profile),
        destination_profile=resource(
            "connection profile", dst_id, "connectionProfiles", destination_profile
        ),
        stream=resource("stream", stream_id, "streams", stream),
        bucket=spec.bucket,
        path=spec.folder(source_name),
    )


def _dash(name: str) -> str:
    return name.replace("_", "-")


def _database_profile(source_name: str, source: Source) -> dict[str, Any]:
    url = urlsplit(source.dsn)
    if "${" in source.dsn:
        raise ConfigError(
            f"source {source_name!r}: dsn still has an unset ${{VAR}}; export it before planning"
        )
    if not url.hostname or not url.username:
        raise ConfigError(
            f"source {source_name!r}: dsn must name the user and host Datastream connects to "
            f"(e.g. {source.kind}://cdc:${{PASSWORD}}@10.0.0.5/db), got {_masked_dsn(source.dsn)!r}"
        )
    common = {
        "hostname": url.hostname,
        "port": url.port or _DEFAULT_PORTS[source.kind],
        "username": unquote(url.username),
        "password": unquote(url.password or ""),
    }
    if source.kind == "mysql":
        return {"mysql_profile": ds.MysqlProfile(**common)}
    database = url.path.lstrip("/")
    if not database:
        raise ConfigError(f"source {source_name!r}: a PostgreSQL dsn must name the database")
    return {"postgresql_profile": ds.PostgresqlProfile(database=database, **common)}


def _masked_dsn(dsn: str) -> str:
    url = urlsplit(dsn)
    if url.password:
        return dsn.replace(f":{url.password}@", ":****@", 1)
    return dsn


def _dropped(source: Source) -> dict[str, dict[str, list[str]]]:
    """schema -> table -> the columns under ``pii: drop``: Datastream writes its own files, so a
    dropped column is left out of the stream itself (its ``exclude_objects``)."""
    out: dict[str, dict[str, list[str]]] = {}
    for t in sorted(source.tables, key=lambda t: (t.schema_name, t.table_name)):
        columns = sorted(c for c, p in (t.pii or {}).items() if p == "drop")
        if columns:
            out.setdefault(t.schema_name, {})[t.table_name] = columns
    return out


def _source_config(source_name: str, source: Source) -> dict[str, Any]:
    by_schema: dict[str, list[str]] = {}
    for t in sorted(source.tables, key=lambda t: (t.schema_name, t.table_name)):
        by_schema.setdefault(t.schema_name, []).append(t.table_name)
    dropped = _dropped(source)
    if source.kind == "mysql":
        config = ds.MysqlSourceConfig(
            include_objects=ds.MysqlRdbms(
                mysql_databases=[
                    ds.MysqlDatabase(database=db, mysql_tables=[ds.MysqlTable(table=t) for t in ts])
                    for db, ts in by_schema.items()
                ]
            )
        )
        if dropped:
            config.exclude_objects = ds.MysqlRdbms(
                mysql_databases=[
                    ds.MysqlDatabase(
                        database=db,
                        mysql_tables=[
                            ds.MysqlTable(
                                table=t, mysql_columns=[ds.MysqlColumn(column=c) for c in cs]
                            )
                            for t, cs in tables.items()
                        ],
                    )
                    for db, tables in dropped.items()
                ]
            )
        spec = source.datastream
        if spec is not None and spec.cdc_method == "gtid":
            config.gtid = ds.MysqlSourceConfig.Gtid()
        else:
            config.binary_log_position = ds.MysqlSourceConfig.BinaryLogPosition()
        return {"mysql_source_config": config}
    pg = ds.PostgresqlSourceConfig(
        include_objects=ds.PostgresqlRdbms(
            postgresql_schemas=[
                ds.PostgresqlSchema(
                    schema=schema, postgresql_tables=[ds.PostgresqlTable(table=t) for t in ts]
                )
                for schema, ts in by_schema.items()
            ]
        ),
        replication_slot=source.slot or f"cdc_{source_name}",
        publication=source.publication or f"cdc_{source_name}",
    )
    if dropped:
        pg.exclude_objects = ds.PostgresqlRdbms(
            postgresql_schemas=[
                ds.PostgresqlSchema(
                    schema=schema,
                    postgresql_tables=[
                        ds.PostgresqlTable(
                            table=t, postgresql_columns=[ds.PostgresqlColumn(column=c) for c in cs]
                        )
                        for t, cs in tables.items()
                    ],
                )
                for schema, tables in dropped.items()
            ]
        )
    return {"postgresql_source_config": pg}


# --------------------------------------------------------------------------- comparing


@dataclass(frozen=True)
class Action:
    """What ``apply`` does to one resource."""

    resource: Resource
    verb: Literal["create", "update", "unchanged", "unknown"]
    update_mask: tuple[str, ...] = ()
    existing: Any = None


def changed_paths(desired: Any, existing: Any, *, ignore: Iterable[str] = _UNMANAGED) -> list[str]:
    """Update-mask paths of the managed fields where ``desired`` and ``existing`` differ.

    Messages are compared field by field (so the mask names the deepest field that changed, e.g.
    ``source_config.mysql_source_config.include_objects``); lists and maps are compared whole.
    A oneof switched to another member (Avro to JSON, backfill all to none) names the new member.
    """
    skip = frozenset(ignore)
    return _changed(type(desired).pb(desired), type(existing).pb(existing), "", skip)


def _changed(desired: Message, existing: Message, prefix: str, skip: frozenset[str]) -> list[str]:
    paths: list[str] = []
    for fd, value in desired.ListFields():
        path = prefix + fd.name
        if path in skip:
            continue
        ours = getattr(existing, fd.name)
        if _is_singular_message(fd) and fd.name not in _WHOLE:
            if existing.HasField(fd.name):
                paths += _changed(value, ours, path + ".", skip)
            else:
                paths.append(path)
        elif _is_map(fd):
            if dict(value) != dict(ours):
                paths.append(path)
        elif _is_repeated(fd):
            if list(value) != list(ours):
                paths.append(path)
        elif value != ours or (_is_singular_message(fd) and not existing.HasField(fd.name)):
            paths.append(path)
    return paths


def _is_repeated(fd: Any) -> bool:
    # protobuf 6 deprecates FieldDescriptor.label in favour of is_repeated
    flag = getattr(fd, "is_repeated", None)
    if flag is None:
        return bool(fd.label == pb_descriptor.FieldDescriptor.LABEL_REPEATED)
    return bool(flag)


def _is_singular_message(fd: Any) -> bool:
    return fd.type == pb_descriptor.FieldDescriptor.TYPE_MESSAGE and not _is_repeated(fd)


def _is_map(fd: Any) -> bool:
    return bool(
        fd.type == pb_descriptor.FieldDescriptor.TYPE_MESSAGE
        and fd.message_type.GetOptions().map_entry
    )


# --------------------------------------------------------------------------- talking to the API


def make_client(endpoint: str | None = None) -> ds.DatastreamClient:
    """A Datastream client: the stand-in at ``endpoint``/``$DATASTREAM_EMULATOR_HOST``, else ADC."""
    endpoint = endpoint or os.environ.get(EMULATOR_ENV)
    if endpoint:
        import grpc
        from google.auth.credentials import AnonymousCredentials
        from google.cloud.datastream_v1.services.datastream.transports import (
            DatastreamGrpcTransport,
        )

        transport = DatastreamGrpcTransport(
            channel=grpc.insecure_channel(endpoint), credentials=AnonymousCredentials()
        )
        return ds.DatastreamClient(transport=transport)
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        credentials, _ = google.auth.default(
            scopes=["https://www.googleapis.com/auth/cloud-platform"]
        )
    except DefaultCredentialsError as exc:
        raise ConfigError(
            "no Google credentials to reach Datastream: run `gcloud auth application-default "
            "login`, or set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file "
            f"(or {EMULATOR_ENV}=host:port for a stand-in server)"
        ) from exc
    return ds.DatastreamClient(credentials=credentials)


@dataclass
class StreamStatus:
    stream: str
    state: str
    errors: list[str] = field(default_factory=list)
    newest_file: str | None = None
    newest_file_time: dt.datetime | None = None
    newest_file_error: str | None = None  # why the bucket could not be listed


#: (bucket, prefix) -> newest (object name, updated time) under that prefix, or None
NewestFileFinder = Callable[[str, str], tuple[str, dt.datetime] | None]


class DatastreamProvisioner:
    """Creates or updates a plan's resources through one Datastream client."""

    def __init__(
        self,
        client: ds.DatastreamClient,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        log: Callable[[str], None] = lambda _msg: None,
    ):
        self.client = client
        self.timeout = timeout
        self.log = log

    def diff(self, plan: DatastreamPlan) -> list[Action]:
        """Create, update (with the mask) or leave alone, for each resource of the plan."""
        return [self._action(r) for r in plan.resources]

    def _action(self, resource: Resource) -> Action:
        try:
            existing = self._call(
                "read",
                resource,
                self.client.get_stream
                if resource.kind == "stream"
                else self.client.get_connection_profile,
                name=resource.name,
            )
        except _NotFound:
            return Action(resource, "create")
        mask = tuple(changed_paths(resource.desired, existing))
        return Action(resource, "update" if mask else "unchanged", mask, existing)

    def apply(
        self, plan: DatastreamPlan, *, update_secrets: bool = False, start: bool = False
    ) -> list[Action]:
        """Bring the project in line with the plan; returns what was done, in order."""
        done = []
        for action in self.diff(plan):
            r = action.resource
            mask = list(action.update_mask)
            if update_secrets and action.verb != "create" and r.kind == "connection profile":
                mask += [p for p in _SECRET_PATHS if p.split(".")[0] in _set_fields(r.desired)]
            if action.verb == "create":
                self._create(r)
            elif mask:
                self._update(r, mask)
                action = Action(r, "update", tuple(mask), action.existing)
            done.append(action)
        if start:
            self.start(plan)
        return done

    def start(self, plan: DatastreamPlan) -> None:
        """Start (or resume) the stream."""
        stream = ds.Stream(name=plan.stream.name, state=ds.Stream.State.RUNNING)
        self.log(f"starting stream {plan.stream.id}")
        op = self._call(
            "start",
            plan.stream,
            self.client.update_stream,
            stream=stream,
            update_mask=field_mask_pb2.FieldMask(paths=["state"]),
        )
        self._wait("start", plan.stream, op)

    def status(self, plan: DatastreamPlan, newest_file: NewestFileFinder | None) -> StreamStatus:
        """The stream's state, its errors, and the newest file under its folder."""
        try:
            stream = self._call("read", plan.stream, self.client.get_stream, name=plan.stream.name)
        except _NotFound:
            return StreamStatus(plan.stream.id, "NOT_CREATED")
        errors = [_error_text(e) for e in stream.errors]
        out = StreamStatus(plan.stream.id, ds.Stream.State(stream.state).name, errors)
        if newest_file is not None:
            try:
                found = newest_file(plan.bucket, plan.path + "/")
            except gexc.GoogleAPICallError as exc:
                out.newest_file_error = (
                    f"cannot list gs://{plan.bucket}/{plan.path}/: {exc.message}"
                )
                return out
            if found:
                out.newest_file, out.newest_file_time = f"gs://{plan.bucket}/{found[0]}", found[1]
        return out

    # ----------------------------------------------------------------- requests

    def _create(self, r: Resource) -> None:
        self.log(f"creating {r.kind} {r.id}")
        parent = r.name.rsplit("/", 2)[0]
        if r.kind == "stream":
            op = self._call(
                "create",
                r,
                self.client.create_stream,
                parent=parent,
                stream_id=r.id,
                stream=r.desired,
            )
        else:
            op = self._call(
                "create",
                r,
                self.client.create_connection_profile,
                parent=parent,
                connection_profile_id=r.id,
                connection_profile=r.desired,
            )
        self._wait("create", r, op)

    def _update(self, r: Resource, mask: list[str]) -> None:
        self.log(f"updating {r.kind} {r.id}: {', '.join(mask)}")
        desired = type(r.desired)(r.desired)
        desired.name = r.name
        field_mask = field_mask_pb2.FieldMask(paths=mask)
        if r.kind == "stream":
            op = self._call(
                "update", r, self.client.update_stream, stream=desired, update_mask=field_mask
            )
        else:
            op = self._call(
                "update",
                r,
                self.client.update_connection_profile,
                connection_profile=desired,
                update_mask=field_mask,
            )
        self._wait("update", r, op)

    def _call(self, verb: str, r: Resource, method: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return method(**kwargs, timeout=60.0)
        except gexc.NotFound as exc:
            if verb == "read":
                raise _NotFound() from exc
            raise DatastreamApiError(_api_error_text(verb, r, exc)) from exc
        except (gexc.ServiceUnavailable, gexc.DeadlineExceeded) as exc:
            raise TransientError(_api_error_text(verb, r, exc)) from exc
        except gexc.GoogleAPICallError as exc:
            raise DatastreamApiError(_api_error_text(verb, r, exc)) from exc

    def _wait(self, verb: str, r: Resource, op: Any) -> None:
        try:
            op.result(timeout=self.timeout)
        except gexc.GoogleAPICallError as exc:
            raise DatastreamApiError(
                _api_error_text(verb, r, exc) + _validation_text(op.metadata)
            ) from exc
        except TimeoutError as exc:  # concurrent.futures.TimeoutError is this on 3.11
            raise TransientError(
                f"{verb} {r.kind} {r.id}: still running after {self.timeout:.0f} s "
                f"(operation {op.operation.name}); run the command again to see the result"
            ) from exc


class _NotFound(Exception):
    pass


def _set_fields(message: Any) -> set[str]:
    return {fd.name for fd, _ in type(message).pb(message).ListFields()}


def _api_error_text(verb: str, r: Resource, exc: gexc.GoogleAPICallError) -> str:
    text = f"{verb} {r.kind} {r.id} failed: {exc.message or exc}"
    if isinstance(exc, gexc.PermissionDenied | gexc.Forbidden):
        text += " (the credentials need the Datastream Admin role on the project)"
    elif isinstance(exc, gexc.Unauthenticated):
        text += " (the credentials were refused; run `gcloud auth application-default login`)"
    return text


def _validation_text(metadata: Any) -> str:
    """The failed checks of a create/update, one line each, as the API reported them."""
    result = getattr(metadata, "validation_result", None)
    failed = [
        v
        for v in (result.validations if result else [])
        if v.state in (ds.Validation.State.FAILED, ds.Validation.State.WARNING)
    ]
    if not failed:
        return ""
    lines = []
    for v in failed:
        label = "failed" if v.state == ds.Validation.State.FAILED else "warning"
        details = "; ".join(m.message for m in v.message if m.message)
        line = f"\n  - {label}: {v.description or v.code}"
        lines.append(line + (f": {details}" if details else ""))
    return "\nDatastream's checks:" + "".join(lines)


def _error_text(error: Any) -> str:
    when = error.error_time.isoformat() if error.error_time else "?"
    return f"{when} {error.reason or 'error'}: {error.message}"


def newest_gcs_file(client: Any) -> NewestFileFinder:
    """A finder over a ``google.cloud.storage`` client.

    Datastream writes ``<path>/<object>/<yyyy>/<mm>/<dd>/<hh>/<mm>/<file>``; following the greatest
    folder name at each level finds each object's newest files without listing the whole history.
    """

    def newest(bucket_name: str, prefix: str) -> tuple[str, dt.datetime] | None:
        bucket = client.bucket(bucket_name)
        best: tuple[str, dt.datetime] | None = None
        for obj in _folders(bucket, prefix):
            found = _newest_under(bucket, obj)
            if found and (best is None or found[1] > best[1]):
                best = found
        return best

    return newest


def _folders(bucket: Any, prefix: str) -> list[str]:
    blobs = bucket.list_blobs(prefix=prefix, delimiter="/")
    list(blobs)  # the prefixes are filled in once the listing is consumed
    return sorted(blobs.prefixes)


def _newest_under(bucket: Any, prefix: str) -> tuple[str, dt.datetime] | None:
    blobs = list(bucket.list_blobs(prefix=prefix, delimiter="/"))
    if blobs:
        newest = max(blobs, key=lambda b: b.updated)
        return newest.name, newest.updated
    sub = _folders(bucket, prefix)
    for folder in reversed(sub):  # the greatest date folder first; empty ones are skipped
        found = _newest_under(bucket, folder)
        if found:
            return found
    return None

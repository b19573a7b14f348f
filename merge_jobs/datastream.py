"""The streaming job's Datastream input: new files Datastream wrote -> change events.

::

    GCS notifications (Pub/Sub) ─ ReadFromPubSub ─ NotifiedFiles ─┐
    a file pattern ─ MatchContinuously (polls) ─ path ─────────────┴─ Flatten ─ ReadDatastreamFiles
        ─ OnlyOnce (a file announced again within a day is dropped) ─ ReadFile (decode)
            ├─ events, keyed by table ─ MergeIntoWarehouse (the same merge as every other input)
            └─ dead letters (undecodable records with file and offset, announced files gone)

Datastream's files are the raw changelog of their source (``connectors.changelog.datastream``
reads them for replays), so these events are merged but not copied into the Parquet changelog.

Idempotent: a file announced twice (a notification redelivered, the same object finalised again,
a pattern matching it again) is read once within ``dedupe_hours``; past that, or when the job
restarts, it is read again and the MERGE, keyed by (key, seq), changes nothing. On Dataflow,
notifications are acknowledged once the bundle that read the file committed, so a crash re-reads,
never loses (the DirectRunner acknowledges as it pulls).

The notification is GCS's Pub/Sub notification (``gcloud storage buckets notifications create
gs://BUCKET --topic=T --event-types=OBJECT_FINALIZE``): its attributes name the bucket and object
(``bucketId``, ``objectId``) and its JSON_API_V1 payload the object resource (``bucket``, ``name``).
Notifications for objects outside every Datastream source's folder (the bucket may hold other
things) and events other than ``OBJECT_FINALIZE`` are counted and ignored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io import fileio
from apache_beam.io.gcp.pubsub import ReadFromPubSub
from apache_beam.metrics import Metrics
from apache_beam.transforms.deduplicate import Deduplicate
from apache_beam.utils.timestamp import Duration, Timestamp

from connectors.changelog.datastream import FILE_SUFFIXES
from connectors.changelog.storage import StorageError
from connectors.datastream_files import read_datastream_file
from connectors.deadletter import NewDeadLetter
from merge_jobs.settings import DatastreamSource
from merge_jobs.transforms import DEAD_LETTERS, EVENTS, NAMESPACE, RetryPolicy
from state_models.errors import DecodeError, TerminalError
from state_models.events import ChangeEvent
from state_models.tables import TableInfo, TableResolver, resolver_for

FINALIZE = "OBJECT_FINALIZE"
DEFAULT_DEDUPE_HOURS = 24
DEFAULT_POLL_S = 60.0


def source_of(url: str, sources: Sequence[DatastreamSource]) -> DatastreamSource | None:
    """The Datastream source whose folder holds ``url`` (the deepest folder, if they nest)."""
    owners = [s for s in sources if url.startswith(s.root.rstrip("/") + "/")]
    return max(owners, key=lambda s: len(s.root), default=None)


def check_pattern(pattern: str, sources: Sequence[DatastreamSource]) -> None:
    """Raise ``ValueError`` unless the files ``pattern`` matches can belong to a Datastream source."""
    fixed = pattern.split("*", 1)[0].split("?", 1)[0].split("[", 1)[0]
    for s in sources:
        root = s.root.rstrip("/") + "/"
        if fixed.startswith(root) or root.startswith(fixed):
            return
    folders = ", ".join(s.root for s in sources) or "none (no engine: datastream source)"
    raise ValueError(
        f"file pattern {pattern!r} is outside every Datastream source's folder ({folders})"
    )


class _NotifiedFileFn(beam.DoFn):
    """A GCS object notification -> ``gs://bucket/name`` of a finalised object, or a dead letter."""

    def __init__(self, sources: Sequence[DatastreamSource]):
        self._sources = list(sources)
        self._ignored = Metrics.counter(NAMESPACE, "datastream_notifications_ignored")
        self._rejected = Metrics.counter(NAMESPACE, "dead_letters")

    def process(self, message: Any) -> Iterator[Any]:
        attributes = dict(message.attributes or {})
        if attributes.get("eventType", FINALIZE) != FINALIZE:
            self._ignored.inc()
            return
        try:
            bucket, name = _object_of(message.data, attributes)
        except DecodeError as exc:
            self._rejected.inc()
            yield pvalue.TaggedOutput(
                DEAD_LETTERS,
                NewDeadLetter.from_error(
                    exc,
                    raw=bytes(message.data or b""),
                    context={
                        "stage": "datastream notification",
                        "message_id": getattr(message, "message_id", None),
                        "attributes": attributes,
                    },
                ),
            )
            return
        url = f"gs://{bucket}/{name}"
        if source_of(url, self._sources) is None or not name.endswith(FILE_SUFFIXES):
            self._ignored.inc()
            return
        yield url


def _object_of(data: bytes | None, attributes: dict[str, str]) -> tuple[str, str]:
    if attributes.get("bucketId") and attributes.get("objectId"):
        return attributes["bucketId"], attributes["objectId"]
    try:
        doc = json.loads(data or b"")
    except ValueError as exc:
        raise DecodeError(f"GCS notification payload is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not doc.get("bucket") or not doc.get("name"):
        raise DecodeError(
            "GCS notification names no object (expected attributes bucketId/objectId or a "
            "JSON_API_V1 payload with bucket and name)"
        )
    return str(doc["bucket"]), str(doc["name"])


class _ReadFileFn(beam.DoFn):
    """A Datastream file's URL -> its events keyed by table, and dead letters."""

    def __init__(
        self, sources: Sequence[DatastreamSource], tables: Sequence[TableInfo], retry: RetryPolicy
    ):
        self._sources = list(sources)
        self._tables = list(tables)
        self._retry = retry
        self._files = Metrics.counter(NAMESPACE, "datastream_files_read")
        self._decoded = Metrics.counter(NAMESPACE, "events_decoded")
        self._ignored = Metrics.counter(NAMESPACE, "datastream_files_ignored")
        self._rejected = Metrics.counter(NAMESPACE, "dead_letters")
        self._retries = Metrics.counter(NAMESPACE, "transient_retries")

    def setup(self) -> None:
        self._resolvers: dict[str, TableResolver] = {
            s.name: resolver_for(self._tables, s.name) for s in self._sources
        }

    def process(self, url: str) -> Iterator[Any]:
        source = source_of(url, self._sources)
        if source is None:
            self._ignored.inc()
            return
        try:
            batch = self._retry.run(
                f"reading {url}", lambda: self._read(url, source), self._retries.inc
            )
        except TerminalError as exc:
            self._rejected.inc()
            letter = NewDeadLetter.from_error(
                exc, source=source.name, context={"stage": "datastream file", "file": url}
            )
            yield pvalue.TaggedOutput(DEAD_LETTERS, letter)
            return
        self._files.inc()
        self._decoded.inc(len(batch.events))
        self._rejected.inc(len(batch.rejected))
        for r in batch.rejected:
            yield pvalue.TaggedOutput(DEAD_LETTERS, r.dead_letter(source.name))
        for e in batch.events:
            yield e.table, e

    def _read(self, url: str, source: DatastreamSource) -> Any:
        resolve = self._resolvers[source.name]
        try:
            return read_datastream_file(url, resolve, kind=source.kind)
        except FileNotFoundError:
            raise DecodeError(f"{url} was announced but does not exist (deleted since?)") from None
        except (OSError, TimeoutError) as exc:
            raise StorageError(f"cannot read {url}: {exc}") from exc
        except Exception as exc:  # gcsfs/aiohttp errors share no base class with OSError
            if type(exc).__module__.split(".")[0] in ("gcsfs", "aiohttp", "google", "requests"):
                raise StorageError(f"cannot read {url}: {exc}") from exc
            raise


class ReadDatastreamFiles(beam.PTransform):
    """File URLs -> (``events`` keyed by table, ``dead_letters``); each file read once a day."""

    def __init__(
        self,
        sources: Sequence[DatastreamSource],
        tables: Sequence[TableInfo],
        *,
        dedupe_hours: float = DEFAULT_DEDUPE_HOURS,
        retry: RetryPolicy | None = None,
    ):
        super().__init__()
        self._sources = list(sources)
        self._tables = list(tables)
        self._dedupe = Duration(seconds=int(dedupe_hours * 3600))
        self._retry = retry or RetryPolicy()

    def expand(self, urls: Any) -> Any:
        read = beam.ParDo(_ReadFileFn(self._sources, self._tables, self._retry))
        return (
            urls
            | "OnlyOnce" >> Deduplicate(processing_time_duration=self._dedupe)
            | "ReadFile"
            >> read.with_output_types(tuple[str, ChangeEvent]).with_outputs(
                DEAD_LETTERS, main=EVENTS
            )
        )


class NotifiedFiles(beam.PTransform):
    """GCS notifications on a subscription -> (URLs of new Datastream files, dead letters)."""

    def __init__(self, subscription: str, sources: Sequence[DatastreamSource]):
        super().__init__()
        self._subscription = subscription
        self._sources = list(sources)

    def expand(self, pbegin: Any) -> Any:
        files = (
            pbegin
            | "Read" >> ReadFromPubSub(subscription=self._subscription, with_attributes=True)
            | "ToFile"
            >> beam.ParDo(_NotifiedFileFn(self._sources)).with_outputs(DEAD_LETTERS, main="files")
        )
        return files.files, files[DEAD_LETTERS]


class WatchedFiles(beam.PTransform):
    """Files matching ``pattern``, polled every ``poll_s`` seconds -> their URLs, each once.

    Beam's ``MatchContinuously`` keeps the paths it has seen as state, one entry per file
    (notifications scale better). It polls until ``until`` (a ``Timestamp``; forever by default).
    Its polling is a splittable DoFn that the Python DirectRunner cannot run in streaming mode
    next to stateful steps (the merge's batching); Dataflow and Beam's local FnApiRunner can.
    """

    def __init__(self, pattern: str, poll_s: float = DEFAULT_POLL_S, until: Any = None):
        super().__init__()
        self._pattern = pattern
        self._poll_s = poll_s
        self._until = until

    def expand(self, pbegin: Any) -> Any:
        bounds = (
            {}
            if self._until is None
            else {"start_timestamp": Timestamp.now(), "stop_timestamp": self._until}
        )
        return (
            pbegin
            | "Match" >> fileio.MatchContinuously(self._pattern, interval=self._poll_s, **bounds)
            | "Path" >> beam.Map(lambda meta: meta.path).with_output_types(str)
        )

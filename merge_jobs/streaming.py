"""The streaming merge job: Pub/Sub -> raw changelog + SCD2 state tables (+ dead letters).

::

    ReadFromPubSub (each subscription, with attributes) ─ Flatten ─ DecodeMessages
        ├─ events ─ WriteChangelog       (fixed windows per table -> immutable Parquet files)
        ├─ events ─┬─ MergeIntoWarehouse (per-table micro-batches -> one MERGE each)
        │          │
    Datastream files (GCS notifications or a polled pattern) ─ ReadDatastreamFiles
        │          └─ events (their files are the changelog already: not copied)
        └─ dead letters (decode, changelog, merge) ─ StoreDeadLetters (store + dead-letter topic)
    ReadFromPubSub (each PostgreSQL source's Debezium transaction topic) ─ DecodeTransactionEnds
        ─ KeepWatermark (the source's watermark in cdc_progress: merge_jobs/watermark.py)

Delivery is at least once end to end on Dataflow: Pub/Sub redelivers what was not acknowledged,
and Dataflow acknowledges a message only after the bundle that read it committed. (Beam's Python
DirectRunner acknowledges what it pulled at once, so a local job killed mid-bundle can lose those
messages; the README's DirectRunner caveats say so: local runs are for development.) Duplicates are
harmless because the MERGE is idempotent per (key, ``_seq``) and the changelog is deduplicated by
``event_id`` on read, so the state tables end up exactly as if every change arrived once.

Run it with ``cdc job streaming`` (or ``python -m merge_jobs.streaming``, the same options).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.io.gcp.pubsub import ReadFromPubSub

from connectors.warehouse import Warehouse
from merge_jobs import direct_runner
from merge_jobs.datastream import (
    DEFAULT_POLL_S,
    NotifiedFiles,
    ReadDatastreamFiles,
    WatchedFiles,
    check_pattern,
)
from merge_jobs.settings import JobSettings
from merge_jobs.transforms import (
    DEAD_LETTERS,
    EVENTS,
    DecodeMessages,
    MergeIntoWarehouse,
    StoreDeadLetters,
    WarehouseConnector,
    WriteChangelog,
)
from merge_jobs.watermark import (
    DEFAULT_ASK_AFTER_S,
    DEFAULT_EVERY_S,
    ENDS,
    DecodeTransactionEnds,
    KeepWatermark,
)


@dataclass
class StreamingOutputs:
    """The job's PCollections, for tests and for callers that add steps."""

    events: Any
    changelog_files: Any
    merge_reports: Any
    dead_letters: Any
    #: (source, watermark cut) each time a source's watermark moves (with transaction_subscriptions)
    watermarks: Any = None


def build_streaming(
    pipeline: beam.Pipeline,
    settings: JobSettings,
    subscriptions: Sequence[str],
    *,
    datastream_notifications: Sequence[str] = (),
    datastream_files: Sequence[str] = (),
    datastream_poll_s: float = DEFAULT_POLL_S,
    datastream_poll_until: Any = None,
    warehouse: Callable[[], Warehouse] | None = None,
    publisher: Callable[[], Any] | None = None,
    transaction_subscriptions: Mapping[str, str] | None = None,
    watermark_every_s: float = DEFAULT_EVERY_S,
    watermark_ask_after_s: float = DEFAULT_ASK_AFTER_S,
) -> StreamingOutputs:
    """Add the streaming merge job's steps to ``pipeline`` (which must run in streaming mode).

    ``subscriptions`` carry Debezium messages; ``datastream_notifications`` (subscriptions of GCS
    notifications) and ``datastream_files`` (file patterns, polled) bring the files of the
    registry's ``engine: datastream`` sources (``merge_jobs.datastream``); the patterns are polled
    every ``datastream_poll_s`` seconds, until ``datastream_poll_until`` (a Beam ``Timestamp``) if
    given. ``transaction_subscriptions`` (source -> the subscription of its Debezium transaction
    topic) make the job keep those sources' watermarks (``merge_jobs.watermark``), walked every
    ``watermark_every_s`` seconds while transactions wait, asking the state tables after
    ``watermark_ask_after_s`` seconds without a move.
    """
    if not (subscriptions or datastream_notifications or datastream_files):
        raise ValueError(
            "nothing to read: pass --subscription (or add a pubsub: section to the registry and "
            "run `cdc pubsub setup`), --datastream-notifications or --datastream-files"
        )
    # On the DirectRunner only: bundles of up to 1,000 messages instead of 10.
    direct_runner.install(pipeline)
    merge_inputs, letters = [], []
    changelog_files = None
    if subscriptions:
        reads = [
            pipeline
            | f"Read {_short(sub)}" >> ReadFromPubSub(subscription=sub, with_attributes=True)
            for sub in subscriptions
        ]
        messages = reads[0] if len(reads) == 1 else reads | "Messages" >> beam.Flatten()
        decoded = messages | "Decode" >> DecodeMessages(settings.tables)
        changelog_files, changelog_rejects = decoded.events | "Changelog" >> WriteChangelog(
            settings.changelog_root,
            window_s=settings.changelog_window_s,
            storage_options=settings.storage_options,
        )
        merge_inputs.append(decoded.events)
        letters += [decoded.dead_letters, changelog_rejects]
    if datastream_notifications or datastream_files:
        merge_inputs.append(
            _datastream_events(
                pipeline,
                settings,
                datastream_notifications,
                datastream_files,
                (datastream_poll_s, datastream_poll_until),
                letters,
            )
        )
    events = (
        merge_inputs[0] if len(merge_inputs) == 1 else merge_inputs | "AllEvents" >> beam.Flatten()
    )
    connect = warehouse or WarehouseConnector(settings.warehouse_url)
    merged = events | "Merge" >> MergeIntoWarehouse(
        connect,
        settings.table_defs,
        batch_size=settings.batch_size,
        max_latency_s=settings.batch_max_latency_s,
        # The DirectRunner's bundles are micro-batches already; its state and timers are slow.
        per_bundle=direct_runner.runs_on(pipeline),
        online=settings.online,
        notify_applied=sorted(transaction_subscriptions or ()),
    )
    reports, merge_rejects = merged[0], merged[1]
    watermarks = None
    if transaction_subscriptions:
        ends = []
        for source, sub in sorted(transaction_subscriptions.items()):
            decoded_ends = (
                pipeline
                | f"Read {_short(sub)}" >> ReadFromPubSub(subscription=sub, with_attributes=True)
                | f"Transactions {source}" >> DecodeTransactionEnds(source)
            )
            ends.append(decoded_ends[ENDS])
            letters.append(decoded_ends[DEAD_LETTERS])
        walked = (*ends, merged[2]) | "EndsAndApplied" >> beam.Flatten()
        watermarks = walked | "Watermark" >> KeepWatermark(
            connect,
            settings.table_defs,
            every_s=watermark_every_s,
            ask_after_s=watermark_ask_after_s,
            dead_letters=settings.dead_letter_folder,
        )
    all_letters = (*letters, merge_rejects) | "AllDeadLetters" >> beam.Flatten()
    _ = all_letters | "DeadLetters" >> StoreDeadLetters(
        settings.dead_letter_folder, settings.dead_letter_topic, publisher, settings.sealing
    )
    return StreamingOutputs(events, changelog_files, reports, all_letters, watermarks)


def _datastream_events(
    pipeline: beam.Pipeline,
    settings: JobSettings,
    notifications: Sequence[str],
    patterns: Sequence[str],
    polling: tuple[float, Any],
    letters: list[Any],
) -> Any:
    """The events of new Datastream files, keyed by table; their dead letters join ``letters``."""
    if not settings.datastream:
        raise ValueError(
            "Datastream input given, but the registry has no engine: datastream source"
        )
    for pattern in patterns:
        check_pattern(pattern, settings.datastream)
    urls = []
    for sub in notifications:
        files, rejects = pipeline | f"Notifications {_short(sub)}" >> NotifiedFiles(
            sub, settings.datastream
        )
        urls.append(files)
        letters.append(rejects)
    for n, pattern in enumerate(patterns):
        urls.append(pipeline | f"Watch {n}" >> WatchedFiles(pattern, *polling))
    all_urls = urls[0] if len(urls) == 1 else urls | "DatastreamFiles" >> beam.Flatten()
    read = all_urls | "Datastream" >> ReadDatastreamFiles(settings.datastream, settings.tables)
    letters.append(read[DEAD_LETTERS])
    return read[EVENTS]


def _short(subscription: str) -> str:
    """``projects/p/subscriptions/cdc.billing.public.t.merge`` -> ``cdc.billing.public.t.merge``."""
    return subscription.rsplit("/", 1)[-1]


if __name__ == "__main__":
    # The module's command line is `cdc job streaming`'s: one option parser, one composition root.
    from cdc.cli import main

    sys.exit(main(["job", "streaming", *sys.argv[1:]]))

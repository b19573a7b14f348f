"""The streaming merge job: Pub/Sub -> raw changelog + SCD2 state tables (+ dead letters).

::

    ReadFromPubSub (each subscription, with attributes) ─ Flatten ─ DecodeMessages
        ├─ events ─ WriteChangelog       (fixed windows per table -> immutable Parquet files)
        ├─ events ─ MergeIntoWarehouse   (per-table micro-batches -> one MERGE each)
        └─ dead letters (decode, changelog, merge) ─ StoreDeadLetters (store + dead-letter topic)

Delivery is at least once end to end: Pub/Sub redelivers what was not acknowledged, and the
runner acknowledges a message only after the bundle that read it committed. Duplicates are
harmless because the MERGE is idempotent per (key, ``_seq``) and the changelog is deduplicated by
``event_id`` on read, so the state tables end up exactly as if every change arrived once.

Run it with ``cdc job streaming`` (or ``python -m merge_jobs.streaming``, the same options).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.io.gcp.pubsub import ReadFromPubSub

from connectors.warehouse import Warehouse
from merge_jobs.settings import JobSettings
from merge_jobs.transforms import (
    DecodeMessages,
    MergeIntoWarehouse,
    StoreDeadLetters,
    WarehouseConnector,
    WriteChangelog,
)


@dataclass
class StreamingOutputs:
    """The job's PCollections, for tests and for callers that add steps."""

    events: Any
    changelog_files: Any
    merge_reports: Any
    dead_letters: Any


def build_streaming(
    pipeline: beam.Pipeline,
    settings: JobSettings,
    subscriptions: Sequence[str],
    *,
    warehouse: Callable[[], Warehouse] | None = None,
    publisher: Callable[[], Any] | None = None,
) -> StreamingOutputs:
    """Add the streaming merge job's steps to ``pipeline`` (which must run in streaming mode)."""
    if not subscriptions:
        raise ValueError(
            "no Pub/Sub subscription to read: pass --subscription, or add a pubsub: section to the "
            "registry and run `cdc pubsub setup`"
        )
    reads = [
        pipeline | f"Read {_short(sub)}" >> ReadFromPubSub(subscription=sub, with_attributes=True)
        for sub in subscriptions
    ]
    messages = reads[0] if len(reads) == 1 else reads | "Messages" >> beam.Flatten()
    decoded = messages | "Decode" >> DecodeMessages(settings.tables)
    files, changelog_rejects = decoded.events | "Changelog" >> WriteChangelog(
        settings.changelog_root,
        window_s=settings.changelog_window_s,
        storage_options=settings.storage_options,
    )
    reports, merge_rejects = decoded.events | "Merge" >> MergeIntoWarehouse(
        warehouse or WarehouseConnector(settings.warehouse_url),
        settings.table_defs,
        batch_size=settings.batch_size,
        max_latency_s=settings.batch_max_latency_s,
    )
    letters = (
        decoded.dead_letters,
        changelog_rejects,
        merge_rejects,
    ) | "AllDeadLetters" >> beam.Flatten()
    _ = letters | "DeadLetters" >> StoreDeadLetters(
        settings.dead_letter_folder, settings.dead_letter_topic, publisher
    )
    return StreamingOutputs(decoded.events, files, reports, letters)


def _short(subscription: str) -> str:
    """``projects/p/subscriptions/cdc.billing.public.t.merge`` -> ``cdc.billing.public.t.merge``."""
    return subscription.rsplit("/", 1)[-1]


if __name__ == "__main__":
    # The module's command line is `cdc job streaming`'s: one option parser, one composition root.
    from cdc.cli import main

    sys.exit(main(["job", "streaming", *sys.argv[1:]]))

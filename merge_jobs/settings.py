"""What a merge job needs to know, decided before the pipeline is built.

Everything here is pickled into the pipeline's steps, so workers (Dataflow) never read the
registry file: the tables' keys and declared types travel with the job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from connectors.deadletter import Sealing
from state_models.registry import OnlineStore, Registry, table_infos
from state_models.scd2 import TableDef
from state_models.tables import TableInfo

DEFAULT_BATCH_SIZE = 5000
DEFAULT_BATCH_MAX_LATENCY_S = 1.0
DEFAULT_CHANGELOG_WINDOW_S = 60.0


@dataclass(frozen=True)
class DatastreamSource:
    """An ``engine: datastream`` source: where its files are, and how to decode them."""

    name: str
    kind: Literal["mysql", "postgres"]
    root: str  # gs://<bucket>/<prefix>/<source>, or the registry's datastream.output


@dataclass(frozen=True)
class JobSettings:
    """The registered tables and where a merge job reads, writes and dead-letters."""

    tables: tuple[TableInfo, ...]
    table_defs: Mapping[str, TableDef]
    warehouse_url: str
    changelog_root: str
    dead_letter_folder: str
    dead_letter_topic: str | None = None  # projects/<p>/topics/<t>
    sealing: Sealing | None = None  # dead letters of tables with pii: are sealed
    batch_size: int = DEFAULT_BATCH_SIZE
    batch_max_latency_s: float = DEFAULT_BATCH_MAX_LATENCY_S
    changelog_window_s: float = DEFAULT_CHANGELOG_WINDOW_S
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    datastream: tuple[DatastreamSource, ...] = ()
    #: table id -> the registry's online store that keeps it (``online:``)
    online: Mapping[str, OnlineStore] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if self.batch_max_latency_s <= 0:
            raise ValueError(
                f"batch max latency must be positive seconds, got {self.batch_max_latency_s}"
            )
        if self.changelog_window_s <= 0:
            raise ValueError(
                f"changelog window must be positive seconds, got {self.changelog_window_s}"
            )


def registered_tables(registry: Registry) -> tuple[tuple[TableInfo, ...], dict[str, TableDef]]:
    """The decoder's and the warehouse's view of every registered table."""
    infos = tuple(info for name in registry.sources for info in table_infos(registry, name))
    defs = {t.id: TableDef.from_registered(t) for t in registry.tables()}
    return infos, defs


def online_stores(registry: Registry) -> dict[str, OnlineStore]:
    """Each table an ``online:`` store keeps -> that store."""
    stores = {t.id: registry.online_for(t) for t in registry.tables()}
    return {table_id: store for table_id, store in stores.items() if store is not None}


def subscriptions_of(registry: Registry) -> list[str]:
    """The merge job's subscriptions (full paths) from the registry's ``pubsub:`` section."""
    layout = registry.pubsub_layout()
    if layout is None:
        return []
    return [layout.subscription_path(layout.subscription(topic)) for topic in layout.topics()]


def transaction_subscriptions_of(registry: Registry) -> dict[str, str]:
    """source -> the merge job's subscription of its transaction topic (full path)."""
    layout = registry.pubsub_layout()
    if layout is None:
        return {}
    return {
        source: layout.subscription_path(layout.subscription(topic))
        for source, topic in layout.transaction_topics().items()
    }


def dead_letter_topic_of(registry: Registry) -> str | None:
    layout = registry.pubsub_layout()
    return None if layout is None else layout.topic_path(layout.dead_letter_topic)

"""Which online store an ``online:`` section names: Redis (``connectors.online``) or Bigtable
(``connectors.online_bigtable``), behind ``OnlineBackend``."""

from __future__ import annotations

from connectors.online import OnlineBackend, RedisOnline
from state_models.registry import OnlineStore


def open_online(store: OnlineStore, *, where: str = "online") -> OnlineBackend:
    """The store ``online.url`` names: ``bigtable://...`` or Redis."""
    if store.url.startswith("bigtable://"):
        from connectors.online_bigtable import BigtableOnline

        return BigtableOnline(store)
    return RedisOnline(store, where=where)

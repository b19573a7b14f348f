"""The online store in Bigtable, through the official client (``google-cloud-bigtable``).

The same rows, keys and fence as the Redis store (``connectors.online``): one Bigtable row per key
at ``<key_prefix><table id>:<canonical key JSON>``, a cell per business column (its JSON text) and
``_seq``. The fence is one ``CheckAndMutateRow`` per row (atomic in Bigtable): its predicate
matches when the row already holds a ``_seq`` cell at or above the new one, and only when it does
not are the row's cells replaced. Live cells go to family ``v``; a delete's tombstone
(``_seq``, ``_deleted``) to family ``t``, whose garbage-collection rule drops it after
``tombstone_ttl_s`` (Bigtable collects within about a week of that age, so a tombstone lives at
least that long). ``ttl_s`` becomes family ``v``'s age rule. The table and its two families are
created on first use when missing (that needs ``bigtable.tables.create``; otherwise create them
yourself with these rules).

``bigtable://PROJECT/INSTANCE/TABLE`` in ``online.url``; ``BIGTABLE_EMULATOR_HOST`` points the
client at the emulator (``gcloud beta emulators bigtable start``, or ``cbtemulator``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from connectors.online import DELETED_FIELD, SEQ_FIELD, OnlineRow
from state_models.errors import TransientError
from state_models.registry import OnlineStore

LIVE = "v"
TOMBSTONES = "t"
WRITERS = 16  # concurrent CheckAndMutateRow calls per batch


def _transient(exc: Exception) -> bool:
    from google.api_core import exceptions

    return isinstance(
        exc,
        exceptions.ServiceUnavailable
        | exceptions.DeadlineExceeded
        | exceptions.InternalServerError
        | exceptions.TooManyRequests
        | exceptions.RetryError,
    )


def _missing(exc: Exception) -> bool:
    from google.api_core import exceptions

    return isinstance(exc, exceptions.NotFound)


class BigtableOnline:
    """One Bigtable table as the online store (see the module doc)."""

    def __init__(self, store: OnlineStore, *, client: Any = None):
        from google.cloud import bigtable

        self.store = store
        project, instance, table = store.url.removeprefix("bigtable://").split("/")
        self.client = client or bigtable.Client(project=project, admin=True)
        self.table = self.client.instance(instance).table(table)
        self._ensured = False
        self._writers: ThreadPoolExecutor | None = None

    def _ensure(self, *, created_is_an_error: bool = True) -> None:
        """Make the table and its families when missing. A table that had to be made means an
        empty store (a new one, or one that came back empty): the write that finds it raises
        ``TransientError`` so its caller refills the store from the state tables (the runtime
        marks the tables stale); ``ping`` and ``cdc online rebuild`` make it without raising."""
        if self._ensured:
            return
        from google.cloud.bigtable import column_family as cf

        def rule(max_age_s: int) -> Any:
            keep_one = cf.MaxVersionsGCRule(1)
            if not max_age_s:
                return keep_one
            age = cf.MaxAgeGCRule(dt.timedelta(seconds=max_age_s))
            return cf.GCRuleIntersection([keep_one, age])

        try:
            created = not self.table.exists()
            if created:
                self.table.create(
                    column_families={
                        LIVE: rule(self.store.ttl_s),
                        TOMBSTONES: rule(self.store.tombstone_ttl_s),
                    }
                )
        except Exception as exc:
            if _transient(exc):
                raise TransientError(f"Bigtable online store: {exc}") from exc
            raise
        self._ensured = True
        if created and created_is_an_error:
            raise TransientError(
                f"Bigtable online store: table {self.table.table_id} was missing and is now "
                "created empty: the store needs a refill"
            )

    def key(self, table_id: str, key: str) -> str:
        return f"{self.store.key_prefix}{table_id}:{key}"

    def write(self, rows: Sequence[OnlineRow]) -> int:
        """Write each row where it is newer than what Bigtable holds; how many were written.
        ``CheckAndMutateRow`` takes one row, so a batch goes out over ``WRITERS`` concurrent
        calls (two versions of one key racing each other are settled by the fence)."""
        if not rows:
            return 0
        self._ensure()
        try:
            if len(rows) == 1:
                return int(self._write_one(rows[0]))
            return sum(self._pool().map(self._write_one, rows))
        except Exception as exc:
            if _missing(exc):
                # a store that came back empty (an emulator restarted, a table dropped): the
                # table is made again on the next attempt, and the caller refills it
                self._ensured = False
                raise TransientError(f"Bigtable online store: its table is gone: {exc}") from exc
            if _transient(exc):
                raise TransientError(f"Bigtable online store: {exc}") from exc
            raise

    def _write_one(self, r: OnlineRow) -> bool:
        from google.cloud.bigtable import row_filters as rf

        seq = r.seq.encode()
        held_newer = rf.RowFilterChain(
            filters=[
                rf.ColumnQualifierRegexFilter(b"^_seq$"),
                rf.ValueRangeFilter(start_value=seq, inclusive_start=True),
            ]
        )
        row = self.table.conditional_row(self.key(r.table_id, r.key).encode(), held_newer)
        row.delete(state=False)
        family = TOMBSTONES if r.deleted else LIVE
        row.set_cell(family, SEQ_FIELD.encode(), seq, state=False)
        if r.deleted:
            row.set_cell(family, DELETED_FIELD.encode(), b"1", state=False)
        for name, value in r.fields.items():
            row.set_cell(family, name.encode(), value.encode(), state=False)
        return not row.commit()  # the predicate did not match: nothing newer was held

    def _pool(self) -> ThreadPoolExecutor:
        if self._writers is None:
            self._writers = ThreadPoolExecutor(WRITERS, thread_name_prefix="bigtable-online")
        return self._writers

    def rows(self, table_id: str) -> Iterator[tuple[str, dict[str, str]]]:
        """(canonical key, fields) of every row and tombstone of a table."""
        from google.cloud.bigtable import row_filters as rf
        from google.cloud.bigtable.row_set import RowSet

        prefix = self.key(table_id, "")
        wanted = RowSet()
        wanted.add_row_range_with_prefix(prefix)
        read = self.table.read_rows(row_set=wanted, filter_=rf.CellsColumnLimitFilter(1))
        try:
            for row in read:
                fields = {
                    qualifier.decode(): cells[0].value.decode()
                    for columns in row.cells.values()
                    for qualifier, cells in columns.items()
                }
                yield row.row_key.decode()[len(prefix) :], fields
        except Exception as exc:
            if not _missing(exc):
                raise
            self._ensured = False  # no table: an empty store

    def delete(self, table_id: str, keys: Sequence[str]) -> None:
        """Remove rows outright (no tombstone): what an operator or an eviction does."""
        for key in keys:
            row = self.table.direct_row(self.key(table_id, key).encode())
            row.delete()
            row.commit()

    def ping(self) -> None:
        """Reach the store; make its table when missing (an empty store, to be refilled)."""
        self._ensured = False
        self._ensure(created_is_an_error=False)

    def close(self) -> None:
        if self._writers is not None:
            self._writers.shutdown(wait=True)
            self._writers = None
        self.client.close()

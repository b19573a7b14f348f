"""The warehouse interface (:class:`Warehouse`) and what an apply returns; ``connectors.warehouse``
re-exports both (the implementations import them from here, not from the package)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from state_models.checks import CheckResult
from state_models.events import ChangeEvent
from state_models.progress import Progress
from state_models.rebuild import Comparison
from state_models.scd2 import Rejected, StateTable, TableDef


@dataclass
class ApplyResult:
    """What one ``apply`` did to one table."""

    table_id: str
    state_table: str
    events: int = 0  # events handed in
    inserted: int = 0  # new version rows
    updated: int = 0  # stored versions whose validity (or carried TOAST value) changed
    deleted: int = 0  # truncate tombstones withdrawn because a late delete came before them
    schema_changes: list[str] = field(default_factory=list)  # e.g. "add column note string"
    rejected: list[Rejected] = field(default_factory=list)  # per-event problems: dead-letter them

    @property
    def duplicates(self) -> int:
        """Events that changed nothing (already applied), as far as the counts tell."""
        return max(0, self.events - len(self.rejected) - self.inserted)


class Warehouse(Protocol):
    """Where state tables live. Implementations: DuckDB, BigQuery (and a fake for unit tests)."""

    url: str
    caps: Any  # state_models.dialects.Capabilities: the dialect its plans render for

    def ensure_table(
        self, table: TableDef, events: Sequence[ChangeEvent] = ()
    ) -> StateTable:  # pragma: no cover - protocol
        """Create the state table (or evolve it for ``events``) and return its shape."""
        ...

    def state_table(self, table: TableDef) -> StateTable | None:  # pragma: no cover - protocol
        """The table's current shape, or None when it does not exist yet."""
        ...

    def apply(
        self, table: TableDef, events: Sequence[ChangeEvent], ingested_at: dt.datetime
    ) -> ApplyResult:  # pragma: no cover - protocol
        """Apply one batch of events of one table: one atomic MERGE. Idempotent and order-free.

        Raises ``SchemaChangeError`` when the whole batch cannot be applied (the registry declares
        a type the table cannot widen to); per-event problems are returned in ``rejected``.
        """
        ...

    def check(self, table: TableDef, *, limit: int = 10) -> list[CheckResult]:  # pragma: no cover
        """The state table's invariants, passed or failed (none when it does not exist)."""
        ...

    def check_bytes(
        self, table: TableDef, *, limit: int = 10
    ) -> dict[str, int | None]:  # pragma: no cover
        """Per invariant, the bytes its query would read (BigQuery's dry run), without running."""
        ...

    def record_checks(
        self, results: Sequence[CheckResult], at: dt.datetime
    ) -> None:  # pragma: no cover
        """Append check results to the warehouse's ``cdc_check_results``."""
        ...

    def last_record(self, table_id: str, check: str) -> str | None:  # pragma: no cover
        """The ``detail`` the last recorded result of one check of one table kept."""
        ...

    def names(self, state_table: str) -> Any:  # pragma: no cover - protocol
        """Where a state table and its companions live (``state_models.plans.TableNames``)."""
        ...

    def query(self, plan: Any) -> list[dict[str, Any]]:  # pragma: no cover - protocol
        """Run a read-only sqlglot plan, rendered for this warehouse."""
        ...

    def record_progress(
        self, rows: Sequence[Progress], at: dt.datetime
    ) -> None:  # pragma: no cover
        """Upsert ``cdc_progress`` rows (``state_models.progress``): how far each table applied."""
        ...

    def current_versions(
        self, table: TableDef, keys: Sequence[Mapping[str, Any]] | None = None
    ) -> list[dict[str, Any]]:  # pragma: no cover - protocol
        """Each key's current version, tombstones included (of every key, or of ``keys``)."""
        ...

    def ensure_consistency(
        self, source: str, tables: Sequence[TableDef]
    ) -> bool:  # pragma: no cover - protocol
        """(Re-)make the source's consistent as-of view and functions; whether it has tables."""
        ...

    def progress(self) -> list[dict[str, Any]]:  # pragma: no cover - protocol
        """The ``cdc_progress`` rows, one per (source, table)."""
        ...

    def truncates(self, table: TableDef) -> list[dict[str, Any]]:  # pragma: no cover - protocol
        """The table's truncate log, one row per truncate."""
        ...

    def history(
        self, table: TableDef, key: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:  # pragma: no cover - protocol
        """Every version, ordered by key then ``_seq`` (optionally only where columns equal ``key``)."""
        ...

    def as_of(
        self, table: TableDef, *, at: dt.datetime | None = None, seq: str | None = None
    ) -> list[dict[str, Any]]:  # pragma: no cover - protocol
        """The live rows at a commit time or a source position."""
        ...

    def current(self, table: TableDef) -> list[dict[str, Any]]:  # pragma: no cover - protocol
        """The live rows now."""
        ...

    def stats(self, table: TableDef) -> dict[str, Any] | None:  # pragma: no cover - protocol
        """``versions``, ``live_rows``, ``last_seq``, ``last_commit``; None if the table is absent."""
        ...

    def drop_state(self, table: TableDef) -> None:  # pragma: no cover - protocol
        """Drop a state table with its companions (truncate log, views); absent is fine."""
        ...

    def replace_state(self, table: TableDef, source: TableDef) -> None:  # pragma: no cover
        """Make ``source``'s state table (a rebuilt shadow) the state table of ``table``."""
        ...

    def compare_states(
        self, table: TableDef, other: TableDef, *, ranges: int = 16, limit: int = 10
    ) -> Comparison:  # pragma: no cover - protocol
        """Row counts and content checksums per key range, and the first differing versions."""
        ...

    def release(self) -> None:  # pragma: no cover - protocol
        """Let other processes at the warehouse until the next statement (DuckDB: close the file)."""
        ...

    def close(self) -> None:  # pragma: no cover - protocol
        ...

"""What decoders and capture engines need to know about a registered table, and how they find it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from state_models.errors import UnknownTableError
from state_models.events import ChangeEvent

if TYPE_CHECKING:  # the policy is handed in; state_models.pii renders with the decoder's module
    from state_models.pii import TablePolicy


@dataclass(frozen=True)
class TableInfo:
    id: str  # source.schema.table
    primary_key: tuple[str, ...] | None = None
    columns: Mapping[str, str] | None = None  # declared source type names
    #: Schemaless messages carry decimals as base64 of the unscaled number (the source's Debezium
    #: is told ``decimal.handling.mode: precise``); otherwise a decimal's text is the number itself.
    base64_decimals: bool = False
    #: the registry's ``pii:`` columns: every decoder protects the events it makes with it
    pii: TablePolicy | None = None

    def protect(self, event: ChangeEvent) -> ChangeEvent:
        return event if self.pii is None else self.pii.protect(event)

    @property
    def source(self) -> str:
        return self.id.split(".", 1)[0]

    @property
    def spec_name(self) -> str:
        """``schema.table`` as the source names it."""
        return ".".join(self.schema_table)

    @property
    def schema_table(self) -> tuple[str, str]:
        _, schema, table = self.id.split(".", 2)
        return schema, table


#: (schema or database, table) -> TableInfo; raises UnknownTableError for an unregistered table.
TableResolver = Callable[[str, str], TableInfo]


def resolver_for(tables: Iterable[TableInfo], source: str) -> TableResolver:
    """Resolve (schema, table) names seen in a source's log to the registered tables of that source."""
    by_name = {t.schema_table: t for t in tables if t.source == source}

    def resolve(schema: str, table: str) -> TableInfo:
        info = by_name.get((schema, table))
        if info is None:
            known = ", ".join(".".join(k) for k in by_name) or "none"
            raise UnknownTableError(
                f"table {schema}.{table} is not registered for source {source!r} (registered: {known})"
            )
        return info

    return resolve

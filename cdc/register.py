"""``cdc register``: add a live table to the registry file, keeping its comments and order."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from connectors.sources import IntrospectedTable, create_engine, introspect_table
from state_models.errors import ConfigError
from state_models.registry import Registry, TableSpec, unholdable_columns


def plan_entry(
    table: IntrospectedTable, key: list[str] | None, renames: dict[str, str] | None = None
) -> CommentedMap:
    """The YAML mapping for a table; refuses a keyless table unless ``key`` names its columns, and
    a column no state table can hold by its name unless ``renames`` gives it another."""
    if key:
        unknown = [c for c in key if c not in table.columns]
        if unknown:
            raise ConfigError(
                f"--key column(s) {unknown} are not columns of {table.name} ({', '.join(table.columns)})"
            )
        primary_key = key
    elif table.primary_key:
        primary_key = table.primary_key
    else:
        raise ConfigError(
            f"{table.name} has no primary key. History is kept per key, so every row needs one that "
            "identifies it. Add one (ALTER TABLE ... ADD PRIMARY KEY) or pass --key COLUMN [COLUMN ...] "
            "naming columns that identify a row."
        )
    renames = renames or {}
    unknown = [c for c in renames if c not in table.columns]
    if unknown:
        raise ConfigError(
            f"--rename column(s) {unknown} are not columns of {table.name} ({', '.join(table.columns)})"
        )
    try:
        spec = TableSpec(name=table.name, columns=table.columns, rename=renames or None)
    except ValidationError as exc:
        raise ConfigError(
            f"--rename: {exc.errors()[0]['msg'].removeprefix('Value error, ')}"
        ) from None
    unholdable = [
        bad.why
        + (f"; keep it under another name: --rename {bad.name}={bad.fix}" if bad.fix else "")
        for bad in unholdable_columns(spec, table.columns)
    ]
    if unholdable:
        raise ConfigError(
            f"{table.name} cannot be registered: {'; '.join(unholdable)}. Or rename the column in "
            "the source (ALTER TABLE ... RENAME COLUMN)"
        )
    entry = CommentedMap()
    entry["name"] = table.name
    entry["primary_key"] = _flow_seq(primary_key)
    columns = CommentedMap(table.columns)
    columns.fa.set_flow_style()
    entry["columns"] = columns
    if renames:
        renamed = CommentedMap(renames)
        renamed.fa.set_flow_style()
        entry["rename"] = renamed
    return entry


def register_table(
    config_file: Path,
    registry: Registry,
    source_name: str,
    qualified: str,
    key: list[str] | None,
    renames: dict[str, str] | None = None,
) -> CommentedMap:
    """Introspect ``qualified`` on the source and append it under ``sources.<source>.tables``."""
    if source_name not in registry.sources:
        import difflib

        close = difflib.get_close_matches(source_name, list(registry.sources), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"no source {source_name!r} in {config_file}{hint} (sources: {', '.join(registry.sources) or 'none'})"
        )
    source = registry.sources[source_name]
    if any(t.name == qualified for t in source.tables):
        raise ConfigError(f"{source_name}.{qualified} is already registered in {config_file}")
    engine = create_engine(source, source_name)
    try:
        table = introspect_table(engine, source_name, qualified)
    finally:
        engine.dispose()
    entry = plan_entry(table, key, renames)

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096
    # the style of examples/cdc.yaml (and of most hand-written YAML): list items indented under their key
    yaml.indent(mapping=2, sequence=4, offset=2)
    doc = yaml.load(config_file.read_text())
    src = doc["sources"][source_name]
    tables = src.get("tables")
    if tables is None:
        tables = CommentedSeq()
        src["tables"] = tables
    tables.append(entry)
    tmp = config_file.with_suffix(config_file.suffix + ".tmp")
    with tmp.open("w") as fh:
        yaml.dump(doc, fh)
    tmp.replace(config_file)
    return entry


def _flow_seq(items: list[str]) -> CommentedSeq:
    seq = CommentedSeq(items)
    seq.fa.set_flow_style()
    return seq

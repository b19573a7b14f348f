"""Several tables as of one transaction: ``cdc as-of --consistent`` and ``cdc history --tx``.

A consistent answer over several tables of a source is their live rows at one cut
(``state_models.watermark``): every transaction before it in full, none after it in part. The
position asked for becomes a cut from the tables' own versions, then is capped at the source's
watermark (``cdc_progress.watermark_seq``), beyond which some table may not have applied a
transaction yet:

- ``--tx X``: through transaction X: the last ``_seq`` of X's versions in the tables asked for;
- ``--seq S``: through the transaction of the change at S when one of the tables holds a version at
  S; otherwise every transaction that lies wholly at or before S (a transaction with changes on
  both sides of S is left out);
- ``--at T``: through the transaction of the last version committed at or before T.

Tables of different sources share no log: only ``--at`` applies, each source cut on its own.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cdc.cli import EXIT_FAILED, EXIT_OK
from cdc.commands.common import LOCK_WAIT_S
from cdc.console import cell_text as _cell
from cdc.console import jsonl_line as _jsonl
from cdc.console import print_table
from state_models.errors import ConfigError
from state_models.plans import plan_last_version, plan_tx_bounds, plan_tx_versions
from state_models.progress import recorded_watermarks
from state_models.scd2 import SEQ, TX_ID, TableDef, render_version
from state_models.watermark import seq_before

#: Debezium names a PostgreSQL transaction ``xid:lsn``; the state tables keep the xid
_DEBEZIUM_PG_TX = re.compile(r"^(\d+):\d+$")


@dataclass
class Cut:
    source: str
    seq: str | None  # None: nothing to show (no version at or before what was asked)
    asked: str | None  # the cut the position asked for, before the cap
    watermark: str | None
    note: str = ""


def tx_ids(text: str, kinds: Sequence[str]) -> list[str]:
    """The transaction id as the state tables keep it (a Debezium ``xid:lsn`` of PostgreSQL is
    its xid)."""
    m = _DEBEZIUM_PG_TX.match(text.strip())
    if m and "postgres" in kinds:
        return [m.group(1), text.strip()]
    return [text.strip()]


def _query(warehouse: Any, tables: Sequence[TableDef], plan_of: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for t in tables:
        state = warehouse.state_table(t)
        if state is None:
            continue
        rows.extend(warehouse.query(plan_of(warehouse.names(state.name))))
    return rows


def _through_tx(warehouse: Any, tables: Sequence[TableDef], ids: Sequence[str]) -> str | None:
    bounds = _query(warehouse, tables, lambda names: plan_tx_bounds(names, ids))
    last = [r["last_seq"] for r in bounds if r.get("last_seq") is not None]
    return max(last) if last else None


def _last(warehouse: Any, tables: Sequence[TableDef], **where: Any) -> dict[str, Any] | None:
    rows = _query(
        warehouse, tables, lambda names: plan_last_version(names, warehouse.caps, **where)
    )
    return max(rows, key=lambda r: r[SEQ]) if rows else None


def asked_cut(
    warehouse: Any,
    tables: Sequence[TableDef],
    *,
    at: dt.datetime | None = None,
    seq: str | None = None,
    tx: str | None = None,
) -> str | None:
    """The cut a position asks for, over ``tables`` (one source; see the module doc)."""
    if tx is not None:
        ids = tx_ids(tx, [t.source_kind for t in tables])
        return _through_tx(warehouse, tables, ids)
    last = _last(warehouse, tables, seq=seq, at=at)
    if last is None:
        return None
    through = _through_tx(warehouse, tables, [last[TX_ID]]) if last[TX_ID] is not None else None
    if through is None:
        return last[SEQ] if seq is None else seq
    if seq is None or through <= seq:
        return through
    # the transaction of the last version before S goes on after S: leave it out
    first = _query(warehouse, tables, lambda names: plan_tx_bounds(names, [last[TX_ID]]))
    starts = [r["first_seq"] for r in first if r.get("first_seq") is not None]
    return seq_before(min(starts))


def cmd_as_of_consistent(args: argparse.Namespace, cfg: Any) -> int:
    from connectors.warehouse import open_warehouse

    tables = [TableDef.from_registered(cfg.registry.table(t)) for t in args.tables]
    by_source: dict[str, list[TableDef]] = {}
    for t in tables:
        by_source.setdefault(t.source, []).append(t)
    if len(by_source) > 1 and args.at is None:
        raise ConfigError(
            f"--consistent over tables of several sources ({', '.join(by_source)}) takes only "
            "--at: their positions (--seq, --tx) belong to different logs"
        )
    warehouse = open_warehouse(cfg.warehouse_url, lock_wait_s=LOCK_WAIT_S)
    try:
        marks = recorded_watermarks(warehouse.progress())
        out: list[tuple[TableDef, Any, list[dict[str, Any]]]] = []
        complete = True
        for source, group in by_source.items():
            mark, held_by = marks.get(source, (None, None))
            # the cut is taken over every table of the source (as the SQL functions take it)
            log = [
                TableDef.from_registered(t)
                for t in cfg.registry.tables()
                if t.source_name == source
            ]
            asked = asked_cut(warehouse, log, at=args.at_time, seq=args.seq, tx=args.tx)
            if asked is None and args.tx is not None:
                complete = False
                _say(
                    f"{source}: transaction {args.tx} wrote no version in "
                    f"{', '.join(t.table_id for t in group)} (not applied yet, or it touched "
                    "none of these tables)"
                )
            cut = asked if mark is None or asked is None else min(asked, mark)
            if mark is None:
                cut = None
                complete = False
                _say(
                    f"{source}: no watermark yet (no transaction of this source is known to be "
                    "applied in every table: is `cdc run` running?)"
                )
            elif asked is not None and asked > mark:
                complete = False
                held = (
                    f"; held by dead letter {held_by} (cdc dead-letters show {held_by})"
                    if held_by
                    else ""
                )
                _say(f"{source}: asked through {asked}, capped at the watermark {mark}{held}")
            _say(f"{source}: as of {cut if cut is not None else 'nothing'}")
            for t in group:
                state = warehouse.state_table(t)
                rows = [] if cut is None or state is None else warehouse.as_of(t, seq=cut)
                out.append((t, state, rows))
    finally:
        warehouse.close()
    _write(out, args.format)
    return EXIT_OK if complete else EXIT_FAILED


def cmd_history_tx(args: argparse.Namespace, cfg: Any) -> int:
    """Every version one transaction wrote, across the registered tables, in log order."""
    from connectors.warehouse import open_warehouse

    names = [args.table] if args.table else [t.id for t in cfg.registry.tables()]
    tables = [TableDef.from_registered(cfg.registry.table(n)) for n in names]
    out = []
    warehouse = open_warehouse(cfg.warehouse_url, lock_wait_s=LOCK_WAIT_S)
    try:
        for t in tables:
            state = warehouse.state_table(t)
            if state is None:
                continue
            ids = tx_ids(args.tx, [t.source_kind])
            rows: list[dict[str, Any]] = []
            for i in ids:
                rows.extend(
                    warehouse.query(
                        plan_tx_versions(state, warehouse.names(state.name), warehouse.caps, i)
                    )
                )
            if rows:
                out.append((t, state, rows))
    finally:
        warehouse.close()
    if not out:
        _say(f"transaction {args.tx}: no version in {', '.join(names)}")
        return EXIT_FAILED
    _write(out, args.format, by_seq=True)
    return EXIT_OK


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _write(
    out: Sequence[tuple[TableDef, Any, list[dict[str, Any]]]], fmt: str, by_seq: bool = False
) -> None:
    rendered: list[tuple[list[str], dict[str, Any]]] = []
    for t, state, rows in out:
        if state is None:
            continue
        columns = ["_table", *[c.name for c in state.all_columns()]]
        rendered.extend((columns, {"_table": t.table_id, **render_version(state, r)}) for r in rows)
    if by_seq:
        rendered.sort(key=lambda cr: cr[1][SEQ])
    if fmt == "jsonl":
        for _, r in rendered:
            print(_jsonl(r))
        return
    if fmt == "csv":
        union: list[str] = []
        for columns, _ in rendered:
            union.extend(c for c in columns if c not in union)
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(union)
        for _, r in rendered:
            writer.writerow([_cell(r.get(c)) for c in union])
        return
    # a table per state table (their columns differ), in the order asked
    blocks: dict[str, tuple[list[str], list[dict[str, str]]]] = {}
    for columns, r in rendered:
        blocks.setdefault(r["_table"], (columns, []))[1].append(
            {c: _cell(r.get(c), None) for c in columns}
        )
    for columns, rows in blocks.values():
        print_table(rows, columns)
    if not rendered:
        _say("no rows")

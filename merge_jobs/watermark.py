"""The streaming job's watermark for PostgreSQL sources captured by Debezium (Server) (issue 18).

Over Pub/Sub a source's changes and its transactions' END records arrive in any order, so the
ordered bookkeeping of ``cdc run`` (``TransactionCuts``) does not apply. With Debezium's
``provide.transaction.metadata`` (``cdc debezium-config`` turns it on), the END record of each
transaction, on the source's transaction topic (``<source>.transaction``), gives the transaction's
commit LSN and how many changes it made in each table, and every change's ``_seq`` starts with the
commit LSN of the transaction before its own: the transactions chain
(``state_models.watermark.TransactionChain``).

::

    ReadFromPubSub (the source's transaction subscription) ─ DecodeTransactionEnds ─ (source, END) ─┐
    MergeIntoWarehouse(notify_applied) ─ APPLIED: (source, (tx_id, seq) of what each MERGE applied) ─┤
        KeepWatermark (state per source: ENDs and applied changes of transactions not yet passed,
        the position) ─ every ``every_s`` while transactions wait: walk the chain, record it

A dead-lettered change is never reported applied, so it holds the watermark before its
transaction. When the walk stands still for a minute (state lost with a DirectRunner restart, so
notices of earlier MERGEs are gone), it asks the state tables themselves (distinct ``_seq`` per
transaction, the truncate log included) about the oldest waiting transactions, backing off to an
hour: on BigQuery such a query reads two columns of each table whole, which polling would pay
every few seconds. After a restart the walk resumes from the watermark in ``cdc_progress``.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.coders import BooleanCoder, PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (
    BagStateSpec,
    ReadModifyWriteStateSpec,
    TimerSpec,
    on_timer,
)
from apache_beam.utils.timestamp import Duration, Timestamp

from connectors.deadletter import DeadLetterStore
from connectors.warehouse import Warehouse
from merge_jobs.pool import POOL
from merge_jobs.transforms import DEAD_LETTERS, NAMESPACE, RetryPolicy, undecoded_letter
from state_models.debezium import decode_transaction_end
from state_models.errors import TerminalError
from state_models.plans import plan_tx_changes
from state_models.progress import Progress, recorded_watermarks
from state_models.scd2 import TableDef
from state_models.watermark import (
    Applied,
    TransactionChain,
    TransactionEnd,
    applied_prev,
    chain_cut,
    chain_position,
)

log = logging.getLogger("cdc.beam.watermark")

ENDS = "ends"
#: how many of the oldest waiting transactions one walk asks the state tables about
MAX_ASKED = 500
#: applied changes kept per source for transactions whose END has not arrived (kept_notices)
MAX_UNMATCHED = 100_000
DEFAULT_EVERY_S = 5.0
#: how long the walk may stand still before it asks the state tables (then twice as long, ...)
DEFAULT_ASK_AFTER_S = 60.0


class _DecodeEndFn(beam.DoFn):
    """A message of one source's transaction topic -> (source, ``TransactionEnd``) | dead letter."""

    def __init__(self, source: str):
        self._source = source
        self._rejected = Metrics.counter(NAMESPACE, "dead_letters")

    def process(self, message: Any) -> Iterator[Any]:
        try:
            end = decode_transaction_end(message.data, self._source)
        except TerminalError as exc:
            self._rejected.inc()
            yield pvalue.TaggedOutput(
                DEAD_LETTERS, undecoded_letter(exc, message, self._source, None)
            )
            return
        if end is not None:  # a BEGIN says nothing the END will not
            yield self._source, ("end", end)


class DecodeTransactionEnds(beam.PTransform):
    """Messages of a source's Debezium transaction topic -> ``ends`` (source, END), ``dead_letters``."""

    def __init__(self, source: str):
        super().__init__()
        self._source = source

    def expand(self, messages: Any) -> Any:
        decode = beam.ParDo(_DecodeEndFn(self._source)).with_output_types(tuple[str, Any])
        return messages | "DecodeEnds" >> decode.with_outputs(DEAD_LETTERS, main=ENDS)


def applied_of(
    warehouse: Warehouse, tables: Iterable[TableDef], ends: Sequence[TransactionEnd]
) -> dict[tuple[str, str], Applied]:
    """What the state tables hold of these transactions: ``(tx_id, table id) -> Applied``."""
    wanted = {table for end in ends for table, _ in end.counts}
    tx_ids = sorted({end.tx_id for end in ends})
    out: dict[tuple[str, str], Applied] = {}
    if not tx_ids:
        return out
    for table in tables:
        if table.table_id not in wanted:
            continue
        state = warehouse.state_table(table)
        if state is None:
            continue
        for row in warehouse.query(plan_tx_changes(warehouse.names(state.name), tx_ids)):
            out[(str(row["_tx_id"]), table.table_id)] = Applied(
                int(row["changes"]), applied_prev(row["first_seq"], int(row["first_sections"]))
            )
    return out


def record_watermark(
    warehouse: Warehouse,
    source: str,
    tables: Iterable[TableDef],
    cut: str,
    writer: str = "beam",
    held_by: str | None = None,
) -> None:
    """``cut`` as the source's watermark in ``cdc_progress`` (forward only), for each of its
    tables, with the dead letter that holds it there, if one is known."""
    rows = [
        Progress(
            source=source,
            table_id=t.table_id,
            state_table=t.state_table,
            writer=writer,
            watermark_seq=cut,
            watermark_held_by=held_by,
        )
        for t in tables
    ]
    if rows:
        warehouse.record_progress(rows, dt.datetime.now(dt.UTC))


def applied_from_notices(notices: Iterable[tuple[str, str, str]]) -> dict[tuple[str, str], Applied]:
    """What the MERGEs said they applied, ``(tx_id, table id, seq)`` each (redeliveries once), as
    :func:`applied_of` reads it from the state tables."""
    seqs: dict[tuple[str, str], set[str]] = {}
    for tx, table, seq in notices:
        seqs.setdefault((tx, table), set()).add(seq)
    return {
        k: Applied(len(v), applied_prev(min(v), len({s.split("/", 1)[0] for s in v})))
        for k, v in seqs.items()
    }


def kept_notices(
    notices: Iterable[tuple[str, str, str]],
    below: str,
    waiting: Iterable[str],
    limit: int = MAX_UNMATCHED,
) -> list[tuple[str, str, str]]:
    """The notices a walk keeps: those of transactions not passed (``seq`` above the cut
    ``below``); of transactions whose END has not arrived (``waiting``: the xids that have one),
    only the newest ``limit``, so a source whose ENDs never come (transaction metadata off) does
    not grow the state without end. Dropping one costs nothing but a later query of the state
    tables, which hold the truth."""
    known = set(waiting)
    live = [n for n in notices if n[2] > below]
    matched = [n for n in live if n[0] in known]
    unmatched = sorted((n for n in live if n[0] not in known), key=lambda n: n[2])
    return matched + unmatched[-limit:] if limit else matched


def _more(a: dict[tuple[str, str], Applied], b: dict[tuple[str, str], Applied]) -> None:
    """Into ``a``, the entries of ``b`` that know of more changes."""
    for k, v in b.items():
        if k not in a or v.changes > a[k].changes:
            a[k] = v


class _KeepWatermarkFn(beam.DoFn):
    """(source, END | what a MERGE applied) -> the source's watermark, walked every ``every_s``
    while transactions wait.

    What is applied comes from the MERGEs themselves (no query); only when the walk has not moved
    for ``ask_after_s`` (state lost with a DirectRunner restart, notices of merges before it) does
    it ask the state tables about the oldest waiting transactions, then again after twice as long,
    up to an hour: on BigQuery each such query reads the ``_tx_id`` and ``_seq`` columns whole."""

    WAITING = BagStateSpec("waiting", PickleCoder())
    POSITION = ReadModifyWriteStateSpec("position", PickleCoder())
    ASK = ReadModifyWriteStateSpec("ask", PickleCoder())  # (not moved since, next ask after)
    ARMED = ReadModifyWriteStateSpec("armed", BooleanCoder())
    TICK = TimerSpec("tick", TimeDomain.REAL_TIME)

    def __init__(
        self,
        warehouse: Callable[[], Warehouse],
        tables: Mapping[str, TableDef],
        every_s: float,
        ask_after_s: float,
        retry: RetryPolicy,
        clock: Callable[[], float] = time.time,
        dead_letters: str | None = None,
    ):
        self._dead_letters = dead_letters  # the store's folder, to name a letter that holds it
        self._connect = warehouse
        self._tables = dict(tables)
        self._every_s = every_s
        self._ask_after_s = ask_after_s
        self._retry = retry
        self._clock = clock
        self._moves = Metrics.counter(NAMESPACE, "watermark_moves")
        self._asks = Metrics.counter(NAMESPACE, "watermark_state_table_queries")
        self._waiting = Metrics.distribution(NAMESPACE, "watermark_waiting_transactions")
        self._retries = Metrics.counter(NAMESPACE, "transient_retries")

    def process(
        self,
        element: tuple[str, tuple[Any, ...]],
        waiting: Any = beam.DoFn.StateParam(WAITING),
        armed: Any = beam.DoFn.StateParam(ARMED),
        tick: Any = beam.DoFn.TimerParam(TICK),
    ) -> Iterable[Any]:
        item = element[1]
        if item[0] == "end":
            waiting.add(item[1])
        else:  # ("applied", table id, ((tx_id, seq), ...))
            for tx, seq in item[2]:
                waiting.add((tx, item[1], seq))
        if not armed.read():  # never pushed back by later input: a busy source still walks
            tick.set(Timestamp.now() + Duration(seconds=self._every_s))
            armed.write(True)
        return ()

    def _holding(self, source: str, tx_id: str) -> str | None:
        """The id of a dead letter of the transaction the walk stands before, if the store holds
        one (a change the merge refused; a message that did not decode names no transaction)."""
        if self._dead_letters is None:
            return None
        held = [
            d.id
            for d in DeadLetterStore(self._dead_letters).list()
            # a message that did not decode may name no source (it came without attributes)
            if d.source in (source, None) and d.context.get("tx_id") == tx_id
        ]
        return min(held) if held else None

    @on_timer(TICK)
    def walk(
        self,
        key: Any = beam.DoFn.KeyParam,
        waiting: Any = beam.DoFn.StateParam(WAITING),
        position: Any = beam.DoFn.StateParam(POSITION),
        ask: Any = beam.DoFn.StateParam(ASK),
        armed: Any = beam.DoFn.StateParam(ARMED),
        tick: Any = beam.DoFn.TimerParam(TICK),
    ) -> Iterator[Any]:
        source = str(key)
        tables = [t for t in self._tables.values() if t.source == source]
        stored = position.read()
        items = list(waiting.read())
        now = self._clock()
        still_since, ask_at = ask.read() or (now, now + self._ask_after_s)

        def step() -> tuple[TransactionChain, bool, bool]:
            warehouse = POOL.acquire(self._connect, self._connect)
            try:
                chain = TransactionChain(
                    stored if stored is not None else _recorded_position(warehouse, source)
                )
                for item in items:
                    if isinstance(item, TransactionEnd):
                        chain.add(item)
                applied = applied_from_notices(i for i in items if isinstance(i, tuple))
                moved = chain.advance(applied)
                asked = False
                if not moved and chain.ends and now >= ask_at:
                    asked = True
                    _more(applied, applied_of(warehouse, tables, chain.pending()[:MAX_ASKED]))
                    moved = chain.advance(applied)
                    if not moved and chain.blocked is not None:
                        held_by = self._holding(source, chain.blocked.tx_id)
                        if held_by is not None:  # name it where `cdc status` looks
                            record_watermark(
                                warehouse,
                                source,
                                tables,
                                chain_cut(chain.position),
                                held_by=held_by,
                            )
                if moved:
                    record_watermark(warehouse, source, tables, chain_cut(chain.position))
                    warehouse.ensure_consistency(source, tables)
            except BaseException:
                POOL.discard(warehouse)  # a connection that failed may be unusable
                raise
            POOL.release(self._connect, warehouse)
            return chain, moved, asked

        chain, moved, asked = self._retry.run(
            f"keeping the watermark of source {source!r}", step, self._retries.inc
        )
        if asked:
            self._asks.inc()
        if moved:
            still_since, ask_at = now, now + self._ask_after_s
        elif asked:  # again after twice as long as it has been stuck, at most an hour
            ask_at = now + min(max(now - still_since, self._ask_after_s), 3600.0)
        ask.write((still_since, ask_at))
        position.write(chain.position)
        below = chain_cut(chain.position)
        waiting.clear()
        for end in chain.pending():
            waiting.add(end)
        notices = [i for i in items if isinstance(i, tuple)]
        for item in kept_notices(notices, below, chain.ends):
            waiting.add(item)
        self._waiting.update(len(chain.ends))
        if chain.ends:
            tick.set(Timestamp.now() + Duration(seconds=self._every_s))
        else:
            armed.write(False)
        if moved:
            self._moves.inc()
            log.info(
                "source %s: watermark through commit %d (%d transactions waiting)",
                source,
                chain.position,
                len(chain.ends),
            )
            yield source, below


def _recorded_position(warehouse: Warehouse, source: str) -> int:
    cut, _ = recorded_watermarks(warehouse.progress()).get(source, (None, None))
    return chain_position(cut)


class KeepWatermark(beam.PTransform):
    """(source, ("end", END)) and the merge's ``APPLIED`` output -> (source, watermark cut) each
    time a source's watermark moves."""

    def __init__(
        self,
        warehouse: Callable[[], Warehouse],
        tables: Mapping[str, TableDef],
        every_s: float = DEFAULT_EVERY_S,
        ask_after_s: float = DEFAULT_ASK_AFTER_S,
        retry: RetryPolicy | None = None,
        dead_letters: str | None = None,
    ):
        super().__init__()
        self._fn = _KeepWatermarkFn(
            warehouse,
            tables,
            every_s,
            ask_after_s,
            retry or RetryPolicy(),
            dead_letters=dead_letters,
        )

    def expand(self, inputs: Any) -> Any:
        # a str key: a deterministic key coder for the per-source state
        return inputs | "Walk" >> beam.ParDo(self._fn).with_input_types(tuple[str, Any])

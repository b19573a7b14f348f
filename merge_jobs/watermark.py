"""The streaming job's watermark for PostgreSQL sources captured by Debezium (Server) (issue 18).

Over Pub/Sub a source's changes and its transactions' END records arrive in any order, so the
ordered bookkeeping of ``cdc run`` (``TransactionCuts``) does not apply. With Debezium's
``provide.transaction.metadata`` (``cdc debezium-config`` turns it on), the END record of each
transaction, on the source's transaction topic (``<source>.transaction``), gives the transaction's
commit LSN and how many changes it made in each table, and every change's ``_seq`` starts with the
commit LSN of the transaction before its own: the transactions chain
(``state_models.watermark.TransactionChain``).

::

    ReadFromPubSub (the source's transaction subscription) ─ DecodeTransactionEnds
        ─ (source, END) ─ KeepWatermark (state per source: the ENDs not yet passed, the position)
                            every ``every_s`` while ENDs wait: what the state tables hold of them
                            (one query per table), walk the chain, record the watermark

The state tables themselves say what is applied (distinct ``_seq`` per transaction, the truncate
log included), so the step needs nothing from the merge: a change that was dead-lettered is
missing there and holds the watermark before its transaction, and after a restart (DirectRunner
state is lost) the walk resumes from the watermark recorded in ``cdc_progress``.
"""

from __future__ import annotations

import datetime as dt
import logging
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

from connectors.deadletter import NewDeadLetter
from connectors.warehouse import Warehouse
from merge_jobs.pool import POOL
from merge_jobs.transforms import DEAD_LETTERS, NAMESPACE, RetryPolicy, _iso
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
DEFAULT_EVERY_S = 5.0


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
                DEAD_LETTERS,
                NewDeadLetter.from_error(
                    exc,
                    raw=bytes(message.data) if message.data is not None else None,
                    source=self._source,
                    table=None,
                    context={
                        "stage": "decode",
                        "message_id": getattr(message, "message_id", None),
                        "publish_time": _iso(getattr(message, "publish_time", None)),
                    },
                ),
            )
            return
        if end is not None:  # a BEGIN says nothing the END will not
            yield self._source, end


class DecodeTransactionEnds(beam.PTransform):
    """Messages of a source's Debezium transaction topic -> ``ends`` (source, END), ``dead_letters``."""

    def __init__(self, source: str):
        super().__init__()
        self._source = source

    def expand(self, messages: Any) -> Any:
        decode = beam.ParDo(_DecodeEndFn(self._source)).with_output_types(
            tuple[str, TransactionEnd]
        )
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
    warehouse: Warehouse, source: str, tables: Iterable[TableDef], cut: str, writer: str = "beam"
) -> None:
    """``cut`` as the source's watermark in ``cdc_progress`` (forward only), for each of its tables."""
    rows = [
        Progress(
            source=source,
            table_id=t.table_id,
            state_table=t.state_table,
            writer=writer,
            watermark_seq=cut,
        )
        for t in tables
    ]
    if rows:
        warehouse.record_progress(rows, dt.datetime.now(dt.UTC))


class _KeepWatermarkFn(beam.DoFn):
    """(source, END) -> the source's watermark, walked every ``every_s`` while ENDs wait."""

    WAITING = BagStateSpec("waiting", PickleCoder())
    POSITION = ReadModifyWriteStateSpec("position", PickleCoder())
    ARMED = ReadModifyWriteStateSpec("armed", BooleanCoder())
    TICK = TimerSpec("tick", TimeDomain.REAL_TIME)

    def __init__(
        self,
        warehouse: Callable[[], Warehouse],
        tables: Mapping[str, TableDef],
        every_s: float,
        retry: RetryPolicy,
    ):
        self._connect = warehouse
        self._tables = dict(tables)
        self._every_s = every_s
        self._retry = retry
        self._moves = Metrics.counter(NAMESPACE, "watermark_moves")
        self._waiting = Metrics.distribution(NAMESPACE, "watermark_waiting_transactions")
        self._retries = Metrics.counter(NAMESPACE, "transient_retries")

    def process(
        self,
        element: tuple[str, TransactionEnd],
        waiting: Any = beam.DoFn.StateParam(WAITING),
        armed: Any = beam.DoFn.StateParam(ARMED),
        tick: Any = beam.DoFn.TimerParam(TICK),
    ) -> Iterable[Any]:
        waiting.add(element[1])
        if not armed.read():  # never pushed back by later ENDs: a busy source still walks
            tick.set(Timestamp.now() + Duration(seconds=self._every_s))
            armed.write(True)
        return ()

    @on_timer(TICK)
    def walk(
        self,
        key: Any = beam.DoFn.KeyParam,
        waiting: Any = beam.DoFn.StateParam(WAITING),
        position: Any = beam.DoFn.StateParam(POSITION),
        armed: Any = beam.DoFn.StateParam(ARMED),
        tick: Any = beam.DoFn.TimerParam(TICK),
    ) -> Iterator[Any]:
        source = str(key)
        tables = [t for t in self._tables.values() if t.source == source]
        stored = position.read()

        def step() -> tuple[TransactionChain, bool]:
            warehouse = POOL.acquire(self._connect, self._connect)
            try:
                chain = TransactionChain(
                    stored if stored is not None else _recorded_position(warehouse, source)
                )
                for end in waiting.read():
                    chain.add(end)
                asked = chain.pending()[:MAX_ASKED]
                moved = chain.advance(applied_of(warehouse, tables, asked))
                if moved:
                    record_watermark(warehouse, source, tables, chain_cut(chain.position))
                    warehouse.ensure_consistency(source, tables)
            except BaseException:
                POOL.discard(warehouse)  # a connection that failed may be unusable
                raise
            POOL.release(self._connect, warehouse)
            return chain, moved

        chain, moved = self._retry.run(
            f"keeping the watermark of source {source!r}", step, self._retries.inc
        )
        position.write(chain.position)
        waiting.clear()
        for end in chain.pending():
            waiting.add(end)
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
            yield source, chain_cut(chain.position)


def _recorded_position(warehouse: Warehouse, source: str) -> int:
    cut, _ = recorded_watermarks(warehouse.progress()).get(source, (None, None))
    return chain_position(cut)


class KeepWatermark(beam.PTransform):
    """(source, END) -> (source, watermark cut) each time a source's watermark moves."""

    def __init__(
        self,
        warehouse: Callable[[], Warehouse],
        tables: Mapping[str, TableDef],
        every_s: float = DEFAULT_EVERY_S,
        retry: RetryPolicy | None = None,
    ):
        super().__init__()
        self._fn = _KeepWatermarkFn(warehouse, tables, every_s, retry or RetryPolicy())

    def expand(self, ends: Any) -> Any:
        # a str key: a deterministic key coder for the per-source state
        return ends | "Walk" >> beam.ParDo(self._fn).with_input_types(tuple[str, TransactionEnd])

"""Transaction-consistent positions of a source: its watermark and consistent cuts (issue 18).

A **cut** is an inclusive ``seq`` bound C such that no transaction of the source has changes on
both sides of it: the versions with ``_seq <= C`` of every table of the source are exactly the
changes of the transactions before C, each in full. The **watermark** of a source is the greatest
cut through which every such transaction is applied in every registered table of the source; a
query "as of C" over several tables, with C at most the watermark, never sees half a transaction.

Why a cut exists at every transaction boundary without a new column: PostgreSQL orders a
transaction's changes by the LSN of the commit before it (the first section of ``_seq``, the same
for all its changes and different for every transaction), and a MySQL/MariaDB binlog writes each
transaction's row events contiguously. So in ``_seq`` order the changes of one transaction are
never interleaved with another's, and the position just before a transaction's first change is a
cut (:func:`seq_before`).

:class:`TransactionCuts` follows a source's changes in log order (the runtime's journal) and says
where the transaction still open at the end of what it saw began; everything before that is
complete. Changes without a transaction id are grouped with their neighbours without one (a
snapshot is one such run), so the watermark waits for a change with an id, or for the capture to
report the position after the run (``CaptureStats.complete_through``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from state_models.events import ChangeEvent
from state_models.seq import make_seq, parse_seq

#: the cut below every position: nothing is complete yet
NOTHING = make_seq(0)


def seq_before(seq: str) -> str:
    """The greatest seq (of the same number of sections) below ``seq``; ``seq`` itself if it is
    all zeros (nothing lies below it)."""
    sections = list(parse_seq(seq))
    for i in range(len(sections) - 1, -1, -1):
        if sections[i] > 0:
            sections[i] -= 1
            for j in range(i + 1, len(sections)):
                sections[j] = (1 << 64) - 1
            return make_seq(*sections)
    return seq


def through_transaction(seq: str) -> str:
    """The cut just after the transaction of the change at ``seq``, once that transaction is known
    to be complete: ``seq`` with its last section at its maximum. (PostgreSQL: every later
    transaction's first section is greater; MySQL/MariaDB: every later change's position is.)"""
    sections = list(parse_seq(seq))
    sections[-1] = (1 << 64) - 1
    return make_seq(*sections)


def tx_key(event: ChangeEvent) -> str | None:
    return event.tx_id


_UNSEEN = object()


@dataclass
class TransactionCuts:
    """Follows one source's changes in log order (see the module doc).

    ``open_start``: the seq of the first change of the transaction open at the end of what was
    seen, or None while that transaction's beginning was not seen (the first one after a start may
    have begun in changes merged before a restart)."""

    _tx: object = _UNSEEN
    open_start: str | None = None

    def observe(self, events: Iterable[ChangeEvent]) -> dict[str, str | None]:
        """Follow ``events`` (one source, in log order); returns, per ``event_id``, the seq its
        transaction began at (None: not seen)."""
        starts: dict[str, str | None] = {}
        for e in events:
            tx = tx_key(e)
            if tx != self._tx:
                self.open_start = e.seq if self._tx is not _UNSEEN else None
                self._tx = tx
            starts[e.event_id] = self.open_start
        return starts

    def complete_through(self) -> str | None:
        """The cut just before the open transaction: every change before it is of a transaction
        seen in full. None when no transaction boundary was seen yet."""
        return None if self.open_start is None else seq_before(self.open_start)


def hold_for(tx_start: str | None, watermark: str | None) -> str:
    """Where a change that could not be applied holds its source's watermark: just before its
    transaction, or where the watermark stands when that transaction's start is unknown."""
    if tx_start is not None:
        return seq_before(tx_start)
    return watermark if watermark is not None else NOTHING


def later(a: str | None, b: str | None) -> str | None:
    """The greater of two cuts (None is below everything)."""
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)

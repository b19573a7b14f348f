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


# --------------------------------------------------------------------------- out of order (Beam)

_MAX_SECTION = (1 << 64) - 1


@dataclass(frozen=True)
class TransactionEnd:
    """Debezium's END record of one PostgreSQL transaction (``provide.transaction.metadata``):
    its xid, its commit LSN (the part of the END's ``id`` after the colon) and how many changes it
    made in each table (table id -> count)."""

    source: str
    tx_id: str
    commit: int
    counts: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Applied:
    """What one state table holds of one transaction: its distinct changes (``_seq`` values) and
    the commit LSN before the transaction (:func:`applied_prev`; 0: none, the first transaction of a
    fresh engine)."""

    changes: int
    prev: int


def applied_prev(first_seq: str, first_sections: int) -> int:
    """The commit before a transaction, from what a table holds of it: the first section of its
    first ``_seq``, and how many different first sections its changes have. A fresh engine's first
    transaction follows no commit (Debezium: ``sequence[0]`` null) and the decoder orders each of
    its changes by the change's own LSN, so its changes differ there: it follows position 0. (One
    such transaction with a single change cannot be told from one that follows a commit: the
    chain then waits for a recorded starting point rather than guess.)"""
    return 0 if first_sections > 1 else parse_seq(first_seq)[0]


def chain_position(cut: str | None) -> int:
    """The commit LSN after which a transaction chain continues from a recorded watermark: the
    next whole transaction is the one whose changes' first section equals it."""
    if cut is None:
        return 0  # Debezium's first transaction follows "no commit" (sequence [null, lsn])
    sections = parse_seq(cut)
    if len(sections) == 1:
        return sections[0]
    first, second = sections[0], sections[1]
    # seq_before(make_seq(C, 0)) == make_seq(C - 1, MAX): through the transaction committed at C;
    # seq_before(make_seq(P, lsn)): before the transaction that follows the commit at P
    return first + 1 if second == _MAX_SECTION else first


def chain_cut(position: int) -> str:
    """The cut through every transaction committed at or before ``position``."""
    return seq_before(make_seq(position, 0))


class TransactionChain:
    """The watermark of one PostgreSQL source whose changes and END records arrive in any order.

    Over Pub/Sub nothing says that no earlier transaction is still in flight, but PostgreSQL's
    changes chain: each change's ``_seq`` starts with the commit LSN of the transaction before its
    own (Debezium's ``source.sequence[0]``, restored from its offsets after a restart), and the END
    record gives a transaction's own commit LSN. From a position W (a commit LSN through which
    everything is whole), the next transaction is the one whose changes start with W; when the
    state tables hold all the changes its END counts, W moves to its commit, and so on. A
    transaction whose END or changes have not arrived, or whose change was dead-lettered, stops
    the walk: the watermark is never ahead of what is applied, whatever the order of arrival.

    Needs PostgreSQL 15 or later (older servers send empty transactions whose commits enter the
    chain without an END record: the walk stops there)."""

    def __init__(self, position: int):
        self.position = position
        self.ends: dict[str, TransactionEnd] = {}
        #: after ``advance``: the next transaction, when the tables hold part of it but not all
        self.blocked: TransactionEnd | None = None

    def add(self, end: TransactionEnd) -> None:
        if end.commit > self.position:  # an END redelivered after its transaction was passed
            self.ends.setdefault(end.tx_id, end)

    def pending(self) -> list[TransactionEnd]:
        return sorted(self.ends.values(), key=lambda e: e.commit)

    def advance(self, applied: dict[tuple[str, str], Applied]) -> bool:
        """Walk the chain with what the state tables hold (``(tx_id, table id) -> Applied``);
        True when the position moved."""
        successor: dict[int, tuple[TransactionEnd, bool]] = {}
        for end in self.ends.values():
            parts = [applied.get((end.tx_id, table)) for table, _ in end.counts]
            prevs = {p.prev for p in parts if p is not None}
            if not prevs:
                continue  # nothing of it applied yet
            # one transaction's changes share their first section, unless it follows no commit
            # (a fresh engine's first: each change has its own, see applied_prev)
            prev = prevs.pop() if len(prevs) == 1 else 0
            whole = all(
                p is not None and p.changes >= n
                for p, (_, n) in zip(parts, end.counts, strict=True)
            )
            successor[prev] = (end, whole)
        moved = False
        self.blocked = None
        while self.position in successor:
            end, whole = successor[self.position]
            if not whole:
                self.blocked = end
                break
            del self.ends[end.tx_id]
            self.position = end.commit
            moved = True
        return moved

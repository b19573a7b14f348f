"""Loss windows: stretches of a source's log whose changes may never have reached us.

A capture that finds its stored position unservable (the replication slot dropped or recreated
behind our position, the binlog purged past it) knows that changes after that position may be
missing. It records a window here, in ``<state_dir>/loss_windows.json``: the source, its tables,
why, from which position and time (our last delivered one), and, once a new snapshot was taken
(``on_position_lost: resnapshot``), at which position the stream is whole again. ``cdc status``
and ``cdc check`` report every window still open for a table, naming the fix; a ``cdc
reconcile`` that finds the table equal to its source (by itself or after ``--repair``) closes the
window for that table. The file is small and rewritten whole (temp file, fsync, rename).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FILE = "loss_windows.json"


@dataclass
class LossWindow:
    id: str
    source: str
    tables: list[str]
    reason: str
    from_position: str  # our last delivered position (the engine's notation)
    detected_at: float
    to_position: str | None = None  # where the stream is whole again (after a new snapshot)
    resnapshot_at: float | None = None
    closed: dict[str, float] = field(default_factory=dict)  # table -> when reconcile proved it

    def open_tables(self) -> list[str]:
        return [t for t in self.tables if t not in self.closed]

    def describe(self) -> str:
        until = (
            f"until the new snapshot at {self.to_position}"
            if self.to_position
            else "until the source is snapshotted again"
        )
        return (
            f"changes of source {self.source!r} after {self.from_position} may be missing {until} "
            f"({self.reason})"
        )


class LossWindows:
    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / FILE

    def all(self) -> list[LossWindow]:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        return [LossWindow(**w) for w in doc.get("windows", [])]

    def _save(self, windows: Sequence[LossWindow]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump({"windows": [asdict(w) for w in windows]}, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.path)

    def record(
        self, source: str, tables: Sequence[str], reason: str, from_position: str
    ) -> LossWindow:
        """Open a window (or return the open one already recorded for the same position)."""
        windows = self.all()
        for w in windows:
            if w.source == source and w.from_position == from_position and w.open_tables():
                return w
        window = LossWindow(
            id=uuid.uuid4().hex[:12],
            source=source,
            tables=list(tables),
            reason=reason,
            from_position=from_position,
            detected_at=time.time(),
        )
        self._save([*windows, window])
        return window

    def resnapshotted(self, window_id: str, to_position: str) -> None:
        windows = self.all()
        for w in windows:
            if w.id == window_id:
                w.to_position, w.resnapshot_at = to_position, time.time()
        self._save(windows)

    def open_for(self, table: str) -> list[LossWindow]:
        return [w for w in self.all() if table in w.open_tables()]

    def close(self, table: str, proven_at: float) -> list[LossWindow]:
        """Close ``table``'s windows detected before ``proven_at`` (a reconcile found it equal
        at a snapshot taken then); returns the windows closed."""
        windows = self.all()
        closed = []
        for w in windows:
            if table in w.open_tables() and w.detected_at <= proven_at:
                w.closed[table] = proven_at
                closed.append(w)
        if closed:
            self._save(windows)
        return closed


def as_json(window: LossWindow) -> dict[str, Any]:
    return {**asdict(window), "open_tables": window.open_tables(), "text": window.describe()}

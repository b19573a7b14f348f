"""What the commands show a person: tables, progress bars and the live status line, drawn by rich.

On a terminal rich draws them properly: a bold header, a bar with its rate and time left that is
redrawn in place, a status line that updates in place. Anywhere else (a pipe, a log file, CI) they
are plain lines that a script can read: tables as aligned text with nothing after the last cell,
progress as one line every few seconds, no colour and no cursor movement.
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

#: How often progress is written where it cannot be redrawn (a log file gets a line, not a bar).
PLAIN_EVERY_S = 5.0


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


def print_table(
    rows: Sequence[Mapping[str, object]], columns: list[str], file: TextIO | None = None
) -> None:
    """An aligned table with upper-case headers; cells are shown as text, never as markup."""
    out = file or sys.stdout
    table = Table(
        box=None,
        show_edge=False,
        pad_edge=False,
        padding=(0, 2, 0, 0),
        header_style="bold",
    )
    for c in columns:
        table.add_column(c.upper(), no_wrap=True, overflow="ignore")
    for r in rows:
        table.add_row(*(Text(str(r.get(c, ""))) for c in columns))
    if is_terminal(out):
        Console(file=out, highlight=False, soft_wrap=True).print(table)
        return
    buffer = io.StringIO()
    Console(file=buffer, width=1_000_000, highlight=False, color_system=None).print(table)
    out.write("".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines()))


class _RateColumn(ProgressColumn):
    """``12,345 events/s`` over the whole run (rich's own speed column is bytes-minded)."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        rate = task.completed / elapsed if elapsed > 0 else 0.0
        return Text(f"{rate:,.0f} {self.unit}/s")


class ProgressBar:
    """``replay ━━━━━━╸━━━ 52% 1,040,000/2,000,000 210,311 events/s 0:00:05 ETA 0:00:04``.

    Call it with the number of items just done, or ``set`` where it stands with a line of detail.
    On a terminal it is a rich bar redrawn in place; elsewhere one plain line every ``every``
    seconds and a last one at ``finish``. ``unit=None`` shows no rate (a bar of elapsed time).
    """

    def __init__(
        self,
        total: float | None,
        label: str,
        unit: str | None = "events",
        file: TextIO | None = None,
        every: float = PLAIN_EVERY_S,
    ):
        self.total = total or None
        self.label = label
        self.unit = unit
        self.done: float = 0
        self.detail = ""
        self.out = file or sys.stderr
        self.started = time.monotonic()
        self._every = every
        self._last = self.started
        self._progress: Progress | None = None
        if is_terminal(self.out):
            counting = (MofNCompleteColumn(), _RateColumn(unit)) if unit else ()
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                *counting,
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[detail]}"),
                console=Console(file=self.out),
            )
            self._task = self._progress.add_task(label, total=self.total, detail="")
            self._progress.start()

    def __call__(self, n: int) -> None:
        self.set(self.done + n)

    def set(self, done: float, detail: str | None = None) -> None:
        """Where the work stands now (and a line of detail shown after the bar)."""
        self.done = done
        if detail is not None:
            self.detail = detail
        if self._progress is not None:
            self._progress.update(self._task, completed=done, detail=self.detail)
            return
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            self._plain()

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        else:
            self._plain()

    def _plain(self) -> None:
        share = f"{min(1.0, self.done / self.total):4.0%} " if self.total else ""
        if self.unit:
            total = f"/{self.total:,.0f}" if self.total else ""
            amount = f"{self.done:,.0f}{total} {self.unit}  {self.rate():,.0f} {self.unit}/s"
        else:
            amount = f"{time.monotonic() - self.started:,.0f}s"
        detail = f"  {self.detail}" if self.detail else ""
        print(f"{self.label} {share}{amount}{detail}", file=self.out, flush=True)


class LiveLine:
    """One status line kept current: redrawn in place on a terminal (rich), otherwise handed to
    ``plain`` (a logger) at most every ``every`` seconds."""

    def __init__(
        self,
        plain: Callable[[str, Any], None],
        file: TextIO | None = None,
        every: float = 10.0,
        interactive: bool | None = None,
    ):
        self.out = file or sys.stderr
        self.plain = plain
        self.every = every
        self._last = -1e9
        live = is_terminal(self.out) if interactive is None else interactive
        self._console = Console(file=self.out, highlight=False) if live else None
        self._status: Any = None

    def update(self, line: str, detail: Any = None) -> None:
        if self._console is not None:
            if self._status is None:
                self._status = self._console.status(Text(line), spinner="dots")
                self._status.start()
            else:
                self._status.update(Text(line))
            return
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self.plain(line, detail)

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


#: Line separators that JSON leaves as they are, but that many line readers split on (Python's
#: str.splitlines, JavaScript): written escaped, so that one version is always one line.
_SEPARATORS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def jsonl_line(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False).translate(_SEPARATORS)


def cell_text(value: Any, width: int | None = None) -> str:
    if value is None:
        text = ""
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    else:
        text = str(value)
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text

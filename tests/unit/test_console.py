"""What the commands show: rich on a terminal, plain readable lines anywhere else."""

from __future__ import annotations

import io
import re

from cdc.console import LiveLine, ProgressBar, print_table


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_table_in_a_pipe_is_aligned_plain_text_and_cells_are_never_markup():
    out = io.StringIO()
    rows = [
        {"table": "shop.public.subscriptions", "status": "[bold]ok[/bold]", "lag": "3.7s"},
        {"table": "x", "status": "[ok  ]"},
    ]
    print_table(rows, ["table", "status", "lag"], file=out)
    lines = out.getvalue().splitlines()
    assert lines == [
        "TABLE                      STATUS           LAG",
        "shop.public.subscriptions  [bold]ok[/bold]  3.7s",
        "x                          [ok  ]",
    ]
    assert "\x1b" not in out.getvalue()


def test_a_wide_table_in_a_pipe_is_never_folded():
    out = io.StringIO()
    print_table([{"a": "x" * 300, "b": "y"}], ["a", "b"], file=out)
    assert out.getvalue().splitlines()[1] == "x" * 300 + "  y"


def test_progress_in_a_pipe_is_a_plain_line_now_and_then_and_at_the_end():
    out = io.StringIO()
    bar = ProgressBar(2_000, "replay", file=out, every=3600)
    for _ in range(4):
        bar(500)
    assert out.getvalue() == ""  # not yet: one line per `every`
    bar.finish()
    (line,) = out.getvalue().splitlines()
    assert re.fullmatch(r"replay 100% 2,000/2,000 events  [\d,]+ events/s", line), line


def test_progress_on_a_terminal_is_a_rich_bar_with_rate_and_eta():
    out = Terminal()
    bar = ProgressBar(1_000, "rebuild", file=out)
    bar(250)
    bar.finish()
    text = out.getvalue()
    assert "rebuild" in text and "250/1000" in text and "events/s" in text and "ETA" in text
    assert "\x1b[" in text  # drawn in place


def test_a_time_bar_shows_its_detail_and_no_rate():
    out = io.StringIO()
    bar = ProgressBar(20, "workload", unit=None, file=out, every=0)
    bar.set(5, "120 business actions")
    line = out.getvalue().splitlines()[-1]
    assert line.startswith("workload  25% ") and line.endswith("  120 business actions")
    assert "/s" not in line


def test_the_live_line_logs_now_and_then_where_it_cannot_redraw():
    logged: list[tuple[str, object]] = []
    live = LiveLine(
        lambda line, detail: logged.append((line, detail)), file=io.StringIO(), every=3600
    )
    live.update("captured 1", 1)
    live.update("captured 2", 2)
    live.close()
    assert logged == [("captured 1", 1)]
    shown = Terminal()
    live = LiveLine(lambda line, detail: logged.append((line, detail)), file=shown)
    live.update("captured 3 | merged 3", None)
    live.close()
    assert "captured 3 | merged 3" in shown.getvalue() and len(logged) == 1

"""Tables printed whole when the output is not a terminal (a pipe, a file, CI): a terminal gets Rich's table fitted
to its width; anything else gets every value in full, since it is read by grep or a script, not by eye."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from pipeline.cli.common import console

UNLIMITED = 100_000  # columns: wide enough for any value, and Rich sizes a table to its content, not to this


def print_table(table: Table) -> None:
    if console.is_terminal:
        console.print(table)
        return
    wide = Console(width=UNLIMITED, no_color=True, highlight=False)  # file=None: whatever sys.stdout is now
    for column in table.columns:
        column.no_wrap, column.overflow = True, "ignore"
    wide.print(table)

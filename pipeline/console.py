"""What a command shows a person, and where everything else goes.

The terminal gets a header, a live bar per epoch or pass, one line per finished epoch, warnings about the user's run
and the closing tables. Everything else (Ray's and the workers' log lines, library warnings) goes to the run's log
file (``RUN_DIR/logs/mmpipe.log``; the workers' own output stays in Ray's session folder); ``-v``/``--verbose``
brings it back. On a terminal the bars are live (rich); anywhere else (CI, ``| tee``, a Ray job's log) plain lines:
no bars, no colour codes, no wrapping.

Library code reports progress to ``current()``, a ``View`` the command line installs with ``showing``; the default
view shows nothing, so library calls from tests or notebooks print nothing either.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from rich.console import Console

LOG_DIR = "logs"  # inside a run directory
LOG_FILE = "mmpipe.log"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
VERBOSE_ENV = "MMPIPE_VERBOSE"  # set by -v, so processes a command starts (scheduled runs, jobs) inherit it
# Off a terminal nothing wraps: a path or a table row stays on one line whatever reads it.
UNWRAPPED_WIDTH = 10_000
# Off a terminal, a pass still running says how far it is this often (a long epoch in a CI log or a Ray job's
# log would otherwise be silent until it ends).
PLAIN_PROGRESS_EVERY_S = 30.0
# The driver loggers whose console lines are Ray's business, not the user's; their lines go to the log file.
RAY_LOGGERS = ("ray",)


def is_terminal(stream=None) -> bool:
    stream = sys.stdout if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


def make_console(stderr: bool = False) -> Console:
    """A rich console for stdout (or stderr): on a terminal as rich sees it; elsewhere plain and unwrapped."""
    if is_terminal(sys.stderr if stderr else sys.stdout):
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=UNWRAPPED_WIDTH, soft_wrap=True, color_system=None)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def set_verbose(on: bool) -> None:
    if on:
        os.environ[VERBOSE_ENV] = "1"


# ------------------------------------------------------------------------------------------------ logging

_file_handler: logging.Handler | None = None
_ray_handler: logging.Handler | None = None  # the same file for Ray's loggers (Ray re-formats their handlers)
_default_command: str | None = None  # set by the command line: outside it, library calls configure no logging


def log_file_for(run_dir: str | Path | None, command: str) -> Path:
    """``RUN_DIR/logs/mmpipe.log`` for a local run directory; else a file of its own in the temp folder."""
    if run_dir is not None and "://" not in str(run_dir):
        return Path(run_dir) / LOG_DIR / LOG_FILE
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.gettempdir()) / "mmpipe-logs" / f"{command}-{stamp}-{os.getpid()}.log"


class _UserWarnings(logging.Handler):
    """The pipeline's own warnings and errors, on stderr as ``warning: …`` lines: they are about the user's run."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"{record.levelname.lower()}: {record.getMessage()}", file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001  (logging must never break the run)
            self.handleError(record)


def log_to(path: Path) -> Path:
    """Send this process's Python logging (the pipeline's, Ray's, Python warnings) to ``path``, appending; the
    pipeline's warnings also to stderr; with ``verbose()`` every line to stderr as well. Returns ``path``."""
    global _file_handler, _ray_handler
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    if _file_handler is not None:
        root.removeHandler(_file_handler)
        _file_handler.close()
    _file_handler = logging.FileHandler(path, encoding="utf-8")
    _ray_handler = logging.FileHandler(path, encoding="utf-8")
    _file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(_file_handler)
    root.setLevel(logging.INFO)
    ours = logging.getLogger("pipeline")
    ours.setLevel(logging.INFO)
    if verbose():
        if not any(getattr(h, "_mmpipe", False) for h in root.handlers):
            loud = logging.StreamHandler(sys.stderr)
            loud.setFormatter(logging.Formatter(LOG_FORMAT))
            loud._mmpipe = True  # type: ignore[attr-defined]
            root.addHandler(loud)
    else:
        logging.captureWarnings(True)  # library deprecation notes and the like: the log file, not the terminal
        if not any(isinstance(h, _UserWarnings) for h in ours.handlers):
            user = _UserWarnings(logging.WARNING)
            ours.addHandler(user)
    quiet_ray()
    return path


def log_by_default(command: str) -> None:
    """A command runs: should Ray start before a log file was chosen, log to a temp file named after it."""
    global _default_command
    _default_command = command


def log_file() -> Path | None:
    return Path(_file_handler.baseFilename) if isinstance(_file_handler, logging.FileHandler) else None


def end_logging() -> None:
    """Undo ``log_to`` (a command ran in-process, e.g. under a test runner: what follows logs as before)."""
    global _file_handler, _ray_handler, _default_command
    root = logging.getLogger()
    if _file_handler is not None:
        root.removeHandler(_file_handler)
        _file_handler.close()
    if _ray_handler is not None:
        _ray_handler.close()  # Ray's loggers still hold it: a later line reopens the file, nothing is lost
    for h in [h for h in root.handlers if getattr(h, "_mmpipe", False)]:
        root.removeHandler(h)
    ours = logging.getLogger("pipeline")
    for h in [h for h in ours.handlers if isinstance(h, _UserWarnings)]:
        ours.removeHandler(h)
    logging.captureWarnings(False)
    _file_handler, _ray_handler, _default_command = None, None, None


def quiet_ray() -> None:
    """Ray's driver-side loggers write to our log file instead of the terminal (unless verbose). Ray configures
    them when its modules load (``ray``, ``ray.data``...), so this runs again after each such point."""
    if _file_handler is None and _default_command is not None:
        log_to(log_file_for(None, _default_command))  # calls quiet_ray again
        return
    if verbose() or _file_handler is None:
        return
    for name in list(logging.Logger.manager.loggerDict):
        if not (name in RAY_LOGGERS or name.startswith(tuple(f"{r}." for r in RAY_LOGGERS))):
            continue
        logger = logging.getLogger(name)
        loud = [h for h in logger.handlers if isinstance(h, logging.StreamHandler)
                and not isinstance(h, logging.FileHandler)]
        for h in loud:
            logger.removeHandler(h)
        if loud and not logger.propagate and _ray_handler not in logger.handlers:
            logger.addHandler(_ray_handler)


# ------------------------------------------------------------------------------------------------ views


class View:
    """What library code reports; this one shows nothing (library calls outside the command line)."""

    def header(self, title: str, fields: dict[str, object]) -> None:
        pass

    def start(self, label: str, total: float | None) -> None:
        """A pass over ``total`` rows begins (None: unknown)."""

    def update(self, done: float, loss: float | None = None, label: str | None = None) -> None:
        """``done`` rows of the pass so far; the running loss, when there is one."""

    def done(self, line: str) -> None:
        """The pass finished: its bar goes, ``line`` stays."""

    def line(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def _format_value(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class PlainView(View):
    """Off a terminal: plain lines, one per finished pass and one every PLAIN_PROGRESS_EVERY_S while a pass runs;
    no bars, no colour codes."""

    def __init__(self, console: Console, every_s: float = PLAIN_PROGRESS_EVERY_S) -> None:
        self.console, self.every_s = console, every_s
        self._pass: tuple[str, float | None, float] | None = None  # label, total, started
        self._said = 0.0

    def start(self, label: str, total: float | None) -> None:
        self._said = time.monotonic()
        self._pass = (label, total, self._said)

    def update(self, done: float, loss: float | None = None, label: str | None = None) -> None:
        if self._pass is None or time.monotonic() - self._said < self.every_s:
            return
        name, total, started = self._pass
        self._said = now = time.monotonic()
        rate = done / max(now - started, 1e-9)
        of = f" of {total:,.0f}" if total else ""
        eta = f", about {(total - done) / rate:,.0f} s left" if total and rate > 0 and done < total else ""
        running = f", loss {loss:.3f}" if loss is not None else ""
        self.line(f"{label or name}: {done:,.0f}{of} rows so far, {rate:,.0f} rows/s{running}{eta}")

    def header(self, title: str, fields: dict[str, object]) -> None:
        self.console.print(title, highlight=False, soft_wrap=True, markup=False)
        for key, value in fields.items():
            self.console.print(f"  {key}: {_format_value(value)}", highlight=False, soft_wrap=True, markup=False)

    def done(self, line: str) -> None:
        self._pass = None
        self.line(line)

    def line(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True, markup=False)


class LiveView(PlainView):
    """On a terminal: a live bar per pass (rows, rows/s, ETA, running loss); finished passes leave one line."""

    def __init__(self, console: Console) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        from rich.text import Text

        class RowsPerSecond(ProgressColumn):  # rich's own speed estimate (a moving window), in rows
            def render(self, task) -> Text:
                return Text(f"{task.speed:,.0f} rows/s" if task.speed else "")

        class Remaining(TimeRemainingColumn):  # nothing when the pass's total is unknown (no dangling "ETA")
            def render(self, task) -> Text:
                return Text("ETA ") + super().render(task) if task.total is not None else Text("")

        super().__init__(console)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("rows"), RowsPerSecond(), TimeElapsedColumn(),
                                 Remaining(), TextColumn("{task.fields[loss]}"),
                                 console=console, transient=True)
        self.task = None

    def start(self, label: str, total: float | None) -> None:
        self._drop_task()
        self.progress.start()
        self.task = self.progress.add_task(label, total=total, loss="")

    def update(self, done: float, loss: float | None = None, label: str | None = None) -> None:
        if self.task is None:
            return
        fields = {}
        if loss is not None:
            fields["loss"] = f"loss {loss:.3f}"
        if label is not None:
            fields["description"] = label
        self.progress.update(self.task, completed=done, **fields)

    def _drop_task(self) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
            self.progress.refresh()  # else the next line printed redraws the finished bar under it

    def done(self, line: str) -> None:
        self._drop_task()
        self.line(line)

    def line(self, text: str) -> None:
        # printed through the Progress' console, so it lands above a live bar
        self.progress.console.print(text, highlight=False, soft_wrap=True, markup=False)

    def close(self) -> None:
        self._drop_task()
        self.progress.stop()


class PassCount:
    """One pass over rows (a split's data report, packing, prediction) on the current view: on a terminal a bar
    (rows, rows/s, and an ETA when ``total`` is known); when it ends one line with rows, seconds and rows/s. Off a
    terminal only that line: one per pass, never a flood."""

    def __init__(self, label: str, total: int | None = None) -> None:
        self.label, self.rows = label, 0
        self.view = current()
        self.started = time.monotonic()
        self.view.start(label, total or None)  # 0 rows expected: an unknown total, not a bar that is already full

    def add(self, rows: int) -> None:
        self.rows += rows
        self.view.update(self.rows)

    def finish(self, detail: str = "") -> str:
        """``detail``: what to add after the row count, e.g. `` (1,234 kept)``. Returns the line shown."""
        seconds = time.monotonic() - self.started
        rate = f", {self.rows / seconds:,.0f} rows/s" if seconds > 0 else ""
        text = f"{self.label}: {self.rows:,} rows{detail} in {seconds:.1f} s{rate}"
        self.view.done(text)
        return text


_current: View = View()


def current() -> View:
    """The view library code reports to (shows nothing unless a command installed one)."""
    return _current


def view_for(console: Console) -> View:
    return LiveView(console) if console.is_terminal else PlainView(console)


@contextlib.contextmanager
def showing(view: View) -> Iterator[View]:
    """Within the block, ``current()`` is ``view``; closed (bars gone) at the end."""
    global _current
    before, _current = _current, view
    try:
        yield view
    finally:
        _current = before
        view.close()

"""What every ``mmpipe`` command shares: the consoles, ``fail``, spec loading, the ``--set`` option, and one guard
that turns the library's errors into a one-line message and an exit code instead of a traceback."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import NoReturn, Optional

import typer

from pipeline.console import (end_logging, log_by_default, log_file_for, log_to, make_console, set_verbose, showing,
                              view_for)

# On a terminal: rich as usual. Piped (CI, | tee, a Ray job's log): no colour codes, no wrapping at 80 columns.
console = make_console()
err = make_console(stderr=True)

BAD_INPUT = 2  # the exit code of a problem with what was asked (spec, flags, files): fix it and ask again
FAILED = 1  # the exit code of work that was started and did not succeed (training, a job, a registry update)
INTERRUPTED = 130  # the exit code of a command stopped by Ctrl-C (128 + SIGINT), as shells report one

SET_HELP = "Override a spec field: --set train.lr=0.01 (repeatable)."


def set_option(help: str = SET_HELP):
    """The repeatable ``--set FIELD=VALUE`` option of every command that loads a spec."""
    return typer.Option(None, "--set", help=help)


SetOption = set_option()

VERBOSE_HELP = "Also show Ray's and the workers' own log lines (always in the run's logs/mmpipe.log)."
VerboseOption = typer.Option(False, "--verbose", "-v", help=VERBOSE_HELP)


@contextlib.contextmanager
def start_console(command: str, run_dir: str | Path | None = None, verbose: bool = False):
    """A command's terminal for the block: logs to ``RUN_DIR/logs/mmpipe.log`` (a temp file without a local run
    directory), the progress view library code draws on (its bars go when the block ends), ``-v`` honoured."""
    set_verbose(verbose)
    log_by_default(command)
    if run_dir is not None:
        log_to(log_file_for(run_dir, command))
    try:
        with showing(view_for(console)) as view:
            yield view
    finally:
        end_logging()


def header(title: str, fields: dict) -> None:
    """The lines a command opens with: what runs, on what data, with which workers, where its logs go."""
    console.print(f"[bold]{title}[/]", highlight=False, soft_wrap=True)
    for key, value in fields.items():
        console.print(f"  {key}: {value}", highlight=False, soft_wrap=True, markup=False)

# The errors whose message is written for the user, by the module that defines them (looked up only when that
# module is loaded: an error of a class cannot exist before its module is imported, and importing them all here
# would make ``mmpipe --help`` load torch and Ray).
USER_ERRORS = {
    "pipeline.spec": ("SpecError",),
    "pipeline.data.shards.manifest": ("DataError",),
    "pipeline.data.shards.check": ("ShardError",),
    "pipeline.data.tools.pack": ("ManifestError",),
    "pipeline.examples.av_digits": ("PrepareError",),
    "pipeline.train.trainer": ("TrainError",),
    "pipeline.model.checkpoint": ("InitError",),
    "pipeline.hf_local": ("HFError",),
    "pipeline.tune.runner": ("TuneError",),
    "pipeline.registry": ("RegistryError",),
    "pipeline.predict": ("PredictError",),
    "pipeline.cluster": ("ClusterError",),
    "pipeline.schedule.cron": ("CronError",),
    "pipeline.schedule.store": ("NoSuchSchedule", "ScheduleExists"),
    "pipeline.trust": ("UntrustedPath",),
    "pipeline.workflow.rundir": ("RunLocked",),
    "pipeline.resources": ("PlanError",),
    "pipeline.watchdog": ("StallError",),
    "pipeline.report.collect": ("ReportError",),
    "pipeline.tracking.mlflow_log": ("TrackingError",),
}


def fail(message: str, code: int = BAD_INPUT) -> NoReturn:
    err.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def user_error_types() -> tuple[type[BaseException], ...]:
    return tuple(getattr(sys.modules[module], name) for module, names in USER_ERRORS.items()
                 if module in sys.modules for name in names)


def _is_spec_error(e: BaseException) -> bool:
    spec = sys.modules.get("pipeline.spec")
    return spec is not None and isinstance(e, spec.SpecError)


@contextlib.contextmanager
def exits_on_error(code: int = BAD_INPUT, *also: type[BaseException]):
    """Inside it (or around a decorated command), one of the library's errors (or of ``also``) ends the command
    with ``error: <message>`` on stderr and exit ``code`` (a spec error: always BAD_INPUT)."""
    try:
        yield
    except (*user_error_types(), *also) as e:
        fail(str(e), BAD_INPUT if _is_spec_error(e) else code)  # a refused spec is bad input wherever it is met


@contextlib.contextmanager
def says_how_to_continue(what: str, again: str):
    """Around a long run (training, a tune, a workflow): Ctrl-C, or the Ray instance ending under it, ends the
    command with one line saying what stopped and how to continue (``again``), instead of silence and exit 1.
    During a Ray Train run a Ctrl-C arrives as SystemExit, not KeyboardInterrupt: Ray Train's SIGINT handler
    aborts the run and exits, and a terminal's Ctrl-C also reaches the local Ray's own processes (both measured on
    `mmpipe train`)."""
    try:
        yield
    except KeyboardInterrupt:
        fail(f"interrupted: {what} stopped. {again}", INTERRUPTED)
    except SystemExit as e:
        fail(f"stopped: the {what} ended without a result (Ray exited with status {e.code}: Ctrl-C, or Ray's "
             f"processes were stopped). {again}", FAILED)


def resume_hint(run_dir) -> str:
    """What ``says_how_to_continue`` tells a stopped training or pretraining."""
    return (f"Its checkpoints are in {run_dir / 'ray'}: the same command again resumes from the last one "
            "(--fresh starts over).")


def load_spec(spec_path: Path, overrides: Optional[list[str]]):
    """The job spec with overrides applied and cross-checked; its warnings printed; a bad spec exits BAD_INPUT.
    Its transforms are built and tried only by ``data_plan``, before data is read: a command that only looks at
    the spec (show-spec) answers without loading torch or the augmentation libraries."""
    from pipeline.spec import spec_warnings
    from pipeline.spec_checks import load_job

    with exits_on_error(BAD_INPUT):
        job = load_job(spec_path, overrides or [], deep=False)
    for warning in spec_warnings(job):
        warn(warning)
    return job


def data_plan(job):
    """The run's data plan, built once and handed to the library: the manifest is read and the classes resolved
    here, so a spec without class names fails before Ray starts."""
    from pipeline.data.streaming.plan import DataPlan
    from pipeline.spec_checks import check_deep

    with exits_on_error(BAD_INPUT):  # a bad transform parameter: before any data is read or Ray starts
        check_deep(job, "the job spec")
    return DataPlan(job)

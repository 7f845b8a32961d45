"""``mmpipe schedule …``: recurring runs of a job spec (thin: parse, validate, call the store and the scheduler)."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sqlite3
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from pipeline.cli.common import BAD_INPUT, FAILED, console, err, exits_on_error, fail, set_option, warn
from pipeline.cli.tables import print_table
from pipeline.schedule import store as store_mod
from pipeline.schedule.scheduler import POLL_S, UNKNOWN_TIMEOUT
from pipeline.schedule.policy import (CONCURRENCY, DEFAULT_CONCURRENCY, DEFAULT_GRACE_S, DEFAULT_MISSED,
                                      DEFAULT_RETRIES, DEFAULT_TRIGGER, MISSED, TRIGGERS)

app = typer.Typer(help="Recurring runs of a job spec on a cron schedule (local or on a Ray cluster).",
                  no_args_is_help=True)

StateOption = typer.Option(None, "--state", envvar=store_mod.ENV_VAR, show_envvar=True,
                           help="Schedule state file (SQLite; on a local disk). Default: ~/.mmpipe/schedule.db")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def _open(state: Optional[Path]):
    try:
        return store_mod.Store(state)
    except (OSError, RuntimeError, sqlite3.Error) as e:
        fail(f"schedule state {state or store_mod.default_path()}: {e}")


def _get(store, name: str):
    with exits_on_error(BAD_INPUT):
        return store.get(name)


def _choice(value: str, choices: tuple[str, ...], flag: str) -> str:
    if value not in choices:
        fail(f"{flag} {value!r}: choose one of {', '.join(choices)}")
    return value


def _local(t: datetime | None, tz: str) -> str:
    if t is None:
        return "-"
    from pipeline.schedule.cron import parse_timezone

    return t.astimezone(parse_timezone(tz)).strftime("%Y-%m-%d %H:%M %Z")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _logging(debug: bool = False) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    if debug:  # the scheduler's tracebacks, not every library's debug chatter
        logging.getLogger("mmpipe.schedule").setLevel(logging.DEBUG)


DebugOption = typer.Option(False, "--debug", help="Log tracebacks of failed passes (and other detail)")
UnknownTimeoutOption = typer.Option(int(UNKNOWN_TIMEOUT.total_seconds()), "--unknown-timeout", min=1,
                                    help="Seconds a run's status may stay unreadable (cluster unreachable) before "
                                         "the run is marked failed")


@app.command()
def add(
    name: str = typer.Argument(..., help="Schedule name (letters, digits, . _ -); names the runs folder too"),
    spec: Path = typer.Option(..., "--spec", help="Job spec to run, e.g. jobs/retrain.yaml (stored absolute)"),
    cron: Optional[str] = typer.Option(None, help="Cron expression, e.g. '0 3 * * *' (default: the spec's "
                                                  "schedule.cron)"),
    tz: Optional[str] = typer.Option(None, "--timezone", help="IANA time zone of the cron expression (default: "
                                                              "the spec's schedule.timezone, UTC)"),
    sets: Optional[list[str]] = set_option("Override for every run: --set train.epochs=5 (repeatable)"),
    address: Optional[str] = typer.Option(None, help="Ray dashboard URL: submit each run to this cluster "
                                                     "(default: run locally as a subprocess)"),
    concurrency: str = typer.Option(DEFAULT_CONCURRENCY, help="A due time while a run is active: forbid (skip "
                                                              "it), allow, replace (stop the active run)"),
    missed: str = typer.Option(DEFAULT_MISSED, help="Due times passed while no scheduler ran: skip, or run_once "
                                                    "(one catch-up run)"),
    trigger: str = typer.Option(DEFAULT_TRIGGER, help="always, or data-changed (fire only when the data's manifest "
                                                      "or shard listing changed since the last successful run)"),
    retries: int = typer.Option(DEFAULT_RETRIES, min=0, help="Extra attempts when a run cannot be started or its "
                                                             "process/job vanished (backoff 30 s, 1 min, 2 min, …)"),
    grace: int = typer.Option(DEFAULT_GRACE_S, min=0, help="Seconds after its due time a run still counts as on "
                                                           "time (later: --missed decides)"),
    runs_dir: Optional[str] = typer.Option(None, help="Runs go to RUNS_DIR/NAME/<due UTC>/run (default: "
                                                      "'runs' beside the state file; a URI for cluster runs)"),
    shared_runs_dir: bool = typer.Option(False, "--shared-runs-dir", help="--runs-dir is a local path that the "
                                                                         "cluster's nodes see too (NFS mount)"),
    paused: bool = typer.Option(False, help="Add it paused (resume later)"),
    state: Optional[Path] = StateOption,
) -> None:
    """Add a schedule. Its first run is the first due time after now."""
    for value, choices, flag in ((concurrency, CONCURRENCY, "--concurrency"), (missed, MISSED, "--missed"),
                                 (trigger, TRIGGERS, "--trigger")):
        _choice(value, choices, flag)
    spec_path = spec.expanduser().resolve()
    cron, tz = _check_spec(name, spec_path, spec, sets or [], cron, tz, trigger)
    store = _open(state)
    remote = address if address and not _local_address(address) else None
    runs_dir = _runs_dir(runs_dir, store.path.parent, remote, shared_runs_dir)
    now = _now()
    sched = store_mod.Schedule(
        name=name, spec=str(spec_path), overrides=list(sets or []), cron=cron, timezone=tz, address=address,
        concurrency=concurrency, missed=missed, trigger=trigger, retries=retries, grace_s=grace,
        runs_dir=runs_dir, cwd=os.getcwd(), paused=paused, cursor=now, created=now, updated=now)
    with exits_on_error(BAD_INPUT):
        store.add(sched)
    console.print(f"added schedule {name}: {cron} ({tz}), next run {_next(sched)}; state {store.path}",
                  highlight=False)


def _check_spec(name: str, spec_path: Path, spec: Path, sets: list[str], cron: Optional[str], tz: Optional[str],
                trigger: str) -> tuple[str, str]:
    """Validate the name, the spec and the cron expression; the cron expression and time zone to store."""
    from pipeline.schedule.cron import check_cron
    from pipeline.spec_checks import load_job

    if not _NAME.match(name):
        fail(f"schedule name {name!r}: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
    with exits_on_error(BAD_INPUT):
        job = load_job(spec_path, sets)
    cron = cron or job.schedule.cron
    if not cron:
        fail(f"no --cron given and {spec} has no schedule.cron")
    tz = tz or job.schedule.timezone
    with exits_on_error(BAD_INPUT):
        check_cron(cron, tz)
    if trigger == "data-changed":
        from pipeline.schedule.trigger import TriggerError, fingerprint

        try:
            fingerprint(job)
        except TriggerError as e:  # data may arrive later: say so now rather than at 3 am
            warn(f"trigger=data-changed: {e}")
    return cron, tz


def _runs_dir(runs_dir: Optional[str], state_dir: Path, remote: Optional[str], shared: bool) -> str:
    """The runs folder to store: absolute, or a URI. A cluster on another machine (``remote``) writes run.json
    where the scheduler must read it back, so a local folder needs --shared-runs-dir."""
    from pipeline import storage

    chosen = runs_dir or str(state_dir / "runs")
    if not storage.is_local(chosen):
        return chosen
    chosen = str(storage.local_path(chosen).expanduser().resolve())
    if remote and not shared:
        what = "--runs-dir" if runs_dir else "the default runs folder"
        fail(f"{what} {chosen} is a local path but --address {remote} is another machine: runs would write "
              "run.json there, where this scheduler cannot read their outcome; pass --runs-dir s3://… / gs://…, "
              "or a path mounted on both (shared filesystem) with --shared-runs-dir")
    return chosen


def _local_address(address: str) -> bool:
    """Whether the dashboard URL is on this machine (127.0.0.1, localhost, ::1); a malformed one is refused."""
    from pipeline.cluster.jobs import is_local, resolve_address

    with exits_on_error(BAD_INPUT):
        return is_local(resolve_address(address))


def _next_due(sched) -> datetime | None:
    """When the schedule fires next; None while it is paused."""
    from pipeline.schedule.cron import next_due, parse_timezone

    if sched.paused:
        return None
    return next_due(sched.cron, parse_timezone(sched.timezone), max(sched.cursor, _now()))


def _next(sched) -> str:
    return "- (paused)" if sched.paused else _local(_next_due(sched), sched.timezone)


def _text(value) -> str:
    """A setting for people: no Python reprs (None, False, ['a'])."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value) or "-"
    return str(value)


@app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Print JSON"),
          state: Optional[Path] = StateOption) -> None:
    """All schedules with their next due time and last run."""
    store = _open(state)
    rows = []
    for s in store.schedules():
        last = store.runs(s.name, limit=1)
        rows.append((s, last[0] if last else None))
    if as_json:
        print(json.dumps([{"name": s.name, "cron": s.cron, "timezone": s.timezone, "paused": s.paused,
                           "next": store_mod.iso(_next_due(s)),
                           "last": last.as_dict() if last else None} for s, last in rows], indent=1))
        return
    if not rows:
        console.print(f"no schedules in {store.path}", highlight=False, soft_wrap=True)
        return
    table = Table("name", "cron", "next", "target", "policies", "last run")
    for s, last in rows:
        table.add_row(s.name, f"{s.cron} ({s.timezone})", _next(s), s.address or "local",
                      f"{s.concurrency}/{s.missed}/{s.trigger}",
                      f"#{last.id} {last.status} ({_local(last.due, s.timezone)})" if last else "-")
    print_table(table)


@app.command()
def show(name: str, as_json: bool = typer.Option(False, "--json", help="Print JSON"),
         state: Optional[Path] = StateOption) -> None:
    """One schedule: its settings, next due times and active runs."""
    from pipeline.schedule.cron import iter_due, parse_timezone

    store = _open(state)
    s = _get(store, name)
    it = iter_due(s.cron, parse_timezone(s.timezone), max(s.cursor, _now()))
    upcoming = [next(it) for _ in range(3)]
    active = store.active(name)
    if as_json:
        d = {k: (store_mod.iso(v) if isinstance(v, datetime) else v) for k, v in vars(s).items()}
        d.update(next=[store_mod.iso(t) for t in upcoming], active=[r.as_dict() for r in active])
        print(json.dumps(d, indent=1))
        return
    for key in ("spec", "overrides", "cron", "timezone", "address", "concurrency", "missed", "trigger", "retries",
                "grace_s", "runs_dir", "cwd", "paused"):
        value = getattr(s, key)
        shown = "local" if key == "address" and value is None else _text(value)
        console.print(f"{key:12} {shown}", highlight=False, soft_wrap=True)
    console.print(f"{'next':12} " + ("(paused) " if s.paused else "") +
                  ", ".join(_local(t, s.timezone) for t in upcoming), highlight=False)
    for r in active:
        console.print(f"{'active':12} #{r.id} due {_local(r.due, s.timezone)} {r.status} attempt {r.attempts} "
                      f"{'pid ' + str(r.pid) if r.pid else r.job_id or ''} {r.run_dir or ''}", highlight=False)


@app.command()
def pause(name: str, state: Optional[Path] = StateOption) -> None:
    """Stop firing new runs (active runs go on)."""
    store = _open(state)
    _get(store, name)
    store.set_paused(name, True, _now())
    console.print(f"paused {name}")


@app.command()
def resume(name: str, state: Optional[Path] = StateOption) -> None:
    """Fire again, from the next due time after now (due times during the pause are not caught up)."""
    store = _open(state)
    _get(store, name)
    store.set_paused(name, False, _now())
    console.print(f"resumed {name}: next run {_next(store.get(name))}", highlight=False)


@app.command()
def remove(name: str, force: bool = typer.Option(False, help="Remove even with active runs (they go on, "
                                                                 "untracked)"),
           state: Optional[Path] = StateOption) -> None:
    """Delete a schedule and its run history (run folders on disk are kept)."""
    store = _open(state)
    _get(store, name)
    active = store.active(name)
    if active and not force:
        fail(f"schedule {name} has {len(active)} active run(s) ({', '.join(f'#{r.id} {r.status}' for r in active)}); "
              "wait for them, or pass --force")
    store.remove(name)
    console.print(f"removed {name}")


@app.command()
def history(name: str, limit: int = typer.Option(20, min=1, help="Newest runs first, this many"),
            as_json: bool = typer.Option(False, "--json", help="Print JSON"),
            state: Optional[Path] = StateOption) -> None:
    """A schedule's runs: due time, status, registered version, promotion decision, reason or error."""
    store = _open(state)
    s = _get(store, name)
    runs = store.runs(name, limit=limit)
    if as_json:
        print(json.dumps([r.as_dict() for r in runs], indent=1))
        return
    from pipeline.schedule.scheduler import describe_outcome

    if not runs:
        console.print(f"schedule {name} has no runs yet (next: {_next(s)})", highlight=False)
        return
    for r in runs:  # one line per run: readable in a narrow terminal, greppable in a log
        where = f"pid {r.pid}" if r.pid else f"job {r.job_id}" if r.job_id else ""
        facts = [f"attempt {r.attempts}" if r.attempts else "", where,
                 f"ended {_local(r.ended, s.timezone)}" if r.ended else ""]
        note = describe_outcome(r) if r.status == "succeeded" else (r.error or r.reason or "")
        console.print(f"#{r.id:<4} {_local(r.due, s.timezone)}  {r.status:<9} {', '.join(f for f in facts if f)}"
                      + (f"  {note}" if note else ""), highlight=False, soft_wrap=True)


@app.command()
def tick(names: Optional[list[str]] = typer.Argument(None, help="Only these schedules (default: all)"),
         force: bool = typer.Option(False, help="Fire due times even when the data trigger says unchanged"),
         unknown_timeout: int = UnknownTimeoutOption, debug: bool = DebugOption,
         state: Optional[Path] = StateOption) -> None:
    """One pass: record finished runs, fire what is due. For system cron / systemd timers (every minute).
    Exits 1 when a schedule's pass failed (each failure is logged in one line)."""
    from pipeline.schedule.scheduler import Scheduler

    _logging(debug)
    store = _open(state)
    with exits_on_error(BAD_INPUT):
        result = Scheduler(store, unknown_timeout=timedelta(seconds=unknown_timeout)).tick(
            force=force, names=names or None)
    if not result.acquired:
        h = result.holder
        err.print(f"another scheduler ({h.host}, pid {h.pid}) holds the lease until {store_mod.iso(h.expires)}; "
                  "this pass did nothing", highlight=False)
    if result.failures:
        fail(f"{len(result.failures)} failure(s) in this pass: " + "; ".join(result.failures), code=FAILED)


@app.command()
def serve(poll: float = typer.Option(POLL_S, min=1.0, help="Seconds between passes (runs are polled this "
                                                          "often)"),
          unknown_timeout: int = UnknownTimeoutOption, debug: bool = DebugOption,
          state: Optional[Path] = StateOption) -> None:
    """Run passes until Ctrl-C / SIGTERM. Runs started go on after it stops; the next scheduler picks them up."""
    from pipeline.schedule.scheduler import Scheduler

    _logging(debug)
    store = _open(state)
    stop = threading.Event()

    def on_signal(signum, _frame):
        logging.getLogger("mmpipe.schedule").info("%s: stopping after this pass", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    logging.getLogger("mmpipe.schedule").info("serving %s (%d schedule(s))", store.path, len(store.schedules()))
    Scheduler(store, unknown_timeout=timedelta(seconds=unknown_timeout)).serve(stop, poll_s=poll)
    logging.getLogger("mmpipe.schedule").info("stopped")


@app.command()
def export(name: str,
           fmt: str = typer.Option(..., "--format", help="kuberay (RayCronJob) or k8s-cronjob (CronJob creating a "
                                                         "RayJob)"),
           image: Optional[str] = typer.Option(None, help="Container image with mmpipe and the spec "
                                                          "(default: mmpipe:<version>)"),
           spec_path: Optional[str] = typer.Option(None, help="The spec's path inside the image (default: relative "
                                                              "to where the schedule was added)"),
           runs_dir: Optional[str] = typer.Option(None, help="Run folder root as the cluster sees it (default: the "
                                                             "schedule's)"),
           out: Optional[Path] = typer.Option(None, help="Write here instead of stdout"),
           state: Optional[Path] = StateOption) -> None:
    """Kubernetes manifest(s) for a schedule: KubeRay RayCronJob, or a batch/v1 CronJob that creates a RayJob."""
    from pipeline.io import atomic_write_text
    from pipeline.schedule.export import FORMATS, export as render

    _choice(fmt, FORMATS, "--format")
    store = _open(state)
    text = render(_get(store, name), fmt, image=image, spec_path=spec_path, runs_dir=runs_dir)
    if out:
        atomic_write_text(out, text)
        console.print(f"wrote {out}")
    else:
        print(text, end="")

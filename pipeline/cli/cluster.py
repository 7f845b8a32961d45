"""``mmpipe submit`` and ``mmpipe jobs list|status|logs|stop``: thin wrappers over pipeline.cluster.jobs."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.table import Table

from pipeline.cli.common import FAILED, console, err, exits_on_error, set_option, warn

app = typer.Typer()  # submit, a plain command
jobs_app = typer.Typer(help="Jobs on a Ray cluster: list, status, logs, stop.", no_args_is_help=True)

SubmitAddressOption = typer.Option(None, "--address", help="Dashboard URL, e.g. http://127.0.0.1:8265 (default: "
                                                           "the spec's submit.address, then RAY_ADDRESS)")
AddressOption = typer.Option(None, "--address", help="Dashboard URL, e.g. http://127.0.0.1:8265 (default: "
                                                     "RAY_ADDRESS when it is such a URL)")
JobIdArg = typer.Argument(..., help="The job's submission id (from `mmpipe submit` or `mmpipe jobs list`)")


def _end(status: str, job_id: str) -> NoReturn:
    """Exit 0 only when the job succeeded, so scripts and schedulers can act on the result."""
    colour = "green" if status == "SUCCEEDED" else "red"
    err.print(f"job {job_id}: [{colour}]{status}[/]", highlight=False)
    raise typer.Exit(0 if status == "SUCCEEDED" else 1)


def _write(chunk: str) -> None:
    sys.stdout.write(chunk)
    sys.stdout.flush()


@app.command()
def submit(
    spec: Path = typer.Argument(..., help="Job spec YAML"),
    set_: Optional[list[str]] = set_option("Override a spec field (repeatable)"),
    address: Optional[str] = SubmitAddressOption,
    run_dir: Optional[str] = typer.Option(None, help="Run directory on storage every node sees (shared path "
                                                     "or s3:// / gs:// URI); default: workflow.run_dir"),
    submission_id: Optional[str] = typer.Option(None, help="Job id to use (must be new on the cluster)"),
    wait: bool = typer.Option(False, "--wait", help="Wait for the job to end; exit 1 unless it succeeded"),
    follow: bool = typer.Option(False, "--follow", help="Stream the job's log until it ends; exit 1 unless it "
                                                        "succeeded"),
) -> None:
    """Run the spec's workflow (`mmpipe run`) on a Ray cluster as a Ray job; prints the job id and its URL."""
    from pipeline.cluster import jobs as J
    from pipeline.spec_checks import load_job

    with exits_on_error(FAILED):  # a spec error exits 2 (bad input), a cluster error 1
        spec_address = None if address else load_job(spec, set_ or []).submit.address
        conn = J.connect(address, spec_address, with_spec=True)
        plan = J.plan_submission(spec, conn.address, set_ or [], run_dir)
        for w in plan.warnings:
            warn(w)
        job_id = J.send(conn, plan, submission_id)
    console.print(f"submitted {job_id}\n  dashboard: {J.dashboard_url(conn.address, job_id)}\n"
                  f"  run dir:   {plan.run_dir}\n  follow:    mmpipe jobs logs {job_id} --follow "
                  f"--address {conn.address}", highlight=False, soft_wrap=True)
    if follow or wait:
        with exits_on_error(FAILED):
            final = J.follow(conn, job_id, _write) if follow else J.wait_for(conn, job_id)
        _end(final, job_id)


@jobs_app.command("list")
@exits_on_error(FAILED)
def list_(address: Optional[str] = AddressOption) -> None:
    """Every job the cluster knows, newest first."""
    from pipeline.cluster import jobs as J

    found = J.list_jobs(address)
    table = Table()
    table.add_column("job id", no_wrap=True)  # copied into other commands: never cut short
    table.add_column("status", no_wrap=True)
    for col in ("started", "spec", "run dir"):
        table.add_column(col, overflow="fold")
    for job in sorted(found, key=lambda j: j.start_time or 0, reverse=True):
        if job.submission_id is None:  # drivers that attached with ray.init, not submitted jobs
            continue
        started = datetime.datetime.fromtimestamp(job.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S") \
            if job.start_time else ""
        meta = job.metadata or {}
        table.add_row(job.submission_id, job.status.value, started, meta.get("mmpipe.spec", ""),
                      meta.get("mmpipe.run_dir", ""))
    console.print(table)


@jobs_app.command()
@exits_on_error(FAILED)
def status(job_id: str = JobIdArg, address: Optional[str] = AddressOption) -> None:
    """The job's status, and its error when it failed."""
    from pipeline.cluster import jobs as J

    info = J.job_info(address, job_id)
    console.print(f"{job_id}: {info.status.value}", highlight=False)
    if info.message:
        console.print(info.message, highlight=False, markup=False, soft_wrap=True)


@jobs_app.command()
@exits_on_error(FAILED)
def logs(job_id: str = JobIdArg, address: Optional[str] = AddressOption,
         follow: bool = typer.Option(False, "--follow", "-f", help="Stream new lines until the job ends; exit 1 "
                                                                   "unless it succeeded")) -> None:
    """The job's driver log (stdout and stderr of `mmpipe run`)."""
    from pipeline.cluster import jobs as J

    if not follow:
        _write(J.job_logs(address, job_id))
        return
    _end(J.follow(J.connect(address), job_id, _write), job_id)


@jobs_app.command()
@exits_on_error(FAILED)
def stop(job_id: str = JobIdArg, address: Optional[str] = AddressOption) -> None:
    """Ask the job to stop (its driver gets SIGTERM, then SIGKILL)."""
    from pipeline.cluster import jobs as J

    stopped = J.stop_job(address, job_id)
    console.print(f"{job_id}: {'stopping' if stopped else 'was not running'}", highlight=False)

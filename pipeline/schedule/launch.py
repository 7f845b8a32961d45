"""Start, watch and stop one scheduled run: as a detached local process, or as a Ray job on a cluster.

Both launchers make ``start`` idempotent per attempt, because the scheduler may die between starting a run and
recording that it did: the local one finds the wrapper's pid file, the cluster one reuses a submission id derived
from (schedule, due time, attempt) and adopts the job that already has it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

from pipeline import storage
from pipeline.schedule.store import Run, Schedule, process_alive

_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding the `pipeline` package
_children: dict[int, subprocess.Popen] = {}  # runs this process started: reaped so they never linger as zombies


class LaunchError(RuntimeError):
    """A run could not be started (submission failed); the scheduler retries with backoff unless ``retry`` is
    False (a mistake in the spec: another attempt fails the same way)."""

    def __init__(self, message: str, retry: bool = True):
        super().__init__(message)
        self.retry = retry


class Undecided(RuntimeError):
    """Whether an attempt was started cannot be told now (cluster unreachable): look again next pass."""


@dataclass(frozen=True)
class Poll:
    state: str  # running | exited | lost | stopped | unknown
    returncode: int | None = None
    detail: str | None = None


def stamp(due: datetime) -> str:
    return due.strftime("%Y%m%dT%H%M%SZ")


def run_paths(sched: Schedule, due: datetime, state_dir: Path) -> tuple[str, str]:
    """(control_dir, run_dir) for one due time. The run dir may be a URI (cluster runs); the control dir, holding
    the launch log and the wrapper's pid/exit files, is always local."""
    leaf = (sched.name, stamp(due))
    if not storage.is_local(sched.runs_dir):
        return str(state_dir.joinpath("runs", *leaf)), storage.join(sched.runs_dir, *leaf, "run")
    area = storage.local_path(sched.runs_dir).joinpath(*leaf)
    return str(area), str(area / "run")


def mmpipe_run_command(sched: Schedule, run_dir: str) -> list[str]:
    sets = [x for o in sched.overrides for x in ("--set", o)]
    return [sys.executable, "-m", "pipeline.cli", "run", sched.spec, "--run-dir", run_dir, *sets]


def reap() -> None:
    for pid, proc in list(_children.items()):
        if proc.poll() is not None:
            del _children[pid]


def group_alive(pgid: int) -> bool:
    reap()  # a zombie child of ours would count as alive
    return process_alive(pgid, group=True)


class LocalLauncher:
    """``mmpipe run`` (or ``command``) in its own session, output to ``<control_dir>/launch.log``."""
    kind = "local"

    def __init__(self, command: Callable[[Schedule, str], list[str]] = mmpipe_run_command,
                 start_grace_s: float = 30.0):
        self.command = command
        self.start_grace_s = start_grace_s  # a wrapper writes its pid file within this after being started

    def start(self, sched: Schedule, run: Run, attempt: int) -> dict:
        control = Path(run.control_dir)
        pid = self.adopt(sched, run, attempt)
        if pid is not None:
            return {"pid": pid}
        cmd = self.command(sched, run.run_dir)
        env = dict(os.environ)
        # The child imports the same `pipeline` as this scheduler, installed or not.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PROJECT_ROOT, env.get("PYTHONPATH")) if p)
        try:
            control.mkdir(parents=True, exist_ok=True)
            with open(control / "launch.log", "ab") as log:
                log.write(f"=== attempt {attempt} of run #{run.id} (due {run.due.isoformat()}): "
                          f"{' '.join(cmd)}\n".encode())
                log.flush()
                proc = subprocess.Popen(
                    [sys.executable, "-m", "pipeline.schedule.wrap", str(control), str(attempt), "--", *cmd],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                    cwd=sched.cwd if os.path.isdir(sched.cwd) else None,
                    start_new_session=True)  # its own process group: Ctrl-C on serve leaves it running
        except OSError as e:
            raise LaunchError(f"cannot start the run in {control}: {e}") from e
        _children[proc.pid] = proc
        return {"pid": proc.pid}

    def adopt(self, sched: Schedule, run: Run, attempt: int) -> int | None:
        """The pid of this attempt's wrapper if it was started (by us or a scheduler that died since)."""
        try:
            return int(json.loads((Path(run.control_dir) / f"attempt-{attempt}.pid").read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def poll(self, sched: Schedule, run: Run) -> Poll:
        exit_file = Path(run.control_dir) / f"attempt-{run.attempts}.exit"
        for _ in range(2):  # the exit file is written just before the group empties: look again after the check
            if exit_file.exists():
                try:
                    return Poll("exited", int(json.loads(exit_file.read_text())["returncode"]))
                except (OSError, ValueError, KeyError, TypeError) as e:
                    return Poll("exited", None, f"unreadable exit status {exit_file}: {e}")
            if run.pid is not None and group_alive(run.pid):
                return Poll("running")
        return Poll("lost", None, f"process group {run.pid} is gone and left no exit status (killed?)")

    def stop(self, sched: Schedule, run: Run, timeout_s: float = 10.0) -> None:
        if run.pid is None:
            return
        for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
            _signal_run(run.pid, sig)
            end = time.monotonic() + wait
            while time.monotonic() < end:
                if not group_alive(run.pid):
                    return
                time.sleep(0.1)


def _signal_run(pid: int, sig: int) -> None:
    """SIGTERM goes to the wrapper, which passes it on: sent to the whole group, the command would get it twice.
    The group gets it when the wrapper is gone (its pid stays reserved while the group lives) and for SIGKILL."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if sig != signal.SIGKILL:
            try:
                os.kill(pid, sig)
                return
            except ProcessLookupError:
                pass
        os.killpg(pid, sig)


@contextlib.contextmanager
def _cwd(path: str) -> Iterator[None]:
    old = os.getcwd()
    if os.path.isdir(path):
        os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


class ClusterLauncher:
    """``pipeline.cluster.jobs.submit_run`` against the schedule's ``--address`` (imported only when used)."""
    kind = "cluster"

    def __init__(self, jobs=None):
        self._jobs = jobs

    @property
    def jobs(self):
        if self._jobs is None:
            try:
                from pipeline.cluster import jobs
            except ImportError as e:
                raise LaunchError(f"cluster submission is not available in this install ({e})") from e
            self._jobs = jobs
        return self._jobs

    @staticmethod
    def submission_id(sched: Schedule, run: Run, attempt: int) -> str:
        # Same (schedule, due time, attempt), same id: re-submitting after a crash finds the job, not a twin.
        return f"mmpipe-{sched.name}-{stamp(run.due)}" + (f"-a{attempt}" if attempt > 1 else "")

    def start(self, sched: Schedule, run: Run, attempt: int) -> dict:
        from pipeline.spec import SpecError

        jobs, sid = self.jobs, self.submission_id(sched, run, attempt)
        try:
            with _cwd(sched.cwd):  # submit from where the schedule was added, as the user would have
                job_id = jobs.submit_run(Path(sched.spec), sched.address, list(sched.overrides),
                                         run_dir=run.run_dir, submission_id=sid)
        except SpecError as e:
            raise LaunchError(f"invalid spec {sched.spec}: {e}", retry=False) from e
        except OSError as e:  # staging the working dir (disk full, unreadable file): may pass on a later attempt
            raise LaunchError(f"cannot stage the job's working dir: {e}") from e
        except jobs.ClusterError as e:
            with contextlib.suppress(Undecided):
                if self.adopt(sched, run, attempt) is not None:
                    return {"job_id": sid}  # submitted before the scheduler died: the id is taken by our job
            raise LaunchError(str(e)) from e
        return {"job_id": job_id}

    def adopt(self, sched: Schedule, run: Run, attempt: int) -> str | None:
        """The submission id when this attempt's job exists, None when the cluster says it does not; Undecided
        when the cluster cannot be asked (submitting again then could run the job twice)."""
        sid = self.submission_id(sched, run, attempt)
        try:
            self.jobs.job_status(sched.address, sid)
        except self.jobs.NoSuchJob:
            return None
        except self.jobs.ClusterError as e:
            raise Undecided(f"cannot reach the cluster: {e}") from e
        return sid

    def poll(self, sched: Schedule, run: Run) -> Poll:
        jobs = self.jobs
        try:
            status = jobs.job_status(sched.address, run.job_id)
        except jobs.ClusterError as e:
            return Poll("unknown", None, f"cannot reach the cluster: {e}")
        if status == "SUCCEEDED":
            return Poll("exited", 0)
        if status == "FAILED":
            return Poll("exited", 1, f"Ray job {run.job_id} FAILED{_log_tail(jobs, sched.address, run.job_id)}")
        if status == "STOPPED":
            return Poll("stopped", None, f"Ray job {run.job_id} was stopped")
        return Poll("running")

    def stop(self, sched: Schedule, run: Run, timeout_s: float = 10.0) -> None:
        if run.job_id:
            with contextlib.suppress(self.jobs.ClusterError):
                self.jobs.stop_job(sched.address, run.job_id)


def _log_tail(jobs, address: str, job_id: str, lines: int = 5) -> str:
    try:
        tail = jobs.job_logs(address, job_id).strip().splitlines()[-lines:]
    except jobs.ClusterError:
        return ""
    return ("; last log lines: " + " | ".join(tail)) if tail else ""

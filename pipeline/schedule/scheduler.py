"""One scheduler pass (``tick``) and the loop around it (``serve``).

A pass, under the ``scheduler`` lease:
  1. reconcile each schedule's active runs: start claimed ones, retry failed submissions whose backoff is over,
     adopt or restart half-launched ones, record finished ones (exit status + run.json outcome), resume lost ones;
  2. for each schedule that is not paused, record the latest due time in (cursor, now] — fired or skipped with a
     reason — and apply the concurrency policy and the data trigger before launching.

Every step is written to the state file before the next one starts, so a pass killed anywhere is finished by the
next one: a claimed run is admitted, a half-launched one adopted (pid file / submission id), a lost one resumed in
its run dir (``mmpipe run`` resumes at the first incomplete step). Run state changes are compare-and-set
(``Store.transition``): a scheduler that stalled past its lease cannot redo what its successor did.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable

from pipeline.schedule.cron import due_window, next_due, parse_timezone
from pipeline.schedule.launch import ClusterLauncher, LaunchError, LocalLauncher, Poll, Undecided, run_paths
from pipeline.schedule.outcome import failure, outcome_values, read_run_json, run_json
from pipeline.schedule.policy import backoff, plan
from pipeline.schedule.store import Lease, Run, Schedule, Store, iso

LEASE = "scheduler"
POLL_S = 15.0  # serve's longest sleep between passes: how late a finished run may be noticed
LEASE_TTL = timedelta(seconds=60)  # serve renews every pass (≤ poll interval, POLL_S by default)
UNKNOWN_TIMEOUT = timedelta(hours=1)  # a run whose status cannot be read this long is failed

log = logging.getLogger("mmpipe.schedule")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class TickResult:
    acquired: bool
    holder: Lease | None = None  # who holds the lease when we did not get it
    events: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # one line per failed step of a schedule, or the lost lease


class LeaseLost(RuntimeError):
    """Another scheduler took the lease while this pass ran (it stalled past the lease's expiry)."""


class Scheduler:
    def __init__(self, store: Store, clock: Callable[[], datetime] = utcnow, local: LocalLauncher | None = None,
                 cluster: ClusterLauncher | None = None, lease_ttl: timedelta = LEASE_TTL,
                 unknown_timeout: timedelta = UNKNOWN_TIMEOUT):
        self.store, self.clock, self.lease_ttl, self.unknown_timeout = store, clock, lease_ttl, unknown_timeout
        self.local, self.cluster = local or LocalLauncher(), cluster or ClusterLauncher()
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.state_dir = store.path.parent
        self._events: list[str] = []
        self._failing: dict[tuple[str, str], str] = {}  # (schedule, step) -> its last error, logged once

    def launcher(self, sched: Schedule):
        return self.cluster if sched.address else self.local

    def _say(self, sched: Schedule, message: str, level: int = logging.INFO) -> None:
        line = f"{sched.name}: {message}"
        log.log(level, line)
        self._events.append(line)

    # ------------------------------------------------------------------ passes

    def tick(self, force: bool = False, names: list[str] | None = None, keep_lease: bool = False) -> TickResult:
        """One pass over the schedules (all, or ``names``). ``force`` ignores the data trigger for due times this
        pass fires. Does nothing, and says who, when another scheduler holds the lease."""
        now = self.clock()
        other = self.store.acquire_lease(LEASE, self.holder, now, self.lease_ttl)
        if other is not None:
            return TickResult(False, other)
        self._events, failures = [], []
        try:
            for sched in self.store.schedules(names):
                failures += self._pass(sched, now, force)
        except LeaseLost as e:
            log.warning("%s", e)
            failures.append(str(e))
        finally:
            if not keep_lease:
                self.store.release_lease(LEASE, self.holder)
        return TickResult(True, None, self._events, failures)

    def _pass(self, sched: Schedule, now: datetime, force: bool) -> list[str]:
        """Reconcile, then fire: a run that cannot be reconciled must not keep later due times from being recorded."""
        self._hold_lease()
        failed = [self._guard(sched, "reconciling its runs", self._reconcile, sched, now)]
        if not sched.paused:
            self._hold_lease()
            failed.append(self._guard(sched, "firing due times",
                                      lambda: self._fire_due(self.store.get(sched.name), now, force)))
        return [f for f in failed if f]

    def _hold_lease(self) -> None:
        other = self.store.acquire_lease(LEASE, self.holder, self.clock(), self.lease_ttl)
        if other is not None:
            raise LeaseLost(f"lost the scheduler lease to {other.host} pid {other.pid} mid-pass (the pass took over "
                            f"{int(self.lease_ttl.total_seconds())} s); stopped this pass, the new holder goes on")

    def _guard(self, sched: Schedule, step: str, fn: Callable, *args) -> str | None:
        """Run one step; an error is one line (logged when it first appears or changes; traceback at DEBUG)."""
        key = (sched.name, step)
        try:
            fn(*args)
        except LeaseLost:
            raise
        except Exception as e:  # one broken schedule must not stop the others
            line = f"{sched.name}: {step} failed: {type(e).__name__}: {e}"
            log.log(logging.DEBUG if self._failing.get(key) == line else logging.ERROR, "%s", line)
            log.debug("%s: traceback", sched.name, exc_info=True)
            self._failing[key] = line
            self._events.append(line)
            return line
        self._failing.pop(key, None)
        return None

    def serve(self, stop: threading.Event, poll_s: float = POLL_S) -> None:
        """Pass after pass until ``stop`` is set; sleeps until the next due time or ``poll_s`` (runs are polled)."""
        waiting_for: str | None = None
        try:
            while not stop.is_set():
                result = self.tick(keep_lease=True)
                if not result.acquired:
                    h = result.holder
                    if h.holder != waiting_for:
                        log.info("waiting: another scheduler (%s, pid %s) holds the lease until %s",
                                 h.host, h.pid, iso(h.expires))
                        waiting_for = h.holder
                else:
                    waiting_for = None
                stop.wait(max(1.0, min(poll_s, self.seconds_to_next_due())))
        finally:
            self.store.release_lease(LEASE, self.holder)

    def seconds_to_next_due(self) -> float:
        now = self.clock()
        dues = [next_due(s.cron, parse_timezone(s.timezone), max(s.cursor, now))
                for s in self.store.schedules() if not s.paused]
        return min(((d - now).total_seconds() for d in dues), default=3600.0)

    # ------------------------------------------------------------------ due times

    def _fire_due(self, sched: Schedule, now: datetime, force: bool) -> None:
        window = due_window(sched.cron, parse_timezone(sched.timezone), sched.cursor, now)
        if window is None:
            return
        p = plan(window, now, sched.missed, timedelta(seconds=sched.grace_s))
        run = self.store.claim(sched.name, p.due, window.latest, "pending" if p.fire else "skipped", p.reason, now)
        if run is None:
            self._say(sched, f"due {iso(p.due)} was recorded already (another scheduler); nothing to do")
        elif not p.fire:
            self._say(sched, f"run #{run.id} due {iso(p.due)} skipped: {p.reason}")
        else:
            if p.reason:
                self._say(sched, f"run #{run.id} due {iso(p.due)}: {p.reason}")
            self._admit(sched, run, now, force)

    def _admit(self, sched: Schedule, run: Run, now: datetime, force: bool) -> None:
        """Concurrency policy, data trigger, then launch: for a claimed due time (attempts == 0)."""
        control, run_dir = run_paths(sched, run.due, self.state_dir)
        run = self.store.update_run(run.id, control_dir=control, run_dir=run_dir)
        others = [r for r in self.store.active(sched.name) if r.id != run.id]
        if others and sched.concurrency == "forbid":
            o = others[0]
            return self._end(sched, run, now, "skipped",
                             reason=f"run #{o.id} (due {iso(o.due)}) is still {o.status}; concurrency=forbid")
        if others and sched.concurrency == "replace":
            for o in others:
                self._stop(sched, o, now, f"replaced by run #{run.id} (due {iso(run.due)}); concurrency=replace")
        if sched.trigger == "data-changed":
            from pipeline.schedule.trigger import TriggerError, fingerprint
            from pipeline.spec import SpecError
            from pipeline.spec_checks import load_job as load_spec

            try:
                fp = fingerprint(load_spec(sched.spec, sched.overrides))
            except (SpecError, TriggerError) as e:
                return self._end(sched, run, now, "failed", error=f"data trigger: {e}")
            last = self.store.last_success(sched.name)
            unchanged = last is not None and last.fingerprint == fp
            if unchanged and not force:
                return self._end(sched, run, now, "skipped",
                                 reason=f"data unchanged since run #{last.id} (due {iso(last.due)}) succeeded "
                                        f"(fingerprint {fp[:12]}); trigger=data-changed")
            run = self.store.update_run(run.id, fingerprint=fp, forced=unchanged)
            if unchanged:
                self._say(sched, f"run #{run.id}: data unchanged, fired anyway (--force)")
        self._launch(sched, run, now, attempt=1)

    # ------------------------------------------------------------------ launching

    def _launch(self, sched: Schedule, run: Run, now: datetime, attempt: int, reason: str | None = None) -> None:
        # Intent first: a scheduler killed after this line leaves 'launching', which the next pass adopts or redoes.
        launching = self.store.transition(run, status="launching", attempts=attempt, launched=now, next_attempt=None,
                                          started=run.started or now, pid=None, job_id=None, unknown_since=None,
                                          **({"reason": reason} if reason else {}))
        if launching is None:
            return self._raced(sched, run)
        try:
            handle = self.launcher(sched).start(sched, launching, attempt)
        except LaunchError as e:
            return self._start_failed(sched, launching, now, attempt, e)
        except Exception as e:  # a bug or an error nobody expected: fail the run rather than leave it 'launching'
            log.debug("%s: traceback", sched.name, exc_info=True)
            return self._start_failed(sched, launching, now, attempt,
                                      LaunchError(f"{type(e).__name__}: {e}", retry=False))
        running = self.store.transition(launching, status="running", **handle)
        if running is None:
            return self._raced(sched, launching)
        where = f"pid {running.pid}" if running.pid else f"Ray job {running.job_id}"
        self._say(sched, f"run #{run.id} due {iso(run.due)} started (attempt {attempt}, {where}, "
                         f"run dir {running.run_dir})")

    def _start_failed(self, sched: Schedule, run: Run, now: datetime, attempt: int, e: LaunchError) -> None:
        if not e.retry:
            return self._end(sched, run, now, "failed", error=f"could not start (not retried): {e}")
        if attempt > sched.retries:
            return self._end(sched, run, now, "failed", error=f"could not start after {attempt} attempt(s): {e}")
        wait = backoff(attempt)
        if self.store.transition(run, status="pending", next_attempt=now + wait, error=f"attempt {attempt}: {e}"):
            self._say(sched, f"run #{run.id}: attempt {attempt} could not start ({e}); "
                             f"retrying in {int(wait.total_seconds())} s", logging.WARNING)
        else:
            self._raced(sched, run)

    def _raced(self, sched: Schedule, run: Run) -> None:
        self._say(sched, f"run #{run.id} was changed by another scheduler meanwhile (it was {run.status}, attempt "
                         f"{run.attempts}); left to that one", logging.WARNING)

    # ------------------------------------------------------------------ reconciling

    def _reconcile(self, sched: Schedule, now: datetime) -> None:
        launcher = self.launcher(sched)
        for run in self.store.active(sched.name):
            if run.status == "pending" and run.attempts == 0:  # claimed, then the scheduler died
                self._admit(sched, run, now, force=False)
            elif run.status == "pending":
                if run.next_attempt is None or run.next_attempt <= now:
                    self._launch(sched, run, now, run.attempts + 1)
            elif run.status == "launching":
                self._adopt(sched, run, now)
            else:
                self._check(sched, run, launcher.poll(sched, run), now)

    def _adopt(self, sched: Schedule, run: Run, now: datetime) -> None:
        """A run left 'launching' by a scheduler that died: adopt what it started, or start that attempt again."""
        try:
            handle = self.launcher(sched).adopt(sched, run, run.attempts)
        except Undecided as e:  # submitting again could run the job twice: wait until the cluster answers
            return self._unknown(sched, run, now, str(e))
        if handle is not None:
            key = "pid" if isinstance(handle, int) else "job_id"
            if not self.store.transition(run, status="running", unknown_since=None, **{key: handle}):
                return self._raced(sched, run)
            self._say(sched, f"run #{run.id}: adopted attempt {run.attempts} ({key} {handle}) "
                             "started by a scheduler that died before recording it")
        elif now - run.launched > timedelta(seconds=self.local.start_grace_s):
            self._launch(sched, run, now, run.attempts,
                         reason="re-launched: the previous scheduler died before the run started")

    def _unknown(self, sched: Schedule, run: Run, now: datetime, detail: str | None) -> None:
        """The run's state cannot be read (cluster unreachable): look again next pass, for ``unknown_timeout``."""
        since = run.unknown_since or now
        if now - since >= self.unknown_timeout:
            return self._end(sched, run, now, "failed",
                             error=f"status unknown for {_minutes(now - since)} ({detail}); given up after "
                                   f"--unknown-timeout {int(self.unknown_timeout.total_seconds())} s (a job may "
                                   "still be running on the cluster)")
        if run.unknown_since is None:
            self.store.transition(run, unknown_since=now)
        self._say(sched, f"run #{run.id}: status unknown ({detail}); will look again until "
                         f"{iso(since + self.unknown_timeout)}",
                  logging.WARNING if run.unknown_since is None else logging.DEBUG)

    def _check(self, sched: Schedule, run: Run, poll: Poll, now: datetime) -> None:
        if poll.state == "running":
            if run.unknown_since is not None and self.store.transition(run, unknown_since=None):
                self._say(sched, f"run #{run.id}: status readable again: running")
            return
        if poll.state == "unknown":
            self._unknown(sched, run, now, poll.detail)
        elif poll.state == "stopped":
            self._end(sched, run, now, "stopped", reason=poll.detail)
        elif poll.state == "exited":
            doc = read_run_json(run.run_dir)
            if poll.returncode == 0 and doc is None:  # e.g. written on a cluster node this machine cannot read
                self._end(sched, run, now, "failed",
                          error=f"exited 0 but left no readable {run_json(run.run_dir)}: its outcome (model "
                                "version, promotion) is unknown; cluster runs need a --runs-dir both can read")
            elif poll.returncode == 0:
                self._end(sched, run, now, "succeeded", doc=doc)
            else:
                error = failure(doc) or poll.detail or \
                    f"exit code {poll.returncode} (log: {run.control_dir}/launch.log)"
                self._end(sched, run, now, "failed", doc=doc, error=error)
        else:  # lost: killed without an exit status
            doc = read_run_json(run.run_dir)
            if (doc or {}).get("status") == "succeeded":
                self._end(sched, run, now, "succeeded", doc=doc)
            elif run.attempts <= sched.retries:
                self._launch(sched, run, now, run.attempts + 1,
                             reason=f"resumed in the same run dir after attempt {run.attempts}: {poll.detail}")
            else:
                self._end(sched, run, now, "failed", doc=doc,
                          error=f"{poll.detail}; gave up after {run.attempts} attempt(s) (--retries {sched.retries})")

    def _stop(self, sched: Schedule, run: Run, now: datetime, reason: str) -> None:
        if run.pid or run.job_id:
            self.launcher(sched).stop(sched, run)
        self._end(sched, run, now, "stopped", reason=reason)

    def _end(self, sched: Schedule, run: Run, now: datetime, status: str, doc: dict | None = None,
             reason: str | None = None, error: str | None = None) -> None:
        values = outcome_values(doc) if doc is not None else {}
        ended = self.store.transition(run, status=status, ended=now, next_attempt=None, error=error,
                                      **({"reason": reason} if reason else {}), **values)
        if ended is None:
            return self._raced(sched, run)
        detail = reason or error or ""
        if status == "succeeded":
            detail = describe_outcome(ended)
        self._say(sched, f"run #{run.id} due {iso(run.due)} {status}" + (f": {detail}" if detail else ""),
                  logging.WARNING if status == "failed" else logging.INFO)


def _minutes(d: timedelta) -> str:
    m = int(d.total_seconds()) // 60
    return f"{m // 60}h{m % 60:02d}m"


def describe_outcome(run: Run) -> str:
    if run.version is None:
        return "no model registered"
    verdict = {True: "promoted to champion", False: "not promoted", None: "promotion not decided"}[run.promoted]
    why = (run.decision or {}).get("reason")
    return f"registered version {run.version}, {verdict}" + (f" ({why})" if why else "")

"""One scheduler pass (``tick``) and the loop around it (``serve``).

A pass, under the ``scheduler`` lease:
  1. reconcile each schedule's active runs: start claimed ones, retry failed submissions whose backoff is over,
     adopt or restart half-launched ones, record finished ones (exit status + run.json outcome), resume lost ones;
  2. for each schedule that is not paused, record the latest due time in (cursor, now] — fired or skipped with a
     reason — and apply the concurrency policy and the data trigger before launching.

Every step is written to the state file before the next one starts, so a pass killed anywhere is finished by the
next one: a claimed run is admitted, a half-launched one adopted (pid file / submission id), a lost one resumed in
its run dir (``mmpipe run`` resumes at the first incomplete step).
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
from pipeline.schedule.launch import ClusterLauncher, LaunchError, LocalLauncher, Poll, run_paths
from pipeline.schedule.outcome import failure, outcome_values, read_run_json
from pipeline.schedule.policy import backoff, plan
from pipeline.schedule.store import Lease, Run, Schedule, Store, iso

LEASE = "scheduler"
LEASE_TTL = timedelta(seconds=60)  # serve renews every pass (≤ poll interval, 15 s by default)

log = logging.getLogger("mmpipe.schedule")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class TickResult:
    acquired: bool
    holder: Lease | None = None  # who holds the lease when we did not get it
    events: list[str] = field(default_factory=list)


class Scheduler:
    def __init__(self, store: Store, clock: Callable[[], datetime] = utcnow, local: LocalLauncher | None = None,
                 cluster: ClusterLauncher | None = None, lease_ttl: timedelta = LEASE_TTL):
        self.store, self.clock, self.lease_ttl = store, clock, lease_ttl
        self.local, self.cluster = local or LocalLauncher(), cluster or ClusterLauncher()
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.state_dir = store.path.parent
        self._events: list[str] = []

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
        self._events = []
        try:
            for sched in self.store.schedules(names):
                try:
                    self._reconcile(sched, now)
                    if not sched.paused:
                        self._fire_due(self.store.get(sched.name), now, force)
                except Exception as e:  # one broken schedule must not stop the others
                    log.exception("%s: pass failed", sched.name)
                    self._events.append(f"{sched.name}: pass failed: {type(e).__name__}: {e}")
                self.store.acquire_lease(LEASE, self.holder, self.clock(), self.lease_ttl)  # renew
        finally:
            if not keep_lease:
                self.store.release_lease(LEASE, self.holder)
        return TickResult(True, None, self._events)

    def serve(self, stop: threading.Event, poll_s: float = 15.0) -> None:
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
            from pipeline.spec import SpecError, load_spec

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
        run = self.store.update_run(run.id, status="launching", attempts=attempt, launched=now, next_attempt=None,
                                    started=run.started or now, pid=None, job_id=None,
                                    **({"reason": reason} if reason else {}))
        launcher = self.launcher(sched)
        try:
            handle = launcher.start(sched, run, attempt)
        except LaunchError as e:
            if attempt <= sched.retries:
                wait = backoff(attempt)
                self.store.update_run(run.id, status="pending", next_attempt=now + wait,
                                      error=f"attempt {attempt}: {e}")
                self._say(sched, f"run #{run.id}: attempt {attempt} could not start ({e}); "
                                 f"retrying in {int(wait.total_seconds())} s", logging.WARNING)
            else:
                self._end(sched, run, now, "failed", error=f"could not start after {attempt} attempt(s): {e}")
            return
        run = self.store.update_run(run.id, status="running", **handle)
        where = f"pid {run.pid}" if run.pid else f"Ray job {run.job_id}"
        self._say(sched, f"run #{run.id} due {iso(run.due)} started (attempt {attempt}, {where}, "
                         f"run dir {run.run_dir})")

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
                handle = launcher.adopt(sched, run, run.attempts)
                if handle is not None:
                    key = "pid" if isinstance(handle, int) else "job_id"
                    self.store.update_run(run.id, status="running", **{key: handle})
                    self._say(sched, f"run #{run.id}: adopted attempt {run.attempts} ({key} {handle}) "
                                     "started by a scheduler that died before recording it")
                elif now - run.launched > timedelta(seconds=self.local.start_grace_s):
                    self._launch(sched, run, now, run.attempts,
                                 reason="re-launched: the previous scheduler died before the run started")
            else:
                self._check(sched, run, launcher.poll(sched, run), now)

    def _check(self, sched: Schedule, run: Run, poll: Poll, now: datetime) -> None:
        if poll.state == "running":
            return
        if poll.state == "unknown":
            self._say(sched, f"run #{run.id}: status unknown ({poll.detail}); will look again", logging.WARNING)
        elif poll.state == "stopped":
            self._end(sched, run, now, "stopped", reason=poll.detail)
        elif poll.state == "exited":
            doc = read_run_json(run.run_dir)
            if poll.returncode == 0:
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
        run = self.store.update_run(run.id, status=status, ended=now, next_attempt=None, error=error,
                                    **({"reason": reason} if reason else {}), **values)
        detail = reason or error or ""
        if status == "succeeded":
            detail = describe_outcome(run)
        self._say(sched, f"run #{run.id} due {iso(run.due)} {status}" + (f": {detail}" if detail else ""),
                  logging.WARNING if status == "failed" else logging.INFO)


def describe_outcome(run: Run) -> str:
    if run.version is None:
        return "no model registered"
    verdict = {True: "promoted to champion", False: "not promoted", None: "promotion not decided"}[run.promoted]
    why = (run.decision or {}).get("reason")
    return f"registered version {run.version}, {verdict}" + (f" ({why})" if why else "")

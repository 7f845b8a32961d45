"""The scheduler with an injected clock and a tiny real command standing in for ``mmpipe run``: policies, the data
trigger, retries, crash recovery with real kill -9, and schedulers racing on one state file."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import support
from support import write_tar
from pipeline.schedule.launch import LocalLauncher, Poll
from pipeline.schedule.scheduler import Scheduler
from pipeline.schedule.store import Schedule, Store

UTC = timezone.utc
T0 = datetime(2024, 6, 3, 2, 0, tzinfo=UTC)  # schedules below fire at 03:00 UTC daily

# Stands in for `mmpipe run SPEC --run-dir RUN_DIR`: counts its starts, writes run.json like the workflow does,
# waits while CTL/hold exists, exits with CTL/rc (default 0). A second start in the same run dir "resumes".
FAKE_RUN = textwrap.dedent("""\
    import json, os, sys, time, pathlib
    run_dir, ctl = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(ctl / "starts", "a") as f:
        f.write(f"{run_dir} {os.getpid()}\\n")
    resumed = (run_dir / "run.json").exists()
    def write(status, steps):
        tmp = run_dir / ".run.json.tmp"
        n = len((ctl / "starts").read_text().splitlines())
        tmp.write_text(json.dumps({"name": "fake", "status": status, "resumed": resumed, "steps": steps,
                                   "outcome": {"registry": str(ctl / "registry"), "version": n, "promoted": n == 1,
                                               "decision": {"promote": n == 1, "reason": "first model" if n == 1
                                                            else "not better"}}}))
        os.replace(tmp, run_dir / "run.json")
    write("running", [{"name": "train", "status": "running"}])
    while (ctl / "hold").exists():
        time.sleep(0.05)
    rc = int((ctl / "rc").read_text()) if (ctl / "rc").exists() else 0
    write("succeeded" if rc == 0 else "failed",
          [{"name": "train", "status": "succeeded" if rc == 0 else "failed", "error": None if rc == 0 else "boom"}])
    sys.exit(rc)
""")


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Env:
    """A state file, a spec over two tiny shards, a control folder for the fake run, and an injected clock."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.ctl = tmp / "ctl"
        self.ctl.mkdir()
        self.script = tmp / "fake_run.py"
        self.script.write_text(FAKE_RUN)
        data = tmp / "data" / "train"
        data.mkdir(parents=True)
        for i in range(2):
            write_tar(data / f"train-{i:06d}.tar", [(f"{i:04d}.cls", b"0")])
        (tmp / "data" / "manifest.json").write_text(json.dumps({"classes": ["a"], "samples": 2}))
        self.spec = tmp / "spec.yaml"
        self.spec.write_text("name: t\ndata:\n  splits:\n    train: data/train/*.tar\nlabel:\n  classes: [a, b]\n")
        self.clock = Clock(T0)
        self.store = Store(tmp / "state" / "schedule.db")

    def command(self, sched: Schedule, run_dir: str) -> list[str]:
        return [sys.executable, str(self.script), run_dir, str(self.ctl)]

    def scheduler(self, **kw) -> Scheduler:
        return Scheduler(self.store, clock=self.clock, local=LocalLauncher(command=self.command), **kw)

    def add(self, name: str = "nightly", cron: str = "0 3 * * *", **kw) -> Schedule:
        values = dict(name=name, spec=str(self.spec), overrides=[], cron=cron, timezone="UTC", address=None,
                      concurrency="forbid", missed="skip", trigger="always", retries=2, grace_s=600,
                      runs_dir=str(self.tmp / "runs"), cwd=str(self.tmp), paused=False, cursor=self.clock(),
                      created=self.clock(), updated=self.clock())
        values.update(kw)
        sched = Schedule(**values)
        self.store.add(sched)
        return sched

    def starts(self) -> list[str]:
        f = self.ctl / "starts"
        return f.read_text().splitlines() if f.exists() else []

    def settle(self, sched: Scheduler, name: str = "nightly", timeout: float = 60.0) -> None:
        """Tick (clock unchanged) until the schedule has no active run: the fake runs take real time."""
        end = time.monotonic() + timeout
        while self.store.active(name):
            assert time.monotonic() < end, f"runs still active: {self.store.active(name)}"
            sched.tick()
            time.sleep(0.05)


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path)


def test_fires_once_at_the_due_time_and_records_the_outcome(env):
    env.add()
    s = env.scheduler()
    s.tick()
    assert env.store.runs("nightly") == []  # 02:00: not due yet
    env.clock.now = T0 + timedelta(hours=1, seconds=20)
    s.tick()
    s.tick()  # a second pass at the same time must not fire again
    env.settle(s)
    [run] = env.store.runs("nightly")
    assert run.status == "succeeded" and run.due == datetime(2024, 6, 3, 3, 0, tzinfo=UTC)
    assert run.run_dir == str(env.tmp / "runs" / "nightly" / "20240603T030000Z" / "run")
    assert (run.version, run.promoted, run.decision["reason"]) == (1, True, "first model")
    assert run.registry == str(env.ctl / "registry")
    assert len(env.starts()) == 1
    assert "=== attempt 1" in (Path(run.control_dir) / "launch.log").read_text()


def test_a_failed_step_is_recorded_with_its_error(env):
    env.add()
    (env.ctl / "rc").write_text("1")
    s = env.scheduler()
    env.clock.now = T0 + timedelta(hours=1)
    s.tick()
    env.settle(s)
    [run] = env.store.runs("nightly")
    assert run.status == "failed" and run.error == "step 'train' failed: boom"
    assert len(env.starts()) == 1  # a run that finished failing is not retried


def test_forbid_skips_a_due_time_while_a_run_is_active(env):
    env.add(cron="0 * * * *")
    (env.ctl / "hold").touch()
    s = env.scheduler()
    env.clock.now = T0 + timedelta(hours=1)
    s.tick()
    env.clock.now = T0 + timedelta(hours=2)
    s.tick()
    first, second = sorted(env.store.runs("nightly"), key=lambda r: r.id)
    assert first.status == "running"
    assert second.status == "skipped" and f"run #{first.id}" in second.reason and "forbid" in second.reason
    (env.ctl / "hold").unlink()
    env.settle(s)
    assert env.store.run(first.id).status == "succeeded" and len(env.starts()) == 1


def test_allow_runs_side_by_side(env):
    env.add(cron="0 * * * *", concurrency="allow")
    (env.ctl / "hold").touch()
    s = env.scheduler()
    for h in (1, 2):
        env.clock.now = T0 + timedelta(hours=h)
        s.tick()
    assert [r.status for r in env.store.runs("nightly")] == ["running", "running"]
    (env.ctl / "hold").unlink()
    env.settle(s)
    assert len(env.starts()) == 2


def test_replace_stops_the_active_run_then_starts(env):
    env.add(cron="0 * * * *", concurrency="replace")
    (env.ctl / "hold").touch()
    s = env.scheduler()
    env.clock.now = T0 + timedelta(hours=1)
    s.tick()
    [first] = env.store.runs("nightly")
    env.clock.now = T0 + timedelta(hours=2)
    s.tick()
    first = env.store.run(first.id)
    assert first.status == "stopped" and "replaced by run" in first.reason
    with pytest.raises(ProcessLookupError):
        os.killpg(first.pid, 0)  # its process group is gone
    (env.ctl / "hold").unlink()
    env.settle(s)
    assert [r.status for r in env.store.runs("nightly")] == ["succeeded", "stopped"]


def test_missed_skip_records_the_outage_and_fires_nothing(env):
    env.add(missed="skip")
    s = env.scheduler()
    env.clock.now = T0 + timedelta(days=3, hours=5)  # scheduler down for 3 days; seen 4 h after the last 03:00
    s.tick()
    [run] = env.store.runs("nightly")
    assert run.status == "skipped" and run.due == datetime(2024, 6, 6, 3, 0, tzinfo=UTC)
    assert "missed" in run.reason and "3 earlier due time(s)" in run.reason
    assert env.starts() == []
    env.clock.now = datetime(2024, 6, 7, 3, 1, tzinfo=UTC)  # the next regular due time fires
    s.tick()
    env.settle(s)
    assert [r.status for r in env.store.runs("nightly")] == ["succeeded", "skipped"]


def test_missed_run_once_fires_one_catch_up_run(env):
    env.add(missed="run_once")
    s = env.scheduler()
    env.clock.now = T0 + timedelta(days=3, hours=5)
    s.tick()
    env.settle(s)
    [run] = env.store.runs("nightly")
    assert run.status == "succeeded" and "catch-up" in run.reason and "3 earlier" in run.reason
    assert len(env.starts()) == 1


def test_late_but_within_grace_is_on_time(env):
    env.add(missed="skip", grace_s=600)
    s = env.scheduler()
    env.clock.now = T0 + timedelta(hours=1, minutes=9)
    s.tick()
    env.settle(s)
    assert [r.status for r in env.store.runs("nightly")] == ["succeeded"]


def test_data_trigger_fires_only_on_changed_data(env):
    env.add(cron="0 * * * *", trigger="data-changed")
    s = env.scheduler()
    hour = iter(range(1, 100))

    def next_due(force=False):
        env.clock.now = T0 + timedelta(hours=next(hour))
        s.tick(force=force)
        env.settle(s)
        return env.store.runs("nightly", limit=1)[0]

    first = next_due()
    assert first.status == "succeeded" and first.fingerprint
    unchanged = next_due()
    assert unchanged.status == "skipped" and f"data unchanged since run #{first.id}" in unchanged.reason
    shard = env.tmp / "data" / "train" / "train-000001.tar"
    os.utime(shard, (shard.stat().st_atime, shard.stat().st_mtime + 5))  # touch
    touched = next_due()
    assert touched.status == "succeeded" and touched.fingerprint != first.fingerprint
    write_tar(env.tmp / "data" / "train" / "train-000002.tar", [("0009.cls", b"0")])  # new shard
    assert next_due().status == "succeeded"
    assert next_due().status == "skipped"
    forced = next_due(force=True)
    assert forced.status == "succeeded" and forced.forced
    (env.tmp / "data" / "manifest.json").write_text(json.dumps({"classes": ["a"], "samples": 3}))
    assert next_due().status == "succeeded"  # manifest content counts too
    assert len(env.starts()) == 5  # first, touched, new shard, forced, manifest


def test_data_trigger_compares_with_the_last_successful_run(env):
    env.add(cron="0 * * * *", trigger="data-changed")
    (env.ctl / "rc").write_text("1")
    s = env.scheduler()
    for h in (1, 2):
        env.clock.now = T0 + timedelta(hours=h)
        s.tick()
        env.settle(s)
    assert [r.status for r in env.store.runs("nightly")] == ["failed", "failed"]  # a failure does not count


def test_data_trigger_with_missing_data_fails_with_the_reason(env):
    env.add(trigger="data-changed")
    for shard in (env.tmp / "data" / "train").iterdir():
        shard.unlink()
    s = env.scheduler()
    env.clock.now = T0 + timedelta(hours=1)
    s.tick()
    [run] = env.store.runs("nightly")
    assert run.status == "failed" and run.error.startswith("data trigger: cannot list the data")


def test_submission_failure_retries_with_backoff(env):
    blocker = env.tmp / "runs-blocked"
    blocker.write_text("a file where the runs folder should be")  # mkdir fails, as on a full or read-only disk
    env.add(runs_dir=str(blocker), retries=2)
    s = env.scheduler()
    env.clock.now = T0 + timedelta(hours=1)
    s.tick()
    [run] = env.store.runs("nightly")
    assert run.status == "pending" and run.attempts == 1 and run.next_attempt == env.clock.now + timedelta(seconds=30)
    assert "attempt 1" in run.error
    env.clock.now += timedelta(seconds=20)
    s.tick()
    assert env.store.run(run.id).attempts == 1  # backoff not over
    env.clock.now += timedelta(seconds=15)
    s.tick()
    run = env.store.run(run.id)
    assert run.attempts == 2 and run.next_attempt == env.clock.now + timedelta(seconds=60)
    blocker.unlink()  # the disk is back
    env.clock.now += timedelta(seconds=61)
    s.tick()
    env.settle(s)
    run = env.store.run(run.id)
    assert run.status == "succeeded" and run.attempts == 3 and len(env.starts()) == 1


def test_submission_failure_gives_up_after_the_retries(env):
    blocker = env.tmp / "runs-blocked"
    blocker.write_text("x")
    env.add(runs_dir=str(blocker), retries=1)
    s = env.scheduler()
    env.clock.now = T0 + timedelta(hours=1)
    s.tick()
    env.clock.now += timedelta(minutes=5)
    s.tick()
    [run] = env.store.runs("nightly")
    assert run.status == "failed" and run.error.startswith("could not start after 2 attempt(s)")


def test_paused_schedules_do_not_fire_and_resume_does_not_catch_up(env):
    env.add()
    env.store.set_paused("nightly", True, T0)
    s = env.scheduler()
    env.clock.now = T0 + timedelta(hours=1)
    s.tick()
    assert env.store.runs("nightly") == []
    env.store.set_paused("nightly", False, env.clock.now)
    s.tick()
    assert env.store.runs("nightly") == []
    env.clock.now = T0 + timedelta(days=1, hours=1)
    s.tick()
    assert len(env.store.runs("nightly")) == 1


class FakeCluster:
    """The pipeline.cluster.jobs calls the launcher makes, against an in-memory cluster that can be unreachable.
    Errors are the real ones: an unknown job id is NoSuchJob (the 404), an unreachable cluster plain ClusterError."""
    from pipeline.cluster import ClusterError, NoSuchJob

    def __init__(self):
        self.jobs: dict[str, str] = {}
        self.down = False
        self.submits = 0

    def _check(self):
        if self.down:
            raise self.ClusterError("cannot reach http://head:8265: connection refused")

    def submit_run(self, spec_path, address, overrides, run_dir=None, submission_id=None):
        self._check()
        self.submits += 1
        if submission_id in self.jobs:
            raise self.ClusterError(f"job {submission_id} already exists")
        self.jobs[submission_id] = "RUNNING"
        return submission_id

    def job_status(self, address, job_id):
        self._check()
        if job_id not in self.jobs:
            raise self.NoSuchJob(f"no job {job_id!r} on the cluster at {address} (see `mmpipe jobs list`)")
        return self.jobs[job_id]

    def stop_job(self, address, job_id):
        self._check()
        self.jobs[job_id] = "STOPPED"
        return True

    def job_logs(self, address, job_id):
        self._check()
        return "line 1\nTraceback: boom"


def test_cluster_runs_submit_idempotently_and_retry_when_unreachable(env):
    from pipeline.schedule.launch import ClusterLauncher

    cluster = FakeCluster()
    env.add(address="http://head:8265")
    s = Scheduler(env.store, clock=env.clock, cluster=ClusterLauncher(jobs=cluster))
    cluster.down = True
    env.clock.now = T0 + timedelta(hours=1)
    s.tick()
    [run] = env.store.runs("nightly")
    assert run.status == "pending" and "connection refused" in run.error
    cluster.down = False
    env.clock.now += timedelta(seconds=31)
    s.tick()
    run = env.store.run(run.id)
    assert run.status == "running" and run.job_id == "mmpipe-nightly-20240603T030000Z-a2"
    # A scheduler that died after submitting but before recording: the next pass adopts the job, no twin.
    env.store.update_run(run.id, status="launching", job_id=None)
    s.tick()
    assert env.store.run(run.id).status == "running" and cluster.submits == 1
    cluster.down = True
    s.tick()
    assert env.store.run(run.id).status == "running"  # unreachable: unknown, not failed
    cluster.down = False
    cluster.jobs[run.job_id] = "FAILED"
    s.tick()
    run = env.store.run(run.id)
    assert run.status == "failed" and "FAILED" in run.error and "boom" in run.error


# ---------------------------------------------------------------- crash recovery (real kill -9)

def _held_run_started(env):
    """(scheduler, run): the nightly schedule fired once, its command started and held mid-step by the control file."""
    env.add()
    (env.ctl / "hold").touch()
    s = env.scheduler()
    env.clock.now = T0 + timedelta(hours=1)
    s.tick()
    [run] = env.store.runs("nightly")
    deadline = time.monotonic() + 30
    while not (Path(run.run_dir) / "run.json").exists():  # the command has started
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return s, run


def test_kill_9_of_a_running_run_resumes_it_in_the_same_run_dir(env):
    s, run = _held_run_started(env)
    os.killpg(run.pid, signal.SIGKILL)  # the run and its wrapper, mid-step
    (env.ctl / "hold").unlink()
    env.settle(s)
    [run] = env.store.runs("nightly")
    assert run.status == "succeeded" and run.attempts == 2 and "resumed in the same run dir" in run.reason
    starts = env.starts()
    assert len(starts) == 2 and starts[0].split()[0] == starts[1].split()[0] == run.run_dir
    assert json.loads((Path(run.run_dir) / "run.json").read_text())["resumed"] is True


_CRASHING_TICK = textwrap.dedent("""\
    import os, signal, sys
    sys.path[:0] = [{tests!r}, {support!r}]
    from datetime import datetime
    from pathlib import Path
    from test_schedule_scheduler import Env, Clock
    from pipeline.schedule import scheduler as sch
    from pipeline.schedule.launch import LocalLauncher
    from pipeline.schedule.store import Store
    point = sys.argv[1]
    env = Env.__new__(Env)
    env.tmp, env.ctl, env.script = Path({tmp!r}), Path({tmp!r}) / "ctl", Path({tmp!r}) / "fake_run.py"
    env.store, env.clock = Store(Path({tmp!r}) / "state" / "schedule.db"), Clock(datetime.fromisoformat(sys.argv[2]))
    die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    if point == "after-claim":
        sch.Scheduler._admit = die
    else:
        real_start = LocalLauncher.start
        def start(self, *a):
            real_start(self, *a)
            die()
        LocalLauncher.start = start
    env.scheduler().tick()
    """)


@pytest.mark.parametrize("point", ["after-claim", "after-start"])
def test_kill_9_of_a_tick_mid_pass_leaves_one_run_and_the_next_tick_finishes_it(env, point):
    env.add()
    now = T0 + timedelta(hours=1)
    script = env.tmp / "crashing_tick.py"
    script.write_text(_CRASHING_TICK.format(tests=str(Path(__file__).parent), support=str(support.TESTS),
                                             tmp=str(env.tmp)))
    proc = subprocess.run([sys.executable, str(script), point, now.isoformat()], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(support.ROOT)})  # installed or not
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    [run] = env.store.runs("nightly")
    assert run.status == ("pending" if point == "after-claim" else "launching")
    env.clock.now = now  # the dead tick's lease: its pid is gone, so it is taken at once
    s = env.scheduler()
    assert s.tick().acquired
    env.settle(s)
    [run] = env.store.runs("nightly")
    assert run.status == "succeeded" and run.attempts == 1
    assert len(env.starts()) == 1  # after-start: the run the dead tick started was adopted, not started twice


def test_kill_9_of_serve_lets_the_next_scheduler_take_over(env):
    env.clock.now = datetime.now(UTC)  # serve runs on the real clock: nothing of 2024 to catch up on
    env.add()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "schedule", "serve", "--poll", "1",
                             "--state", str(env.store.path)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while env.store.lease("scheduler") is None:
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.1)
        assert env.store.lease("scheduler").pid == proc.pid
        other = env.scheduler()
        assert not other.tick().acquired  # serve is alive: a tick waits its turn
    finally:
        proc.kill()  # SIGKILL
        proc.wait()
    assert env.store.lease("scheduler").pid == proc.pid  # a dead holder's lease is left behind…
    assert env.scheduler().tick().acquired  # …and taken over at once on the same host


def test_serve_stops_cleanly_on_ctrl_c(env):
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "schedule", "serve", "--poll", "1",
                             "--state", str(env.store.path)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while env.store.lease("scheduler") is None:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "SIGINT: stopping after this pass" in stderr and "Traceback" not in stderr
    assert env.store.lease("scheduler") is None  # released


# ---------------------------------------------------------------- racing schedulers (real processes)

def _race_tick(tmp: str, now: str, barrier, results) -> None:
    env = Env.__new__(Env)
    env.tmp, env.ctl, env.script = Path(tmp), Path(tmp) / "ctl", Path(tmp) / "fake_run.py"
    env.store, env.clock = Store(Path(tmp) / "state" / "schedule.db"), Clock(datetime.fromisoformat(now))
    s = env.scheduler()
    barrier.wait()
    results.put(s.tick().acquired)


def _race_claim(db: str, due: str, barrier, results) -> None:
    store = Store(db)
    barrier.wait()
    t = datetime.fromisoformat(due)
    results.put(store.claim("nightly", t, t, "pending", None, t) is not None)


def _race(target, args: tuple, n: int = 4) -> list:
    """Run ``target(*args, barrier, results)`` in n spawned processes released together; their results."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    out = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    return out


def test_schedulers_racing_on_one_state_file_fire_a_due_time_once(env):
    env.add()
    acquired = _race(_race_tick, (str(env.tmp), (T0 + timedelta(hours=1)).isoformat()))
    assert any(acquired)
    assert len(env.store.runs("nightly")) == 1  # exactly one row…
    env.settle(env.scheduler())
    assert len(env.starts()) == 1  # …and one process started


def test_claiming_a_due_time_is_atomic_without_the_lease(env):
    """Even without the lease (e.g. a holder stalled past its expiry), a due time is claimed once."""
    env.add()
    claimed = _race(_race_claim, (str(env.store.path), (T0 + timedelta(hours=1)).isoformat()))
    assert sorted(claimed) == [False, False, False, True]
    assert len(env.store.runs("nightly")) == 1


def test_a_due_time_already_recorded_is_not_recorded_again(env):
    env.add()
    due = T0 + timedelta(hours=1)
    assert env.store.claim("nightly", due, due, "pending", None, due) is not None
    with env.store.tx() as c:  # a cursor moved back (restored backup, hand edit): UNIQUE(schedule, due) holds
        c.execute("UPDATE schedules SET cursor = ?", (T0.isoformat(),))
    assert env.store.claim("nightly", due, due, "pending", None, due) is None
    assert len(env.store.runs("nightly")) == 1


def test_an_unreachable_cluster_is_a_submission_failure_retried_with_backoff(env):
    """The real pipeline.cluster.jobs against a port nothing listens on."""
    env.add(address="http://127.0.0.1:9", retries=1)
    s = Scheduler(env.store, clock=env.clock)
    env.clock.now = T0 + timedelta(hours=1)
    s.tick()
    [run] = env.store.runs("nightly")
    assert run.status == "pending" and "cannot reach the Ray dashboard" in run.error
    assert run.next_attempt == env.clock.now + timedelta(seconds=30)
    env.clock.now += timedelta(seconds=31)
    s.tick()
    run = env.store.run(run.id)
    assert run.status == "failed" and run.error.startswith("could not start after 2 attempt(s)")


# ---------------------------------------------------------------- review fixes

def _cluster_scheduler(env, cluster, **kw) -> Scheduler:
    from pipeline.schedule.launch import ClusterLauncher

    return Scheduler(env.store, clock=env.clock, cluster=ClusterLauncher(jobs=cluster), **kw)


def test_a_bad_spec_on_a_cluster_schedule_fails_the_run_and_later_due_times_still_fire(env):
    from pipeline.spec import SpecError

    class BadSpec(FakeCluster):
        def submit_run(self, *a, **k):
            raise SpecError("spec.yaml: data.splits: field required")

    env.add(cron="0 * * * *", address="http://head:8265")
    s = _cluster_scheduler(env, BadSpec())
    for h in (1, 2):
        env.clock.now = T0 + timedelta(hours=h)
        assert s.tick().failures == []
    runs = sorted(env.store.runs("nightly"), key=lambda r: r.id)
    assert [(r.status, r.attempts) for r in runs] == [("failed", 1), ("failed", 1)]  # not retried, not wedged
    assert runs[0].error.startswith("could not start (not retried): invalid spec") and "data.splits" in runs[0].error


def test_due_times_are_recorded_even_when_reconciling_a_run_fails(env, caplog):
    class Broken(LocalLauncher):
        def poll(self, sched, run):
            raise RuntimeError("poll exploded")

    env.add(cron="0 * * * *")
    (env.ctl / "hold").touch()
    env.clock.now = T0 + timedelta(hours=1)
    env.scheduler().tick()  # run #1 running
    s = Scheduler(env.store, clock=env.clock, local=Broken(command=env.command))
    caplog.set_level("INFO", logger="mmpipe.schedule")
    for h in (2, 3):
        env.clock.now = T0 + timedelta(hours=h)
        result = s.tick()
        assert result.failures == ["nightly: reconciling its runs failed: RuntimeError: poll exploded"]
    assert [r.status for r in env.store.runs("nightly")] == ["skipped", "skipped", "running"]  # forbid, recorded
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and not any(r.exc_info for r in caplog.records)  # one line, once; no traceback
    caplog.clear()
    caplog.set_level("DEBUG", logger="mmpipe.schedule")
    env.clock.now = T0 + timedelta(hours=4)
    s.tick()
    assert any(r.exc_info for r in caplog.records)  # the traceback, at DEBUG
    (env.ctl / "hold").unlink()
    env.settle(env.scheduler())


def test_a_pass_that_lost_the_lease_stops_before_launching(env):
    """Scheduler A stalls past its lease on schedule a; B takes the lease; A must not go on to launch."""
    (env.ctl / "hold").touch()
    env.add("a")
    env.add("b")
    a, b = env.scheduler(), env.scheduler()
    real = a._reconcile

    def stall(sched, now):
        if sched.name == "a":
            env.clock.now += timedelta(seconds=90)
            assert b.tick(keep_lease=True, names=["b"]).acquired
        return real(sched, now)

    a._reconcile = stall
    env.clock.now = T0 + timedelta(hours=1)
    result = a.tick()
    assert len(result.failures) == 1 and result.failures[0].startswith("lost the scheduler lease")
    assert env.store.runs("a") == []  # A stopped before firing a
    assert env.store.lease("scheduler").holder == b.holder  # and left B's lease alone
    assert [r.status for r in env.store.runs("b")] == ["running"]
    (env.ctl / "hold").unlink()
    env.settle(b, "b")
    env.settle(b, "a")  # B fires a in its next pass


def test_run_transitions_are_compare_and_set(env):
    env.add()
    due = T0 + timedelta(hours=1)
    run = env.store.claim("nightly", due, due, "pending", None, due)
    assert env.store.transition(run, status="launching", attempts=1, launched=due) is not None
    assert env.store.transition(run, status="launching", attempts=1, launched=due) is None  # stale: no change
    fresh = env.store.run(run.id)
    # Same status and attempt again (a re-launch): the launch time tells the two apart.
    assert env.store.transition(fresh, launched=due + timedelta(seconds=40)) is not None
    assert env.store.transition(fresh, status="failed") is None


def test_a_stale_scheduler_does_not_start_a_run_another_one_started(env):
    """B resumes a lost run; A, working from what it read before, must leave it alone (no second start)."""
    s, run = _held_run_started(env)
    os.killpg(run.pid, signal.SIGKILL)
    stale = env.store.run(run.id)  # what A read at the start of its pass
    deadline = time.monotonic() + 30
    while env.store.run(run.id).attempts == 1:  # B: finds it lost (once the group is gone), resumes it
        assert time.monotonic() < deadline
        env.scheduler().tick()
        time.sleep(0.05)
    resumed = env.store.run(run.id)
    assert resumed.attempts == 2
    a = env.scheduler()
    a._check(env.store.get("nightly"), stale, Poll("lost", None, "gone"), env.clock.now + timedelta(seconds=1))
    assert env.store.run(run.id).launched == resumed.launched  # A changed nothing
    assert "changed by another scheduler" in a._events[-1]
    (env.ctl / "hold").unlink()
    env.settle(s)
    assert len(env.starts()) == 2 and env.store.run(run.id).status == "succeeded"


def test_an_unreachable_cluster_does_not_make_a_launching_run_submit_twice(env):
    cluster = FakeCluster()
    env.add(address="http://head:8265")
    s = _cluster_scheduler(env, cluster)
    env.clock.now = T0 + timedelta(hours=1)
    s.tick()
    [run] = env.store.runs("nightly")
    assert run.status == "running" and cluster.submits == 1
    # The scheduler died after submitting, before recording it; the cluster is unreachable when the next looks.
    env.store.update_run(run.id, status="launching", job_id=None)
    cluster.down = True
    for _ in range(3):
        env.clock.now += timedelta(minutes=1)
        s.tick()
        assert env.store.run(run.id).status == "launching"  # cannot tell: wait, do not submit again
    cluster.down = False
    env.clock.now += timedelta(minutes=1)
    s.tick()
    run = env.store.run(run.id)
    assert (run.status, run.job_id, run.attempts, cluster.submits) == \
        ("running", "mmpipe-nightly-20240603T030000Z", 1, 1)


def test_a_launching_run_whose_job_does_not_exist_is_submitted_again(env):
    cluster = FakeCluster()
    env.add(address="http://head:8265")
    s = _cluster_scheduler(env, cluster)
    env.clock.now = T0 + timedelta(hours=1)
    run = env.store.claim("nightly", env.clock.now, env.clock.now, "pending", None, env.clock.now)
    env.store.update_run(run.id, status="launching", attempts=1, launched=env.clock.now,
                         run_dir=str(env.tmp / "r"), control_dir=str(env.tmp / "c"))  # died before submitting
    env.clock.now += timedelta(minutes=1)
    s.tick()
    run = env.store.run(run.id)
    assert (run.status, run.attempts, cluster.submits) == ("running", 1, 1)


def test_a_run_whose_status_stays_unknown_is_failed_after_the_timeout(env):
    cluster = FakeCluster()
    env.add(cron="0 * * * *", address="http://head:8265")
    s = _cluster_scheduler(env, cluster, unknown_timeout=timedelta(minutes=30))
    env.clock.now = T0 + timedelta(hours=1)
    s.tick()
    cluster.down = True
    env.clock.now += timedelta(minutes=10)
    s.tick()
    [run] = env.store.runs("nightly")
    assert run.status == "running" and run.unknown_since == env.clock.now
    cluster.down = False  # back for one look: the clock restarts
    env.clock.now += timedelta(minutes=25)
    s.tick()
    assert env.store.run(run.id).unknown_since is None
    cluster.down = True
    env.clock.now += timedelta(minutes=1)
    s.tick()
    env.clock.now += timedelta(minutes=29)
    s.tick()
    assert env.store.run(run.id).status == "running"  # 29 min unknown
    env.clock.now += timedelta(minutes=1)
    s.tick()
    run = env.store.run(run.id)
    assert run.status == "failed" and run.error.startswith("status unknown for 0h30m (cannot reach the cluster")
    cluster.down = False
    env.clock.now = T0 + timedelta(hours=3)  # forbid no longer blocks the schedule
    s.tick()
    assert env.store.runs("nightly", limit=1)[0].status == "running"


def test_a_run_that_succeeded_without_a_readable_run_json_is_recorded_as_an_error(env):
    cluster = FakeCluster()
    env.add(address="http://head:8265")  # run.json is written on the cluster, not where the scheduler looks
    s = _cluster_scheduler(env, cluster)
    env.clock.now = T0 + timedelta(hours=1)
    s.tick()
    [run] = env.store.runs("nightly")
    cluster.jobs[run.job_id] = "SUCCEEDED"
    s.tick()
    run = env.store.run(run.id)
    assert run.status == "failed" and run.error.startswith(f"exited 0 but left no readable {run.run_dir}/run.json")


def test_stopping_a_local_run_sends_the_command_one_sigterm_from_the_wrapper(env):
    """Sent to the whole group, the command got SIGTERM from the scheduler and again from the wrapper forwarding it.
    The command blocks SIGTERM, records each one with its sender at once (two at once would merge into one) and
    never exits by itself: it collects until stop() gives up and SIGKILLs the group, so no SIGTERM sent while it
    lives can be missed, however late."""
    script = env.tmp / "count_terms.py"
    script.write_text(textwrap.dedent("""\
        import os, pathlib, signal, sys
        out = pathlib.Path(sys.argv[1])
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        (out.parent / "ready").touch()
        while True:
            info = signal.sigtimedwait({signal.SIGTERM}, 60)
            with out.open("a") as f:
                f.write(f"{info.si_pid if info else 'timeout'}\\n")
                f.flush()
                os.fsync(f.fileno())
        """))
    senders = env.ctl / "senders"
    env.add()
    launcher = LocalLauncher(command=lambda sched, run_dir: [sys.executable, str(script), str(senders)])
    s = Scheduler(env.store, clock=env.clock, local=launcher)
    env.clock.now = T0 + timedelta(hours=1)
    s.tick()
    [run] = env.store.runs("nightly")
    deadline = time.monotonic() + 30
    while not (env.ctl / "ready").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    launcher.stop(env.store.get("nightly"), run, timeout_s=3.0)  # SIGTERM, 3 s, then SIGKILL
    assert senders.read_text().split() == [str(run.pid)]  # once, forwarded by the wrapper

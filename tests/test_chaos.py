"""Chaos: kill -9 one process of a running training or tune (a data read worker, the split coordinator, a
training worker; in a tune also the trial's trainable), or `mmpipe run` itself; the run completes with its
results (or, for the split coordinator, fails with a clear error) within a bounded time, never hangs; `mmpipe
run` run again resumes. Out of the default run (about 8 minutes together on 2 cores): ``python -m pytest -m chaos
tests/test_chaos.py`` (docs/liveness.md)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

# Not in the default run (conftest: only with -m chaos): too long for CI's budget, not failing.
pytestmark = pytest.mark.chaos

FAST_TRAIN = ["train.epochs=1", "train.batch_size=16", "model.hidden=32", "augment.enabled=false",
              "scaling.stall_timeout_s=90"]
BOUND_S = 400  # stall timeout, Train's restarts and the data report, with room: a hang ends the test far later


class Killer(threading.Thread):
    """kill -9 the first process running ``target`` (a task name or an actor class), once; with ``after`` (an
    actor class), only once such an actor is alive (a trial's read task, not the driver's data report's)."""

    def __init__(self, target: str, kind: str, delay_s: float = 0.0, after: str | None = None):
        super().__init__(daemon=True)
        self.target, self.kind, self.delay_s, self.after = target, kind, delay_s, after
        self.killed: int | None = None
        self.done = threading.Event()

    def _pid(self) -> int | None:
        from ray.util.state import list_actors, list_tasks

        from pipeline.watchdog import state_address

        if self.after and not any(a.class_name.startswith(self.after) for a in list_actors(
                address=state_address(), filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)):
            return None
        if self.kind == "task":
            for t in list_tasks(address=state_address(), filters=[("state", "=", "RUNNING")],
                                raise_on_missing_output=False):
                if self.target in t.name and t.worker_pid:
                    return t.worker_pid
        else:
            for a in list_actors(address=state_address(), filters=[("state", "=", "ALIVE")], detail=True,
                                 raise_on_missing_output=False):
                if a.class_name.startswith(self.target) and a.pid:
                    return a.pid
        return None

    def run(self):
        while not self.done.is_set():
            try:
                pid = self._pid()
            except Exception:  # noqa: BLE001  (the state API is busy: ask again)
                pid = None
            if pid:
                time.sleep(self.delay_s)
                try:
                    os.kill(pid, signal.SIGKILL)
                    self.killed = pid
                except ProcessLookupError:
                    continue
                return
            time.sleep(0.2)


def _train_with_kill(demo_dir, tmp_path, target: str, kind: str, delay_s: float = 0.0):
    from pipeline.spec_checks import load_job
    from pipeline.train.trainer import TrainError, run_training
    from pipeline.watchdog import StallError

    spec = load_job(demo_dir / "spec.yaml", FAST_TRAIN)
    killer = Killer(target, kind, delay_s)
    killer.start()
    start = time.monotonic()
    outcome = None
    try:
        outcome = run_training(spec, tmp_path / "run")
    except (TrainError, StallError) as e:  # a clear failure is an allowed outcome; a hang is not
        outcome = e
    finally:
        killer.done.set()
    elapsed = time.monotonic() - start
    assert killer.killed, f"no {target} to kill"
    assert elapsed < BOUND_S
    return outcome


@pytest.mark.ray
def test_killed_read_worker_is_retried_and_training_completes(ray_session, demo_dir, tmp_path):
    outcome = _train_with_kill(demo_dir, tmp_path, "ReadPreparedShards", "task")
    assert not isinstance(outcome, Exception), outcome
    assert outcome.metrics["epochs_run"] == 1 and (tmp_path / "run" / "best.pt").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_killed_training_worker_restarts_from_checkpoint(ray_session, demo_dir, tmp_path):
    outcome = _train_with_kill(demo_dir, tmp_path, "RayTrainWorker", "actor", delay_s=5)
    assert not isinstance(outcome, Exception), outcome  # scaling.max_failures=1: one restart allowed
    assert outcome.metrics["epochs_run"] == 1


@pytest.mark.ray
@pytest.mark.slow
def test_killed_split_coordinator_completes_or_fails_clearly(ray_session, demo_dir, tmp_path):
    outcome = _train_with_kill(demo_dir, tmp_path, "SplitCoordinator", "actor", delay_s=2)
    if isinstance(outcome, Exception):
        assert str(outcome)  # a message, not a silent exit
    else:
        assert outcome.metrics["epochs_run"] == 1


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("target, kind, delay_s", [
    ("ImplicitFunc", "actor", 10),  # the trial's trainable: Tune runs the trial again (tune.max_failures)
    ("ReadPreparedShards", "task", 0),  # a read task of the trial (after its Train workers exist)
    ("RayTrainWorker", "actor", 5),  # Ray Train restarts the trial's worker group (scaling.max_failures)
    ("SplitCoordinator", "actor", 2),
])
def test_killed_process_of_a_trial_and_tune_completes(ray_session, demo_dir, tmp_path, target, kind, delay_s):
    from pipeline.spec_checks import load_job
    from pipeline.tune.runner import TuneError, run_tune
    from pipeline.watchdog import StallError

    spec = load_job(demo_dir / "spec.yaml", FAST_TRAIN + ["tune.search_space={model.fusion: {grid: [concat]}}",
                                                          "tune.num_samples=1"])
    killer = Killer(target, kind, delay_s, after=None if target == "ImplicitFunc" else "RayTrainWorker")
    killer.start()
    start = time.monotonic()
    try:
        result = run_tune(spec, tmp_path / "tune")
    except (TuneError, StallError) as e:
        result = e
    finally:
        killer.done.set()
    assert killer.killed and time.monotonic() - start < BOUND_S
    if target == "SplitCoordinator" and isinstance(result, Exception):
        assert str(result)  # a clear failure is allowed there (as in training); a hang is not
        return
    assert not isinstance(result, Exception), result  # tune.max_failures=1: the trial runs again
    assert result.trials == 1


@pytest.mark.cluster  # `mmpipe run` in a subprocess starts its own Ray
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_killed_workflow_run_resumes_when_run_again(tmp_path):
    """``mmpipe run`` kill -9'd (with the Ray it started) once its training has a checkpoint; the same command run
    again resumes: the done steps are not redone and training continues from that checkpoint."""
    import json
    import subprocess
    import sys

    import support
    from support.runs import assert_resumed, committed_checkpoint, epoch_rows

    from pipeline.data.tools.demo import write_demo

    data = tmp_path / "demo"
    write_demo(data, seed=1, scale=0.1)
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "pipeline.cli", "run", str(support.ROOT / "jobs" / "retrain.yaml"),
               "--run-dir", str(run_dir)]
    for s in [f"data.splits.{split}={data}/{split}/*.tar" for split in ("train", "val", "test")] + [
            "train.epochs=2", "train.batch_size=16", "augment.enabled=false", "scaling.stall_timeout_s=120",
            f"registry.uri={tmp_path / 'registry'}"]:
        command += ["--set", s]
    env = {**os.environ, "NO_COLOR": "1", "RAY_ADDRESS": ""}
    with open(tmp_path / "first.log", "wb") as log:
        first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                 cwd=tmp_path)
    try:
        deadline = time.monotonic() + 300
        while not committed_checkpoint(run_dir / "train.partial" / "ray"):
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.5)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # mmpipe run and the Ray it started: nothing exits cleanly
        first.wait(30)
    start = time.monotonic()
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=BOUND_S + 200, cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert time.monotonic() - start < BOUND_S + 200
    record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    assert record["status"] == "succeeded" and record["attempt"] == 2
    rows = epoch_rows(run_dir / "train")
    assert len(rows) == 2
    assert_resumed(rows)  # from the checkpoint the killed run left, with its weights and step count

"""Chaos: kill -9 one process of a running training or tune (a data read worker, the split coordinator, a
training worker, a trial's trainable); the run completes with its results or fails with a clear error within a
bounded time, never hangs. The kill of a read worker during a 1-epoch training runs by default; the others are
slow (run by hand: ``-m slow tests/test_chaos.py``; results in docs/benchmarks.md)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

# Not in the default run (pyproject addopts): these have not yet passed on 2 cores; see docs/liveness.md.
pytestmark = pytest.mark.chaos

FAST_TRAIN = ["train.epochs=1", "train.batch_size=16", "model.hidden=32", "augment.enabled=false",
              "scaling.stall_timeout_s=90"]
BOUND_S = 400  # stall timeout, Train's restarts and the data report, with room: a hang ends the test far later


class Killer(threading.Thread):
    """kill -9 the first process running ``target`` (a task name or an actor class), once."""

    def __init__(self, target: str, kind: str, delay_s: float = 0.0):
        super().__init__(daemon=True)
        self.target, self.kind, self.delay_s = target, kind, delay_s
        self.killed: int | None = None
        self.done = threading.Event()

    def _pid(self) -> int | None:
        from ray.util.state import list_actors, list_tasks

        from pipeline.watchdog import state_address

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
def test_killed_trial_is_retried_and_tune_completes(ray_session, demo_dir, tmp_path):
    from pipeline.spec_checks import load_job
    from pipeline.tune.runner import TuneError, run_tune
    from pipeline.watchdog import StallError

    spec = load_job(demo_dir / "spec.yaml", FAST_TRAIN + ["tune.search_space={model.fusion: {grid: [concat]}}",
                                                          "tune.num_samples=1"])
    killer = Killer("ImplicitFunc", "actor", delay_s=10)
    killer.start()
    start = time.monotonic()
    try:
        result = run_tune(spec, tmp_path / "tune")
    except (TuneError, StallError) as e:
        result = e
    finally:
        killer.done.set()
    assert killer.killed and time.monotonic() - start < BOUND_S
    assert not isinstance(result, Exception), result  # tune.max_failures=1: the trial runs again
    assert result.trials == 1

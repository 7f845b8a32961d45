"""No run hangs (issue 20): the resource plan refuses what cannot fit, a trial's data tasks run in CPUs reserved
for them, a run that makes no progress stops with a diagnostic, and runs leave no actors or reservations behind."""

from __future__ import annotations

import threading
import time

import pytest

from pipeline.resources import PlanError, check_predict, plan_resources
from pipeline.spec_checks import job_from_dict
from pipeline.watchdog import StallError, progressed, watch
from support.actors import cpus_held_by_another_job, leftovers, live_actors, live_placement_groups, settled

FAST_TRAIN = ["train.epochs=1", "train.batch_size=16", "model.hidden=32", "augment.enabled=false"]
ONE_TRIAL = ["tune.search_space={model.fusion: {grid: [concat]}}", "tune.num_samples=1"]


# ------------------------------------------------------------------------------------------------ the plan

def test_workers_are_fitted_beside_the_data_cpus():
    spec = job_from_dict({"scaling": {"num_workers": 2, "cpus_per_worker": 0.5}})
    train = plan_resources(spec, 2)
    assert (train.cpus_per_worker, train.data_cpus, train.trials, train.per_training) == (0.5, 1, 1, 2.0)
    trial = plan_resources(spec, 2, tune=True)  # the trial's own 0.01 comes out of the workers' share
    assert trial.cpus_per_worker == 0.495 and trial.trials * trial.per_training <= 2
    assert trial.trial_bundles() == [{"CPU": 0.01}, {"CPU": 1}]
    # one trial more when it costs the workers at most 5% of their share (each trial's own 0.01 CPU)
    assert [plan_resources(spec, c, tune=True).trials for c in (3, 4, 16)] == [1, 2, 8]
    assert plan_resources(spec, 4, tune=True).cpus_per_worker == 0.495


def test_an_impossible_plan_says_what_to_change():
    with pytest.raises(PlanError) as e:
        plan_resources(job_from_dict({"tune": {"max_concurrent_trials": 3}}), 2, tune=True)
    assert "3 trials x (2 workers x 0.5 CPU + 1 data CPU + 0.01 trial)" in str(e.value)
    assert "set tune.max_concurrent_trials=1" in str(e.value)
    with pytest.raises(PlanError, match=r"= 7 CPUs, .* set scaling.num_workers=2$"):
        plan_resources(job_from_dict({"scaling": {"num_workers": 12}}), 2.1)
    with pytest.raises(PlanError, match="set scaling.use_gpu=false"):
        plan_resources(job_from_dict({"scaling": {"use_gpu": True}}), 8)
    with pytest.raises(PlanError, match="needs 2 GPUs; the cluster has 1: set scaling.num_workers=1"):
        plan_resources(job_from_dict({"scaling": {"use_gpu": True}}), 8, 1)
    with pytest.raises(PlanError, match="more CPUs"):
        plan_resources(job_from_dict({}), 1)
    with pytest.raises(PlanError, match="set --actors 1"):
        check_predict(2, False, 2, 0)
    check_predict(1, False, 2, 0)


def test_trials_of_small_models_share_gpus_at_a_fractional_share():
    one_worker = {"num_workers": 1, "cpus_per_worker": 1, "use_gpu": True}
    whole = plan_resources(job_from_dict({"scaling": one_worker}), 16, 2, tune=True)
    assert whole.trials == 2 and whole.worker_resources() == {"CPU": 1, "GPU": 1.0}
    quarter = plan_resources(job_from_dict({"scaling": {**one_worker, "gpus_per_worker": 0.25}}), 16, 2, tune=True)
    # CPUs bound it: 8 x (0.99 + 1 data + 0.01), the workers giving up 1% of their share for the 8th trial
    assert quarter.trials == 8 and quarter.worker_resources() == {"CPU": 0.99, "GPU": 0.25}
    assert plan_resources(job_from_dict({"scaling": {**one_worker, "gpus_per_worker": 0.25}}), 64, 1,
                          tune=True).trials == 4  # GPUs bound it: 4 x 0.25
    with pytest.raises(PlanError, match="need 3 GPUs; the cluster has 2: set tune.max_concurrent_trials=2 "
                                        r"\(or scaling.gpus_per_worker below 1"):
        plan_resources(job_from_dict({"scaling": one_worker, "tune": {"max_concurrent_trials": 3}}), 16, 2, tune=True)
    with pytest.raises(PlanError, match="NCCL refuses: set scaling.num_workers=1"):
        plan_resources(job_from_dict({"scaling": {"num_workers": 2, "use_gpu": True, "gpus_per_worker": 0.5}}), 8, 1)


# ------------------------------------------------------------------------------------------- the watchdog

def test_a_block_without_progress_stops_with_a_diagnostic():
    start = time.monotonic()
    with pytest.raises(StallError) as e:
        with watch("reading", 0.5, poll_s=0.05, hint="hint: check the reader"):
            for _ in range(600):  # 60 s unless stopped
                time.sleep(0.1)
    assert time.monotonic() - start < 10
    assert "reading made no progress for 0.5 s" in str(e.value)
    assert "made no progress" in str(e.value) and "scaling.stall_timeout_s" in str(e.value)
    assert "hint: check the reader" in str(e.value) and "likely fix:" in str(e.value)


def test_a_block_waiting_in_a_lock_is_stopped_too():
    """A main thread blocked in a wait with no timeout (as in Ray Data's iterator, waiting for rows that never
    come) never runs a bytecode: only a real signal wakes it (before, the process sat until the grace period's
    hard exit)."""
    import queue

    start = time.monotonic()
    with pytest.raises(StallError, match="waiting made no progress"):
        with watch("waiting", 0.5, poll_s=0.05, grace_s=60):
            queue.Queue().get()  # blocks for good unless interrupted
    assert time.monotonic() - start < 20


def test_a_stale_sigint_handler_does_not_swallow_the_stop():
    """Ray Train registers a SIGINT handler in every fit() and never restores the one before: a data report pass
    after a training in the same process had its stop delivered to that handler and went on waiting."""
    import signal

    swallow = lambda *a: None  # noqa: E731  (as a finished run's handler)
    before = signal.signal(signal.SIGINT, swallow)
    try:
        start = time.monotonic()
        with pytest.raises(StallError):
            with watch("waiting", 0.5, poll_s=0.05, grace_s=60):
                for _ in range(100):  # 10 s unless stopped
                    time.sleep(0.1)
        assert time.monotonic() - start < 5
        assert signal.getsignal(signal.SIGINT) is swallow  # what was there before the watch is back
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_fit_s_sigint_handler_does_not_outlive_the_block():
    """Ray Train's handler closes over its controller's handle: left installed (or put back later as "the handler
    from before"), that controller and its SplitCoordinator stayed alive after the run."""
    import signal

    def ray_handler(*a):  # what fit() installs: a closure defined in a ray.* module
        pass

    ray_handler.__module__ = "ray.train.v2.api.data_parallel_trainer"
    before = signal.getsignal(signal.SIGINT)
    try:
        with watch("training", 60):
            signal.signal(signal.SIGINT, ray_handler)  # fit() inside the block
        assert signal.getsignal(signal.SIGINT) is before  # not ray_handler
        signal.signal(signal.SIGINT, ray_handler)  # a stale one from an earlier fit, found at the start
        with watch("training", 60):
            pass
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # dropped, not put back
    finally:
        signal.signal(signal.SIGINT, before)


def test_progress_keeps_the_watchdog_quiet():
    with watch("reading", 0.5, poll_s=0.05):
        for _ in range(20):  # 2 s, four timeouts long, progressing all along
            time.sleep(0.1)
            progressed()


def test_a_watchdog_that_ends_with_its_block_never_fires_later():
    with watch("quick", 0.3, poll_s=0.05):
        pass
    time.sleep(0.6)  # an interrupt from a leftover watchdog would surface here as KeyboardInterrupt


def test_a_model_reference_naming_no_version_fails_before_ray_starts(tmp_path):
    """``predict --model REG:7`` with no version 7 failed only after Ray had started (~20 s; issue 18). A fast
    test: conftest fails it if Ray starts."""
    import sys

    from pipeline.predict import predict
    from pipeline.registry import RegistryError

    start = time.monotonic()
    with pytest.raises(RegistryError, match="no complete version 7"):
        predict(f"{tmp_path / 'registry'}:7", [str(tmp_path / "x.tar")], str(tmp_path / "out.parquet"))
    assert time.monotonic() - start < 5
    assert not (sys.modules.get("ray") and sys.modules["ray"].is_initialized())


# ------------------------------------------------------------------------------------------ with Ray

class Squatter(threading.Thread):
    """Another job taking every CPU left free once a training holds its resources: it grabs them with a
    placement group as soon as the Train workers' group is placed (as a previous trial's leaked group did)."""

    def __init__(self, after_groups: int):
        super().__init__(daemon=True)
        self.after_groups, self.group, self.cpus = after_groups, None, 0.0
        self.done = threading.Event()

    def run(self):
        import ray
        from ray.util.placement_group import placement_group

        while not self.done.is_set():
            if len([g for g in live_placement_groups() if g.endswith("CREATED")]) >= self.after_groups:
                self.cpus = int(ray.available_resources().get("CPU", 0) * 100) / 100
                if self.cpus >= 0.01:
                    self.group = placement_group([{"CPU": self.cpus}], name="squatter")
                return
            time.sleep(0.05)

    def release(self):
        from ray.util.placement_group import remove_placement_group

        self.done.set()
        self.join(5)
        if self.group is not None:
            remove_placement_group(self.group)


@pytest.mark.ray
def test_a_trial_reads_its_data_when_everything_else_is_taken(ray_session, tiny_demo, tmp_path):
    """The deadlock of issue 20, made deterministic: once the trial and its workers are placed, every free CPU is
    taken. The trial's data tasks still run (in its own reserved CPU); before, they waited for a whole free CPU
    forever while the workers waited for them. The tune also leaves no actors or reservations behind."""
    from pipeline.spec_checks import load_job
    from pipeline.tune.runner import run_tune

    spec = load_job(tiny_demo / "spec.yaml", FAST_TRAIN + ONE_TRIAL + ["scaling.cpus_per_worker=0.25",
                                                                      "scaling.stall_timeout_s=120"])
    baseline = settled(live_actors(), 5)
    squatter = Squatter(after_groups=2)  # the trial's group, then its workers'
    squatter.start()
    start = time.monotonic()
    try:
        result = run_tune(spec, tmp_path / "tune")
    finally:
        squatter.release()
    assert squatter.group is not None and squatter.cpus >= 0.4, "the squatter never held the free CPUs"
    assert result.trials == 1 and result.best_checkpoint
    assert time.monotonic() - start < 300
    del result
    assert leftovers(settled(baseline), baseline) == {}  # no DuplicateIndex, _Clock, _Beats, trial or Train actor left
    assert live_placement_groups() == []


@pytest.mark.ray
def test_a_training_that_cannot_start_fails_with_what_it_waits_for(ray_session, demo_dir, tmp_path):
    """Another job holds CPUs the workers need: the run stops after its stall timeout with Ray's pending demand
    in the message (not a silent wait), and leaves nothing behind."""
    from pipeline.spec_checks import load_job
    from pipeline.train.trainer import run_training

    spec = load_job(demo_dir / "spec.yaml", FAST_TRAIN + ["scaling.stall_timeout_s=8"])
    baseline = settled(live_actors(), 5)
    start = time.monotonic()
    with cpus_held_by_another_job(0.6), pytest.raises(StallError) as e:
        run_training(spec, tmp_path / "run", data_report=False)
    assert time.monotonic() - start < 120
    message = str(e.value)
    assert "training made no progress for 8 s" in message
    assert "pending demand: placement group bundle" in message and "other-job: CREATED" in message
    assert "likely fix: a placement group (training workers) waits for 1 CPU" in message
    del e
    assert leftovers(settled(baseline), baseline) == {}  # ended by the run, not by dropping the traceback's frames
    assert live_placement_groups() == []


@pytest.mark.ray
def test_a_data_report_pass_that_cannot_read_stops_with_what_it_waits_for(ray_session, demo_dir):
    """``mmpipe validate`` and the train/tune data reports: every CPU held by another job, the pass's read tasks
    wait; it stops after scaling.stall_timeout_s with Ray's pending demand, and its duplicate-index actors end."""
    import ray

    from pipeline.data.streaming.plan import DataPlan
    from pipeline.spec_checks import load_job

    spec = load_job(demo_dir / "spec.yaml", ["scaling.stall_timeout_s=3"])
    baseline = settled(live_actors(), 5)
    start = time.monotonic()
    with cpus_held_by_another_job(ray.cluster_resources()["CPU"]), pytest.raises(StallError) as e:
        DataPlan(spec).validate()
    assert time.monotonic() - start < 60
    message = str(e.value)
    assert "the data report pass made no progress for 3 s" in message
    assert "other-job: CREATED" in message and "likely fix:" in message
    del e
    assert leftovers(settled(baseline, 20), baseline) == {}

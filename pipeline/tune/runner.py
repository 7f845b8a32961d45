"""``mmpipe tune``: Ray Tune over the spec's search space, with the Train V2 pattern.

Each trial is a function that builds a TorchTrainer (the same ``train_loop`` as ``mmpipe train``) with
``TuneReportCallback`` and calls ``fit()``; its Train run is named from the trial id, so a restarted trial
resumes its own run. Work shared by all trials is done once on the driver: the data report and class counts,
and the cleaned, aligned validation set (materialised once in the object store and handed to every trial).
Re-running the same ``tune`` with the same output folder continues the experiment.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipeline.data.streaming.plan import DataPlan, kept_counts, plan_rebalance
from pipeline.console import verbose
from pipeline.io import atomic_write_text
from pipeline.ray_runtime import data_progress
from pipeline.data.streaming.actors import actors_scope
from pipeline.resources import (DATA_BUNDLE, cluster_capacity, data_strategy, no_orphaned_groups, plan_resources,
                                remove_groups_of_dead_creators)
from pipeline.report import publish_run
from pipeline.spec import JobSpec, dump_spec
from pipeline.tasks import label_columns
from pipeline.tracking.tensorboard import TENSORBOARD_DIR
from pipeline.trust import check_private_dir
from pipeline.tune.progress import trial_table_callback
from pipeline.tune.space import apply, to_param_space, with_search_space
from pipeline.watchdog import Heartbeat, kill_train_controllers, progressed, watch

log = logging.getLogger(__name__)
EXPERIMENT = "tune"
SWEEP_EVERY_S = 5.0  # how often a tune looks for placement groups left by dead Train controllers


class TuneError(RuntimeError):
    pass


@dataclass
class TuneResult:
    out_dir: Path
    best_config: dict
    best_metric: float
    best_spec_path: Path
    best_checkpoint: str | None
    trials: int


def trial_spec(base: dict, config: dict) -> JobSpec:
    return JobSpec.model_validate(apply(base, config))


def concurrent_trials(spec: JobSpec, cpus: float, gpus: float = 0.0) -> int:
    """Trials side by side on ``cpus``/``gpus``: each with its workers, data CPUs and function
    (pipeline/resources.py)."""
    return plan_resources(spec, cpus, gpus, tune=True).trials


def _trainable(config: dict, base: dict, data: DataPlan, counts: list[int], unlabelled: int, val, storage: str,
               worker_resources: dict, heartbeat: Heartbeat) -> None:
    """One trial: a TorchTrainer over this trial's spec, reporting every epoch to Tune (its shards already checked
    by ``data``, the experiment's plan). Its data tasks run in the trial's own data CPUs (DATA_BUNDLE of the
    trial's placement group), which nothing else can take."""
    import ray
    from ray import tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipeline.train.trainer import build_trainer

    spec = trial_spec(base, config)
    trial = data.for_spec(spec, data.classes)
    plan = plan_rebalance(spec, list(trial.rebalanced_task.classes), counts, "shared counts", unlabelled)
    # The trial's epoch clock and duplicate index end with it (also when Tune reuses the trial's actor).
    with actors_scope():
        trainer = build_trainer(trial, plan, val, worker_resources,
                                RunConfig(name=f"train_{tune.get_context().get_trial_id()}", storage_path=storage,
                                          failure_config=FailureConfig(max_failures=spec.scaling.max_failures),
                                          checkpoint_config=CheckpointConfig(num_to_keep=1),
                                          callbacks=[TuneReportCallback()]),
                                heartbeat=heartbeat,
                                scheduling_strategy=data_strategy(ray.util.get_current_placement_group(),
                                                                  DATA_BUNDLE),
                                tracking={"tensorboard_dir": str(Path(storage).parent / TENSORBOARD_DIR /
                                                                 tune.get_context().get_trial_id()),
                                          "hparams": config})  # event files per trial (pipeline/tracking)
        trainer.fit()


def _progress_callback():
    """A Tune callback that counts trial results and ends as the watchdog's progress."""
    from ray.tune import Callback

    class Progress(Callback):
        swept = 0.0

        def on_trial_result(self, iteration, trials, trial, result, **info):
            progressed()

        def on_trial_complete(self, iteration, trials, trial, **info):
            progressed()

        def on_trial_error(self, iteration, trials, trial, **info):
            remove_groups_of_dead_creators()  # a killed trial's Train workers' group would starve its retry

        def on_step_begin(self, iteration, trials, **info):
            # Again every few seconds: the controller of a killed trial dies a moment after it, and its retry
            # may already wait for the CPUs that controller's group holds.
            now = time.monotonic()
            if now - self.swept >= SWEEP_EVERY_S:
                self.swept = now
                remove_groups_of_dead_creators()

    return Progress()


def _table_base(spec: JobSpec) -> dict:
    """The trial table's values for what the search does not vary."""
    return {"fusion": spec.model.fusion, "optimizer": spec.train.optimizer, "lr": spec.train.lr}


def _scheduler(spec: JobSpec):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    t = spec.tune
    if t.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="training_iteration", max_t=spec.train.epochs, grace_period=t.grace_period,
                         reduction_factor=t.reduction_factor)


def _search_alg(spec: JobSpec):
    if spec.tune.search_alg == "random":
        return None  # Tune's default: random sampling (and every grid combination)
    try:
        from ray.tune.search.optuna import OptunaSearch
        import optuna  # noqa: F401
    except ImportError:
        raise TuneError("tune.search_alg=optuna needs the optuna package: pip install 'mmpipe[optuna]' "
                        "(or use tune.search_alg=random)") from None
    if any("grid" in d for d in spec.tune.search_space.values()):
        raise TuneError("tune.search_alg=optuna cannot take grid distributions; use choice instead")
    return OptunaSearch()


def run_tune(spec: JobSpec, out_dir: str | Path, data_plan: DataPlan | None = None) -> TuneResult:
    """``data_plan``: the run's DataPlan (built here when not given)."""
    spec = with_search_space(spec)  # no tune.search_space: the default search (pipeline/tune/space.py)
    resources = plan_resources(spec, *cluster_capacity(), tune=True)  # before any Ray work: refused if impossible
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    data = data_plan.for_spec(spec) if data_plan is not None else DataPlan(spec)

    with actors_scope():  # the shared val set's read actors end with the experiment, also when it fails
        return _search(spec, out_dir, data, resources)


def _search(spec: JobSpec, out_dir: Path, data: DataPlan, resources) -> TuneResult:
    """The shared data work, the Tuner (new, or restored from ``out_dir``) and the export."""
    import ray
    from ray import tune

    base = spec.model_dump(mode="json")
    search_alg = _search_alg(spec)
    if spec.data.cache:  # each running trial keeps its own cache: refused now if they would not all fit
        data.cache_bytes(copies=resources.trials)
    # Shared work, once: the data report (exact kept counts for every trial's rebalancing) and the val set.
    report = data.validate(["train", "val"])
    # rebalance.task: counts of that task's classes (the search space may not change it: tune/space.py)
    counts, unlabelled = kept_counts(report.splits["train"], data.rebalanced_task)
    report.write_json(out_dir / "data_report.json")
    data_progress(False)
    all_columns = sorted({c for m in spec.modalities.enabled() for c in (m, f"present_{m}")} |
                         set(label_columns(spec)))
    # Only its blocks go to the trials: the materialised dataset's plan still holds the read's duplicate-index
    # actor, which Tune's parameter registry would otherwise carry into every trial.
    val = ray.data.from_arrow_refs(data.eval_dataset("val", columns=all_columns).materialize().to_arrow_refs())

    heartbeat = Heartbeat()
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, base=base, data=data, counts=counts, unlabelled=unlabelled, val=val,
                             storage=str(out_dir / "trials"), worker_resources=resources.worker_resources(),
                             heartbeat=heartbeat),
        tune.PlacementGroupFactory(resources.trial_bundles()))
    path = out_dir / EXPERIMENT
    if tune.Tuner.can_restore(str(path)):
        # Restoring unpickles the experiment's state: only from a folder nobody else can write.
        check_private_dir(path, "the tune experiment to resume", root=out_dir)
        log.warning("continuing the tune experiment in %s", path)
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
    else:
        t = spec.tune
        tuner = tune.Tuner(
            trainable, param_space=to_param_space(t.search_space),
            tune_config=tune.TuneConfig(metric=t.metric, mode=t.mode, scheduler=_scheduler(spec),
                                        search_alg=search_alg, num_samples=t.num_samples,
                                        max_concurrent_trials=resources.trials),
            run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(out_dir),
                                      failure_config=tune.FailureConfig(max_failures=t.max_failures),
                                      # the console shows our trial table (pipeline/tune/progress.py), not Tune's
                                      verbose=None if verbose() else 0,
                                      callbacks=[_progress_callback(),
                                                 trial_table_callback(t.metric, t.mode, _table_base(spec))]))
    try:
        with no_orphaned_groups(), watch("tune", spec.scaling.stall_timeout_s, heartbeat,
                                         force_stop=kill_train_controllers):
            with _tune_console_output(verbose()):
                results = tuner.fit()
    finally:
        heartbeat.close()
    del val, trainable, tuner  # the shared val set (and its data actors) go with the experiment
    exported = export(spec, base, results, out_dir)
    publish_run(out_dir, spec)  # environment.json, report.html; MLflow when tracking asks (pipeline/report)
    return exported


@contextmanager
def _tune_console_output(on: bool):
    """Tune's own console output only with -v. Its default ("new") output prints an experiment box and result
    paths even at verbose=0; its legacy reporter honours 0. RAY_AIR_NEW_OUTPUT is read when fit() starts."""
    if on:
        yield
        return
    before = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = before


def export(spec: JobSpec, base: dict, results, out_dir: Path) -> TuneResult:
    """trials.csv, best_spec.yaml (a complete job spec), best checkpoint path, plots."""
    from pipeline.tune.plots import plot_best_by, plot_trial_curves, trial_best

    t = spec.tune
    frame = results.get_dataframe()
    frame.to_csv(out_dir / ".trials.csv.tmp", index=False)
    (out_dir / ".trials.csv.tmp").replace(out_dir / "trials.csv")
    ok = [r for r in results if r.metrics and t.metric in r.metrics]
    if not ok:
        errors = "; ".join(str(r.error)[:200] for r in results if r.error)
        raise TuneError(f"no trial reported {t.metric}" + (f" (errors: {errors})" if errors else ""))
    best = results.get_best_result(metric=t.metric, mode=t.mode, scope="all")
    best_value = trial_best(best, t.metric, t.mode)
    best_spec = trial_spec(base, best.config)
    best_spec_path = out_dir / "best_spec.yaml"
    header = (f"# Best of {len(frame)} trials ({t.metric} = {best_value:.4f}). Train it with:\n"
              f"#   mmpipe train {best_spec_path} --out RUN_DIR\n")
    atomic_write_text(best_spec_path, header + dump_spec(best_spec))
    checkpoint = best.metrics.get("checkpoint_path") or (best.checkpoint.path if best.checkpoint else None)
    plot_trial_curves(out_dir / "trials_curves.png", results, t.metric)
    plot_best_by(out_dir / "best_by_choice.png", results, t.metric, t.mode,
                 [k for k in ("model.fusion", "train.optimizer") if k in t.search_space])
    atomic_write_text(out_dir / "best.txt", f"metric: {t.metric} = {best_value}\ncheckpoint: {checkpoint}\n"
                                            f"config: {best.config}\n")
    return TuneResult(out_dir, best.config, float(best_value), best_spec_path, checkpoint, len(frame))

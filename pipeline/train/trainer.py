"""Driver side of training: rebalance plan, TorchTrainer, then test evaluation, data report and artifacts, all
from one DataPlan."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.model.adapt import adapt_batchnorm
from pipeline.model.checkpoint import read_checkpoint
from pipeline.data.streaming.epoch import EpochClock
from pipeline.data.streaming.plan import DataPlan, RebalancePlan
from pipeline.data.streaming.actors import actors_scope
from pipeline.data.streaming.warmup import warm_data_workers
from pipeline.io import atomic_write_text
from pipeline.console import make_console, quiet_ray
from pipeline.model.classifier import MultimodalClassifier, input_columns, train_columns
from pipeline.progress import follow_training
from pipeline.ray_runtime import data_progress, started_here
from pipeline.resources import ResourcePlan, cluster_capacity, data_reservation, no_orphaned_groups, plan_resources
from pipeline.spec import JobSpec, dump_spec
from pipeline.report import publish_run
from pipeline.tracking.tensorboard import TENSORBOARD_DIR
from pipeline.train.artifacts import write_artifacts
from pipeline.tasks import further_layout, spec_tasks, task_layout
from pipeline.train.loop import STATE_FILE, score, train_loop
from pipeline.train.transfer import prepare_transfer
from pipeline.train.metrics import Accumulator, metric_mode, task_metrics
from pipeline.watchdog import Heartbeat, StallError, kill_train_controllers, progressed, watch

log = logging.getLogger(__name__)


class TrainError(RuntimeError):
    pass


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict          # test metrics (and the best epoch's validation metrics)
    best_checkpoint: Path  # run_dir / best.pt


# The spec sections whose change a resumed training would silently override: the model, the optimisation and the
# labels (their tasks and classes shape the model's heads, label.tasks).
RESUME_SECTIONS = ("model", "train", "label")


def check_resumable(spec: JobSpec, run_dir: Path, name: str, sections: tuple[str, ...] = RESUME_SECTIONS) -> None:
    """A run directory with training state resumes; refuse when the settings of ``sections`` changed (the model
    or optimisation, by default also the labels), which the restored weights and optimizer state would silently
    override or fail to load. Pretraining ignores labels: it passes ("model", "train")."""
    import yaml

    previous = run_dir / "spec.yaml"
    if not (run_dir / "ray" / name).exists() or not previous.exists():
        return
    old = yaml.safe_load(previous.read_text(encoding="utf-8")) or {}
    changed = [f"{section}.{k}" for section in sections
               for k, value in _settings(spec, section, old.get(section) or {}) if k != "epochs"]
    # label.tasks compares as a dict (order-blind), but its order is the heads' order in the logits
    if "label" in sections and "label.tasks" not in changed and \
            further_layout(old.get("label")) != further_layout(spec.model_dump(mode="json")["label"]):
        changed.append("label.tasks (their order: the heads' order)")
    if changed:
        raise TrainError(f"{run_dir} holds a run with other settings ({', '.join(changed)}); it would resume "
                         "with the old ones. Use another --out, or --fresh to discard it.")


def _settings(spec: JobSpec, section: str, old: dict):
    """(name, value) of each field of ``spec.<section>`` that differs from ``old``; a field ``old`` lacks (written
    before the field existed) counts as its default, so adding a field to the spec keeps old runs resumable."""
    part = getattr(spec, section)
    new = part.model_dump(mode="json")
    defaults = type(part)().model_dump(mode="json")
    return [(k, v) for k, v in new.items() if old.get(k, defaults.get(k)) != v]


def evaluate(model: torch.nn.Module, dataset, spec: JobSpec, classes: list[str], prefix: str) -> dict:
    """Every row of ``dataset`` through ``model`` on the driver. ``model.adapt_batchnorm``: a first pass over the
    rows recomputes the BatchNorm statistics of a copy of ``model`` on them (pipeline/model/adapt.py), which then
    scores them; ``model`` is left as it was."""
    columns = input_columns(spec)
    tasks = spec_tasks(spec, classes)  # label.tasks: every task scored, as val is in training
    accs = [Accumulator(len(task.classes)) for task in tasks]
    if spec.model.adapt_batchnorm:
        model = adapt_batchnorm(model, _counted(dataset, columns))
    model.eval()
    with torch.no_grad():
        for batch in _counted(dataset, columns):
            score(accs, model(batch), batch, tasks)
    return task_metrics(accs, tasks, prefix)


def _counted(dataset, columns: list[str]):
    """``columns`` of every row of ``dataset`` in torch batches, each reported to the watchdog as progress."""
    for batch in dataset.select_columns(columns).iter_torch_batches(batch_size=256, drop_last=False):
        progressed(len(batch["label"]))
        yield batch


def build_trainer(data: DataPlan, rebalance: RebalancePlan, val, resources: dict, run_config,
                  inject_failure: dict | None = None, heartbeat: Heartbeat | None = None,
                  tracking: dict | None = None, scheduling_strategy=None):
    """The TorchTrainer for one training of ``data.spec`` (``mmpipe train`` and every Tune trial): the train split
    streams rebalanced and augmented per epoch (an EpochClock the loop advances); ``val`` is read whole by each
    rank. ``resources``: per worker (ResourcePlan.worker_resources); ``heartbeat``: what the workers beat per step.
    ``scheduling_strategy``: where the train split's tasks run (the run's reserved data CPUs)."""
    from ray.train import DataConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    spec, clock = data.spec, EpochClock(0)
    train = data.train_dataset(epoch=clock, columns=train_columns(spec), rebalance=rebalance,
                               scheduling_strategy=scheduling_strategy, heartbeat=heartbeat)  # data.cache: reads here
    return TorchTrainer(
        train_loop,
        train_loop_config={"spec": spec.model_dump(mode="json"), "classes": data.classes, "epoch_clock": clock,
                           "rows_per_epoch": rebalance.rows_per_epoch, "counts_seen": rebalance.expected,
                           "inject_failure": inject_failure, "heartbeat": heartbeat,
                           "tracking": tracking},  # tensorboard_dir, hparams: pipeline/tracking/tensorboard.py
        scaling_config=ScalingConfig(num_workers=spec.scaling.num_workers, use_gpu=spec.scaling.use_gpu,
                                     resources_per_worker=resources),
        datasets={"train": train, "val": val},
        dataset_config=DataConfig(datasets_to_split=["train"], execution_options={"val": _val_options()}),
        run_config=run_config)


def _val_options():
    """Ray Data options for the val split: each rank reads it whole and scores batch i when i % world == rank
    (pipeline/train/loop.py), so every rank must see the same batches in the same order. Without preserve_order
    the batch iterator's prefetch threads (train.prefetch_batches) hand batches over as they finish: a rank once
    saw [16, 16, 16, 1, 16], and the epoch scored 50 of 65 val rows, some twice (tests/train/test_train.py)."""
    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return options


def run_training(spec: JobSpec, run_dir: str | Path, inject_failure: dict | None = None,
                 name: str = "train", data_report: bool = True, data_plan: DataPlan | None = None) -> TrainResult:
    """``data_report=False``: the caller already has this data's report (the workflow's validate-data step).
    ``data_plan``: the run's DataPlan (built here when not given); this training reads it through
    ``data_plan.for_spec(spec)``."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    resources = plan_resources(spec, *cluster_capacity())  # before any Ray work: an impossible plan is refused
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        if split not in spec.data.splits:
            raise TrainError(f"training needs data.splits.{split}")
    data = data_plan.for_spec(spec) if data_plan is not None else DataPlan(spec)
    check_resumable(spec, run_dir, name)
    if spec.model.init_from:  # a wrong model.init_from fails here, before Ray Train starts; says what it loads
        prepare_transfer(MultimodalClassifier(spec, len(data.classes)), spec, say=print)
    atomic_write_text(run_dir / "spec.yaml", dump_spec(spec))

    # Class counts for rebalancing from manifest.json when it describes these shards (else a label-only pass):
    # training starts without first reading every split. The data report's full pass runs after training.
    plan = data.rebalance
    per_rank = plan.rows_per_epoch / spec.scaling.num_workers
    if per_rank < spec.train.batch_size:
        raise TrainError(f"an epoch gives each of the {spec.scaling.num_workers} workers about {per_rank:.0f} "
                         f"training rows, fewer than train.batch_size={spec.train.batch_size}: no step would run. "
                         "Lower train.batch_size or scaling.num_workers, or rebalance less aggressively.")

    data_progress(False)  # datasets below run inside the training workers: bars there interleave with the log
    metric = spec.train.early_stopping_metric
    run_config = RunConfig(
        name=name, storage_path=str(run_dir / "ray"),
        failure_config=FailureConfig(max_failures=spec.scaling.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=metric,
                                           checkpoint_score_order=metric_mode(metric)))
    stopped = False
    try:
        result = _fit(data, plan, resources, run_config, inject_failure)
    except (StallError, KeyboardInterrupt, SystemExit):
        # stalled: the diagnostic is what matters, and a data pass could wait on the same thing. Ctrl-C (Ray
        # Train's SIGINT handler raises SystemExit when the signal also ended its controller): the user wants the
        # prompt back, not a pass over every split first
        stopped = True
        raise
    finally:  # also when training fails: the report may say why
        if data_report and not stopped:
            write_data_report(data, run_dir, plan)
    if result.error:
        raise TrainError(f"training failed: {result.error}")
    with watch("test evaluation", spec.scaling.stall_timeout_s), actors_scope():
        trained = finish(data, run_dir, result)
    publish_run(run_dir, spec)  # environment.json, report.html; MLflow when tracking asks (pipeline/report)
    return trained


def _fit(data: DataPlan, rebalance: RebalancePlan, plan: ResourcePlan, run_config, inject_failure):
    """trainer.fit() with the run's data CPUs reserved (its datasets built to run there), a stall watchdog on the
    workers' heartbeat, and no placement group or dataset actor left behind."""
    spec = data.spec
    run_dir = Path(run_config.storage_path).parent  # RUN_DIR/ray holds Ray Train's state
    heartbeat = Heartbeat()
    try:
        with actors_scope(), no_orphaned_groups(), data_reservation(spec.scaling.data_cpus) as strategy:
            val = data.eval_dataset("val", columns=input_columns(spec), scheduling_strategy=strategy)
            # data.cache: the train split is read and cleaned here, once, in the data reservation
            with watch("the data cache pass", spec.scaling.stall_timeout_s, heartbeat) if spec.data.cache \
                    else contextlib.nullcontext():
                trainer = build_trainer(data, rebalance, val, plan.worker_resources(), run_config,
                                        inject_failure=inject_failure, heartbeat=heartbeat,
                                        tracking={"tensorboard_dir": str(run_dir / TENSORBOARD_DIR)},
                                        scheduling_strategy=strategy)
            if started_here():  # idle workers of a cluster are not kept for us: warming them would be wasted work
                # One per data CPU, in the reservation where the reads will run (more would only queue there and
                # reuse the same worker); overlaps Ray Train's start-up.
                warm_data_workers(spec, strategy, min(8, spec.scaling.data_cpus))
            quiet_ray()  # Ray Train's driver loggers exist now: their lines go to the log file
            with watch("training", spec.scaling.stall_timeout_s, heartbeat, force_stop=kill_train_controllers), \
                    follow_training(heartbeat, spec.train.epochs, rebalance.rows_per_epoch):
                return trainer.fit()
    finally:
        heartbeat.close()


def write_data_report(data: DataPlan, run_dir: Path, plan: RebalancePlan) -> None:
    """Every row of every split read, cleaned and counted (rows in = kept + dropped), with the rebalance plan used."""
    report = data.validate()
    report.rebalance = plan.to_dict()
    report.write_json(run_dir / "data_report.json")
    report.print(make_console())  # piped: not wrapped at 80 columns


def best_checkpoint(result, metric: str):
    """The kept checkpoint with the best value of ``metric`` (NaN never wins), else the latest."""
    sign = 1 if metric_mode(metric) == "max" else -1
    scored = [(sign * m[metric], c) for c, m in (result.best_checkpoints or [])
              if metric in m and m[metric] == m[metric]]
    return max(scored, key=lambda sc: sc[0])[1] if scored else result.checkpoint


def _load_state(checkpoint) -> dict:
    with checkpoint.as_directory() as d:
        return read_checkpoint(Path(d) / STATE_FILE)


def finish(data: DataPlan, run_dir: Path, result) -> TrainResult:
    """Best checkpoint -> best.pt, test evaluation, metrics.json and plots."""
    spec, classes = data.spec, data.classes
    if result.checkpoint is None:
        raise TrainError("training reported no checkpoint")
    latest = _load_state(result.checkpoint)
    best = _load_state(best_checkpoint(result, spec.train.early_stopping_metric))
    model = MultimodalClassifier(spec, len(classes))
    model.load_state_dict(best["model"])
    best_epoch = best["history"][-1]
    test = {}
    if "test" in spec.data.splits:
        test = evaluate(model, data.eval_dataset("test"), spec, classes, "test")
    metrics = {**{k: v for k, v in best_epoch.items()}, **test, "best_epoch": best["epoch"] + 1,  # 1-based
               "epochs_run": latest["epoch"] + 1, "classes": classes}
    tasks = spec_tasks(spec, classes)
    if len(tasks) > 1:  # label.tasks: each task's classes, the primary first
        metrics["tasks"] = {task.name: list(task.classes) for task in tasks}
    torch.save({"model": best["model"], "classes": classes, "spec": best["spec"], "epoch": best["epoch"] + 1,
                "tasks": task_layout(tasks),  # the heads' order in the logits: init_from loads heads by it
                "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}},
               run_dir / ".best.pt.tmp")
    shutil.move(run_dir / ".best.pt.tmp", run_dir / "best.pt")
    atomic_write_text(run_dir / "metrics.json", json.dumps(_jsonable(metrics), indent=2, ensure_ascii=False))
    split = "test" if test else "val"
    write_artifacts(run_dir, latest["history"], classes,
                    np.array(test.get("test.confusion", best["val_confusion"])), split,
                    {task.name: (np.array(test[task.metric("test", "confusion")] if test else
                                          best["val_task_confusions"][task.name]), list(task.classes))
                     for task in tasks[1:]})
    return TrainResult(run_dir, metrics, run_dir / "best.pt")


def _jsonable(obj):
    if isinstance(obj, float) and (np.isnan(obj) or np.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    return obj

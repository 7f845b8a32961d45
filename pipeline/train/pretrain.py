"""Driver side of ``mmpipe pretrain``: self-supervised contrastive pretraining of the encoders on the train split
(labels ignored, or absent), on Ray Train DDP like ``train``; writes RUN/pretrained.pt (the encoders' weights and
the spec that sizes them, loadable with ``weights_only=True``), epochs.csv, curves.png and spec.yaml.

A re-run of the same run directory resumes from its latest checkpoint. ``model.init_from: RUN`` then starts a
classifier's encoders from it (pipeline/train/transfer.py)."""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.model.checkpoint import read_checkpoint
from pipeline.data.streaming.actors import actors_scope
from pipeline.data.streaming.epoch import EpochClock
from pipeline.data.streaming.plan import DataPlan
from pipeline.io import atomic_write_bytes, atomic_write_text
from pipeline.model.augment import DeviceAugment
from pipeline.ray_runtime import data_progress
from pipeline.resources import cluster_capacity, data_reservation, no_orphaned_groups, plan_resources
from pipeline.spec import JobSpec, dump_spec
from pipeline.train.artifacts import plot_curves, write_epochs_csv
from pipeline.train.loop import STATE_FILE
from pipeline.train.pretrain_loop import pretrain_loop
from pipeline.train.trainer import TrainError, check_resumable
from pipeline.watchdog import Heartbeat, kill_train_controllers, watch

PRETRAINED_FILE = "pretrained.pt"


@dataclass
class PretrainResult:
    run_dir: Path
    history: list[dict]
    pretrained: Path  # run_dir / pretrained.pt


def pretrain_spec(spec: JobSpec) -> JobSpec:
    """The spec as pretraining reads the data: every train row once per epoch (no rebalancing, every label ignored,
    so no task's classes are counted)."""
    out = spec.model_copy(deep=True)
    out.rebalance.strategy, out.rebalance.task = "none", None
    out.train.label_fraction = None
    return out


def epoch_rows(data: DataPlan) -> float:
    """Rows one pretraining epoch streams, which size its learning-rate schedule: every sample of the readable
    train shards, labelled or not (class counts left out the unlabelled ones: with no labels at all the schedule
    ran out after one step per epoch). Rows cleaning drops make it a little high, which leaves the last steps' lr
    above 0 rather than reaching 0 early."""
    return float(data.shard_samples("train")) or float(data.spec.train.batch_size * data.spec.scaling.num_workers)


def pretrain_columns(spec: JobSpec) -> list[str]:
    mods = spec.modalities.enabled()
    extra = DeviceAugment.columns if spec.augment.runs_on("device") else []
    return [*mods, *(f"present_{m}" for m in mods), *extra]


def run_pretraining(spec: JobSpec, run_dir: str | Path, data_plan: DataPlan | None = None,
                    name: str = "pretrain") -> PretrainResult:
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if len(spec.modalities.enabled()) < 2 and spec.pretrain.view_weight == 0:
        raise TrainError("pretraining one modality learns only from two views of it: pretrain.view_weight is 0")
    if "train" not in spec.data.splits:
        raise TrainError("pretraining needs data.splits.train")
    resources = plan_resources(spec, *cluster_capacity())
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = pretrain_spec(spec)
    data = data_plan.for_spec(spec) if data_plan is not None else DataPlan(spec)
    check_resumable(spec, run_dir, name, sections=("model", "train"))  # labels: ignored by pretraining
    atomic_write_text(run_dir / "spec.yaml", dump_spec(spec))
    rows = epoch_rows(data)

    data_progress(False)
    run_config = RunConfig(name=name, storage_path=str(run_dir / "ray"),
                           failure_config=FailureConfig(max_failures=spec.scaling.max_failures),
                           checkpoint_config=CheckpointConfig(num_to_keep=2))
    heartbeat = Heartbeat()
    try:
        with actors_scope(), no_orphaned_groups(), data_reservation(spec.scaling.data_cpus) as strategy:
            clock = EpochClock(0)
            columns = pretrain_columns(spec)
            train = data.train_dataset(epoch=clock, columns=columns, labels_required=False,
                                       scheduling_strategy=strategy)
            trainer = TorchTrainer(
                pretrain_loop,
                train_loop_config={"spec": spec.model_dump(mode="json"), "epoch_clock": clock, "columns": columns,
                                   "rows_per_epoch": rows, "heartbeat": heartbeat},
                scaling_config=ScalingConfig(num_workers=spec.scaling.num_workers, use_gpu=spec.scaling.use_gpu,
                                             resources_per_worker=resources.worker_resources()),
                datasets={"train": train}, dataset_config=DataConfig(datasets_to_split=["train"]),
                run_config=run_config)
            with watch("pretraining", spec.scaling.stall_timeout_s, heartbeat, force_stop=kill_train_controllers):
                result = trainer.fit()
    finally:
        heartbeat.close()
    if result.error:
        raise TrainError(f"pretraining failed: {result.error}")
    if result.checkpoint is None:
        raise TrainError("pretraining reported no checkpoint")
    with result.checkpoint.as_directory() as d:
        state = read_checkpoint(Path(d) / STATE_FILE)
    return write_pretrained(run_dir, state)


def write_pretrained(run_dir: Path, state: dict) -> PretrainResult:
    """pretrained.pt (encoders' weights under the classifier's names, the spec, the last epoch), epochs.csv,
    curves.png and pretrain.json from a checkpoint state."""
    buf = io.BytesIO()
    torch.save({"model": state["encoders"], "spec": state["spec"], "epoch": state["epoch"], "kind": "pretrained"},
               buf)
    atomic_write_bytes(run_dir / PRETRAINED_FILE, buf.getvalue())
    history = state["history"]
    write_epochs_csv(run_dir / "epochs.csv", history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plot_curves(run_dir / "curves.png", history)
    for row in history:
        print(f"pretrain epoch {row['epoch']}: contrastive loss {row['train.loss']:.3f} "
              f"temperature {row['temperature']:.3f}", flush=True)
    atomic_write_text(run_dir / "pretrain.json", json.dumps(
        {"epochs_run": state["epoch"] + 1, "final": {k: v for k, v in history[-1].items()
                                                    if isinstance(v, (int, float))}}, indent=2))
    return PretrainResult(run_dir, history, run_dir / PRETRAINED_FILE)

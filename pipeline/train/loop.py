"""train_loop(config): what every Ray Train worker runs, readable top to bottom. Shared by ``mmpipe train`` and Tune.

setup (model, optimizer, schedule, loss; resume from the latest checkpoint) -> per epoch: advance the EpochClock,
train on this rank's shard of the train split, validate over every val row (each rank a disjoint part, metrics
all-reduced), checkpoint from rank 0, early-stop on the chosen metric.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from pipeline.model.checkpoint import read_checkpoint
from pipeline.model.augment import device_augmenter
from pipeline.model.classifier import MultimodalClassifier, input_columns, model_modalities, train_columns
from pipeline.model.hf_encoders import ddp_options
from pipeline.model.losses import make_task_loss
from pipeline.spec import JobSpec
from pipeline.tasks import Task, spec_tasks, split_logits, task_layout
from pipeline.train.metrics import Accumulator, metric_mode, task_metrics
from pipeline.train.optim import apply_gradients, freeze_groups, lr_schedule, make_optimizer, param_groups
from pipeline.train.transfer import prepare_transfer

STATE_FILE = "state.pt"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model, with or without DDP around it (DDP exists only with more than one worker)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def improved(value: float, best: float | None, mode: str) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best if mode == "max" else value < best


@dataclass
class EarlyStopping:
    """Stop after ``patience`` epochs in a row without a new best ``metric`` (never when patience is None).
    ``best`` and ``stale`` ride in the checkpoint, so a resumed run continues the count."""
    metric: str
    patience: int | None
    best: float | None = None
    stale: int = 0

    def update(self, metrics: dict) -> bool:
        """Record one epoch's metrics; True when training should stop now."""
        value = metrics.get(self.metric, float("nan"))
        if improved(value, self.best, metric_mode(self.metric)):
            self.best, self.stale = value, 0
        else:
            self.stale += 1
        return self.patience is not None and self.stale >= self.patience


def checkpoint_state(model, optimizer, scheduler, stopper: EarlyStopping, epoch: int, history: list,
                     stopped: bool, **extra) -> dict:
    """What ``state.pt`` holds after ``epoch``: everything ``resume`` needs, plus ``extra`` (spec, classes...)."""
    return {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": epoch, "best": stopper.best, "stale": stopper.stale,
            "history": history, "stopped": stopped, **extra}


def resume(state: dict, model, optimizer, scheduler, stopper: EarlyStopping, epochs: int,
           layout: list | None = None) -> tuple[int, list]:
    """Load ``state`` into the model, optimizer, schedule and early stopping; (first epoch to run, history).
    A run that early-stopped gets ``epochs`` as its first epoch: a re-run must not train on. ``layout``: this
    run's task heads (``task_layout``); a checkpoint of another layout is refused (its heads would load shifted)."""
    if layout is not None and "tasks" in state and [[n, list(c)] for n, c in state["tasks"]] != layout:
        raise ValueError(f"the checkpoint's task heads {state['tasks']} are not this run's {layout} (label.tasks "
                         "changed: tasks, their order or classes); start afresh (--fresh)")
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    stopper.best, stopper.stale = state["best"], state["stale"]
    return (epochs if state.get("stopped") else state["epoch"] + 1), state["history"]


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A short sha256 of every weight and buffer, in name order: equal only for the same state."""
    digest = hashlib.sha256()
    for name, tensor in sorted(unwrap(model).state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def resume_record(model, scheduler, state: dict) -> dict:
    """What a resumed run started from, for the first epoch row after it (epochs.csv): the checkpoint's epoch, the
    optimizer steps and the weights as loaded. Tests compare them with that epoch's own row: a run that
    restarted from scratch has no such row, one that lost its state has other steps or weights. Epochs are
    1-based here as in epochs.csv; ``state["epoch"]`` (the checkpoint's own) counts from 0."""
    return {"resumed_from_epoch": state["epoch"] + 1, "resumed_steps": scheduler.last_epoch,
            "resumed_weights": weights_fingerprint(model)}


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _sync_buffers(model: torch.nn.Module) -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for buffer in unwrap(model).buffers():
            dist.broadcast(buffer, src=0)


def _to_batch(batch: dict, columns: list[str], device) -> dict:
    return {c: batch[c].to(device, non_blocking=True) for c in columns}  # a no-op where Ray placed it already


def device_feed(device: torch.device, prefetch_batches: int) -> dict:
    """iter_torch_batches arguments: Ray collates and copies ``prefetch_batches`` batches to ``device`` ahead of
    the step in its own thread, from pinned host memory on CUDA (so the copy overlaps compute)."""
    return {"device": device, "prefetch_batches": prefetch_batches, "pin_memory": device.type == "cuda"}


def compiled(model: torch.nn.Module, enabled: bool, backend: str = "inductor") -> torch.nn.Module:
    """``torch.compile(model)`` when ``enabled`` (train.compile): the same parameters, so optimizer, DDP and
    checkpoints are unchanged; the compiled callable only runs the training steps. (Inductor compiling the default
    model took ~2.5 min on 2 CPU cores: worth it on long GPU runs only.)"""
    return torch.compile(model, backend=backend) if enabled else model


def score(accs: list[Accumulator], logits: torch.Tensor, batch: dict, tasks: tuple[Task, ...]) -> None:
    """Add one evaluation batch to each task's accumulator: its logits block against its labelled rows (a further
    task's label may be missing: -1), with the summed cross-entropy as the loss."""
    for acc, block, task in zip(accs, split_logits(logits, tasks), tasks):
        y = batch[task.column]
        labelled = y >= 0
        if not bool(labelled.all()):
            block, y = block[labelled], y[labelled]
        loss = torch.nn.functional.cross_entropy(block.float(), y, reduction="sum") if len(y) else torch.zeros(())
        acc.add(block, y, loss.item())


def train_loop(config: dict) -> None:
    # ---- setup
    spec = JobSpec.model_validate(config["spec"])
    classes: list[str] = config["classes"]
    t = spec.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    use_bf16 = device.type == "cuda"
    torch.manual_seed(t.seed + rank)

    model = MultimodalClassifier(spec, len(classes))
    # model.init_from / freeze / pretrained_lr_scale (pipeline/train/transfer.py): frozen encoders get lr 0
    pretrained = prepare_transfer(model, spec, say=lambda _: None)  # the driver said what it loads
    model = ray.train.torch.prepare_model(model, **ddp_options(spec))  # DDP (gradients all-reduced in backward)
    forward = compiled(model, t.compile)  # training steps; eval and checkpoints use the model itself
    optimizer = make_optimizer(t, param_groups(unwrap(model), t.lr, pretrained, spec.model.pretrained_lr_scale,
                                               spec.model.frozen_epochs()))
    steps_per_epoch = max(1, int(config["rows_per_epoch"] // (world * t.batch_size)))
    scheduler = lr_schedule(t, optimizer, steps_per_epoch)
    tasks = spec_tasks(spec, classes)  # the primary task, then label.tasks: one logits block and label column each
    loss_fn = make_task_loss(t, config["counts_seen"], [task.weight for task in tasks])
    columns = input_columns(spec)
    # augment.backend: device -> augmented here, on the device, per-row seeds from the data path (else None)
    augment_on_device = device_augmenter(spec.augment, spec.modalities, model_modalities(spec))
    train_inputs = train_columns(spec)
    stopper = EarlyStopping(t.early_stopping_metric, t.early_stopping_patience)
    metric = stopper.metric

    start_epoch, history, resumed = 0, [], {}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # a restarted worker group, or a re-run of the same run directory
        with checkpoint.as_directory() as d:
            state = read_checkpoint(Path(d) / STATE_FILE)
        start_epoch, history = resume(state, model, optimizer, scheduler, stopper, t.epochs, task_layout(tasks))
        resumed = resume_record(model, scheduler, state)

    train_shard = ray.train.get_dataset_shard("train")
    val_data = ray.train.get_dataset_shard("val")
    feed = device_feed(device, t.prefetch_batches)
    failure = config.get("inject_failure")
    heartbeat = config.get("heartbeat")  # the driver's stall watchdog counts these (pipeline/watchdog.py)
    tensorboard = _tensorboard(config) if rank == 0 else None

    first_batch = rank == 0  # log when the first batch arrives: benchmarks/first_batch.py measures start-up by it
    lr = scheduler.get_last_lr()[0]
    for epoch in range(start_epoch, t.epochs):
        epoch_started = time.monotonic()
        if failure and epoch == failure["epoch"] and rank == world - 1 and not os.path.exists(failure["marker"]):
            Path(failure["marker"]).touch()
            raise RuntimeError(f"injected worker failure at epoch {epoch} (testing recovery)")
        if rank == 0:
            config["epoch_clock"].set(epoch)  # augmentation and rebalancing draw per epoch
        _barrier()
        frozen = freeze_groups(optimizer, scheduler, epoch)  # model.freeze: lr 0 until its epoch, eval mode
        unwrap(model).set_frozen([g.split(".", 1)[1] for g in frozen])

        # ---- train on this rank's shard; equal row counts per rank and drop_last keep the ranks in step
        model.train()
        train_accs = [Accumulator(len(task.classes)) for task in tasks]
        streamed = 0  # rows trained on, labelled or not: what the progress bar counts against the epoch's rows
        # The shuffle buffer must fill before the first batch (at 1,024 rows a small epoch's first step waited
        # for the whole epoch; at 4 batches, for most of the demo's shards). Shard order is shuffled per epoch
        # already; the buffer mixes rows across blocks (each block is one prepared batch of one shard).
        for batch in train_shard.iter_torch_batches(batch_size=t.batch_size, drop_last=True,
                                                    local_shuffle_buffer_size=2 * t.batch_size,
                                                    local_shuffle_seed=t.seed + epoch, **feed):
            if first_batch and heartbeat:  # the driver logs it (benchmarks/first_batch.py reads that line)
                heartbeat.event("first_batch", time=time.time())
                first_batch = False
            batch = _to_batch(batch, train_inputs, device)
            lr = optimizer.param_groups[0]["lr"]  # what this step trains with (the schedule moves on after it)
            if augment_on_device:
                batch = augment_on_device(batch)
            with torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext():
                blocks = split_logits(forward(batch), tasks)           # (B, C_t) per task
                targets = [batch[task.column] for task in tasks]
                loss, parts = loss_fn(blocks, targets)
            apply_gradients(loss, model, optimizer, scheduler, t.grad_clip)
            streamed += len(targets[0])
            for acc, block, y, part in zip(train_accs, blocks, targets, parts):
                labelled = y >= 0  # train.label_fraction, a missing task label: rows labelled -1 are not scored
                acc.add(block.detach()[labelled], y[labelled], part.item() * int(labelled.sum()))
            if heartbeat:  # the driver's progress bar: rows and running loss of this rank's epoch so far
                heartbeat.beat(rank=rank, epoch=epoch, phase="train", rows=streamed,
                               loss=train_accs[0].loss_sum / max(1, train_accs[0].rows))

        # ---- validate: every val row once across the ranks (batch i goes to rank i % world; every rank sees the
        # same batches in the same order: trainer._val_options)
        _sync_buffers(model)  # BatchNorm running stats diverge per rank after the last step; use rank 0's
        model.eval()
        val_accs = [Accumulator(len(task.classes)) for task in tasks]
        with torch.no_grad():
            for i, batch in enumerate(val_data.iter_torch_batches(batch_size=t.batch_size, drop_last=False, **feed)):
                if i % world != rank:
                    continue
                batch = _to_batch(batch, columns, device)
                with torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext():
                    logits = unwrap(model)(batch)  # no DDP collectives in eval: ranks see different batch counts
                score(val_accs, logits, batch, tasks)
                if heartbeat:
                    heartbeat.beat(rank=rank, epoch=epoch, phase="val", rows=val_accs[0].rows)
        # 1-based, as every log line and plot says; the last epoch's lr is its last step's, not the 0.0 after it
        metrics = {"epoch": epoch + 1, "lr": lr}
        metrics.update(_scalars(task_metrics([a.all_reduce() for a in train_accs], tasks, "train")))
        val_metrics = task_metrics([a.all_reduce() for a in val_accs], tasks, "val")
        metrics.update(_scalars(val_metrics))

        stop = stopper.update(metrics)
        metrics["best." + metric] = stopper.best
        # epochs.csv only (not reported): cumulative optimizer steps (the schedule's count, restored on resume),
        # the weights this epoch's checkpoint holds, and on the first epoch after a resume what it resumed from
        history.append({**metrics, "optimizer_steps": scheduler.last_epoch, "weights": weights_fingerprint(model),
                        "epoch_seconds": round(time.monotonic() - epoch_started, 3), **resumed})
        resumed = {}
        if tensorboard:
            tensorboard.epoch(epoch + 1, metrics, _confusion_figure(val_metrics["val.confusion"], classes, epoch + 1))

        # ---- checkpoint from rank 0; every rank reports
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if rank == 0:
                confusions = {task.name: val_metrics[task.metric("val", "confusion")] for task in tasks[1:]}
                torch.save(checkpoint_state(model, optimizer, scheduler, stopper, epoch, history, stop,
                                            spec=config["spec"], classes=classes, tasks=task_layout(tasks),
                                            val_confusion=val_metrics["val.confusion"],
                                            val_task_confusions=confusions), Path(d) / STATE_FILE)
                ckpt = ray.train.Checkpoint.from_directory(d)
                if heartbeat:  # the driver prints the epoch's line (pipeline/progress.py); workers never print
                    heartbeat.event("epoch", epoch=epoch, epochs=t.epochs, metrics=metrics,
                                    seconds=time.monotonic() - epoch_started)
            ray.train.report(metrics, checkpoint=ckpt)
        if stop:
            if rank == 0 and heartbeat:
                heartbeat.event("early_stop", metric=metric, stale=stopper.stale)
            break
    if tensorboard:
        if config["tracking"].get("hparams") and history:
            tensorboard.hparams(config["tracking"]["hparams"], history[-1])
        tensorboard.close()


def _tensorboard(config: dict):
    """The event-file writer for this training, when the driver named a folder (``tracking.tensorboard_dir``)."""
    folder = (config.get("tracking") or {}).get("tensorboard_dir")
    if not folder:
        return None
    from pipeline.tracking.tensorboard import EpochWriter

    return EpochWriter(folder)


def _confusion_figure(confusion, classes: list[str], epoch: int):
    from pipeline.train.artifacts import confusion_figure

    return confusion_figure(confusion, classes, f"confusion matrix (val, epoch {epoch})")


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


"""pretrain_loop(config): what every Ray Train worker runs for ``mmpipe pretrain``. The training loop's pieces
(checkpoint state, resume, schedule, update step, heartbeat) with the contrastive objective instead of labels.

setup (contrastive model: the classifier's encoders + projection heads; optimizer, schedule; resume from the latest
checkpoint) -> per epoch: advance the EpochClock, one pass over this rank's shard of the train split (labels never
read), the loss all-reduced, checkpoint from rank 0 with the encoders' weights.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from pipeline.model.checkpoint import read_checkpoint
from pipeline.model.augment import device_augmenter
from pipeline.model.contrastive import MAX_LOGIT_SCALE, ContrastiveModel, encoder_state
from pipeline.model.hf_encoders import ddp_options, hf_weight_names
from pipeline.spec import JobSpec
from pipeline.train.loop import (STATE_FILE, EarlyStopping, _barrier, _to_batch, checkpoint_state, resume,
                                 resume_record, unwrap, weights_fingerprint)
from pipeline.train.optim import apply_gradients, lr_schedule, make_optimizer, param_groups

METRIC = "train.loss"


def pretrain_settings(spec: JobSpec):
    """The train section with the pretrain section's epochs and lr: what the optimizer and schedule are built from."""
    return spec.train.model_copy(update={"epochs": spec.pretrain.epochs, "lr": spec.pretrain.lr})


def _all_reduce_sums(values: list[float]) -> list[float]:
    if dist.is_available() and dist.is_initialized():
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()
    return values


def pretrain_loop(config: dict) -> None:
    spec = JobSpec.model_validate(config["spec"])
    t = pretrain_settings(spec)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(t.seed + rank)

    model = ray.train.torch.prepare_model(ContrastiveModel(spec), **ddp_options(spec))
    modalities = unwrap(model).modalities
    # model.hf weights are pretrained: they learn at pretrain.lr x model.pretrained_lr_scale (one group without them)
    optimizer = make_optimizer(t, param_groups(unwrap(model), t.lr, hf_weight_names(unwrap(model)),
                                               spec.model.pretrained_lr_scale))
    steps_per_epoch = max(1, int(config["rows_per_epoch"] // (world * t.batch_size)))
    scheduler = lr_schedule(t, optimizer, steps_per_epoch)
    augment_on_device = device_augmenter(spec.augment, spec.modalities, modalities)
    columns = config["columns"]
    stopper = EarlyStopping(METRIC, None)  # never stops: kept for the checkpoint format train's resume reads

    start_epoch, history, resumed = 0, [], {}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = read_checkpoint(Path(d) / STATE_FILE)
        start_epoch, history = resume(state, model, optimizer, scheduler, stopper, t.epochs)
        resumed = resume_record(model, scheduler, state)

    train_shard = ray.train.get_dataset_shard("train")
    heartbeat = config.get("heartbeat")
    for epoch in range(start_epoch, t.epochs):
        if rank == 0:
            config["epoch_clock"].set(epoch)
        _barrier()
        model.train()
        sums: dict[str, float] = {"loss": 0.0, "steps": 0.0}
        lr = optimizer.param_groups[0]["lr"]
        for batch in train_shard.iter_torch_batches(batch_size=t.batch_size, drop_last=True,
                                                    local_shuffle_buffer_size=2 * t.batch_size,
                                                    local_shuffle_seed=t.seed + epoch):
            batch = _to_batch(batch, columns, device)
            if augment_on_device:
                batch = augment_on_device(batch)
            lr = optimizer.param_groups[0]["lr"]  # what this step trains with (the schedule moves on after it)
            loss, parts = model(batch)
            apply_gradients(loss, model, optimizer, scheduler, t.grad_clip)
            sums["loss"] += loss.item()
            sums["steps"] += 1
            if heartbeat:  # the driver's progress bar (pipeline/progress.py) and stall watchdog
                heartbeat.beat(rank=rank, epoch=epoch, phase="train", rows=sums["steps"] * t.batch_size,
                               loss=sums["loss"] / sums["steps"])
            for name, value in parts.items():
                sums[name] = sums.get(name, 0.0) + value
        names = sorted(sums)
        totals = dict(zip(names, _all_reduce_sums([sums[n] for n in names])))  # every rank has the same parts
        steps = max(totals.pop("steps"), 1.0)
        scale = float(unwrap(model).log_scale.detach().exp().clamp(max=MAX_LOGIT_SCALE))
        metrics = {"epoch": epoch + 1, "lr": lr, METRIC: totals.pop("loss") / steps,  # 1-based, as train's
                   "temperature": 1.0 / scale, **{f"train.loss.{k}": v / steps for k, v in totals.items()}}
        stopper.update(metrics)
        history.append({**metrics, "optimizer_steps": scheduler.last_epoch, "weights": weights_fingerprint(model),
                        **resumed})
        resumed = {}
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if rank == 0:
                torch.save(checkpoint_state(model, optimizer, scheduler, stopper, epoch, history, False,
                                            spec=config["spec"], encoders=encoder_state(unwrap(model))),
                           Path(d) / STATE_FILE)
                ckpt = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=ckpt)

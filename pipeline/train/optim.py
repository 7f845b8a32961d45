"""How the weights move: the train.optimizer table, the warm-up + cosine learning-rate schedule, one update step.

Each optimizer is built from the train section alone (lr, weight_decay, momentum), so the spec is the one place
its settings are chosen; the spec validates train.optimizer against ``OPTIMIZERS`` (``pipeline.spec_checks``).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

from pipeline.spec import TrainSpec, unknown_name

Params = Iterable[torch.nn.Parameter]

OPTIMIZERS: dict[str, Callable[[TrainSpec, Params], torch.optim.Optimizer]] = {
    "sgd": lambda t, p: torch.optim.SGD(p, lr=t.lr, weight_decay=t.weight_decay),
    "momentum": lambda t, p: torch.optim.SGD(p, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay),
    "nesterov": lambda t, p: torch.optim.SGD(p, lr=t.lr, momentum=t.momentum, nesterov=True,
                                             weight_decay=t.weight_decay),
    "adam": lambda t, p: torch.optim.Adam(p, lr=t.lr, weight_decay=t.weight_decay),
    "adamw": lambda t, p: torch.optim.AdamW(p, lr=t.lr, weight_decay=t.weight_decay),
    "nadam": lambda t, p: torch.optim.NAdam(p, lr=t.lr, weight_decay=t.weight_decay),
    "adadelta": lambda t, p: torch.optim.Adadelta(p, lr=t.lr, weight_decay=t.weight_decay),
    "rmsprop": lambda t, p: torch.optim.RMSprop(p, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay),
}


def make_optimizer(t: TrainSpec, params: Params) -> torch.optim.Optimizer:
    if t.optimizer not in OPTIMIZERS:
        raise ValueError(unknown_name("optimizer", t.optimizer, OPTIMIZERS))
    return OPTIMIZERS[t.optimizer](t, params)


def param_groups(model: torch.nn.Module, lr: float, pretrained: set[str] = frozenset(), lr_scale: float = 1.0,
                 frozen: dict[str, float] | None = None) -> list[dict]:
    """The optimizer's parameter groups: the encoder of each modality in ``frozen`` (modality -> epochs frozen,
    inf: for good; an encoder's ``trainable_when_frozen`` submodules, such as a model.hf encoder's new head, are left
    out), the other weights ``init_from`` loaded (``pretrained``: parameter names), and the rest.
    Loaded weights run at ``lr * lr_scale``, the rest at ``lr``. Each group carries its ``name``, the lr it runs
    at when trainable (``trainable_lr``) and the epoch it becomes trainable (``frozen_until``): see
    ``freeze_groups``."""
    frozen = frozen or {}
    groups: dict[str, dict] = {}
    for name, param in model.named_parameters():
        parts = name.split(".")
        frozen_modality = parts[1] if parts[0] == "encoders" and parts[1] in frozen and \
            parts[2] not in getattr(model.encoders[parts[1]], "trainable_when_frozen", ()) else None
        key = f"frozen.{frozen_modality}" if frozen_modality else "pretrained" if name in pretrained else "new"
        group = groups.setdefault(key, {"params": [], "name": key, "trainable_lr": lr,
                                        "frozen_until": frozen.get(frozen_modality, 0.0)})
        group["params"].append(param)
        if name in pretrained:
            group["trainable_lr"] = lr * lr_scale
    order = sorted(groups, key=lambda k: (k != "new", k))  # "new" first: the lr train reports is the first group's
    return [{**groups[k], "lr": groups[k]["trainable_lr"], "frozen": groups[k]["frozen_until"] > 0} for k in order]


def freeze_groups(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR, epoch: int
                  ) -> list[str]:
    """Set each group's base learning rate for ``epoch``: 0 while it is frozen (its weights do not move: the
    decoupled weight decay and momentum of every optimizer here scale with the lr), its ``trainable_lr`` after.
    Returns the names of the groups frozen in this epoch."""
    frozen = []
    for i, group in enumerate(optimizer.param_groups):
        is_frozen = group["frozen"] = epoch < group.get("frozen_until", 0.0)
        scheduler.base_lrs[i] = 0.0 if is_frozen else group.get("trainable_lr", scheduler.base_lrs[i])
        group["lr"] = scheduler.base_lrs[i] * scheduler.lr_lambdas[i](scheduler.last_epoch)
        if is_frozen:
            frozen.append(group["name"])
    return frozen


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
                  ) -> torch.optim.lr_scheduler.LambdaLR:
    """Step k (from 0) runs at lr·(k + 1)/warmup_steps while k < warmup_steps, then on a cosine from lr down to 0
    at total_steps."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1 + math.cos(math.pi * progress))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def lr_schedule(t: TrainSpec, optimizer: torch.optim.Optimizer, steps_per_epoch: int
                ) -> torch.optim.lr_scheduler.LambdaLR:
    """The train section's schedule: warm-up over ``warmup_epochs`` (whole steps), cosine over the rest."""
    return warmup_cosine(optimizer, int(t.warmup_epochs * steps_per_epoch), t.epochs * steps_per_epoch)


def apply_gradients(loss: torch.Tensor, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, grad_clip: float | None) -> None:
    """One update: backward, clip the global L2 norm of the gradients to ``grad_clip`` (if set), step, advance
    the schedule. The gradients stay on the parameters until the next call."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:  # over the weights that move: a frozen encoder's gradients must not shrink the others'
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups if not g.get("frozen")
                                        for p in g["params"]], grad_clip)
    optimizer.step()
    scheduler.step()

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
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()

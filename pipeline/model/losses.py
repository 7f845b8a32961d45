"""The train.loss table, with the loss-side answers to class imbalance. β, γ and τ come from the train section.

    ce              plain cross-entropy
    weighted_ce     cross-entropy with class-balanced weights from the effective number of samples:
                    w_c ∝ (1 - β) / (1 - β^n_c), normalised to mean 1 (Cui et al., 2019)
    focal           focal loss, (1 - p_t)^γ · CE, optionally class-balanced (Lin et al., 2017)
    logit_adjusted  CE on logits + τ · log prior, the prior being the class distribution the model actually sees
                    (after resampling) (Menon et al., 2021)
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.spec import TrainSpec, unknown_name

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def class_balanced_weights(counts, beta: float) -> torch.Tensor:
    n = torch.as_tensor(np.asarray(counts, dtype=np.float64)).clamp(min=1.0)
    w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), n))
    return (w * len(w) / w.sum()).float()


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float, weight: torch.Tensor | None = None
               ) -> torch.Tensor:
    """(B, C) logits, (B,) targets -> mean loss. gamma = 0 and no weight is plain cross-entropy."""
    log_p = F.log_softmax(logits.float(), dim=1)
    log_pt = log_p.gather(1, target[:, None]).squeeze(1)
    loss = -((1 - log_pt.exp()) ** gamma) * log_pt
    if weight is not None:
        w = weight.to(logits.device)[target]
        return (loss * w).sum() / w.sum()
    return loss.mean()


def logit_adjusted_loss(logits: torch.Tensor, target: torch.Tensor, prior: torch.Tensor, tau: float
                        ) -> torch.Tensor:
    adjusted = logits.float() + tau * torch.log(prior.to(logits.device).clamp(min=1e-12))
    return F.cross_entropy(adjusted, target)


def _cross_entropy(t: TrainSpec, counts: np.ndarray) -> LossFn:
    return F.cross_entropy


def _weighted_ce(t: TrainSpec, counts: np.ndarray) -> LossFn:
    weight = class_balanced_weights(counts, t.class_balanced_beta)  # the spec requires a beta for weighted_ce
    return lambda logits, target: F.cross_entropy(logits.float(), target, weight=weight.to(logits.device))


def _focal(t: TrainSpec, counts: np.ndarray) -> LossFn:
    weight = class_balanced_weights(counts, t.class_balanced_beta) if t.class_balanced_beta is not None else None
    return lambda logits, target: focal_loss(logits, target, t.focal_gamma, weight)


def _logit_adjusted(t: TrainSpec, counts: np.ndarray) -> LossFn:
    prior = torch.as_tensor(counts / counts.sum(), dtype=torch.float32)
    return lambda logits, target: logit_adjusted_loss(logits, target, prior, t.logit_tau)


# train.loss name -> factory (train section, per-class counts) -> loss(logits, target); the spec validates
# train.loss against these names (pipeline.spec_checks)
LOSSES: dict[str, Callable[[TrainSpec, np.ndarray], LossFn]] = {
    "ce": _cross_entropy, "weighted_ce": _weighted_ce, "focal": _focal, "logit_adjusted": _logit_adjusted,
}


def labelled_only(loss: LossFn) -> LossFn:
    """``loss`` over the rows whose label is >= 0 (train.label_fraction marks the others -1). A batch without any
    labelled row gives 0 that still depends on the logits, so every DDP rank runs the same backward."""
    def masked(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        labelled = target >= 0
        if bool(labelled.all()):
            return loss(logits, target)
        if not bool(labelled.any()):
            return logits.sum() * 0.0
        return loss(logits[labelled], target[labelled])
    return masked


def make_task_loss(t: TrainSpec, counts_seen, weights: list[float]):
    """``loss(blocks, targets) -> (total, per-task losses)`` over every task's logits block and label column
    (primary first): train.loss for the primary task (``counts_seen`` are its classes' counts), cross-entropy for
    each further task (label.tasks: no class counts are known for them), each over its labelled rows, summed with
    ``weights``."""
    fns = [make_loss(t, counts_seen)] + [labelled_only(F.cross_entropy)] * (len(weights) - 1)

    def total(blocks: list[torch.Tensor], targets: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        parts = [fn(block, y) for fn, block, y in zip(fns, blocks, targets)]
        return sum(w * part for w, part in zip(weights, parts)), parts
    return total


def make_loss(t: TrainSpec, counts_seen) -> LossFn:
    """``loss(logits, target)`` for ``t.loss`` with the train section's β, γ and τ; ``counts_seen`` is the
    per-class count per epoch as the model sees it (after rebalancing). Rows labelled -1 (unlabelled) count for
    nothing."""
    if t.loss not in LOSSES:
        raise ValueError(unknown_name("loss", t.loss, LOSSES))
    return labelled_only(LOSSES[t.loss](t, np.asarray(counts_seen, dtype=np.float64)))

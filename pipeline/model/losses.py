"""Loss-side answers to class imbalance, for the trainer.

    weighted_ce     cross-entropy with class-balanced weights from the effective number of samples:
                    w_c ∝ (1 - β) / (1 - β^n_c), normalised to mean 1 (Cui et al., 2019)
    focal           focal loss, (1 - p_t)^γ · CE, optionally class-balanced (Lin et al., 2017)
    logit_adjusted  CE on logits + τ · log prior, the prior being the class distribution the model actually sees
                    (after resampling) (Menon et al., 2021)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


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


def make_loss(name: str, counts_seen, *, beta: float | None = 0.999, gamma: float = 2.0, tau: float = 1.0):
    """``loss(logits, target)`` for a train.loss name; ``counts_seen`` is the per-class count per epoch as the
    model sees it (after rebalancing)."""
    counts = np.asarray(counts_seen, dtype=np.float64)
    if name == "ce":
        return F.cross_entropy
    if name == "weighted_ce":
        weight = class_balanced_weights(counts, beta if beta is not None else 0.999)
        return lambda logits, target: F.cross_entropy(logits.float(), target, weight=weight.to(logits.device))
    if name == "focal":
        weight = class_balanced_weights(counts, beta) if beta is not None else None
        return lambda logits, target: focal_loss(logits, target, gamma, weight)
    if name == "logit_adjusted":
        prior = torch.as_tensor(counts / counts.sum(), dtype=torch.float32)
        return lambda logits, target: logit_adjusted_loss(logits, target, prior, tau)
    raise ValueError(f"unknown loss {name!r}")

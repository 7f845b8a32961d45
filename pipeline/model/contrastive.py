"""Cross-modal contrastive alignment (CLIP-style InfoNCE) for self-supervised pretraining of the encoders.

For each pair of modalities (a, b) the embeddings of one sample's a and b are pulled together and pushed away from
every other sample's, in both directions: row i of a must pick column i of b among all samples of the global batch
(every DDP rank's rows: ``torch.distributed.nn.functional.all_gather`` keeps the gradient of the gathered copies).
Presence masks are respected: a row counts only where the sample has both modalities, and a column (negative or
positive) only where the sample has the other one, so zeros standing in for a missing modality are never aligned.
Samples with a single modality learn from two augmented views of it instead (``views.py``): the same loss between
view 1 and view 2. The temperature is learnt as a log logit scale (CLIP), clamped to at most 100 (T >= 0.01).
"""

from __future__ import annotations

import math
import warnings
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.model.classifier import build_encoders
from pipeline.model.views import augmented_view
from pipeline.spec import JobSpec

MAX_LOGIT_SCALE = 100.0


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(every rank's ``x`` concatenated in rank order, this rank's first row in it). Differentiable; the identity
    without torch.distributed. Every rank must pass the same number of rows (training drops the last batch)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated in torch 2.13 for a private API; still the public autograd gather
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(x.contiguous())), dist.get_rank() * len(x)


def any_across_ranks(flags: torch.Tensor) -> torch.Tensor:
    """bool flags OR-ed over every rank, so all ranks take the same branches (and the same all_gathers)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flags
    counts = flags.to(torch.int32)
    dist.all_reduce(counts, op=dist.ReduceOp.MAX)
    return counts.bool()


def pair_loss(za: torch.Tensor, zb: torch.Tensor, present_a: torch.Tensor, present_b: torch.Tensor,
              logit_scale: torch.Tensor, gather=gather_rows) -> tuple[torch.Tensor, int]:
    """(symmetric InfoNCE averaged over this rank's rows that have both a and b, that row count). ``za``, ``zb``:
    (B, D) embeddings (normalised here); ``present_*``: bool (B,). No such row: a zero that still depends on the
    inputs, so every rank runs the same backward."""
    za, zb = F.normalize(za.float(), dim=1), F.normalize(zb.float(), dim=1)
    za_all, offset = gather(za)
    zb_all, _ = gather(zb)
    pa_all, _ = gather(present_a.float())
    pb_all, _ = gather(present_b.float())
    rows = present_a & present_b
    target = torch.arange(len(za), device=za.device) + offset
    total = za.new_zeros(())
    for query, keys, keys_present in ((za, zb_all, pb_all), (zb, za_all, pa_all)):
        logits = logit_scale * query @ keys.T                          # (B, N): every rank's samples
        logits = logits.masked_fill(keys_present[None] < 0.5, float("-inf"))
        loss = F.cross_entropy(logits[rows], target[rows], reduction="sum") if bool(rows.any()) else 0.0
        total = total + loss + 0.0 * logits.masked_fill(torch.isinf(logits), 0.0).sum()
    n = int(rows.sum())
    return total / (2 * max(n, 1)), n


class ContrastiveModel(nn.Module):
    """The classifier's encoders (same names: ``encoders.<modality>.*``) plus a projection head per modality and
    the logit scale. ``forward(batch)`` returns (loss, parts): parts holds each pair's and view's loss."""

    def __init__(self, spec: JobSpec):
        super().__init__()
        p, h = spec.pretrain, spec.model.hidden
        self.modalities = spec.modalities.enabled()
        self.encoders = build_encoders(spec, self.modalities)
        self.projections = nn.ModuleDict({m: nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, p.projection_dim))
                                          for m in self.modalities})
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / p.temperature)),
                                      requires_grad=p.learn_temperature)
        self.view_weight = p.view_weight

    def embed(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        return self.projections[modality](self.encoders[modality](x))

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        scale = self.log_scale.exp().clamp(max=MAX_LOGIT_SCALE)
        present = {m: batch[f"present_{m}"].bool() for m in self.modalities}
        z = {m: self.embed(m, batch[m]) for m in self.modalities}
        total, parts = z[self.modalities[0]].new_zeros(()), {}
        for a, b in combinations(self.modalities, 2):
            loss, n = pair_loss(z[a], z[b], present[a], present[b], scale)
            total, parts[f"{a}-{b}"] = total + loss, loss.item()
        if self.view_weight > 0:
            alone = torch.stack(list(present.values()), 1).sum(1) == 1
            single = {m: present[m] & alone for m in self.modalities}
            anywhere = any_across_ranks(torch.stack([single[m].any() for m in self.modalities]))
            for i, m in enumerate(self.modalities):
                if bool(anywhere[i]):
                    # rows: the single-modality samples; columns: every sample with m (more negatives)
                    view = self.embed(m, augmented_view(m, batch[m]))
                    loss, n = pair_loss(z[m], view, single[m], present[m], scale)
                    total, parts[f"{m}-views"] = total + self.view_weight * loss, loss.item()
        return total, parts


def encoder_state(model: ContrastiveModel) -> dict[str, torch.Tensor]:
    """The encoders' weights under the classifier's names (``encoders.<modality>.*``): what pretrained.pt holds."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if k.startswith("encoders.")}

"""Fusion registry: name -> module. Adding a variant is one registered class.

Every fusion takes ``features`` {modality: (B, H)} and ``present`` {modality: (B,) bool} and returns logits
(B, C). Absent modalities must neither crash nor leak: each variant zeroes their features first and masks them
out of whatever it pools, gates or attends over (tests check that an absent input's values cannot move the output).
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.spec import unknown_name

FUSIONS: dict[str, type["Fusion"]] = {}


def register(name: str):
    def wrap(cls):
        FUSIONS[name] = cls
        cls.name = name
        return cls
    return wrap


def build_fusion(name: str, modalities: list[str], hidden: int, num_classes: int, dropout: float) -> "Fusion":
    if name not in FUSIONS:
        raise ValueError(unknown_name("fusion", name, FUSIONS))
    return FUSIONS[name](modalities, hidden, num_classes, dropout)


def head(d_in: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(d_in, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(hidden, num_classes))


class Fusion(nn.Module):
    name = "base"

    def __init__(self, modalities: list[str], hidden: int, num_classes: int, dropout: float):
        super().__init__()
        self.modalities = list(modalities)

    def stack(self, features, present) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, M, H) features with absent ones zeroed, and the (B, M) float mask."""
        mask = torch.stack([present[m] for m in self.modalities], dim=1).float()
        x = torch.stack([features[m] for m in self.modalities], dim=1)
        return x * mask.unsqueeze(-1), mask


@register("concat")
class Concat(Fusion):
    """Early (feature-level) fusion: concatenated features and presence flags -> MLP."""

    def __init__(self, modalities, hidden, num_classes, dropout):
        super().__init__(modalities, hidden, num_classes, dropout)
        self.mlp = head(len(modalities) * (hidden + 1), hidden, num_classes, dropout)

    def forward(self, features, present):
        x, mask = self.stack(features, present)
        return self.mlp(torch.cat([x.flatten(1), mask], dim=1))


@register("sum")
class Sum(Fusion):
    """Mean of the present modalities' features -> MLP."""

    def __init__(self, modalities, hidden, num_classes, dropout):
        super().__init__(modalities, hidden, num_classes, dropout)
        self.mlp = head(hidden, hidden, num_classes, dropout)

    def forward(self, features, present):
        x, mask = self.stack(features, present)
        return self.mlp(x.sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0))


@register("gated")
class Gated(Fusion):
    """Gated multimodal unit: h = Σ_m z_m · tanh(W_m x_m), gates z from all features, softmax over present ones."""

    def __init__(self, modalities, hidden, num_classes, dropout):
        super().__init__(modalities, hidden, num_classes, dropout)
        self.proj = nn.ModuleDict({m: nn.Linear(hidden, hidden) for m in modalities})
        self.gate = nn.Linear(len(modalities) * hidden, len(modalities) * hidden)
        self.mlp = head(hidden, hidden, num_classes, dropout)

    def forward(self, features, present):
        x, mask = self.stack(features, present)                                   # (B, M, H), (B, M)
        h = torch.stack([torch.tanh(self.proj[m](x[:, i])) for i, m in enumerate(self.modalities)], 1)
        z = self.gate(x.flatten(1)).view_as(h).masked_fill(mask.unsqueeze(-1) == 0, float("-inf"))
        z = torch.softmax(z, dim=1).nan_to_num(0.0)
        return self.mlp((z * h).sum(1))


@register("attention")
class Attention(Fusion):
    """Transformer over modality tokens plus a [CLS] token: cross-modal self-attention, absent tokens masked."""

    def __init__(self, modalities, hidden, num_classes, dropout, layers: int = 2):
        super().__init__(modalities, hidden, num_classes, dropout)
        self.cls = nn.Parameter(torch.zeros(1, 1, hidden))
        self.type_embed = nn.Parameter(torch.randn(1, len(modalities), hidden) * 0.02)
        layer = nn.TransformerEncoderLayer(hidden, nhead=4 if hidden % 4 == 0 else 1, dim_feedforward=2 * hidden,
                                           dropout=dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.mlp = head(hidden, hidden, num_classes, dropout)

    def forward(self, features, present):
        x, mask = self.stack(features, present)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), x + self.type_embed], dim=1)   # (B, 1 + M, H)
        padding = torch.cat([torch.zeros_like(mask[:, :1]), 1 - mask], dim=1).bool()     # CLS always kept
        return self.mlp(self.encoder(tokens, src_key_padding_mask=padding)[:, 0])


def _with_one(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[x_m, 1]: an absent modality becomes [0, ..., 0, 1], the neutral element of the outer product."""
    return torch.cat([x * mask.unsqueeze(-1), torch.ones_like(x[..., :1])], dim=-1)


@register("tensor")
class TensorFusion(Fusion):
    """Tensor fusion: the outer product of [z_m, 1] over modalities (z_m small projections) -> MLP."""

    def __init__(self, modalities, hidden, num_classes, dropout, small: int = 12):
        super().__init__(modalities, hidden, num_classes, dropout)
        self.reduce = nn.ModuleDict({m: nn.Linear(hidden, small) for m in modalities})
        self.mlp = head((small + 1) ** len(modalities), hidden, num_classes, dropout)

    def forward(self, features, present):
        outer = None
        for m in self.modalities:
            z = _with_one(self.reduce[m](features[m]), present[m].float())           # (B, s + 1)
            outer = z if outer is None else torch.einsum("bi,bj->bij", outer, z).flatten(1)
        return self.mlp(outer)


@register("low_rank")
class LowRank(Fusion):
    """Low-rank multimodal fusion: Σ_r Π_m ([x_m, 1] · W_m^(r)), the tensor fusion without building the tensor."""

    def __init__(self, modalities, hidden, num_classes, dropout, rank: int = 8):
        super().__init__(modalities, hidden, num_classes, dropout)
        self.factors = nn.ParameterDict({m: nn.Parameter(torch.randn(rank, hidden + 1, hidden) * 0.05)
                                         for m in modalities})
        self.rank_weights = nn.Parameter(torch.ones(1, rank) / rank)
        self.mlp = head(hidden, hidden, num_classes, dropout)

    def forward(self, features, present):
        fused = None
        for m in self.modalities:
            z = _with_one(features[m], present[m].float())                           # (B, H + 1)
            part = torch.einsum("bi,rio->bro", z, self.factors[m])                    # (B, R, H)
            fused = part if fused is None else fused * part
        return self.mlp(torch.einsum("xr,bro->bo", self.rank_weights, fused))


@register("film")
class FiLM(Fusion):
    """Feature-wise linear modulation: a context (mean of the present features) scales and shifts each modality."""

    def __init__(self, modalities, hidden, num_classes, dropout):
        super().__init__(modalities, hidden, num_classes, dropout)
        self.film = nn.ModuleDict({m: nn.Linear(hidden, 2 * hidden) for m in modalities})
        self.mlp = head(hidden, hidden, num_classes, dropout)

    def forward(self, features, present):
        x, mask = self.stack(features, present)
        count = mask.sum(1, keepdim=True).clamp(min=1.0)
        context = x.sum(1) / count                                                   # (B, H)
        out = 0
        for i, m in enumerate(self.modalities):
            gamma, beta = self.film[m](context).chunk(2, dim=-1)
            out = out + ((1 + gamma) * x[:, i] + beta) * mask[:, i:i + 1]
        return self.mlp(out / count)


@register("late")
class Late(Fusion):
    """Decision-level fusion: one classifier per modality; logits averaged over present modalities, weighted by
    learned (softmax) weights."""

    def __init__(self, modalities, hidden, num_classes, dropout):
        super().__init__(modalities, hidden, num_classes, dropout)
        self.heads = nn.ModuleDict({m: head(hidden, hidden, num_classes, dropout) for m in modalities})
        self.weights = nn.Parameter(torch.zeros(len(modalities)))

    def forward(self, features, present):
        _, mask = self.stack(features, present)
        logits = torch.stack([self.heads[m](features[m]) for m in self.modalities], dim=1)   # (B, M, C)
        w = self.weights.expand_as(mask).masked_fill(mask == 0, float("-inf"))
        w = torch.softmax(w, dim=1).nan_to_num(0.0)
        return (w.unsqueeze(-1) * logits).sum(1)


# Unimodal baselines: the same code path (encoder -> fusion -> head) with one modality.
UNIMODAL = {"image_only": "image", "text_only": "text", "audio_only": "audio"}


def fusion_names() -> list[str]:
    """Every value model.fusion may take: the registered fusions and the unimodal baselines."""
    return [*FUSIONS, *UNIMODAL]

"""A tiny classifier and input batches for model tests (CPU and GPU alike)."""

from __future__ import annotations

import torch

from pipeline.model.classifier import MultimodalClassifier
from pipeline.spec import spec_from_dict

MODS = ("image", "text", "audio")


def make(fusion: str, **model):
    spec = spec_from_dict({"model": {"fusion": fusion, "hidden": 16, "dropout": 0.0, **model},
                           "modalities": {"image": {"size": [16, 16]}, "text": {"max_tokens": 8, "vocab_size": 300},
                                          "audio": {"sample_rate": 4000, "seconds": 0.25}}})
    torch.manual_seed(0)
    return MultimodalClassifier(spec, 5)


def batch(present: tuple[str, ...], n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randint(0, 256, (n, 16, 16, 3), dtype=torch.uint8, generator=g),
            "text": torch.randint(1, 300, (n, 8), generator=g),
            "audio": torch.randn(n, 1000, generator=g),
            **{f"present_{m}": torch.full((n,), m in present) for m in MODS}}

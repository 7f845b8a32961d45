"""Test-time BatchNorm adaptation (AdaBN; Li et al., 2016, "Revisiting Batch Normalization For Practical Domain
Adaptation"): before a trained model scores a data set, every BatchNorm layer's running mean and variance are
recomputed on that set's own inputs. Forward passes only, no labels, no gradient; the weights are unchanged.

It is transductive: the statistics come from the set being scored, so the set should be one domain (e.g. every clip
of one new speaker, as ``--split speaker`` makes the test split). ``model.adapt_batchnorm`` turns it on for the test
evaluation after training, the workflow's evaluate step and ``mmpipe predict`` (docs/av-digits.md, "Unseen
speakers"); validation during training is never adapted.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def adapt_batchnorm(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> nn.Module:
    """A copy of ``model`` whose BatchNorm statistics are those of ``batches`` (each one model input dict), in eval
    mode; ``model`` itself is left as it was. Each batch's statistics count by its rows (a running average whose
    momentum is the batch's share of the rows so far: the mean is exactly the set's) and only the BatchNorm layers
    run in training mode, so dropout, modality dropout, SpecAugment and VTLP stay off. Raises ValueError when
    ``batches`` is empty, or the model has no BatchNorm."""
    adapted = copy.deepcopy(model).eval()
    layers = batchnorms(adapted)
    if not layers:
        raise ValueError("model.adapt_batchnorm: the model has no BatchNorm layer to adapt (a model.hf encoder "
                         "alone uses LayerNorm); turn model.adapt_batchnorm off")
    momenta = [bn.momentum for bn in layers]
    for bn in layers:
        if not bn.track_running_stats:
            raise ValueError(f"model.adapt_batchnorm: {type(bn).__name__} without running statistics")
        bn.reset_running_stats()
        bn.train()
    rows = 0
    with torch.no_grad():
        for batch in batches:
            n = len(next(iter(batch.values())))
            if not n:
                continue
            for bn in layers:
                bn.momentum = n / (rows + n)
            adapted(batch)
            rows += n
    if not rows:
        raise ValueError("model.adapt_batchnorm: no rows to adapt the BatchNorm statistics on (the scored set is "
                         "empty)")
    for bn, momentum in zip(layers, momenta):
        bn.momentum = momentum
    return adapted.eval()

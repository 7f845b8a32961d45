"""Class rebalancing by streaming resampling: each row is repeated k times, k drawn per (seed, epoch, key).

A class c with n_c training rows gets a factor f_c; a row of that class is emitted floor(f_c) times plus once more
with probability frac(f_c). The expected per-epoch count of class c is therefore n_c * f_c, exactly, and nothing
is ever materialised. Strategies (N = total rows, C = classes):
    none         f_c = 1
    oversample   f_c = max(n) / n_c                    every class as large as the largest
    undersample  f_c = min(n) / n_c                    every class as small as the smallest
    sqrt         f_c ∝ 1 / sqrt(n_c), scaled to keep N  sampling probability ∝ 1/√n_c
    target       f_c = N * t_c / n_c                   explicit proportions t (normalised), N kept
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.data.stages.seeds import row_ids, row_seeds, uniforms
from pipeline.spec import RebalanceSpec


class RebalanceError(ValueError):
    pass


def sampling_factors(counts: np.ndarray, spec: RebalanceSpec, classes: list[str]) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    f = np.zeros_like(counts)
    n = counts[present]
    if spec.strategy != "none" and not present.any():  # numpy's max/min of nothing would raise, sqrt give zeros
        raise RebalanceError(f"rebalance.strategy {spec.strategy}: no training row has a label of the classes "
                             f"{classes}")
    if spec.strategy == "none":
        f[present] = 1.0
    elif spec.strategy == "oversample":
        f[present] = n.max() / n
    elif spec.strategy == "undersample":
        f[present] = n.min() / n
    elif spec.strategy == "sqrt":
        f[present] = (n.sum() * np.sqrt(n) / np.sqrt(n).sum()) / n
    else:
        unknown = sorted(set(spec.target) - set(classes))
        if unknown:
            raise RebalanceError(f"rebalance.target names unknown class(es) {unknown}; classes are {classes}")
        t = np.array([spec.target.get(c, 0.0) for c in classes], dtype=np.float64)
        if t.sum() <= 0:
            raise RebalanceError("rebalance.target proportions sum to 0")
        missing = [c for c, tc, nc in zip(classes, t, counts) if tc > 0 and nc == 0]
        if missing:
            raise RebalanceError(f"rebalance.target asks for class(es) {missing} that have no training rows")
        f[present] = counts.sum() * (t / t.sum())[present] / n
    return f


def expected_histogram(counts: np.ndarray, factors: np.ndarray) -> np.ndarray:
    return np.asarray(counts, dtype=np.float64) * factors


def tolerance(expected: float, factor: float) -> float:
    """Allowed |realised - expected| for one class of a seeded epoch: 4 standard deviations of the Bernoulli part
    of the draws (n_c rows, each adding one with probability frac(f_c)), and at least 1 row."""
    frac = factor - math.floor(factor)
    rows = expected / factor if factor else 0.0
    return max(1.0, 4.0 * math.sqrt(rows * frac * (1 - frac)))


def rebalance_batch(batch: dict[str, np.ndarray], factors: np.ndarray, seed: int, epoch: int,
                    column: str = "label") -> dict[str, np.ndarray]:
    """Repeat or drop rows by their class factor; adds ``copy`` (0, 1, …) so repeats can be augmented apart.
    ``column``: the label column of the rebalanced task (rebalance.task); a row without that label (-1) is kept
    once."""
    labels = batch[column]
    f = np.where(labels >= 0, factors[np.maximum(labels, 0)], 1.0)
    base = np.floor(f)
    draws = uniforms(row_seeds(row_ids(batch), np.zeros(len(f), dtype=np.int64), seed, epoch, "rebalance"))
    repeats = (base + (draws < f - base)).astype(np.int64)
    index = np.repeat(np.arange(len(f)), repeats)
    out = {k: v[index] for k, v in batch.items()}
    # copy number within each row's repeats: 0, 1, ..., repeats-1
    starts = np.repeat(np.cumsum(repeats) - repeats, repeats)
    out["copy"] = np.arange(len(index)) - starts
    return out

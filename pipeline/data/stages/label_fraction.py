"""Few labels (train.label_fraction): keep the labels of a seeded fraction of the train split, per class, and mark
the rest unlabelled (label -1: no supervised loss, no train metrics), so the benefit of pretraining can be measured.

A row keeps its label when a uniform number drawn from (train.seed, its shard name and key) is below the fraction.
The draw depends on the key alone, so the same rows are labelled every epoch, in every read task and on every
machine, and every copy an oversampling makes of a row agrees. Each class is thinned at the same rate, so the
labelled rows keep the class proportions (stratified in expectation: a class of n rows keeps n·f labels,
give or take 2·√(n·f·(1-f))).
"""

from __future__ import annotations

import numpy as np

from pipeline.data.stages.seeds import row_ids, row_seeds, uniforms

UNLABELLED = -1


def labelled_mask(keys: list[str], fraction: float, seed: int) -> np.ndarray:
    """bool per key: whether its label is kept."""
    draws = uniforms(row_seeds(keys, np.zeros(len(keys), dtype=np.int64), seed, 0, "label_fraction"))
    return draws < fraction


def label_fraction_batch(batch: dict[str, np.ndarray], fraction: float, seed: int,
                         columns: tuple[str, ...] = ("label",)) -> dict[str, np.ndarray]:
    """``columns``: every task's label column (label.tasks): a row keeps all its labels or none."""
    keep = labelled_mask(row_ids(batch), fraction, seed)
    return {**batch, **{c: np.where(keep, batch[c], UNLABELLED).astype(np.int64) for c in columns}}

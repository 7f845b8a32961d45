"""seed_batch: the train path's stage for ``augment.backend: device``. The ops themselves run in the training loop
(pipeline/model/augment.py); what they need from the data path is one seed per row, drawn like the CPU stage's
from (augment.seed, epoch, key, copy), so a rerun repeats every augmentation and each epoch and copy differ.
"""

from __future__ import annotations

import numpy as np

from pipeline.data.stages.seeds import row_ids, row_seeds
from pipeline.spec import AugmentSpec

SEED_COLUMN = "augment_seed"


def seed_batch(batch: dict[str, np.ndarray], augment: AugmentSpec, epoch: int) -> dict[str, np.ndarray]:
    """The batch plus ``augment_seed`` int64 (B,) (the 64-bit row seeds, reinterpreted: torch has no uint64)."""
    ids = row_ids(batch)
    copies = batch["copy"] if "copy" in batch else np.zeros(len(ids), dtype=np.int64)
    return {**batch, SEED_COLUMN: row_seeds(ids, copies, augment.seed, epoch, "device").view(np.int64)}

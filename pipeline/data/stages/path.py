"""The per-batch data path, in order. Each stage is a plain function over ``dict[str, np.ndarray]``.

    raw members (bytes per extension)
      -> clean_batch    decoded values + drop_reason per row (duplicates claimed across shards)
      -> align_batch    fixed shapes + present_<modality> masks; rows dropped here get a reason too
    (keep_rows then removes marked rows for training; the report counts them first)
"""

from __future__ import annotations

import numpy as np

from pipeline.data.stages.align import align_batch
from pipeline.data.stages.clean import Duplicates, clean_batch
from pipeline.data.stages.config import StageConfig


def prepare_batch(batch: dict[str, np.ndarray], cfg: StageConfig, duplicates: Duplicates | None = None
                  ) -> dict[str, np.ndarray]:
    """clean -> align, fused so decoded images and waveforms never leave the process."""
    return align_batch(clean_batch(batch, cfg, duplicates), cfg)

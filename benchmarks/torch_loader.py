"""The standard single-node alternative: webdataset + torch DataLoader running mmpipe's own stage functions.

Per worker: its share of the shards (webdataset splits by worker) -> raw batches shaped like
``read_webdataset(decoder=None)`` output -> the sample path as training runs it (stages/path.py: clean -> align ->
keep -> rebalance -> augment -> tokenize -> the model's input columns) -> tensors. Deduplication uses an in-process index per worker (the
natural DataLoader equivalent of the Ray actor; it sees only its worker's shards).
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.data.shards.tar import to_batch
from pipeline.data.stages.config import StageConfig
from pipeline.data.stages.dedupe import DuplicateIndex
from pipeline.data.stages.path import run_path, sample_path
from pipeline.model.classifier import input_columns
from pipeline.spec import JobSpec


def raw_collate(samples: list[dict]) -> dict[str, np.ndarray]:
    """webdataset samples -> the raw batch our tar reader makes (one object column per member extension, None where
    absent, + __key__, __url__); webdataset's other ``__`` keys are left out."""
    keep = ("__key__", "__url__")
    return to_batch([{k: v for k, v in s.items() if k in keep or not k.startswith("__")} for s in samples])


class StageStream(torch.utils.data.IterableDataset):
    """Batches of model inputs from ``shards``. Each pass is the next epoch: persistent workers keep their copy of
    this object, so each counts its own passes."""

    def __init__(self, shards: list[str], spec: JobSpec, classes: list[str], factors: np.ndarray | None,
                 batch_size: int):
        self.shards, self.spec, self.classes = shards, spec, classes
        self.factors, self.batch_size = factors, batch_size
        self.epoch = 0

    def __iter__(self):
        import webdataset as wds

        spec = self.spec
        cfg = StageConfig.from_spec(spec, self.classes)
        duplicates = DuplicateIndex() if spec.clean.dedupe else None
        order = list(self.shards)
        np.random.default_rng(self.epoch).shuffle(order)  # file shuffle per epoch, as the Ray path does
        raw = wds.WebDataset(order, shardshuffle=False, empty_check=False).batched(
            self.batch_size, collation_fn=raw_collate, partial=True)
        path = sample_path(spec, cfg, "train", duplicates, self.factors, input_columns(spec))
        for batch in raw:
            batch = run_path(batch, path, self.epoch)
            yield {c: torch.from_numpy(np.ascontiguousarray(v)) for c, v in batch.items()}
        self.epoch += 1


def make_loader(stream: StageStream, workers: int) -> torch.utils.data.DataLoader:
    # persistent workers: like Ray's worker pool, each imports torch and the augmentation libraries once
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers,
                                       persistent_workers=workers > 0, prefetch_factor=2 if workers else None)

"""Duplicates on Ray: the split-wide duplicate index as one actor, so every read task of a split claims against the
same owner; and the content-hash pass that tells the train split what content the other splits hold."""

from __future__ import annotations

from pipeline.data.shards.tar import DEFAULT_LIMITS, TarLimits
from pipeline.data.stages.clean import hash_batch
from pipeline.data.stages.config import StageConfig
from pipeline.data.stages.dedupe import HASH_COLUMN, DuplicateIndex
from pipeline.data.stages.path import Stage
from pipeline.data.streaming.source import read_prepared

# Raw samples per batch of the hash pass: each batch leaves its read task as one column of hashes.
CONTENT_PASS_BATCH_SIZE = 256


class RemoteDuplicateIndex:
    """A DuplicateIndex living in one Ray actor, shared by every task of a split. Picklable into tasks."""

    def __init__(self) -> None:
        import ray

        self._actor = ray.remote(num_cpus=0)(DuplicateIndex).remote()

    def claim(self, hashes: list[str], row_ids: list[str]) -> list[str]:
        import ray

        return ray.get(self._actor.claim.remote(hashes, row_ids))


def content_pass(cfg: StageConfig, shards: list[str], limits: TarLimits = DEFAULT_LIMITS) -> list[str]:
    """The content hash of every sample of ``shards`` (checked, readable ones) that clean would hash: the raw
    members read by the project's tar reader and hashed in the read tasks, nothing decoded."""
    ds = read_prepared(shards, [Stage("hash", hash_batch, {"cfg": cfg})], CONTENT_PASS_BATCH_SIZE,
                       row_bytes=32, limits=limits)
    return [h for batch in ds.iter_batches(batch_size=None, batch_format="numpy") for h in batch[HASH_COLUMN]]

"""Duplicates on Ray: the split-wide duplicate index as one actor, so every read task of a split claims against the
same owner; and the content-hash pass that tells the train split what content the other splits hold."""

from __future__ import annotations

from pipeline.data.shards.tar import DEFAULT_LIMITS, TarLimits
from pipeline.data.stages.clean import hash_batch
from pipeline.data.stages.config import StageConfig
from pipeline.data.stages.dedupe import HASH_COLUMN, DuplicateIndex
from pipeline.data.stages.path import Stage
from pipeline.data.streaming.source import read_prepared
from pipeline.watchdog import progressed

# Raw samples per batch of the hash pass: each batch leaves its read task as one column of hashes.
CONTENT_PASS_BATCH_SIZE = 256


class RemoteDuplicateIndex:
    """A DuplicateIndex living in one Ray actor, shared by every task of a split. Picklable into tasks; ended
    with the run (``actors.actors_scope``)."""

    def __init__(self) -> None:
        import ray

        from pipeline.data.streaming.actors import owned

        self._actor = owned(ray.remote(num_cpus=0)(DuplicateIndex).remote())

    def claim(self, hashes: list[str], row_ids: list[str]) -> list[str]:
        import ray

        return ray.get(self._actor.claim.remote(hashes, row_ids))


def content_pass(cfg: StageConfig, shards: list[str], limits: TarLimits = DEFAULT_LIMITS,
                 scheduling_strategy=None) -> list[str]:
    """The content hash of every sample of ``shards`` (checked, readable ones) that clean would hash: the raw
    members read by the project's tar reader and hashed in the read tasks, nothing decoded."""
    ds = read_prepared(shards, [Stage("hash", hash_batch, {"cfg": cfg})], CONTENT_PASS_BATCH_SIZE,
                       row_bytes=32, limits=limits, scheduling_strategy=scheduling_strategy)
    hashes = []
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        hashes.extend(batch[HASH_COLUMN])
        progressed()
    return hashes

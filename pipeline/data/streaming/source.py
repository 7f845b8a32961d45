"""A Ray datasource whose read tasks stream each shard and emit prepared (cleaned + aligned) batches.

Why not ``read_webdataset(...).map_batches(prepare_batch)``: there every raw member becomes an Arrow cell, read
blocks hold a few dozen rows, and the read does not fuse with the map, so all raw bytes cross the object store
before any work is done. Here one task per shard reads the tar, runs ``prepare_batch`` and an optional ``then``
(e.g. keep -> rebalance -> augment for training) on batches in memory, and only the finished batch becomes a block.
Paths, file shuffling per execution, filesystems and retries are FileBasedDatasource's, as in read_webdataset;
``__url__`` is the path it opens, ``__key__`` the member key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from ray.data.block import BlockAccessor
from ray.data.datasource.file_based_datasource import FileBasedDatasource

from pipeline.data.stages.align import aligned_row_bytes
from pipeline.data.stages.clean import Duplicates
from pipeline.data.stages.config import StageConfig
from pipeline.data.stages.path import prepare_batch
from pipeline.data.shards.tar import raw_batches


# Below this, per-block overheads outweigh streaming (e.g. text-only rows of a few hundred bytes): such rows are
# cheap to make, and their blocks gather several batches.
MIN_BLOCK_BYTES = 1 << 20


class PreparedShards(FileBasedDatasource):
    def __init__(self, paths: list[str], cfg: StageConfig, duplicates: Duplicates | None, batch_size: int,
                 then: Callable | None = None, **file_kwargs):
        super().__init__(paths, **file_kwargs)
        self.cfg, self.duplicates, self.batch_size, self.then = cfg, duplicates, batch_size, then

    def _read_stream(self, stream, path: str) -> Iterator:
        for raw in raw_batches(stream, path, self.batch_size):
            batch = prepare_batch(raw, self.cfg, self.duplicates)
            if self.then is not None:
                batch = self.then(batch)
            if len(next(iter(batch.values()))):  # a batch whose rows were all dropped makes no block
                yield BlockAccessor.batch_to_block(batch)


def read_prepared(paths: list[str], cfg: StageConfig, duplicates: Duplicates | None, batch_size: int,
                  shuffle_files: bool = False, then: Callable | None = None, emits: list[str] | None = None):
    """The prepared dataset of ``paths``: one read task per shard, blocks of about one prepared batch.
    ``emits``: the modalities whose arrays the rows still carry after ``then`` (default: all enabled)."""
    import ray

    source = PreparedShards(paths, cfg, duplicates, batch_size, then, shuffle="files" if shuffle_files else None)
    ds = ray.data.read_datasource(source, override_num_blocks=len(paths))
    # A read task's output buffer holds what it yields until it exceeds target_max_block_size (default 128 MiB):
    # a demo shard came out as one block when its task ended, so training's first batch waited for several whole
    # shards. At one prepared batch, a full batch leaves its task as soon as it is made (Arrow's own bytes put it
    # just over the estimate; Ray Data slices only blocks over 1.5x the target, zero-copy); a shorter one (drops,
    # undersampling) waits for the next. Half a batch let short ones through too, but the doubled block count cost
    # a third of the loader's throughput (benchmarks/loader_compare.py: 1,545 -> 1,062 samples/s).
    ds.context.target_max_block_size = max(MIN_BLOCK_BYTES, batch_size * aligned_row_bytes(cfg.modalities, emits))
    return ds

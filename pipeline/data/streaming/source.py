"""A Ray datasource whose read tasks stream each shard through the sample path and emit the finished batches.

Why not ``read_webdataset(...).map_batches(...)``: there every raw member becomes an Arrow cell, read blocks hold a
few dozen rows, and the read does not fuse with the map, so all raw bytes cross the object store before any work
is done. Here one task per shard reads the tar, runs the stages (stages/path.py: clean -> align -> ... ->
tokenize) on batches in memory, and only the finished batch becomes a block. Paths, file shuffling per execution,
filesystems and retries are FileBasedDatasource's, as in read_webdataset; ``__url__`` is the path it opens,
``__key__`` the member key.
"""

from __future__ import annotations

from collections.abc import Iterator

from ray.data.block import BlockAccessor
from ray.data.datasource.file_based_datasource import FileBasedDatasource

from pipeline.data.shards.tar import DEFAULT_LIMITS, TarLimits, raw_batches
from pipeline.data.stages.path import Stage, run_path
from pipeline.data.streaming.epoch import EpochClock, current_epoch

# Below this, per-block overheads outweigh streaming (e.g. text-only rows of a few hundred bytes): such rows are
# cheap to make, and their blocks gather several batches.
MIN_BLOCK_BYTES = 1 << 20


class PreparedShards(FileBasedDatasource):
    def __init__(self, paths: list[str], path: list[Stage], batch_size: int, epoch: "int | EpochClock" = 0,
                 limits: TarLimits = DEFAULT_LIMITS, want=None, **file_kwargs):
        super().__init__(paths, **file_kwargs)
        self.stages, self.batch_size, self.epoch, self.limits, self.want = path, batch_size, epoch, limits, want

    def _read_stream(self, stream, path: str) -> Iterator:
        for raw in raw_batches(stream, path, self.batch_size, self.limits, self.want):
            batch = run_path(raw, self.stages, current_epoch(self.epoch))  # one clock read per batch
            if len(next(iter(batch.values()))):  # a batch whose rows were all dropped makes no block
                yield BlockAccessor.batch_to_block(batch)


def read_prepared(paths: list[str], path: list[Stage], batch_size: int, row_bytes: int,
                  shuffle_files: bool = False, epoch: "int | EpochClock" = 0, limits: TarLimits = DEFAULT_LIMITS,
                  want=None, scheduling_strategy=None):
    """The dataset of ``paths`` run through ``path``: one read task per shard, blocks of about one batch.
    ``row_bytes``: what one output row carries (sizes the blocks); ``epoch``: an int, or the EpochClock the
    trainer advances (a dataset is built once and re-executed every epoch); ``limits``: the tar reader's bounds
    (clean section); ``want(ext)``: read only those members (the others are skipped unread);
    ``scheduling_strategy``: where its tasks run (a run's reserved data CPUs: ``resources.data_strategy``)."""
    import ray

    source = PreparedShards(paths, path, batch_size, epoch, limits, want, shuffle="files" if shuffle_files else None)
    if scheduling_strategy is None:
        ds = ray.data.read_datasource(source, override_num_blocks=len(paths))
    else:
        ds = scheduled(ray.data.read_datasource, scheduling_strategy, source, override_num_blocks=len(paths))
    # A read task's output buffer holds what it yields until it exceeds target_max_block_size (default 128 MiB):
    # a demo shard came out as one block when its task ended, so training's first batch waited for several whole
    # shards. At one batch, a full batch leaves its task as soon as it is made (Arrow's own bytes put it just over
    # the estimate; Ray Data slices only blocks over 1.5x the target, zero-copy); a shorter one (drops,
    # undersampling) waits for the next. Half a batch let short ones through too, but the doubled block count cost
    # a third of the loader's throughput (benchmarks/loader_compare.py: 1,545 -> 1,062 samples/s).
    return sized_blocks(ds, batch_size, row_bytes)


def sized_blocks(ds, batch_size: int, row_bytes: int):
    """``ds`` with blocks of about one prepared batch (``read_prepared``'s reasons), at least MIN_BLOCK_BYTES."""
    ds.context.target_max_block_size = max(MIN_BLOCK_BYTES, batch_size * row_bytes)
    return ds


def scheduled(read, strategy, *args, **kwargs):
    """``read(*args, **kwargs)`` with its tasks, and those of every operator after it, scheduled by ``strategy``.

    Ray Data 2.60 has no named read parameter for it: the read takes it in ``ray_remote_args`` and later
    operators from the dataset's own context copy. Both are marked deprecated ("Ray Data manages scheduling
    internally"), and nothing else keeps a run's data tasks inside its placement group, where they cannot starve
    behind the training workers (issue 20); the warnings are silenced here, the one place that does it."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = read(*args, ray_remote_args={"scheduling_strategy": strategy}, **kwargs)
        ds.context.scheduling_strategy = ds.context.scheduling_strategy_large_args = strategy
    return ds

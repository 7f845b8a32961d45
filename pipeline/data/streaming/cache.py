"""data.cache: the train split's cleaned and aligned rows kept in Ray's object store after one pass, so later
epochs run only the per-epoch stages.

Decode, checks, duplicate claims and alignment give the same rows every epoch (stages/path.py:
``split_for_cache``); rebalance, augment and tokenize draw per epoch. With the cache the first pass reads the tars
and runs the deterministic part once (``cache_pass``); the dataset training iterates is then those blocks in a new
random order per execution (``randomize_block_order`` without a seed: fresh per epoch, as the uncached read
shuffles its shards per execution; the training loop's local shuffle buffer still mixes rows across blocks),
mapped by the per-epoch stages, which read the EpochClock once per batch as the read tasks do.

Memory: the blocks stay pinned for the run. Ray spills objects to local disk when its store is full (restored on
every read, and a full disk fails the run with OutOfDiskError), so instead of relying on it the cache is refused
up front when its estimate exceeds CACHE_STORE_FRACTION of the cluster's object store: the per-epoch stages, the
val split and Ray Data's own streaming buffers need the rest. The blocks go when the last reference to the
dataset does: the run's datasets and trainer are dropped when ``fit`` returns.
"""

from __future__ import annotations

from pipeline.data.shards.manifest import DataError
from pipeline.data.stages.path import Stage, run_path
from pipeline.data.streaming.epoch import EpochClock, current_epoch
from pipeline.data.streaming.pull import pulled
from pipeline.console import PassCount
from pipeline.watchdog import progressed

# The most of the cluster's object store the cache may take (all runs' caches together: Tune's concurrent trials).
CACHE_STORE_FRACTION = 0.5
# Per cached row beyond its arrays (aligned_row_bytes): key, shard URL and raw text as Arrow strings.
CACHE_STRING_BYTES = 256


class CacheError(DataError):
    """data.cache cannot hold the split (a user error: the message says what to change)."""


def check_cache_fits(rows: int, row_bytes: int, store_bytes: float, copies: int = 1) -> int:
    """The cache's estimated bytes (``rows`` x (``row_bytes`` + strings) x ``copies``: one cache per concurrent
    trial); raises CacheError when that exceeds CACHE_STORE_FRACTION of ``store_bytes``."""
    need = rows * (row_bytes + CACHE_STRING_BYTES) * copies
    allowed = store_bytes * CACHE_STORE_FRACTION
    if need > allowed:
        times = f" x {copies} concurrent trials" if copies > 1 else ""
        raise CacheError(
            f"data.cache: the train split's {rows:,} aligned rows{times} would take about {need / 2**30:.2f} GiB, "
            f"over {CACHE_STORE_FRACTION:.0%} of Ray's object store ({store_bytes / 2**30:.2f} GiB). Set "
            "data.cache=false (rows then stream from the shards every epoch), or give Ray a larger object store "
            "(ray start --object-store-memory), or smaller modalities.*.size")
    return need


def object_store_bytes() -> float:
    """The cluster's object store capacity (all nodes)."""
    import ray

    return float(ray.cluster_resources().get("object_store_memory", 0.0))


def cache_pass(ds, label: str, expected_rows: int, heartbeat=None):
    """Run ``ds`` (the read with the deterministic stages) once and keep its blocks: a dataset over them, with
    ``ds``'s context (its scheduling strategy and block sizes). Counted as driver progress (and on ``heartbeat``,
    for a watch on a Tune trial), pulled from a helper thread so a stall watch can interrupt it."""
    from ray.data._internal.execution.interfaces import RefBundle
    from ray.data._internal.logical.interfaces import LogicalPlan
    from ray.data._internal.logical.operators import InputData
    from ray.data._internal.stats import DatasetStats
    from ray.data.dataset import MaterializedDataset

    # Dataset.materialize() blocks without progress; this is its body with a count per block (Ray 2.60).
    bundles, shown = [], PassCount(label, expected_rows)
    for bundle in pulled(ds.iter_internal_ref_bundles(), label):
        bundles += [RefBundle(blocks=[block], owns_blocks=False, schema=bundle.schema) for block in bundle.blocks]
        rows = bundle.num_rows() or 0
        progressed(rows)
        shown.add(rows)
        if heartbeat is not None:
            heartbeat.beat()
    shown.finish(f" kept in {sum(b.size_bytes() for b in bundles) / 2**20:,.0f} MiB of the object store")
    context = ds.context.copy()
    return MaterializedDataset(LogicalPlan(InputData(input_data=bundles), context), context,
                               DatasetStats(metadata={}, parent=None))


def _per_epoch_batch(batch: dict, stages: list[Stage], epoch: "int | EpochClock") -> dict:
    return run_path(batch, stages, current_epoch(epoch))  # one clock read per batch


def per_epoch(cached, stages: list[Stage], epoch: "int | EpochClock"):
    """``cached`` in a new block order per execution, each block through ``stages`` with the epoch of the
    moment (tasks scheduled by the context's strategy, as the read's were)."""
    return cached.randomize_block_order().map_batches(
        _per_epoch_batch, fn_kwargs={"stages": stages, "epoch": epoch}, batch_size=None, batch_format="numpy")

"""Training class counts for rebalancing when manifest.json cannot give them: a label-only pass over the shards.

Each shard's read task runs one stage on the project's own tar reader: the label members (and meta, for labels
in JSON) are opened and counted, nothing else is decoded, and one row of counts per batch leaves the task.
"""

from __future__ import annotations

import numpy as np

from pipeline.data.stages.clean import parse_label, parse_meta
from pipeline.data.stages.config import StageConfig
from pipeline.data.shards.tar import DEFAULT_LIMITS, TarLimits
from pipeline.data.stages.contract import base_extension, pick_members
from pipeline.data.stages.decode import Rejected
from pipeline.data.stages.path import Stage
from pipeline.data.streaming.source import read_prepared
from pipeline.tasks import Task
from pipeline.watchdog import progressed

# Raw samples per batch: each batch becomes one row of counts.
LABEL_PASS_BATCH_SIZE = 256


def label_counts_batch(batch: dict[str, np.ndarray], cfg: StageConfig, task: Task | None = None
                       ) -> dict[str, np.ndarray]:
    """One row per batch: counts per class (``counts``, (1, C)) and rows without a usable label (``invalid``).
    ``task``: the task whose label is counted (rebalance.task); default: the primary."""
    task = task or cfg.primary
    labels = pick_members(batch, list(task.extensions))
    metas = pick_members(batch, cfg.modalities.meta_extensions) if task.source == "json" else None
    counts = np.zeros(len(task.classes), dtype=np.int64)
    invalid = 0
    for i, member in enumerate(labels):
        try:
            meta = parse_meta(metas[i]) if metas is not None else {}
            raw = meta.get(task.json_key) if task.source == "json" else member.data
            if member.error and task.source == "cls":
                raise Rejected("label_unknown", member.error)
            counts[parse_label(raw, task.classes, task.format)] += 1
        except Rejected:
            invalid += 1
    return {"counts": counts[None, :], "invalid": np.array([invalid])}


def label_pass(cfg: StageConfig, shards: list[str], limits: TarLimits = DEFAULT_LIMITS,
               scheduling_strategy=None, task: Task | None = None) -> np.ndarray:
    """Counts per class of ``task`` (default: the primary) of the rows with a usable label of it in ``shards``
    (checked, readable ones)."""
    task = task or cfg.primary
    wanted = set(task.extensions) | (set(cfg.modalities.meta_extensions) if task.source == "json" else set())
    ds = read_prepared(shards, [Stage("count labels", label_counts_batch, {"cfg": cfg, "task": task})],
                       LABEL_PASS_BATCH_SIZE, row_bytes=8 * (len(task.classes) + 1), limits=limits,
                       want=lambda ext: base_extension(ext) in wanted, scheduling_strategy=scheduling_strategy)
    total = np.zeros(len(task.classes), dtype=np.int64)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        total += batch["counts"].sum(axis=0)
        progressed()
    return total

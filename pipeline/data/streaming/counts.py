"""Training class counts for rebalancing when manifest.json cannot give them: a label-only pass over the shards.

Each shard's read task runs one stage on the project's own tar reader: the label members (and meta, for labels
in JSON) are opened and counted, nothing else is decoded, and one row of counts per batch leaves the task.
"""

from __future__ import annotations

import numpy as np

from pipeline.data.stages.clean import parse_label, parse_meta
from pipeline.data.stages.config import StageConfig
from pipeline.data.shards.tar import DEFAULT_LIMITS, TarLimits
from pipeline.data.stages.contract import KEY_COLUMN, base_extension, pick_members
from pipeline.data.stages.decode import Rejected
from pipeline.data.stages.path import Stage
from pipeline.data.streaming.source import read_prepared
from pipeline.tasks import Task
from pipeline.watchdog import progressed

# Raw samples per batch: each batch becomes one row of counts.
LABEL_PASS_BATCH_SIZE = 256


def _label_index(task: Task, member, meta: dict) -> int:
    """``task``'s class index of one sample (its label member, or its key of the parsed meta); raises Rejected."""
    if task.source == "json":
        return parse_label(meta.get(task.json_key), task.classes, task.format)
    if member.error:
        raise Rejected("label_unknown", member.error)
    return parse_label(member.data, task.classes, task.format)


def _read_tasks(cfg: StageConfig) -> list[Task]:
    """Every task the pass parses: all of them with label.tasks, since clean drops a row for an unknown label of
    any task (label_unknown) and the counts must be of the rows training streams."""
    return [cfg.primary, *cfg.tasks]


def label_counts_batch(batch: dict[str, np.ndarray], cfg: StageConfig, task: Task | None = None
                       ) -> dict[str, np.ndarray]:
    """One row per batch: counts per class (``counts``, (1, C)), rows training keeps without ``task``'s label
    (``unlabelled``: a further task's missing label, masked and streamed once per epoch) and rows it drops for
    their label(s) (``invalid``). ``task``: the task whose label is counted (rebalance.task); default: the
    primary. A row counts only when clean would keep it for its labels: the primary's usable, and every further
    task's usable or missing (an unknown value of any task drops the row)."""
    task = task or cfg.primary
    read = _read_tasks(cfg)
    members = {t.name: pick_members(batch, list(t.extensions)) for t in read}
    metas = (pick_members(batch, cfg.modalities.meta_extensions) if any(t.source == "json" for t in read)
             else None)
    counts = np.zeros(len(task.classes), dtype=np.int64)
    unlabelled = invalid = 0
    for i in range(len(batch[KEY_COLUMN])):
        try:
            meta = parse_meta(metas[i]) if metas is not None else {}
            index = {t.name: _task_index(t, members[t.name][i], meta) for t in read}
        except Rejected:
            invalid += 1
            continue
        if index[task.name] < 0:
            unlabelled += 1
        else:
            counts[index[task.name]] += 1
    return {"counts": counts[None, :], "unlabelled": np.array([unlabelled]), "invalid": np.array([invalid])}


def _task_index(task: Task, member, meta: dict) -> int:
    """As clean reads it: a further task's missing label is -1 (masked); any other bad label raises Rejected."""
    try:
        return _label_index(task, member, meta)
    except Rejected as r:
        if r.reason == "label_missing" and not task.primary:
            return -1
        raise


def label_pass(cfg: StageConfig, shards: list[str], limits: TarLimits = DEFAULT_LIMITS,
               scheduling_strategy=None, task: Task | None = None) -> tuple[np.ndarray, int]:
    """(counts per class of ``task`` (default: the primary) of the rows with a usable label of it, rows without
    its label that training keeps all the same) in ``shards`` (checked, readable ones)."""
    task = task or cfg.primary
    read = _read_tasks(cfg)
    wanted = {e for t in read for e in t.extensions} | \
        (set(cfg.modalities.meta_extensions) if any(t.source == "json" for t in read) else set())
    ds = read_prepared(shards, [Stage("count labels", label_counts_batch, {"cfg": cfg, "task": task})],
                       LABEL_PASS_BATCH_SIZE, row_bytes=8 * (len(task.classes) + 2), limits=limits,
                       want=lambda ext: base_extension(ext) in wanted, scheduling_strategy=scheduling_strategy)
    total, unlabelled = np.zeros(len(task.classes), dtype=np.int64), 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        total += batch["counts"].sum(axis=0)
        unlabelled += int(batch["unlabelled"].sum())
        progressed()
    return total, unlabelled

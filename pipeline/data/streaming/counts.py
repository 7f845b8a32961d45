"""Training class counts for rebalancing: from manifest.json when it describes exactly the spec's shards, else a
label-only pass over the shards (only label members are kept; nothing else is decoded)."""

from __future__ import annotations

import numpy as np

from pipeline.data.stages.clean import label_value, parse_label, parse_meta
from pipeline.data.stages.config import StageConfig
from pipeline.data.stages.contract import pick_members
from pipeline.data.stages.decode import Rejected
from pipeline.data.shards.check import check_shards, expand_shards
from pipeline.spec import JobSpec


def label_counts_batch(batch: dict[str, np.ndarray], cfg: StageConfig) -> dict[str, np.ndarray]:
    """One row per batch: counts per class (``counts``, (1, C)) and rows without a usable label (``invalid``)."""
    labels = pick_members(batch, cfg.label.extensions)
    metas = pick_members(batch, cfg.modalities.meta_extensions) if cfg.label.source == "json" else None
    counts = np.zeros(len(cfg.classes), dtype=np.int64)
    invalid = 0
    for i, member in enumerate(labels):
        try:
            meta = parse_meta(metas[i]) if metas is not None else {}
            counts[parse_label(label_value(member, meta, cfg), cfg.classes, cfg.label.format)] += 1
        except Rejected:
            invalid += 1
    return {"counts": counts[None, :], "invalid": np.array([invalid])}


def _manifest_counts(spec: JobSpec, split: str, classes: list[str]) -> np.ndarray | None:
    from pipeline.data.streaming.split import find_manifest

    found = find_manifest(spec)
    if not found:
        return None
    path, manifest = found
    entry = manifest.get("splits", {}).get(split)
    if not entry or "class_histogram" not in entry:
        return None
    root = path.rsplit("/", 1)[0]
    listed = {f"{root}/{s['path']}" for s in entry.get("shards", [])}
    if listed != set(expand_shards(spec.data.splits[split])):
        return None  # the spec reads other shards than the manifest describes
    return np.array([entry["class_histogram"].get(c, 0) for c in classes], dtype=np.int64)


def class_counts(spec: JobSpec, split: str, classes: list[str]) -> tuple[np.ndarray, str]:
    """(counts per class, where they came from)."""
    counts = _manifest_counts(spec, split, classes)
    if counts is not None:
        return counts, "manifest.json"
    import ray

    cfg = StageConfig.from_spec(spec, classes)
    suffixes = list(cfg.label.extensions) + (list(cfg.modalities.meta_extensions) if cfg.label.source == "json"
                                             else [])
    shards = [c.path for c in check_shards(expand_shards(spec.data.splits[split])) if not c.error]
    ds = ray.data.read_webdataset(shards, decoder=None, override_num_blocks=len(shards),
                                  suffixes=lambda s: s.lower().replace(".gz", "") in suffixes)
    total = np.zeros(len(classes), dtype=np.int64)
    for batch in ds.map_batches(label_counts_batch, fn_kwargs={"cfg": cfg}, batch_format="numpy",
                                batch_size=4096).iter_batches(batch_size=None, batch_format="numpy"):
        total += batch["counts"].sum(axis=0)
    return total, "label pass"

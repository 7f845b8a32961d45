"""Ray Data wiring for one split: check shards -> per shard: read tar + clean + align (-> keep_rows), fused."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import partial

import fsspec

from pipeline.data.stages.align import keep_rows
from pipeline.data.stages.config import StageConfig
from pipeline.data.streaming.dedupe import RemoteDuplicateIndex
from pipeline.data.streaming.source import read_prepared
from pipeline.data.stages.report import REPORT_COLUMNS, DataReport, SplitReport
from pipeline.data.shards.check import ShardCheck, ShardError, check_shards, expand_shards
from pipeline.spec import JobSpec

log = logging.getLogger(__name__)

# Rows per clean+align call (and per output block): large enough to amortise the per-batch costs (one dedupe
# actor call, one epoch-clock read, one Arrow block: ~2% at 128), small enough that a shard yields several blocks
# and training's first batch does not wait for a whole shard.
PREPARE_BATCH_SIZE = 128


class DataError(RuntimeError):
    """The data named by a spec cannot be used (no class names, no readable shards...)."""


def find_manifest(spec: JobSpec) -> tuple[str, dict] | None:
    """(path, content) of the dataset manifest.json: as named in the spec, else beside or one folder above the
    first shard pattern."""
    if spec.data.manifest:  # named explicitly: that file or nothing
        try:
            with fsspec.open(spec.data.manifest, "rt", encoding="utf-8") as f:
                return spec.data.manifest, json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"data.manifest {spec.data.manifest}: cannot read ({e})") from None
    candidates = []
    for patterns in spec.data.splits.values():
        first = patterns[0]
        parent = first.rsplit("/", 1)[0] if "/" in first else "."
        candidates += [f"{parent}/manifest.json", f"{parent.rsplit('/', 1)[0]}/manifest.json"]
        break
    for path in candidates:
        try:
            with fsspec.open(path, "rt", encoding="utf-8") as f:
                return path, json.load(f)
        except (FileNotFoundError, OSError):
            continue
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e})") from None
    return None


def resolve_classes(spec: JobSpec) -> list[str]:
    if spec.label.classes:
        return list(spec.label.classes)
    found = find_manifest(spec)
    if found and found[1].get("classes"):
        return [str(c) for c in found[1]["classes"]]
    raise DataError("no class names: set label.classes in the spec, or keep the manifest.json written by "
                    "`mmpipe pack` beside the shards (or name it in data.manifest)")


@dataclass
class SplitData:
    """One split's prepared dataset (all rows, dropped ones marked) and the shards left out of it."""
    name: str
    dataset: object  # ray.data.Dataset
    modalities: list[str]
    checks: list[ShardCheck] = field(default_factory=list)

    @property
    def bad_shards(self) -> list[ShardCheck]:
        return [c for c in self.checks if c.error]

    def kept(self):
        """Only the kept rows, fixed shapes: the dataset training consumes."""
        return self.dataset.map_batches(keep_rows, batch_format="numpy")

    def report(self, classes: list[str]) -> SplitReport:
        """Stream the split once (payload columns stay in the workers) and count every row."""
        report = SplitReport(self.name, classes, shards=len(self.checks),
                             bad_shards=[{"path": c.path, "error": c.error} for c in self.bad_shards])
        columns = list(REPORT_COLUMNS) + [f"present_{m}" for m in self.modalities]
        for batch in self.dataset.select_columns(columns).iter_batches(batch_size=1024, batch_format="numpy"):
            report.add_batch(batch)
        return report


def build_split(spec: JobSpec, split: str, classes: list[str], shuffle_files: bool = False,
                labels_required: bool = True, then=None, emits: list[str] | None = None) -> SplitData:
    """Check the split's shards and assemble its lazy Ray dataset. Raises ShardError/DataError before any read.
    ``labels_required=False`` (prediction) keeps unlabelled samples, with label -1. ``then``: a batch function run
    on each prepared batch inside the read task (the dataset then holds its output, not all rows); ``emits``: the
    modalities its output still carries (sizes the blocks; default all)."""
    if split not in spec.data.splits:
        raise DataError(f"split {split!r} is not in data.splits (have: {', '.join(spec.data.splits) or 'none'})")
    checks = check_shards(expand_shards(spec.data.splits[split]))
    bad = [c for c in checks if c.error]
    for c in bad:
        log.warning("split %s: leaving out bad shard %s: %s", split, c.path, c.error)
    if bad and spec.clean.on_bad_shard == "fail":
        raise ShardError("bad shard(s), and clean.on_bad_shard is 'fail':\n" +
                         "\n".join(f"  {c.path}: {c.error}" for c in bad))
    good = [c.path for c in checks if not c.error]
    if not good:
        raise ShardError(f"split {split!r}: none of its {len(checks)} shard(s) is readable")

    cfg = StageConfig.from_spec(spec, classes, labels_required)
    duplicates = RemoteDuplicateIndex() if spec.clean.dedupe else None
    ds = read_prepared(good, cfg, duplicates, PREPARE_BATCH_SIZE, shuffle_files, then, emits)
    return SplitData(split, ds, cfg.enabled, checks)


def validate_splits(spec: JobSpec, splits: list[str] | None = None) -> DataReport:
    """read -> clean -> align over every split; the data report."""
    classes = resolve_classes(spec)
    report = DataReport(classes)
    for name in splits or list(spec.data.splits):
        report.splits[name] = build_split(spec, name, classes).report(classes)
    if "train" in report.splits:  # the kept rows just counted are the exact input of rebalancing
        hist = report.splits["train"].class_histogram
        report.rebalance = plan_rebalance(spec, classes, [hist.get(c, 0) for c in classes],
                                          "kept rows of this validate pass").to_dict()
    return report


@dataclass
class RebalancePlan:
    """What rebalancing will do to one epoch of the train split (reported before training)."""
    strategy: str
    classes: list[str]
    counts: list[int]
    source: str
    factors: list[float]

    @property
    def expected(self) -> list[float]:
        return [c * f for c, f in zip(self.counts, self.factors)]

    def to_dict(self) -> dict:
        return {"strategy": self.strategy, "counts_from": self.source,
                "before": dict(zip(self.classes, self.counts)),
                "expected_after": {c: round(e, 2) for c, e in zip(self.classes, self.expected)},
                "factors": {c: round(f, 4) for c, f in zip(self.classes, self.factors)}}


def plan_rebalance(spec: JobSpec, classes: list[str], counts: list[int] | None = None, source: str = "",
                   split: str = "train") -> RebalancePlan:
    """Factors per class from ``counts`` (e.g. a validate pass), else from manifest.json or a label-only pass."""
    import numpy as np

    from pipeline.data.streaming.counts import class_counts
    from pipeline.data.stages.rebalance import RebalanceError, sampling_factors

    if counts is None:
        array, source = class_counts(spec, split, classes)
        counts = array.tolist()
    try:
        factors = sampling_factors(np.array(counts), spec.rebalance, classes)
    except RebalanceError as e:
        raise DataError(str(e)) from None
    return RebalancePlan(spec.rebalance.strategy, classes, [int(c) for c in counts], source, factors.tolist())


def _train_batch(batch, factors, seed, augment, modalities, columns, epoch):
    """keep -> rebalance -> augment on one prepared batch, reading the epoch once."""
    from pipeline.data.stages.augment.stage import augment_batch
    from pipeline.data.streaming.epoch import current_epoch
    from pipeline.data.stages.rebalance import rebalance_batch

    epoch = current_epoch(epoch)
    batch = keep_rows(batch)
    if factors is not None:
        batch = rebalance_batch(batch, factors, seed, epoch)
    if augment is not None:
        batch = augment_batch(batch, augment, modalities, epoch)
    return {c: batch[c] for c in columns} if columns else batch


def train_dataset(spec: JobSpec, classes: list[str], plan: RebalancePlan | None = None, epoch=0,
                  split: str = "train", columns: list[str] | None = None):
    """The train split as training reads it: kept rows -> rebalance -> augment. ``epoch``: int or EpochClock.
    ``columns``: keep only these (e.g. the model's inputs), so nothing else is turned into blocks.

    Rebalancing runs before augmentation (DESIGN lists them the other way round): undersampled rows then cost no
    augmentation, and each oversampled copy gets its own random augmentation instead of a duplicate. All of it runs
    inside the read task of each shard, on the batch clean+align just produced.
    """
    import numpy as np

    factors = None
    if spec.rebalance.strategy != "none":
        plan = plan or plan_rebalance(spec, classes, split=split)
        factors = np.array(plan.factors)
    augment = spec.augment if spec.augment.enabled and (spec.augment.image or spec.augment.text
                                                        or spec.augment.audio) else None
    then = partial(_train_batch, factors=factors, seed=spec.rebalance.seed, augment=augment,
                   modalities=spec.modalities, columns=columns, epoch=epoch)
    emits = [c for c in columns if c in spec.modalities.enabled()] if columns else None
    ds = build_split(spec, split, classes, shuffle_files=True, then=then, emits=emits).dataset  # new order per epoch
    # Ray Data reserves CPUs per operator by default; on 2 CPUs that ran these read tasks one at a time (half the
    # throughput). All the work is in one fused operator, so a reservation protects nothing. Only here: with
    # shards read in parallel, which copy of a duplicate claims first (and is kept) depends on timing; the report
    # pass keeps Ray's default, which on small machines reads in shard order.
    ds.context.op_resource_reservation_enabled = False
    return ds

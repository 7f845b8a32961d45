"""One run's data plan: what the spec's data is, found out once and handed to every part of the run.

A ``DataPlan`` is built once per command (``mmpipe train``, ``tune``, ``validate``, one per ``mmpipe run`` for all
its steps) and holds the manifest (found and read once), the class names, each split's shard checks (once per
split, on first use), the train split's class counts (manifest, else a label-only pass; at most once, on first
use), the rebalance plan, and with ``clean.cross_split_duplicates: drop_from_train`` the content hashes of the
other splits (a hash-only pass over their shards, nothing decoded; at most once). Everything that reads the data
takes the plan instead of deriving these again: the train split as training reads it, the kept rows of val/test,
the data report's pass, prediction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from pipeline.data.shards.check import ShardCheck, ShardError, check_shards, expand_shards
from pipeline.data.shards.tar import TarLimits
from pipeline.data.shards.manifest import DataError, find_manifest, manifest_counts, resolve_classes
from pipeline.data.stages.align import aligned_row_bytes, keep_rows
from pipeline.data.stages.contract import KEY_COLUMN, URL_COLUMN
from pipeline.data.stages.config import StageConfig
from pipeline.data.stages.dedupe import HASH_COLUMN, ContentSet, CrossSplitFinder
from pipeline.data.stages.path import sample_path, split_for_cache
from pipeline.data.stages.rebalance import RebalanceError, sampling_factors
from pipeline.data.stages.report import EXAMPLES_PER_REASON, REPORT_COLUMNS, DataReport, SplitReport
from pipeline.data.streaming.actors import actors_scope
from pipeline.data.streaming.cache import cache_pass, check_cache_fits, object_store_bytes, per_epoch
from pipeline.data.streaming.counts import label_pass
from pipeline.data.streaming.dedupe import RemoteDuplicateIndex, content_pass
from pipeline.data.streaming.pull import pulled
from pipeline.data.streaming.source import read_prepared, sized_blocks
from pipeline.spec import JobSpec
from pipeline.tasks import Task, label_tasks, rebalanced_task, task_column
from pipeline.console import PassCount
from pipeline.watchdog import progressed, watch

log = logging.getLogger(__name__)

# Rows per batch through the sample path (and per output block): large enough to amortise the per-batch costs
# (one dedupe actor call, one epoch-clock read, one Arrow block: ~2% at 128), small enough that a shard yields
# several blocks and training's first batch does not wait for a whole shard.
PREPARE_BATCH_SIZE = 128


@dataclass
class RebalancePlan:
    """What rebalancing will do to one epoch of the train split (reported before training). ``task``: the further
    task whose classes it evens out (rebalance.task), None for the primary; ``unlabelled``: train rows without that
    task's label, which every epoch streams once each (factor 1; always 0 for the primary, whose unlabelled rows are
    dropped)."""
    strategy: str
    classes: list[str]
    counts: list[int]
    source: str
    factors: list[float]
    task: str | None = None
    unlabelled: int = 0

    @property
    def expected(self) -> list[float]:
        """Rows per class in one epoch (the rebalanced task's classes)."""
        return [c * f for c, f in zip(self.counts, self.factors)]

    @property
    def rows_per_epoch(self) -> float:
        """Every row one epoch streams: the classes' expected rows and the unlabelled ones."""
        return float(sum(self.expected)) + self.unlabelled

    def to_dict(self) -> dict:
        out = {"strategy": self.strategy, "counts_from": self.source,
               "before": dict(zip(self.classes, self.counts)),
               "expected_after": {c: round(e, 2) for c, e in zip(self.classes, self.expected)},
               "factors": {c: round(f, 4) for c, f in zip(self.classes, self.factors)}}
        if self.task:  # rebalance.task names a further task: the primary's plan keeps its old shape
            out.update({"task": self.task, "unlabelled_rows": self.unlabelled})
        return out


def plan_rebalance(spec: JobSpec, classes: list[str], counts: list[int], source: str,
                   unlabelled: int = 0) -> RebalancePlan:
    """Factors per class for ``counts`` (train rows per class of the rebalanced task; ``source`` says where they
    came from); ``unlabelled``: train rows without that task's label (a further task's)."""
    task = spec.rebalance.task if spec.rebalance.task not in (None, spec.label.name) else None
    try:
        factors = sampling_factors(np.array(counts), spec.rebalance, classes)
    except RebalanceError as e:
        named = f"rebalance.task {task}: task {task!r} has no labelled train rows; " if task and not any(counts) \
            else ""
        raise DataError(named + str(e)) from None
    return RebalancePlan(spec.rebalance.strategy, classes, [int(c) for c in counts], source, factors.tolist(),
                         task, int(unlabelled))


def kept_counts(report: SplitReport, task: Task) -> tuple[list[int], int]:
    """(kept rows per class of ``task``, kept rows without its label) of a split's data report: the exact input
    of rebalancing (``plan_rebalance``)."""
    hist = report.histogram(None if task.primary else task.name)
    return [hist.get(c, 0) for c in task.classes], 0 if task.primary else report.task_missing.get(task.name, 0)


@dataclass
class SplitData:
    """One split's dataset as read through the sample path, and its shard checks (bad ones left out)."""
    name: str
    dataset: object  # ray.data.Dataset
    modalities: list[str]
    checks: list[ShardCheck] = field(default_factory=list)

    @property
    def bad_shards(self) -> list[ShardCheck]:
        """Shards with a fault: left out, or (truncated) read up to the damage."""
        return [c for c in self.checks if c.error]

    @property
    def expected_rows(self) -> int:
        """Rows a pass over the split reads: every sample the shard checks counted in the shards it reads."""
        return sum(c.samples for c in self.checks if c.usable)

    def kept(self):
        """Only the kept rows, fixed shapes (of a ``report`` dataset, which holds every row)."""
        return self.dataset.map_batches(keep_rows, batch_format="numpy")

    def report(self, classes: list[str], cross: CrossSplitFinder | None = None, remember: bool = True,
               tasks: dict[str, list[str]] | None = None) -> SplitReport:
        """Stream the split once and count every row (of a ``report`` dataset). ``cross``: also match the content
        of its rows (kept, or dropped only as duplicate_of_eval) against the splits added there before
        (``remember=False``: this split is the last)."""
        report = SplitReport(self.name, classes, shards=len(self.checks), bad_shards=bad_shard_entries(self.checks),
                             tasks=dict(tasks or {}))
        columns = list(REPORT_COLUMNS) + [task_column(t) for t in report.tasks] + \
            [f"present_{m}" for m in self.modalities] + ([HASH_COLUMN] if cross else [])
        batches = self.dataset.select_columns(columns).iter_batches(batch_size=1024, batch_format="numpy")
        shown = PassCount(f"data report: {self.name}", self.expected_rows)
        for batch in pulled(batches, f"data report: {self.name}"):  # a stalled read can still be interrupted
            report.add_batch(batch)
            progressed(len(batch["drop_reason"]))  # rows counted: the progress a watch over this pass sees
            shown.add(len(batch["drop_reason"]))
            if cross is not None:
                usable = [r in ("", "duplicate_of_eval") for r in batch["drop_reason"]]
                cross.add(self.name, [h if ok else "" for h, ok in zip(batch[HASH_COLUMN], usable)],
                          batch[KEY_COLUMN], batch[URL_COLUMN], remember)
        shown.finish(f" ({report.rows_kept:,} kept)")
        return report


def bad_shard_entries(checks: list[ShardCheck]) -> list[dict]:
    """The data report's record of each faulty shard: path, reason, message, and the intact samples kept from it
    (a truncated shard's prefix; 0 for a shard left out)."""
    return [{"path": c.path, "reason": c.reason, "error": c.error, "samples_kept": c.samples if c.usable else 0}
            for c in checks if c.error]


class _Files:
    """What plans over the same ``data`` section share: the manifest and each split's shard checks."""

    def __init__(self) -> None:
        self.manifest: tuple[str, dict] | None = None
        self.manifest_read = False
        self.checks: dict[str, list[ShardCheck]] = {}
        self.eval_content: list[tuple[StageConfig, str, ContentSet]] = []  # (config, train split, other splits')


class DataPlan:
    """The data of one run. ``classes``: given (a trained model's), else label.classes or the manifest's."""

    def __init__(self, spec: JobSpec, classes: list[str] | None = None, _files: _Files | None = None):
        self.spec = spec
        self._files = _files or _Files()
        if classes is None:  # the manifest is read only when the spec does not name the classes
            classes = spec.label.classes or resolve_classes(spec, self.manifest)
        self.classes = list(classes)
        self.tasks = label_tasks(spec.label, self.classes)  # the primary task, then label.tasks
        self._counts: tuple[np.ndarray, str] | None = None
        self._unlabelled = 0
        self._rebalance: RebalancePlan | None = None

    @property
    def manifest(self) -> tuple[str, dict] | None:
        """(path, content) of manifest.json, or None when there is none; read on first use, once."""
        if not self._files.manifest_read:
            self._files.manifest = find_manifest(self.spec)
            self._files.manifest_read = True
        return self._files.manifest

    def for_spec(self, spec: JobSpec, classes: list[str] | None = None) -> "DataPlan":
        """A plan for another spec over the same data (a Tune trial's, a trained model's): shares the manifest and
        shard checks when ``spec.data`` is this plan's, else starts afresh. Class counts are not shared (the
        label settings may differ); the same spec gets this plan itself."""
        if spec == self.spec and classes in (None, self.classes):
            return self
        return DataPlan(spec, classes, self._files if spec.data == self.spec.data else None)

    # ------------------------------------------------------------------ shards

    def checks(self, split: str) -> list[ShardCheck]:
        """Every shard of ``split``, checked (once per split). Raises DataError/ShardError before any read."""
        if split in self._files.checks:
            return self._files.checks[split]
        if split not in self.spec.data.splits:
            raise DataError(f"split {split!r} is not in data.splits "
                            f"(have: {', '.join(self.spec.data.splits) or 'none'})")
        checks = check_shards(expand_shards(self.spec.data.splits[split]), limits=self.limits)
        bad = [c for c in checks if c.error]
        for c in bad:
            if c.usable:
                log.warning("split %s: shard %s is truncated (%s); keeping its %d intact sample(s)", split, c.path,
                            c.error, c.samples)
            else:
                log.warning("split %s: leaving out bad shard %s: %s", split, c.path, c.error)
        if bad and self.spec.clean.on_bad_shard == "fail":
            raise ShardError("bad shard(s), and clean.on_bad_shard is 'fail':\n" +
                             "\n".join(f"  {c.path}: {c.error}" for c in bad))
        if not any(c.usable for c in checks):
            raise ShardError(f"split {split!r}: none of its {len(checks)} shard(s) is readable")
        self._files.checks[split] = checks
        return checks

    def shard_samples(self, split: str) -> int:
        """Samples in the shards of ``split`` that a pass reads (from the shard checks: no pass, labels or not)."""
        return sum(c.samples for c in self.checks(split) if c.usable)

    def good_shards(self, split: str) -> list[str]:
        """Shards to read: the sound ones, and truncated ones (the reader stops after their last whole sample)."""
        return [c.path for c in self.checks(split) if c.usable]

    @property
    def limits(self) -> TarLimits:
        return TarLimits.from_clean(self.spec.clean)

    # ------------------------------------------------------------------ class counts and rebalancing

    def class_counts(self, scheduling_strategy=None) -> tuple[np.ndarray, str]:
        """(train rows per class of ``rebalanced_task``, where they came from): manifest.json when it describes
        exactly these shards, else a label-only pass (its tasks scheduled by ``scheduling_strategy``). Computed
        once, on first use, with ``unlabelled_rows``."""
        if self._counts is None:
            checks = self.checks("train")
            task = self.rebalanced_task
            # the manifest counts the primary task's classes only, over every labelled row: with label.tasks,
            # rows clean drops for an unknown further label would count there (never streamed), so the label
            # pass reads every task instead
            counts = (manifest_counts(self.manifest, "train", [c.path for c in checks], self.classes)
                      if task.primary and not self.spec.label.tasks else None)
            if counts is not None:
                self._counts, self._unlabelled = (counts, "manifest.json"), 0
            else:
                cfg = StageConfig.from_spec(self.spec, self.classes)
                counts, self._unlabelled = label_pass(cfg, self.good_shards("train"), self.limits,
                                                      scheduling_strategy, task)
                self._counts = counts, "label pass" if task.primary else f"label pass ({task.name})"
        return self._counts

    def unlabelled_rows(self) -> int:
        """Train rows without the label of ``rebalanced_task`` that training keeps (a further task's: they stream
        once per epoch, beside the counted ones); 0 for the primary task."""
        self.class_counts()
        return self._unlabelled

    @property
    def rebalanced_task(self) -> Task:
        """The task whose classes rebalancing evens out (rebalance.task; default the primary)."""
        return rebalanced_task(self.tasks, self.spec.rebalance.task)

    @property
    def rebalance(self) -> RebalancePlan:
        """The rebalance plan of the train split from ``class_counts`` (once), over the classes of
        ``rebalanced_task``."""
        if self._rebalance is None:
            counts, source = self.class_counts()
            self._rebalance = plan_rebalance(self.spec, list(self.rebalanced_task.classes), counts.tolist(), source,
                                             self.unlabelled_rows())
        return self._rebalance

    # ------------------------------------------------------------------ cross-split duplicates

    def eval_content(self, split: str = "train", scheduling_strategy=None) -> ContentSet:
        """The content hashes of every split but ``split``, from a hash-only pass over their readable shards (once
        per data and stage settings: shared with plans of the same data, e.g. Tune trials)."""
        cfg = StageConfig.from_spec(self.spec, self.classes)
        for known_cfg, known_split, content in self._files.eval_content:
            if known_split == split and known_cfg == cfg:
                return content
        others = [s for s in self.spec.data.splits if s != split]
        content = ContentSet({s: content_pass(cfg, self.good_shards(s), self.limits, scheduling_strategy)
                              for s in others})
        log.info("split %s: leaving out content also in %s (%d distinct samples there)", split,
                 ", ".join(others) or "no other split", len(content))
        self._files.eval_content.append((cfg, split, content))
        return content

    def _drops_eval_content(self, split: str, purpose: str) -> bool:
        """Whether reading ``split`` for ``purpose`` drops content other splits hold: the train split (and what
        training reads), when the spec asks for it."""
        return self.spec.clean.cross_split_duplicates == "drop_from_train" and (split == "train" or purpose == "train")

    # ------------------------------------------------------------------ datasets

    def _read(self, split: str, purpose: str, labels_required: bool = True, columns: list[str] | None = None,
              shuffle_files: bool = False, factors=None, epoch=0, scheduling_strategy=None, cache: bool = False,
              heartbeat=None, further_required: bool = True):
        cfg = StageConfig.from_spec(self.spec, self.classes, labels_required, further_required)
        duplicates = RemoteDuplicateIndex() if self.spec.clean.dedupe else None
        eval_content = (self.eval_content(split, scheduling_strategy) if self._drops_eval_content(split, purpose)
                        else None)
        path = sample_path(self.spec, cfg, purpose, duplicates, factors, columns, eval_content)
        roles = [c for c in columns if c in cfg.enabled] if columns else None
        row_bytes = aligned_row_bytes(cfg.modalities, roles)
        if not cache:
            return read_prepared(self.good_shards(split), path, PREPARE_BATCH_SIZE, row_bytes, shuffle_files,
                                 epoch, self.limits, scheduling_strategy=scheduling_strategy)
        # data.cache: read + the deterministic stages once, kept; the per-epoch stages over the kept blocks
        once, every_epoch = split_for_cache(path)
        self.cache_bytes(split)
        read = read_prepared(self.good_shards(split), once, PREPARE_BATCH_SIZE, aligned_row_bytes(cfg.modalities),
                             limits=self.limits, scheduling_strategy=scheduling_strategy)
        ds = per_epoch(cache_pass(read, f"data cache: {split}", self.shard_samples(split), heartbeat), every_epoch,
                       epoch)
        return sized_blocks(ds, PREPARE_BATCH_SIZE, row_bytes)

    def cache_bytes(self, split: str = "train", copies: int = 1) -> int:
        """The estimated bytes data.cache keeps for ``split`` (every sample the shard checks counted, as aligned
        rows of every enabled modality; ``copies``: caches at once, e.g. Tune's concurrent trials). Raises
        CacheError when they would not fit in the object store (CACHE_STORE_FRACTION): before any read."""
        return check_cache_fits(self.shard_samples(split), aligned_row_bytes(self.spec.modalities),
                                object_store_bytes(), copies)

    # ``scheduling_strategy`` of the builders below: where the dataset's tasks run (a run's reserved data CPUs,
    # ``resources.data_strategy``); None: wherever Ray Data puts them.

    def split(self, split: str, labels_required: bool = True, columns: list[str] | None = None,
              scheduling_strategy=None) -> SplitData:
        """Every row of ``split``, dropped ones marked (the report pass; prediction with
        ``labels_required=False``, which keeps unlabelled samples with label -1)."""
        ds = self._read(split, "report", labels_required, columns, scheduling_strategy=scheduling_strategy)
        return SplitData(split, ds, self.spec.modalities.enabled(), self.checks(split))

    def eval_dataset(self, split: str, columns: list[str] | None = None, scheduling_strategy=None,
                     further_required: bool = True):
        """The kept rows of ``split`` as they are (no rebalancing, no augmentation): validation, test, holdout.
        ``further_required=False``: a further task's unknown value is -1 (unscored), not a drop (the registry's
        holdout: only the primary label decides which rows count)."""
        return self._read(split, "eval", columns=columns, scheduling_strategy=scheduling_strategy,
                          further_required=further_required)

    def train_dataset(self, epoch=0, columns: list[str] | None = None, rebalance: RebalancePlan | None = None,
                      split: str = "train", labels_required: bool = True, scheduling_strategy=None,
                      heartbeat=None):
        """The train split as training reads it: kept rows -> rebalance -> augment -> tokenize, in the read task
        of each shard, in a new shard order per epoch. ``epoch``: int or EpochClock; ``columns``: keep only these
        (e.g. the model's inputs); ``rebalance``: another plan than this one's (Tune's shared counts);
        ``labels_required=False``: unlabelled rows kept with label -1 (self-supervised pretraining).

        With data.cache the shards are read and cleaned here, once (blocking; counted as progress, and beaten on
        ``heartbeat``), and the dataset runs only the per-epoch stages over the kept rows (streaming/cache.py)."""
        factors = None
        if self.spec.rebalance.strategy != "none":
            factors = np.array((rebalance or self.rebalance).factors)
        ds = self._read(split, "train", labels_required, columns=columns, shuffle_files=True, factors=factors,
                        epoch=epoch, scheduling_strategy=scheduling_strategy, cache=self.spec.data.cache,
                        heartbeat=heartbeat)
        # Ray Data reserves CPUs per operator by default; on 2 CPUs that ran these read tasks one at a time (half
        # the throughput). All the work is in one fused operator, so a reservation protects nothing. Only here:
        # with shards read in parallel, which copy of a duplicate claims first (and is kept) depends on timing;
        # the report pass keeps Ray's default, which on small machines reads in shard order.
        ds.context.op_resource_reservation_enabled = False
        return ds

    def validate(self, splits: list[str] | None = None) -> DataReport:
        """read -> clean -> align -> tokenize over every split (or ``splits``), every row counted: the data report,
        with the content each pair of splits shares and the rebalance plan the kept train rows just counted would
        give. Watched: when no row is counted for ``scaling.stall_timeout_s`` it stops with a StallError saying
        what the read tasks wait for (``mmpipe validate``, the train and tune data reports)."""
        with watch("the data report pass", self.spec.scaling.stall_timeout_s,
                   hint="hint: the pass reads each split with one read task (1 CPU) per shard; when they wait "
                        "for CPUs, other work holds them"), actors_scope():
            return self._validate(splits)

    def _validate(self, splits: list[str] | None) -> DataReport:
        tasks = {t.name: list(t.classes) for t in self.tasks[1:]}
        report = DataReport(self.classes, tasks=tasks)
        names = list(splits or self.spec.data.splits)
        columns = list(REPORT_COLUMNS) + [task_column(t) for t in tasks] + \
            [f"present_{m}" for m in self.spec.modalities.enabled()] + [HASH_COLUMN]
        # train last: its content is only matched against the others', never held (the largest split, usually)
        order = sorted(names, key=lambda n: n == "train")
        cross = CrossSplitFinder(EXAMPLES_PER_REASON)
        counted = {}
        for name in order:  # payload columns never leave the read tasks
            counted[name] = self.split(name, columns=columns).report(self.classes, cross, remember=name != order[-1],
                                                                     tasks=tasks)
        report.splits = {name: counted[name] for name in names}
        report.cross_split = cross.pairs(names)
        if "train" in report.splits:  # the kept rows just counted are the exact input of rebalancing
            task = self.rebalanced_task
            counts, unlabelled = kept_counts(report.splits["train"], task)
            report.rebalance = plan_rebalance(self.spec, list(task.classes), counts,
                                              "kept rows of this validate pass", unlabelled).to_dict()
        return report

"""The sample path: every stage a batch goes through, in order, as one list built from the spec. Each stage is a
plain function over ``dict[str, np.ndarray]`` batches; the read datasource (streaming/source.py) runs the list on
each batch of one shard inside its read task, and reads the epoch once per batch for the stages that need it.

    raw members  __key__, __url__ and one bytes column per member extension (None where a sample lacks it)
    clean      -> decoded values (image RGB, text str, audio wave + rate, meta), label, drop_reason/drop_detail
                  per row; exact duplicates claimed across shards; content another split holds dropped (train)
    align      -> fixed shapes: image uint8 (B,H,W,3), audio float32 (B,N), text_raw str, label int64 (B,),
                  present_<modality> bool; rows dropped here get a reason too
                  (clean and align are one stage, run in chunks of at most clean.max_decoded_batch_bytes decoded)
    keep       -> only the kept rows, without drop_reason/drop_detail           (train, eval)
    rebalance  -> rows repeated or left out by their class factor, + copy        (train, rebalance.strategy set)
    label fraction -> label -1 outside a seeded fraction of keys                 (train, train.label_fraction)
    augment    -> image / audio / text_raw changed per (seed, epoch, key, copy)  (train, transforms listed)
    tokenize   -> text int64 (B, max_tokens) from text_raw, by modalities.text.tokenizer or model.hf.text's
                  tokenizer                                                      (text enabled)
    select     -> only the columns asked for                                     (columns given)

``report`` rows also carry ``content_hash`` (the data report's cross-split duplicates); the others drop it.

Purposes: ``train`` is the train split as training reads it; ``eval`` the kept rows of a split as they are
(validation, test, holdout scoring); ``report`` every row, dropped ones marked (the data report, prediction).
Rebalancing runs before augmentation (DESIGN lists them the other way round): undersampled rows then cost no
augmentation, and each oversampled copy gets its own random augmentation instead of a duplicate. Text is
tokenized once, last, so augmented text needs no second pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from pipeline.data.stages.align import align_batch, keep_rows
from pipeline.data.stages.augment.device_seeds import seed_batch
from pipeline.data.stages.augment.stage import augment_batch
from pipeline.data.stages.clean import Duplicates, clean_bounded
from pipeline.data.stages.config import StageConfig
from pipeline.data.stages.dedupe import ContentSet
from pipeline.data.stages.label_fraction import label_fraction_batch
from pipeline.data.stages.rebalance import rebalance_batch
from pipeline.data.stages.tokenize import tokenize_batch
from pipeline.spec import JobSpec
from pipeline.tasks import rebalanced_task

Batch = dict[str, np.ndarray]
PURPOSES = ("train", "eval", "report")


@dataclass
class Stage:
    """One step of the path: ``fn(batch, **args)``, plus ``epoch=`` for the stages whose draws change per epoch."""
    name: str
    fn: Callable[..., Batch]
    args: dict = field(default_factory=dict)
    takes_epoch: bool = False

    def __call__(self, batch: Batch, epoch: int) -> Batch:
        return self.fn(batch, **self.args, epoch=epoch) if self.takes_epoch else self.fn(batch, **self.args)


def select_columns(batch: Batch, columns: list[str]) -> Batch:
    return {c: batch[c] for c in columns}


def augments(spec: JobSpec) -> bool:
    """Whether the CPU augment stage runs (with augment.backend=device, augmentation runs in the training worker)."""
    return spec.augment.runs_on("cpu")


def _decode(cfg: StageConfig, duplicates: Duplicates | None, eval_content: ContentSet | None = None,
            content_hashes: bool = False) -> list[Stage]:
    # clean and align run together chunk by chunk (clean.max_decoded_batch_bytes): decoded full-size images and
    # waveforms of at most one chunk are alive at once, whatever the shard holds.
    return [Stage("clean+align", clean_bounded, {"cfg": cfg, "duplicates": duplicates,
                                                 "then": partial(align_batch, cfg=cfg),
                                                 "eval_content": eval_content, "content_hashes": content_hashes})]


def _tokenize(cfg: StageConfig) -> list[Stage]:
    if not cfg.modalities.text:
        return []
    return [Stage("tokenize", tokenize_batch, {"text": cfg.modalities.text, "hf_folder": cfg.hf_text})]


def sample_path(spec: JobSpec, cfg: StageConfig, purpose: str, duplicates: Duplicates | None = None,
                factors: np.ndarray | None = None, columns: list[str] | None = None,
                eval_content: ContentSet | None = None) -> list[Stage]:
    """The stages for ``purpose`` (one of PURPOSES). ``factors``: rebalance factors per class (train, when
    rebalance.strategy is not none); ``columns``: keep only these at the end (e.g. a model's inputs);
    ``eval_content``: other splits' content, dropped here as ``duplicate_of_eval`` (the train split)."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose {purpose!r} is not one of {PURPOSES}")
    path = _decode(cfg, duplicates, eval_content, content_hashes=purpose == "report")
    if purpose != "report":
        path.append(Stage("keep", keep_rows))
    if purpose == "train":
        if spec.rebalance.strategy != "none":
            if factors is None:
                raise ValueError(f"rebalance.strategy {spec.rebalance.strategy!r} needs the factors per class")
            # rebalance.task: a further task's label column (factors are per class of that task)
            column = rebalanced_task((cfg.primary, *cfg.tasks), spec.rebalance.task).column
            path.append(Stage("rebalance", rebalance_batch, {"factors": np.asarray(factors),
                                                             "seed": spec.rebalance.seed, "column": column},
                              takes_epoch=True))
        if spec.train.label_fraction is not None:  # after rebalancing, which still sees every row's class
            path.append(Stage("label fraction", label_fraction_batch, {
                "fraction": spec.train.label_fraction, "seed": spec.train.seed,
                "columns": cfg.label_columns}))
        if augments(spec):
            path.append(Stage("augment", augment_batch, {"augment": spec.augment, "modalities": spec.modalities},
                              takes_epoch=True))
        elif spec.augment.runs_on("device"):  # the worker augments; rows carry their (seed, epoch, key, copy) seed
            path.append(Stage("augment seeds", seed_batch, {"augment": spec.augment}, takes_epoch=True))
    path += _tokenize(cfg)
    if columns:
        path.append(Stage("select", select_columns, {"columns": list(columns)}))
    return path


def split_for_cache(path: list[Stage]) -> tuple[list[Stage], list[Stage]]:
    """(the stages up to ``keep``, the rest) of a train or eval path: the first part gives the same rows every
    epoch (decode, checks, duplicate claims and alignment are deterministic, claims idempotent), so data.cache
    keeps its output; the rest (rebalance, label fraction, augment, tokenize, select) runs every epoch."""
    names = [stage.name for stage in path]
    if "keep" not in names:
        raise ValueError("only a train or eval path (which keeps the kept rows) splits for the cache")
    at = names.index("keep") + 1
    return path[:at], path[at:]


def run_path(batch: Batch, path: list[Stage], epoch: int = 0) -> Batch:
    for stage in path:
        batch = stage(batch, epoch)
    return batch


def prepare_batch(batch: Batch, cfg: StageConfig, duplicates: Duplicates | None = None,
                  eval_content: ContentSet | None = None) -> Batch:
    """clean -> align -> tokenize: every row, dropped ones marked (the report path without a spec)."""
    return run_path(batch, _decode(cfg, duplicates, eval_content, content_hashes=True) + _tokenize(cfg))

"""The job spec: one typed, validated model loaded from YAML.

Defaults live here and only here. Every problem in a spec is reported at once, each with the file and the dotted
path of the field, before any Ray work starts. ``--set a.b=value`` overrides are applied to the raw YAML first, so
they are validated exactly like the file.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

MODALITIES = ("image", "text", "audio")


class SpecError(ValueError):
    """A job spec that cannot be used; the message lists every problem with its field path."""


class Strict(BaseModel):
    # Unknown keys are errors, not silently ignored typos.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _lower_exts(exts: list[str]) -> list[str]:
    return [e.lower().lstrip(".") for e in exts]


def unknown_name(kind: str, name: str, known) -> str:
    """The message for a name missing from a registry: close matches first, then every known name."""
    close = difflib.get_close_matches(name, list(known), n=3)
    return (f"unknown {kind} {name!r}" + (f" (did you mean {', '.join(close)}?)" if close else "") +
            f"; known: {', '.join(sorted(known))}")


def _registered(kind: str):
    """A field whose value names an entry of a registry that lives above this module (fusions, optimizers,
    losses). The schema accepts any string; ``pipeline.spec_checks`` passes the registries' names as the
    validation context ({kind: names}), so the check reports with the field's path like any schema error."""
    def check(name: str, info: ValidationInfo) -> str:
        known = (info.context or {}).get(kind)
        if known is not None and name not in known:
            raise ValueError(unknown_name(kind, name, known))
        return name
    return check


# ---------------------------------------------------------------- data & contract

class DataSpec(Strict):
    """Where the shards are. Relative local paths are resolved against the spec file's folder."""
    splits: dict[str, list[str]] = Field(default_factory=dict,
                                         description="split name -> shard paths, globs, brace patterns or URIs")
    manifest: str | None = Field(None, description="dataset manifest.json; default: next to the first shard's folder")
    cache: bool = Field(False, description="training keeps the train split's cleaned and aligned rows in Ray's "
                        "object store after the first pass and re-runs only rebalance, augment and tokenize each "
                        "epoch (refused when they would take over half of the object store; docs/data.md)")

    @field_validator("splits", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: [p] if isinstance(p, str) else p for k, p in v.items()}
        return v

    @field_validator("splits")
    @classmethod
    def _non_empty(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, paths in v.items():
            if not paths:
                raise ValueError(f"split {name!r} lists no shards")
        return v


class ImageSpec(Strict):
    extensions: list[str] = ["jpg", "jpeg", "png", "webp"]
    required: bool = False
    size: tuple[int, int] = Field((64, 64), description="aligned (height, width)")
    _norm = field_validator("extensions")(_lower_exts)

    @field_validator("size")
    @classmethod
    def _positive(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 1:
            raise ValueError("image size must be positive")
        return v


class TextSpec(Strict):
    extensions: list[str] = ["txt"]
    required: bool = False
    max_tokens: int = Field(32, ge=1, le=8192)
    tokenizer: Literal["hash", "bytes"] = Field(
        "hash", description="hash: words, and single characters for CJK scripts, hashed into vocab_size ids; "
                            "bytes: UTF-8 bytes")
    vocab_size: int = Field(8192, ge=260, description="ids 0 (pad) and 1 (reserved) included")
    lowercase: bool = True
    _norm = field_validator("extensions")(_lower_exts)


class AudioSpec(Strict):
    extensions: list[str] = ["wav", "flac", "ogg"]
    required: bool = False
    sample_rate: int = Field(16000, ge=1000)
    seconds: float = Field(1.0, gt=0)
    _norm = field_validator("extensions")(_lower_exts)

    @property
    def num_samples(self) -> int:
        return int(round(self.sample_rate * self.seconds))

    @model_validator(mode="after")
    def _at_least_one_sample(self) -> "AudioSpec":
        if self.num_samples < 1:
            raise ValueError(f"sample_rate x seconds gives {self.num_samples} samples; need at least 1")
        return self


class ModalitiesSpec(Strict):
    """Each role; set one to null to ignore that modality entirely."""
    image: ImageSpec | None = Field(default_factory=ImageSpec)
    text: TextSpec | None = Field(default_factory=TextSpec)
    audio: AudioSpec | None = Field(default_factory=AudioSpec)
    meta_extensions: list[str] = ["json"]
    _norm = field_validator("meta_extensions")(_lower_exts)

    def enabled(self) -> list[str]:
        return [m for m in MODALITIES if getattr(self, m) is not None]

    @model_validator(mode="after")
    def _extensions_unique(self) -> "ModalitiesSpec":
        owner: dict[str, str] = {}
        for role in self.enabled():
            for ext in getattr(self, role).extensions:
                if ext in owner:
                    raise ValueError(f"extension {ext!r} is claimed by both {owner[ext]} and {role}")
                owner[ext] = role
        if not self.enabled():
            raise ValueError("at least one modality must be enabled")
        return self


def _unique_classes(v: list[str] | None) -> list[str] | None:
    if v is not None:
        if len(v) < 2:
            raise ValueError("need at least 2 classes")
        dupes = sorted({c for c in v if v.count(c) > 1})
        if dupes:
            raise ValueError(f"duplicate class names: {dupes}")
    return v


def _ambiguous_format(fmt: str, classes: list[str] | None, where: str) -> None:
    """format auto reads an integer as a class index: with classes ["1".."5"] a "1" would mean the class "2". We
    refuse rather than pick a reading (a default of name would silently misread indices, as `mmpipe pack`
    writes them): the spec must say which. Integer names equal to their own index ("0".."9" in order) read
    the same either way and pass."""
    if fmt != "auto" or not classes:
        return
    clash = [c for i, c in enumerate(classes) if re.fullmatch(r"-?[0-9]+", c.strip()) and int(c) != i]
    if clash:
        raise ValueError(f"{where}.format is auto, which reads an integer as a class index, but {where}.classes "
                         f"has integer names that are not their own index ({clash[:5]}): set {where}.format to "
                         "name (values are class names) or index (values are positions in the list)")


# Words a task name may not be: it sits inside metric names (val.<task>.macro_f1, val.precision.<class>).
RESERVED_TASK_NAMES = ("train", "val", "test", "best", "loss", "accuracy", "balanced_accuracy", "macro_f1", "auc",
                       "rows", "precision", "recall", "confusion")
_TASK_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


def _valid_task_name(v: str) -> str:
    if not _TASK_NAME.fullmatch(v):
        raise ValueError(f"task name {v!r}: lower-case letters, digits and _, starting with a letter (at most 32)")
    if v in RESERVED_TASK_NAMES:
        raise ValueError(f"task name {v!r} is reserved (it would read as part of a metric name); "
                         f"reserved: {', '.join(RESERVED_TASK_NAMES)}")
    return v


class TaskSpec(Strict):
    """A further label of each sample (label.tasks.<name>): read like the primary label, scored by its own head.
    A sample without it trains only the other tasks (its loss masked, counted per split in the data report:
    ``splits.<split>.tasks.<task>.missing`` in data_report.json); a value that is not one of the classes drops the
    sample (label_unknown)."""
    source: Literal["cls", "json"] = Field("json", description="cls: a member with one of `extensions`; json: the "
                                                               "key `json_key` of the meta json member")
    extensions: list[str] = Field(default_factory=list, description="with source cls: the member extensions, "
                                                                    "e.g. [speaker]")
    json_key: str | None = Field(None, description="with source json: the key; default: the task's name")
    format: Literal["auto", "index", "name"] = Field("auto", description="as label.format")
    classes: list[str] = Field(description="class names (required: the manifest holds the primary task's only)")
    weight: float = Field(1.0, gt=0, description="this task's weight in the summed loss")
    _norm = field_validator("extensions")(_lower_exts)
    _unique = field_validator("classes")(_unique_classes)

    @model_validator(mode="after")
    def _source_has_what_it_needs(self) -> "TaskSpec":
        if self.source == "cls" and not self.extensions:
            raise ValueError("source cls needs extensions (the member holding this task's label, e.g. [speaker])")
        if self.source == "json" and self.extensions:
            raise ValueError("extensions are for source cls; source json reads json_key")
        return self


class LabelSpec(Strict):
    source: Literal["cls", "json"] = Field("cls", description="cls: a member holding an index or class name; "
                                                              "json: a key inside the meta json member")
    extensions: list[str] = ["cls"]
    json_key: str = "label"
    format: Literal["auto", "index", "name"] = Field(
        "auto", description="auto: an integer is a class index (as `mmpipe pack` writes), anything else a name; "
                            "name: always a class name (for numeric class names such as 1, 2, 10; auto refuses "
                            "integer class names other than their own index)")
    classes: list[str] | None = Field(None, description="class names; default: from the dataset manifest.json")
    name: str = Field("label", description="the task's name, in the data report and where another task "
                                           "(label.tasks) must be told apart; its metrics keep plain names "
                                           "(val.macro_f1)")
    weight: float = Field(1.0, gt=0, description="this task's weight in the summed loss (with label.tasks)")
    tasks: dict[str, TaskSpec] = Field(
        default_factory=dict, description="more labels per sample, task name -> its label (docs/training.md, "
                                          "\"Several tasks\"): one head, loss and metrics each (val.<task>.macro_f1)"
                                          "; the label above stays the primary task, which early stopping, the best "
                                          "checkpoint, tune.metric and the registry's holdout metric use")
    _norm = field_validator("extensions")(_lower_exts)
    _unique = field_validator("classes")(_unique_classes)

    @field_validator("name")
    @classmethod
    def _task_name(cls, v: str) -> str:
        return _valid_task_name(v)

    @model_validator(mode="after")
    def _tasks_apart(self) -> "LabelSpec":
        _ambiguous_format(self.format, self.classes, "label")
        if self.name in self.tasks:
            raise ValueError(f"task {self.name!r} is the primary task's name (label.name); name it otherwise")
        for name, task in self.tasks.items():
            _valid_task_name(name)
            _ambiguous_format(task.format, task.classes, f"label.tasks.{name}")
            if task.source == "cls":
                taken = {e: "label.extensions" for e in self.extensions if self.source == "cls"}
                for other, t in self.tasks.items():
                    if other != name and t.source == "cls":
                        taken.update({e: f"label.tasks.{other}.extensions" for e in t.extensions})
                both = sorted(set(task.extensions) & set(taken))
                if both:
                    raise ValueError(f"label.tasks.{name}.extensions {both} are also {taken[both[0]]}")
        return self

    def task_names(self) -> list[str]:
        """Every task's name, the primary first."""
        return [self.name, *self.tasks]


class CleanSpec(Strict):
    min_image_side: int = Field(8, ge=1, description="smaller images are dropped (image_too_small)")
    max_image_pixels: int = Field(25_000_000, ge=1, description="decompression-bomb guard, from the header "
                                                                "(image_too_large)")
    max_text_chars: int = Field(10_000, ge=1, description="longer texts are dropped (text_too_long)")
    min_audio_seconds: float = Field(0.05, ge=0, description="shorter clips are dropped (audio_too_short)")
    max_audio_seconds: float = Field(120.0, gt=0, description="longer clips are dropped (audio_too_long)")
    max_audio_channels: int = Field(8, ge=1, description="clips with more are dropped (audio_too_many_channels)")
    # Memory limits for untrusted shards (docs/untrusted-data.md). With these defaults one read task holds at most
    # a raw batch (max_batch_bytes) + a decoded chunk (max_decoded_batch_bytes) + one sample being decoded (under
    # 256 MiB) and its aligned output: about 1 GiB over the interpreter's own, within a 1.5 GiB budget per task.
    max_member_bytes: int = Field(64 << 20, ge=1, description="bytes of one tar member, stored or after gunzip "
                                                               "(member_too_large)")
    max_header_bytes: int = Field(1 << 20, ge=512, description="bytes of one pax or GNU long-name header; a "
                                                                "larger one makes the shard bad (header_too_large)")
    max_batch_bytes: int = Field(256 << 20, ge=1, description="member bytes per raw read batch (a batch ends early "
                                                               "rather than grow past it; nothing is dropped)")
    max_decoded_batch_bytes: int = Field(256 << 20, ge=1, description="decoded image/audio bytes held at once: "
                                         "a batch is cleaned and aligned in chunks of this (nothing is dropped); "
                                         "a single sample above it is dropped (image_too_large, audio_too_long)")
    silence_peak: float = Field(1e-4, ge=0, description="clips whose peak |x| is below are silent (audio_silent)")
    dedupe: bool = Field(True, description="drop exact duplicates (same content and label) within a split")
    cross_split_duplicates: Literal["report", "drop_from_train"] = Field(
        "report", description="samples of train whose content is also in another split: counted per split pair in "
                              "the data report, or also dropped from train (duplicate_of_eval)")
    on_bad_shard: Literal["skip", "fail"] = "skip"


class AlignSpec(Strict):
    image_resize: Literal["crop", "stretch", "pad"] = Field(
        "crop", description="crop: scale the short side then centre-crop; stretch: ignore aspect; pad: letterbox")
    audio_crop: Literal["start", "center"] = Field("start", description="which part of a long clip is kept")
    use_segments: bool = Field(True, description="crop audio to start/end or the first segment from the json meta")


# ---------------------------------------------------------------- later stages (start small, validated now)

class TransformSpec(Strict):
    name: str
    p: float = Field(0.5, ge=0, le=1)
    params: dict[str, Any] = Field(default_factory=dict)


class AugmentSpec(Strict):
    """Train split only. ``backend: cpu``: transform names are the libraries' class names (albumentations, nlpaug,
    audiomentations), e.g. HorizontalFlip, KeyboardAug, Gain. ``backend: device``: names of the batched torch ops
    in pipeline/model/augment.py (docs/device-augment.md), run in each training worker on its device."""
    enabled: bool = True
    seed: int = 0
    backend: Literal["cpu", "device"] = Field(
        "cpu", description="cpu: the libraries, in the data path's read tasks; device: torch ops on each training "
                           "worker's device (GPU or CPU), per-sample parameters, one kernel per batch")
    image: list[TransformSpec] = Field(default_factory=list)
    text: list[TransformSpec] = Field(default_factory=list)
    audio: list[TransformSpec] = Field(default_factory=list)

    def runs_on(self, backend: str) -> bool:
        """Whether augmentation runs at all, and on ``backend`` (cpu: the data path; device: the training loop)."""
        return self.enabled and self.backend == backend and bool(self.image or self.text or self.audio)


class RebalanceSpec(Strict):
    strategy: Literal["none", "oversample", "undersample", "sqrt", "target"] = "none"
    target: dict[str, float] | None = Field(None, description="class name -> proportion, for strategy=target")
    seed: int = 0
    task: str | None = Field(None, description="the task (label.name or a label.tasks name) whose classes are "
                                               "rebalanced; default: the primary task")

    @model_validator(mode="after")
    def _target_needs_proportions(self) -> "RebalanceSpec":
        if self.strategy == "target" and not self.target:
            raise ValueError("strategy 'target' needs rebalance.target proportions")
        if self.target and any(v < 0 for v in self.target.values()):
            raise ValueError("target proportions must be >= 0")
        return self


class SpecAugmentSpec(Strict):
    """SpecAugment in the audio encoder, while training only: bands of the per-clip normalised log-mel features
    (frames of 8 ms at 8 and 16 kHz; 40 mel bins) set to the clip's mean. Each band's width is uniform in 0..width,
    capped at the axis. Drawn from torch's RNG, which each training worker seeds with train.seed + its rank.
    0 masks: off (the default); docs/av-digits.md, "Unseen speakers", measures them."""
    time_masks: int = Field(0, ge=0, le=16, description="time bands per clip")
    time_width: int = Field(20, ge=0, description="most frames per time band")
    freq_masks: int = Field(0, ge=0, le=16, description="mel-bin bands per clip")
    freq_width: int = Field(8, ge=0, description="most mel bins per frequency band")


class VTLPSpec(Strict):
    """Vocal-tract-length perturbation (Jaitly & Hinton, 2013) in the audio encoder, while training only: each clip's
    power spectrum is stretched along the frequency axis by a factor drawn uniformly from [1 - warp, 1 + warp]
    (piecewise linear, so 0 Hz and the Nyquist frequency stay put) before the mel filters, as if a longer or shorter
    vocal tract had spoken. Drawn from torch's RNG like model.spec_augment. warp 0: off (the default)."""
    warp: float = Field(0.0, ge=0, le=0.4, description="largest relative stretch of the frequency axis per clip")
    boundary: float = Field(0.8, gt=0, lt=1, description="share of the Nyquist frequency stretched exactly by the "
                                                         "factor; above it the warp bends back to Nyquist")


class HFSpec(Strict):
    """Hugging Face transformers encoders (the mmpipe[hf] extra, docs/pretraining.md): per modality a local model
    folder as save_pretrained writes it (config.json, weights; the tokenizer for text, preprocessor_config.json for
    image and audio). Nothing is downloaded. Relative paths are resolved against the spec file's folder."""
    text: str | None = Field(None, description="text model folder (BERT-like): its tokenizer replaces "
                                               "modalities.text.tokenizer; modalities.text.max_tokens still applies")
    image: str | None = Field(None, description="image model folder (ViT-like): images resized and normalised "
                                                "as its preprocessor_config.json says (else ImageNet mean/std)")
    audio: str | None = Field(None, description="audio model folder (wav2vec2-like) for raw waveforms; its "
                                                "sampling rate must equal modalities.audio.sample_rate")

    def folders(self) -> dict[str, str]:
        """modality -> folder, for the modalities that have one."""
        return {m: getattr(self, m) for m in MODALITIES if getattr(self, m)}


class ModelSpec(Strict):
    fusion: str = Field("concat", description="a name in pipeline/model/fusion.py (FUSIONS, or a unimodal "
                                                "baseline: image_only, text_only, audio_only)")
    hidden: int = Field(64, ge=4)
    dropout: float = Field(0.1, ge=0, lt=1)
    modality_dropout: float = Field(0.0, ge=0, lt=1, description="hide each modality with this probability "
                                                                  "while training (never all of a sample's)")
    image_width: int = Field(16, ge=4, description="channels of the first image CNN stage")
    audio_width: int = Field(16, ge=4, description="channels of the first audio CNN stage")
    spec_augment: SpecAugmentSpec = Field(default_factory=SpecAugmentSpec,
                                          description="time/frequency masking of the audio encoder's features")
    vtlp: VTLPSpec = Field(default_factory=VTLPSpec, description="random per-clip frequency warp of the audio "
                                                                 "encoder's spectrum while training")
    audio_norm: Literal["clip", "band", "band_mean"] = Field(
        "clip", description="log-mel normalisation in the audio encoder: mean 0 / variance 1 over the whole clip, "
                            "per mel band over the clip's frames, or the per-band mean with one variance per clip")
    audio_band_batchnorm: bool = Field(
        False, description="after the per-clip normalisation, a BatchNorm over the mel bands (no weights): each "
                           "band to mean 0 / variance 1 over the training voices together (batch statistics while "
                           "training, running ones after); with model.adapt_batchnorm, over the scored set's")
    adapt_batchnorm: bool = Field(
        False, description="before scoring a data set (test evaluation, the workflow's evaluate step, mmpipe "
                           "predict), recompute every BatchNorm statistic on that set's own inputs (AdaBN, no "
                           "labels): for a set that is one new domain, e.g. one unseen speaker")
    text_encoder: Literal["transformer", "gru"] = "transformer"
    init_from: str | None = Field(None, description="start from these weights: a pretrain or train run folder "
                                                    "(pretrained.pt / best.pt), REGISTRY[:VERSION|@ALIAS], or a "
                                                    "checkpoint file; tensors whose shapes differ are listed")
    init_parts: list[Literal["encoders", "fusion"]] = Field(
        ["encoders"], description="what init_from loads: the encoders, and also the fusion and its head")
    freeze: dict[str, bool | int] = Field(
        default_factory=dict, description="modality -> true (frozen encoder: feature extraction) or a number of "
                                          "epochs after which it unfreezes (then fine-tuning)")
    pretrained_lr_scale: float = Field(1.0, gt=0, description="learning-rate multiplier for the weights "
                                                              "init_from loaded and those of model.hf models")
    hf: HFSpec = Field(default_factory=HFSpec, description="per modality, a local Hugging Face model folder "
                                                           "replacing the built-in encoder")
    _fusion = field_validator("fusion")(_registered("fusion"))

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "pretrained" in data:
            if data["pretrained"] is None:  # a spec dumped before the rename (checkpoints, registry versions)
                return {k: v for k, v in data.items() if k != "pretrained"}
            raise ValueError("model.pretrained is now model.init_from (a run folder, registry reference or "
                             "checkpoint file); rename the field")
        return data

    @field_validator("freeze")
    @classmethod
    def _freeze_modalities(cls, v: dict[str, bool | int]) -> dict[str, bool | int]:
        for modality, value in v.items():
            if modality not in MODALITIES:
                raise ValueError(f"freeze: {modality!r} is not a modality ({', '.join(MODALITIES)})")
            if not isinstance(value, bool) and value < 1:
                raise ValueError(f"freeze.{modality}: true, false or a number of epochs >= 1 (got {value})")
        return v

    def frozen_epochs(self) -> dict[str, float]:
        """modality -> epochs its encoder stays frozen (inf: for good); unfrozen modalities are left out."""
        return {m: float("inf") if v is True else float(v) for m, v in self.freeze.items() if v is not False}


METRIC_NAMES = ("loss", "accuracy", "balanced_accuracy", "macro_f1", "auc")


def _metric_name(v: str) -> str:
    split, _, name = v.partition(".")
    if split in ("train", "val") and name.partition(".")[2] in METRIC_NAMES:  # val.speaker.macro_f1
        raise ValueError("the primary task's metrics decide (val.<name>); a further task's (label.tasks) cannot: "
                         "make that task the primary one (the label section) to select by it")
    if split not in ("train", "val") or name not in METRIC_NAMES:
        raise ValueError(f"must be train.<name> or val.<name> with name one of {', '.join(METRIC_NAMES)}")
    return v


class TrainSpec(Strict):
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: str = Field("adamw", description="a name in pipeline/train/optim.py OPTIMIZERS")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    warmup_epochs: float = Field(0.0, ge=0, description="lr rises linearly over this many epochs (step k of W "
                                                         "warm-up steps uses lr*k/W), then decays to 0 on a cosine")
    grad_clip: float | None = Field(None, gt=0, description="clip the global L2 norm of the gradients to this")
    loss: str = Field("ce", description="a name in pipeline/model/losses.py LOSSES")
    class_balanced_beta: float | None = Field(
        0.999, ge=0, lt=1, description="effective-number class weights for weighted_ce (which needs it) and "
                                       "focal (null: focal without class weights)")
    focal_gamma: float = Field(2.0, ge=0, description="focal loss focusing parameter")
    logit_tau: float = Field(1.0, ge=0, description="logit adjustment strength (x log class prior)")
    early_stopping_metric: str = "val.macro_f1"
    early_stopping_patience: int | None = Field(None, ge=1)
    label_fraction: float | None = Field(None, gt=0, le=1, description="keep the labels of this seeded, "
                                         "class-stratified fraction of the train split (by key); the rest train "
                                         "unlabelled (label -1: no supervised loss). null: every label")
    prefetch_batches: int = Field(2, ge=0, description="batches each training worker prepares ahead of the step "
                                  "(collated and copied to its device in a background thread; pinned memory on CUDA)")
    compile: bool = Field(False, description="torch.compile the model for training (inductor: a C++ compiler on CPU, "
                                             "Triton on GPU); the first steps pay the compile time")
    _metric = field_validator("early_stopping_metric")(_metric_name)
    _optimizer = field_validator("optimizer")(_registered("optimizer"))
    _loss = field_validator("loss")(_registered("loss"))
    seed: int = 0

    @model_validator(mode="after")
    def _weighted_ce_has_beta(self) -> "TrainSpec":
        if self.loss == "weighted_ce" and self.class_balanced_beta is None:
            raise ValueError("train.loss=weighted_ce weighs classes by train.class_balanced_beta, which is null; "
                             "set it (e.g. 0.999) or use train.loss=ce")
        return self


class PretrainSpec(Strict):
    """Self-supervised pretraining (``mmpipe pretrain``, the workflow's pretrain step): cross-modal contrastive
    alignment of the encoders on the train split, labels ignored. Batch size, optimizer, weight decay, warm-up,
    gradient clipping and seed are the train section's."""
    epochs: int = Field(10, ge=1)
    lr: float = Field(1e-3, gt=0)
    temperature: float = Field(0.1, gt=0, description="initial softmax temperature of the InfoNCE logits")
    learn_temperature: bool = Field(True, description="learn the temperature (CLIP), clamped to >= 0.01")
    projection_dim: int = Field(64, ge=2, description="size of the projection heads' embeddings")
    view_weight: float = Field(1.0, ge=0, description="weight of the two-view loss of single-modality samples")


class ScalingSpec(Strict):
    num_workers: int = Field(2, ge=1)
    cpus_per_worker: float = Field(0.5, gt=0, description="fractional on small machines so Ray Data keeps a CPU")
    use_gpu: bool = False
    gpus_per_worker: float = Field(1.0, gt=0, le=1, description="with use_gpu: the share of one GPU each worker "
                                   "takes; below 1, tune trials of small models share a GPU (one worker each: "
                                   "NCCL cannot run two ranks of one training on one GPU)")
    max_failures: int = Field(1, ge=-1)
    data_cpus: int = Field(1, ge=1, description="CPUs reserved for the run's (each trial's) data read tasks, "
                                                "which take one CPU each: training never waits on CPUs held by "
                                                "others (pipeline/resources.py)")
    stall_timeout_s: float = Field(300.0, gt=0, description="a long command that makes no progress (rows read, "
                                                             "steps, trials) this long stops with a diagnostic")


class TuneSpec(Strict):
    """Ray Tune search; see pipeline/tune/space.py for the search_space format."""
    num_samples: int = Field(4, ge=1, description="samples of the space (each grid combination this many times)")
    metric: str = "val.macro_f1"
    mode: Literal["max", "min"] = "max"
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1, description="ASHA: epochs before a trial may be stopped")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA: keep 1/reduction_factor at each rung")
    search_alg: Literal["random", "optuna"] = "random"
    max_concurrent_trials: int | None = Field(None, ge=1, description="default: as many as the cluster can feed "
                                                                      "(workers and data CPUs of each)")
    max_failures: int = Field(1, ge=0, description="retries of a failed trial")
    search_space: dict[str, Any] = Field(default_factory=dict)
    _metric = field_validator("metric")(_metric_name)


class ScheduleSpec(Strict):
    cron: str | None = None
    timezone: str = "UTC"


# ---------------------------------------------------------------- workflows, registry, prediction, submission

STEPS = ("validate-data", "pretrain", "tune", "train", "evaluate", "register", "promote", "predict")


class WorkflowSpec(Strict):
    """What ``mmpipe run`` does, in this order. Default: validate-data, train, evaluate, plus register and promote
    when registry.uri is set."""
    steps: list[Literal[STEPS]] | None = None  # type: ignore[valid-type]
    run_dir: str | None = Field(None, description="local folder or fsspec URI; default runs/<name>. Relative "
                                                  "paths are resolved against the spec file's folder")

    @field_validator("steps")
    @classmethod
    def _ordered_once(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("lists no steps")
        if len(set(v)) != len(v):
            raise ValueError(f"a step is listed twice: {v}")
        if v != sorted(v, key=STEPS.index):
            raise ValueError(f"steps run in the order {', '.join(STEPS)}; got {', '.join(v)}")
        return v


class RegistrySpec(Strict):
    """Where trained models are versioned, and when a new one replaces the champion."""
    uri: str | None = Field(None, description="local folder or fsspec URI of the registry (one model line)")
    holdout: str = Field("test", description="the split both challenger and champion are scored on")
    metric: Literal[METRIC_NAMES] = Field("macro_f1", description="holdout metric that decides promotion")  # type: ignore[valid-type]
    min_improvement: float = Field(0.0, ge=0, description="promote only when the challenger beats the champion "
                                                          "by more than this")


class PredictSpec(Strict):
    """Batch inference (``mmpipe predict`` and the workflow's predict step)."""
    model: str | None = Field(None, description="REGISTRY[:VERSION|@ALIAS], e.g. runs/registry@champion")
    shards: list[str] = Field(default_factory=list, description="shard paths, globs or URIs to predict")
    out: str | None = Field(None, description="output .parquet file")
    batch_size: int = Field(256, ge=1)
    actors: int = Field(1, ge=1, description="model replicas (Ray Data actor pool), each loads the model once")
    use_gpu: bool = False

    @field_validator("shards", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class TrackingSpec(Strict):
    """Experiment tracking beyond the run directory (TensorBoard event files are always written there)."""
    mlflow_uri: str | None = Field(None, description="MLflow tracking URI (file:/path, http://host:5000, ...); "
                                                     "null: MLFLOW_TRACKING_URI when set, else no MLflow")
    mlflow_experiment: str | None = Field(None, description="MLflow experiment name (default: the spec's name)")


class SubmitSpec(Strict):
    """How ``mmpipe submit`` runs this spec on a Ray cluster."""
    address: str | None = Field(None, description="dashboard URL, e.g. http://127.0.0.1:8265 (or RAY_ADDRESS)")
    entrypoint_num_cpus: float = Field(0.0, ge=0, description="CPUs held by the driver (it mostly waits)")
    entrypoint_num_gpus: float = Field(0.0, ge=0)
    entrypoint_memory_mb: int | None = Field(None, ge=1)
    env_vars: dict[str, str] = Field(default_factory=dict, description="set in the job (never put secrets here: "
                                                                       "job metadata is visible to dashboard users)")
    excludes: list[str] = Field(default_factory=list, description="more paths left out of the uploaded code")


class JobSpec(Strict):
    name: str = "mmpipe"
    seed: int = 0
    data: DataSpec = Field(default_factory=DataSpec)
    modalities: ModalitiesSpec = Field(default_factory=ModalitiesSpec)
    label: LabelSpec = Field(default_factory=LabelSpec)
    clean: CleanSpec = Field(default_factory=CleanSpec)
    align: AlignSpec = Field(default_factory=AlignSpec)
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    rebalance: RebalanceSpec = Field(default_factory=RebalanceSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    pretrain: PretrainSpec = Field(default_factory=PretrainSpec)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    tune: TuneSpec = Field(default_factory=TuneSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    workflow: WorkflowSpec = Field(default_factory=WorkflowSpec)
    registry: RegistrySpec = Field(default_factory=RegistrySpec)
    predict: PredictSpec = Field(default_factory=PredictSpec)
    submit: SubmitSpec = Field(default_factory=SubmitSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)

    def steps(self) -> list[str]:
        """The workflow's steps, defaults filled in."""
        if self.workflow.steps is not None:
            return list(self.workflow.steps)
        return ["validate-data", "train", "evaluate"] + (["register", "promote"] if self.registry.uri else [])

    @model_validator(mode="after")
    def _steps_have_what_they_need(self) -> "JobSpec":
        steps = self.steps()
        needs = {"tune": (self.tune.search_space, "tune.search_space"),
                 "register": (self.registry.uri, "registry.uri"), "promote": (self.registry.uri, "registry.uri"),
                 "predict": (self.predict.model and self.predict.shards and self.predict.out,
                             "predict.model, predict.shards and predict.out")}
        for step, (have, what) in needs.items():
            if step in steps and not have:
                raise ValueError(f"workflow step {step!r} needs {what}")
        for later, earlier in (("evaluate", "train"), ("register", "evaluate"), ("promote", "register")):
            if later in steps and earlier not in steps:
                raise ValueError(f"workflow step {later!r} needs step {earlier!r} before it")
        return self

    @model_validator(mode="after")
    def _label_members_not_claimed(self) -> "JobSpec":
        owners = [("label", self.label.extensions)] if self.label.source == "cls" else []
        owners += [(f"label.tasks.{n}", t.extensions) for n, t in self.label.tasks.items() if t.source == "cls"]
        for what, extensions in owners:
            for role in [*self.modalities.enabled(), *(["meta"] if what != "label" else [])]:
                claimed = (self.modalities.meta_extensions if role == "meta" else
                           getattr(self.modalities, role).extensions)
                both = set(extensions) & set(claimed)
                if both:
                    raise ValueError(f"{what} extensions {sorted(both)} are also {role} extensions")
        return self

    @model_validator(mode="after")
    def _rebalance_task_known(self) -> "JobSpec":
        task = self.rebalance.task
        if task is not None and task not in self.label.task_names():
            raise ValueError(f"rebalance.task: {unknown_name('task', task, self.label.task_names())}")
        t = self.train
        counted = t.loss in ("weighted_ce", "logit_adjusted") or \
            (t.loss == "focal" and t.class_balanced_beta is not None)
        # the class counts training sees are the rebalanced task's (also with strategy none)
        if task not in (None, self.label.name) and counted:
            raise ValueError(f"train.loss={t.loss} weighs the primary task's classes by their counts after "
                             f"rebalancing, which rebalance.task={task} does not give; use train.loss=ce (or focal "
                             "with train.class_balanced_beta: null), or rebalance the primary task")
        return self


# ---------------------------------------------------------------- loading

def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value); the value is read as YAML so 3, true and [x, y] get their types."""
    if "=" not in text:
        raise SpecError(f"--set {text!r}: expected KEY=VALUE, e.g. train.lr=0.01")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise SpecError(f"--set {text!r}: empty part in key {key!r}")
    if not raw.strip():
        return parts, ""
    try:
        return parts, yaml.safe_load(raw)
    except yaml.YAMLError:
        return parts, raw  # not YAML (a glob such as *.tar, a brace pattern): the plain string


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for i, part in enumerate(parts[:-1]):
            if part in node and node[part] is None:
                raise SpecError(f"--set {text!r}: {'.'.join(parts[:i + 1])} is null (switched off); "
                                f"switch it on first with --set {'.'.join(parts[:i + 1])}={{}}")
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SpecError(f"--set {text!r}: {'.'.join(parts[:i + 1])} is a {type(child).__name__}, "
                                "not a section")
            node = child
        node[parts[-1]] = value
    return raw


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the field at ``loc`` (to suggest close names for unknown keys)."""
    model: Any = JobSpec
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model


def format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: {err.error_count()} problem(s) in the job spec:"]
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        path = ".".join(str(p) for p in loc) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            owner = _model_at(loc)
            close = difflib.get_close_matches(str(loc[-1]), list(owner.model_fields), n=3) if owner else []
            msg = "unknown field" + (f" (did you mean {', '.join(close)}?)" if close else "")
        elif e["type"] != "missing" and "input" in e:
            msg += f" (got {e['input']!r:.60})"
        lines.append(f"  - {path}: {msg}")
    return "\n".join(lines)


def _resolve_local_paths(spec: JobSpec, base: Path) -> JobSpec:
    def resolve(p: str) -> str:
        if "://" in p or Path(p).is_absolute():
            return p
        return str(base / p)

    spec.data.splits = {k: [resolve(p) for p in v] for k, v in spec.data.splits.items()}
    if spec.data.manifest:
        spec.data.manifest = resolve(spec.data.manifest)
    for section, name in (("workflow", "run_dir"), ("registry", "uri"), ("predict", "out")):
        value = getattr(getattr(spec, section), name)
        if value:
            setattr(getattr(spec, section), name, resolve(value))
    spec.predict.shards = [resolve(p) for p in spec.predict.shards]
    for modality, folder in spec.model.hf.folders().items():
        setattr(spec.model.hf, modality, resolve(folder))
    if spec.predict.model:
        spec.predict.model = resolve(spec.predict.model)
    return spec


def _validated(raw: dict[str, Any], source: str, registries: dict[str, Any] | None = None) -> JobSpec:
    """``registries`` ({kind: names}) adds the registry checks of fields such as model.fusion."""
    try:
        return JobSpec.model_validate(raw, context=registries)
    except ValidationError as err:
        raise SpecError(format_errors(err, source)) from None


def spec_from_dict(raw: dict[str, Any], source: str = "<spec>", base: Path | None = None) -> JobSpec:
    """The schema alone: types, ranges, field relations. Checks that need the transforms, the search space or the
    model's registries run one floor up (``pipeline.spec_checks``)."""
    return _resolve_local_paths(_validated(raw, source), base or Path.cwd())


def read_spec_file(path: str | Path, overrides: list[str] | None = None) -> tuple[dict[str, Any], str, Path]:
    """(raw mapping with overrides applied, source name, folder relative paths are resolved against)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(f"{path}: cannot read job spec ({e.strerror or e})") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a job spec is a mapping of sections, got {type(raw).__name__}")
    return apply_overrides(raw, overrides or []), str(path), path.resolve().parent


def spec_warnings(spec: JobSpec) -> list[str]:
    """Legal but probably unintended combinations, to print before work starts."""
    out = []
    if spec.rebalance.strategy != "none" and spec.train.loss in ("weighted_ce", "focal") and \
            (spec.train.loss == "weighted_ce" or spec.train.class_balanced_beta is not None):
        out.append(f"rebalance.strategy={spec.rebalance.strategy} resamples classes and train.loss={spec.train.loss} "
                   "reweights them too: minority classes are boosted twice. Use one of the two, or "
                   "train.loss=logit_adjusted (which uses the class prior after sampling).")
    random = [m for m in spec.model.frozen_epochs() if m not in spec.model.hf.folders()]
    if random and not spec.model.init_from and "pretrain" not in spec.steps():
        out.append(f"model.freeze={spec.model.freeze} freezes randomly initialised encoders ({', '.join(random)}): "
                   "set model.init_from (or a pretrain step, or model.hf) to freeze pretrained ones")
    return out


def load_spec(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Read, override and validate a YAML job spec against the schema. Raises SpecError naming the file and every
    bad field. Entry points use ``pipeline.spec_checks.load_job``, which adds the cross-checks."""
    raw, source, base = read_spec_file(path, overrides)
    return spec_from_dict(raw, source, base)


def dump_spec(spec: JobSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False, allow_unicode=True)

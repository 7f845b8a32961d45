"""augment_batch: the train-split augmentation stage over whole batches.

In:  aligned batch (``image`` uint8 (B,H,W,3), ``text_raw`` str, ``audio`` float32 (B,N), ``present_*``, ``__key__``,
     optional ``copy`` from rebalancing).
Out: the same columns and shapes; augmented where the modality is present. Text is augmented as a string; the
     tokenize stage after this one makes its ids (token ids of the text before augmentation, if the batch has
     them, are dropped: they would be stale). Every row's randomness comes from (augment.seed, epoch, key, copy):
     reruns reproduce, epochs and oversampled copies differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np

from pipeline.data.stages.augment import audio as audio_aug
from pipeline.data.stages.augment import image as image_aug
from pipeline.data.stages.augment import text as text_aug
from pipeline.data.stages.augment.build import TransformError
from pipeline.data.stages.seeds import globals_restored, row_ids, row_seeds
from pipeline.spec import AugmentSpec, JobSpec, ModalitiesSpec


@dataclass(frozen=True)
class Augmenters:
    image: Callable | None
    text: Callable | None
    audio: Callable | None

    @property
    def active(self) -> bool:
        return any((self.image, self.text, self.audio))


def build_augmenters(augment: AugmentSpec, modalities: ModalitiesSpec) -> Augmenters:
    if not augment.enabled:
        return Augmenters(None, None, None)
    return Augmenters(
        image_aug.build(augment.image, modalities.image.size) if augment.image and modalities.image else None,
        text_aug.build(augment.text) if augment.text and modalities.text else None,
        audio_aug.build(augment.audio, modalities.audio.sample_rate) if augment.audio and modalities.audio else None,
    )


@lru_cache(maxsize=8)
def _cached(augment_json: str, modalities_json: str) -> Augmenters:
    # Built once per worker process: the libraries are slow to import and transforms slow to construct.
    return build_augmenters(AugmentSpec.model_validate_json(augment_json),
                            ModalitiesSpec.model_validate_json(modalities_json))


def augment_batch(batch: dict[str, np.ndarray], augment: AugmentSpec, modalities: ModalitiesSpec, epoch: int
                  ) -> dict[str, np.ndarray]:
    aug = _cached(augment.model_dump_json(), modalities.model_dump_json())
    if not aug.active:
        return batch
    ids = row_ids(batch)
    copies = batch["copy"] if "copy" in batch else np.zeros(len(ids), dtype=np.int64)
    seeds = row_seeds(ids, copies, augment.seed, epoch, "augment")
    out = dict(batch)
    if aug.image:
        images = batch["image"].copy()
        for i in np.flatnonzero(batch["present_image"]):
            images[i] = aug.image(images[i], seeds[i])
        out["image"] = images
    with globals_restored():  # the audio and text libraries draw from the global generators, reseeded per row
        if aug.audio:
            audio = batch["audio"].copy()
            for i in np.flatnonzero(batch["present_audio"]):
                audio[i] = aug.audio(audio[i], seeds[i] ^ np.uint64(0xA5A5))
            out["audio"] = audio
        if aug.text:
            texts = list(batch["text_raw"])
            for i in np.flatnonzero(batch["present_text"]):
                texts[i] = aug.text(texts[i], seeds[i] ^ np.uint64(0x5A5A))
            out["text_raw"] = np.array(texts, dtype=object)
            out.pop("text", None)
    return out


def check_transforms(spec: JobSpec) -> list[tuple[str, str]]:
    """(field path, problem) for every transform that cannot be built or breaks the aligned shapes."""
    problems = []
    mods = spec.modalities
    for role, specs in (("image", spec.augment.image), ("text", spec.augment.text), ("audio", spec.augment.audio)):
        if specs and getattr(mods, role) is None:
            problems.append((f"augment.{role}", f"{role} transforms listed but modalities.{role} is disabled"))
            continue
        for i, t in enumerate(specs):
            try:
                if role == "image":
                    image_aug.check([t], mods.image.size)
                elif role == "text":
                    text_aug.check([t])
                else:
                    audio_aug.check([t], mods.audio.sample_rate, mods.audio.num_samples)
            except TransformError as e:
                problems.append((f"augment.{role}.{i}", f"{t.name}: {e}" if t.name not in str(e) else str(e)))
    return problems

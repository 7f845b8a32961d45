"""Augmentation per modality (albumentations, nlpaug, audiomentations), seeded per (seed, epoch, key, copy).

Each family module exposes ``build(specs, ...)`` returning a callable ``(value, seed) -> value`` and the names it
accepts; ``pipeline.data.stages.augment.stage`` applies them to whole batches of the train split.
"""

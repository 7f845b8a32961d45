"""Audio augmentation with audiomentations on aligned mono float32 waveforms at the aligned sample rate.

Transforms that change the length (time stretch without leave_length_unchanged, padding) are cropped or padded
back to the aligned length.
"""

from __future__ import annotations

import numpy as np

from pipeline.data.stages.augment.build import TransformError, construct, lookup
from pipeline.data.stages.seeds import globals_restored, seed_globals


def _is_transform(obj) -> bool:
    from audiomentations.core.transforms_interface import BaseWaveformTransform

    return isinstance(obj, type) and issubclass(obj, BaseWaveformTransform)


def build(specs, sample_rate: int):
    import audiomentations as AM

    transforms = [construct(lookup(s.name, vars(AM), _is_transform, "audiomentations"), {**s.params, "p": s.p})
                  for s in specs]
    compose = AM.Compose(transforms)

    def apply(wave: np.ndarray, seed: int) -> np.ndarray:
        """Reseeds the global generators: call it inside ``seeds.globals_restored()``."""
        seed_globals(int(seed))
        out = compose(samples=wave, sample_rate=sample_rate)
        out = np.asarray(out, dtype=np.float32).reshape(-1)
        if len(out) >= len(wave):
            return out[: len(wave)]
        return np.pad(out, (0, len(wave) - len(out)))

    return apply


def check(specs, sample_rate: int, num_samples: int) -> None:
    forced = [s.model_copy(update={"p": 1.0}) for s in specs]
    apply = build(forced, sample_rate)
    wave = (0.3 * np.sin(np.arange(num_samples) * 2 * np.pi * 440 / sample_rate)).astype(np.float32)
    try:
        with globals_restored():
            out = apply(wave, 0)
    except Exception as e:
        raise TransformError(f"failed on a {num_samples}-sample clip at {sample_rate} Hz: "
                             f"{str(e).splitlines()[0][:300]}") from None
    if not np.isfinite(out).all():
        raise TransformError("produces NaN or infinite samples")

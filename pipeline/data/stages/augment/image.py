"""Image augmentation with albumentations on aligned uint8 (H, W, 3) arrays; shapes and dtype are kept."""

from __future__ import annotations

import inspect
import os

import numpy as np

from pipeline.data.stages.augment.build import TransformError, construct, lookup


# albumentations checks PyPI for a newer version on import (up to 2 s, in every worker process) unless told not to.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def _is_transform(obj) -> bool:
    import albumentations as A

    return isinstance(obj, type) and issubclass(obj, A.BasicTransform) and not issubclass(obj, A.BaseCompose)


def build(specs, size: tuple[int, int]):
    """A callable ``(image, seed) -> image`` applying the listed transforms, each with its probability."""
    import albumentations as A

    transforms = []
    for spec in specs:
        cls = lookup(spec.name, vars(A), _is_transform, "albumentations")
        params = dict(spec.params)
        # Crops that take an output size default to the aligned size, so the shape never changes.
        size_param = inspect.signature(cls.__init__).parameters.get("size")
        if size_param is not None and size_param.default is inspect.Parameter.empty and "size" not in params:
            params["size"] = tuple(size)
        transforms.append(construct(cls, {**params, "p": spec.p}))
    compose = A.Compose(transforms, seed=0)

    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        compose.set_random_seed(int(seed) & 0xFFFFFFFF)
        return compose(image=image)["image"]

    return apply


def check(specs, size: tuple[int, int]) -> None:
    """Build and run once with every transform forced on, on an image of the aligned shape."""
    forced = [s.model_copy(update={"p": 1.0}) for s in specs]
    apply = build(forced, size)
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    try:
        out = apply(image, 0)
    except Exception as e:
        raise TransformError(f"failed on a {size[0]}x{size[1]} image: {str(e).splitlines()[0][:300]}") from None
    if out.shape != image.shape or out.dtype != np.uint8:
        raise TransformError(f"changes the aligned image from {image.shape} uint8 to {out.shape} {out.dtype}; "
                             "use transforms that keep the size (crops default to it)")

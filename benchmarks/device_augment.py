"""Image augmentation throughput: the device backend (pipeline/model/augment.py, batched torch + kornia) against
albumentations as the CPU stage runs it (one image at a time, seeded per row), the same transforms and
probabilities, one core each; and the device backend on a CUDA GPU when there is one (images/s, batches already on
the GPU, synchronised). Rounds alternate the backends; the best round of each is kept.

    python benchmarks/device_augment.py [--size 224] [--batch 64] [--batches 4] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core: per-core figures
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.bench_common import machine_line, quiet_line  # noqa: E402
from pipeline.data.stages.augment import image as image_aug  # noqa: E402
from pipeline.data.stages.augment.device_seeds import SEED_COLUMN, seed_batch  # noqa: E402
from pipeline.model.augment import DeviceAugment  # noqa: E402
from pipeline.spec import AugmentSpec, spec_from_dict  # noqa: E402

# Names both backends accept (docs/device-augment.md), with the same parameters.
TRANSFORMS = [
    {"name": "HorizontalFlip", "p": 0.5},
    {"name": "RandomResizedCrop", "p": 0.5, "params": {"scale": [0.6, 1.0]}},
    {"name": "Affine", "p": 0.5, "params": {"rotate": [-15, 15], "scale": [0.9, 1.1]}},
    {"name": "ColorJitter", "p": 0.5},
    {"name": "ToGray", "p": 0.1},
    {"name": "GaussianBlur", "p": 0.3, "params": {"blur_limit": [3, 7], "sigma_limit": [0.5, 2.0]}},
]


def batches(n: int, size: int, count: int) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for b in range(count):
        keys = np.array([f"b{b}-{i}" for i in range(n)], dtype=object)
        out.append({"image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                    "present_image": np.ones(n, dtype=bool),
                    SEED_COLUMN: seed_batch({"__key__": keys}, AugmentSpec(), epoch=0)[SEED_COLUMN]})
    return out


def albumentations_per_s(spec, data: list[dict]) -> float:
    apply = image_aug.build(spec.augment.image, spec.modalities.image.size)
    start = time.perf_counter()
    for batch in data:
        for image, seed in zip(batch["image"], batch[SEED_COLUMN].view(np.uint64)):
            apply(image, seed)
    return sum(len(b["image"]) for b in data) / (time.perf_counter() - start)


def device_per_s(spec, data: list[dict], device: str) -> float:
    augment = DeviceAugment(spec.augment, spec.modalities, ["image"])
    on_device = [{k: torch.as_tensor(v).to(device) for k, v in b.items()} for b in data]
    augment(on_device[0])  # warm-up (kernels, caches)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in on_device:
        augment(batch)
    if device == "cuda":
        torch.cuda.synchronize()
    return sum(len(b["image"]) for b in data) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=224, help="aligned image side")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="64 px, 2 batches of 16, 1 round (a smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.size, args.batch, args.batches, args.rounds = 64, 16, 2, 1
    torch.set_num_threads(1)
    spec = spec_from_dict({"modalities": {"image": {"size": [args.size, args.size]}},
                           "augment": {"backend": "device", "image": TRANSFORMS}})
    data = batches(args.batch, args.size, args.batches)
    print(machine_line(1))
    print(quiet_line())
    print("transforms: " + ", ".join(f"{t['name']}(p={t['p']})" for t in TRANSFORMS))
    albumentations_per_s(spec, data[:1])  # warm-up (imports, construction)
    best = {"albumentations": 0.0, "device (CPU)": 0.0}
    for _ in range(args.rounds):
        best["albumentations"] = max(best["albumentations"], albumentations_per_s(spec, data))
        best["device (CPU)"] = max(best["device (CPU)"], device_per_s(spec, data, "cpu"))
    print(f"{args.size}x{args.size}, batches of {args.batch}, 1 core: albumentations {best['albumentations']:.0f} "
          f"images/s | device backend on CPU {best['device (CPU)']:.0f} images/s | ratio device/albumentations "
          f"{best['device (CPU)'] / best['albumentations']:.2f}x")
    if torch.cuda.is_available():
        gpu = max(device_per_s(spec, data, "cuda") for _ in range(args.rounds))
        print(f"device backend on {torch.cuda.get_device_name()}: {gpu:.0f} images/s "
              f"({gpu / best['albumentations']:.1f}x one CPU core of albumentations)")
    else:
        print("no CUDA GPU: the GPU figure needs a machine with one")


if __name__ == "__main__":
    main()

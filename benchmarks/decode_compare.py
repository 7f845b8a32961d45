"""Image decode alone, one core: mmpipe's decode path (decode_image with the aligned size as target, then align's
resize) against OpenCV's full decode + resize, side by side in one run, on photo-like JPEGs of 683x512 and
1024x768 to 224x224. Rounds alternate the decoders (A B A B ...); the best round of each is kept (the least
disturbed by other processes) and the ratio printed. Also the mean absolute difference, in 0-255 levels, between
mmpipe's 224x224 output and the same resize of a full-size decode (what reduced-scale decoding changes).

    python benchmarks/decode_compare.py [--rounds 5] [--images 40] [--quick]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core: per-core figures
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.bench_common import machine_line, quiet_line  # noqa: E402
from benchmarks.realistic_shards import photo  # noqa: E402
from pipeline.data.stages.align import resize_image  # noqa: E402
from pipeline.data.stages.decode import decode_image, jpeg_scale  # noqa: E402

TARGET = (224, 224)
SIZES = ((683, 512), (1024, 768))
MIN_SIDE, MAX_PIXELS = 32, 89_478_485  # the clean section's defaults' order of magnitude; no image comes near


def mmpipe(data: bytes) -> np.ndarray:
    rgb = decode_image(data, MIN_SIDE, MAX_PIXELS, draft_size=(TARGET[1], TARGET[0]))
    return resize_image(rgb, TARGET, "crop")


def opencv_full(data: bytes) -> np.ndarray:
    """Full-size decode, then the same crop as align's (short side to 224, centre) with INTER_AREA."""
    rgb = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return cv2.resize(rgb[top:top + side, left:left + side], TARGET[::-1], interpolation=cv2.INTER_AREA)


def per_second(fn, images: list[bytes]) -> float:
    start = time.perf_counter()
    for data in images:
        fn(data)
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--images", type=int, default=40, help="distinct JPEGs per size")
    ap.add_argument("--quick", action="store_true", help="2 rounds of 10 images (a smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.images = 2, 10
    cv2.setNumThreads(1)
    print(machine_line(1))
    print(quiet_line())
    for w, h in SIZES:
        images = [photo(w, h, np.random.default_rng(seed)) for seed in range(args.images)]
        kb = np.mean([len(d) for d in images]) / 1024
        best = {"mmpipe": 0.0, "opencv full": 0.0}
        for fn in (mmpipe, opencv_full):
            fn(images[0])  # warm-up
        for _ in range(args.rounds):
            best["mmpipe"] = max(best["mmpipe"], per_second(mmpipe, images))
            best["opencv full"] = max(best["opencv full"], per_second(opencv_full, images))
        diff = np.mean([np.abs(mmpipe(d).astype(int) - resize_image(
            np.asarray(Image.open(io.BytesIO(d)).convert("RGB")), TARGET, "crop").astype(int)).mean()
            for d in images])
        scale = jpeg_scale((w, h), (TARGET[1], TARGET[0]))
        print(f"{w}x{h} ({kb:.0f} KB) -> {TARGET[1]}x{TARGET[0]}: mmpipe {best['mmpipe']:.0f}/s (decoded at 1/{scale}) "
              f"| opencv full decode + resize {best['opencv full']:.0f}/s "
              f"| ratio mmpipe/opencv {best['mmpipe'] / best['opencv full']:.2f}x "
              f"| mean abs diff vs full-size decode {diff:.2f} levels")


if __name__ == "__main__":
    main()

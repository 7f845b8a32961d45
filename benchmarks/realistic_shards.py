"""Realistic-sized multimodal shards for the feeding benchmarks: photo-like JPEGs (quality 90, a source size of the
caller's choice), 1 s 16 kHz PCM-16 WAVs and one short sentence per sample (some in Chinese), 8 balanced classes,
written with mmpipe's ShardWriter (WebDataset tars + manifest.json) and a spec.yaml that aligns to 224x224 and
16 kHz x 1 s and augments all three modalities like the hand-written loader in feeding_compare.py.

Shards are cached under $TMPDIR/mmpipe-bench-realistic/<size>-<samples> (writing 683x512 photos takes ~1 min).
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from pipeline.data.tools.shardwriter import Sample, ShardWriter
from pipeline.io import atomic_write_text

CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven"]
SAMPLE_RATE, SECONDS, TARGET = 16_000, 1.0, 224
WORDS = ["river", "mountain", "meadow", "forest", "ocean", "desert", "valley", "glacier", "城市", "山脉", "河流"]

# What both loaders apply (names and probabilities shared, so both sides do the same work per sample).
IMAGE_AUG = [("RandomResizedCrop", 1.0, {}), ("HorizontalFlip", 0.5, {}), ("ColorJitter", 0.5, {})]
AUDIO_AUG = [("AddGaussianNoise", 0.5, {"max_amplitude": 0.02}), ("Gain", 0.5, {}), ("Shift", 0.5, {})]
TEXT_AUG = [("RandomCharAug", 0.5, {"action": "swap"})]
MAX_TOKENS = 32


def photo(w: int, h: int, rng: np.random.Generator) -> bytes:
    """A photo-like JPEG at quality 90: smooth colour fields, an edge and sensor-like noise (~120 KB at 683x512)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    f = rng.uniform(20, 80, 6)
    rgb = np.stack([128 + 100 * np.sin(x / f[0] + y / f[1]), 128 + 90 * np.cos(x / f[2] - y / f[3]),
                    128 + 80 * np.sin((x + y) / f[4]) * (y > h * rng.uniform(0.3, 0.7))], -1)
    rgb += rng.normal(0, 10, rgb.shape).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def clip(cls: int, rng: np.random.Generator) -> bytes:
    t = np.arange(int(SAMPLE_RATE * SECONDS)) / SAMPLE_RATE
    wave = 0.3 * np.sin(2 * np.pi * (200 + 60 * cls) * t) + 0.05 * rng.normal(size=t.shape)
    buf = io.BytesIO()
    sf.write(buf, wave.astype(np.float32), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def sentence(cls: int, rng: np.random.Generator) -> str:
    words = rng.choice(WORDS, size=int(rng.integers(4, 10)))
    return f"{CLASSES[cls]} " + " ".join(words)


def spec_yaml(image_size: int = TARGET) -> str:
    def transforms(items) -> str:
        return "[" + ", ".join(f"{{name: {n}, p: {p}" + (f", params: {params}" if params else "") + "}"
                               for n, p, params in items) + "]"

    return f"""\
name: realistic-feeding
data:
  splits:
    train: train/*.tar
modalities:
  image: {{required: true, size: [{image_size}, {image_size}]}}
  text: {{required: false, max_tokens: {MAX_TOKENS}}}
  audio: {{required: false, sample_rate: {SAMPLE_RATE}, seconds: {SECONDS}}}
label:
  source: cls
  classes: {CLASSES}
augment:
  image: {transforms(IMAGE_AUG)}
  audio: {transforms(AUDIO_AUG)}
  text: {transforms(TEXT_AUG)}
"""


def realistic_shards(width: int, height: int, samples: int, per_shard: int = 128, seed: int = 0) -> Path:
    """The dataset folder (train/*.tar, manifest.json, spec.yaml), written once per (size, samples)."""
    root = Path(os.environ.get("TMPDIR", tempfile.gettempdir())) / "mmpipe-bench-realistic"
    out = root / f"{width}x{height}-{samples}-{seed}"
    if (out / "spec.yaml").exists():
        return out
    tmp = root / f".{out.name}.{os.getpid()}"
    rng = np.random.default_rng(seed)
    writer = ShardWriter(tmp, max_samples=per_shard, overwrite=True)
    for i in range(samples):
        cls = i % len(CLASSES)
        writer.write("train", Sample(f"s{i:07d}", {"jpg": photo(width, height, rng), "wav": clip(cls, rng),
                                                   "txt": sentence(cls, rng).encode(), "cls": str(cls).encode()},
                                     cls))
    writer.close()
    writer.write_manifest(CLASSES, source="benchmarks/realistic_shards.py", seed=seed)
    atomic_write_text(tmp / "spec.yaml", spec_yaml())
    try:
        tmp.rename(out)
    except OSError:  # another process wrote it first
        pass
    return out

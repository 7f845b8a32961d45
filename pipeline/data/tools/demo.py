"""``mmpipe demo-data``: a small, learnable, long-tailed, 3-modality dataset made from nothing, deterministically.

Six classes; each modality alone confuses a different pair, so only fusion can separate all six:
    image  a coloured shape on noise      classes 0 and 1 draw the same shape and colour
    audio  a tone (+ harmonic) in noise   classes 2 and 3 share the same pitch
    text   a sentence naming a thing      classes 4 and 5 use the same words (English, 中文, français, русский)
The image is required; text and audio are optional and left out of some samples (their present mask is 0).
Some clips are longer than a second with the tone only inside json ``start``/``end``. Some texts are stored as
``txt.gz``. The train and val splits also carry deliberately bad samples, one group per drop reason that this spec
can produce, listed in manifest.json under ``planted``.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw

from pipeline.data.tools.shardwriter import Sample, ShardWriter
from pipeline.io import atomic_write_text

CLASSES = ["sun", "moon", "river", "mountain", "forest", "meadow"]
# Samples per class in train (x1) and in val/test (x1/4): largest / smallest = 12.6.
TRAIN_COUNTS = [480, 264, 144, 82, 48, 38]
IMAGE_SIZE, SAMPLE_RATE = 32, 8000

SHAPES = ["circle", "circle", "square", "triangle", "cross", "ring"]        # 0 == 1
COLOURS = [(220, 60, 40), (220, 60, 40), (40, 160, 60), (50, 80, 220), (200, 180, 30), (160, 60, 200)]
PITCHES = [300.0, 450.0, 700.0, 700.0, 1100.0, 1500.0]                      # 2 == 3
WORDS = [  # 4 == 5
    ["sun", "太阳", "soleil", "солнце"],
    ["moon", "月亮", "lune", "луна"],
    ["river", "河流", "rivière", "река"],
    ["mountain", "山峰", "montagne", "гора"],
    ["forest", "森林", "forêt", "лес"],
    ["forest", "森林", "forêt", "лес"],
]
TEMPLATES = [
    "a picture of the {w} today", "我们看到了{w}", "une photo de la {w} ce matin", "вот {w} вечером",
    "look at that {w}!", "{w}，很美", "the {w} again, as usual",
]
FILLER = ["photo", "图片", "image", "снимок", "nice", "好", "quiet", "calme"]


def _encode_image(rgb: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def make_image(cls: int, rng: np.random.Generator) -> np.ndarray:
    s = IMAGE_SIZE
    noise = rng.integers(0, 90, size=(s, s, 3), dtype=np.uint8)
    img = Image.fromarray(noise)
    draw = ImageDraw.Draw(img)
    colour = tuple(int(np.clip(c + rng.normal(0, 25), 0, 255)) for c in COLOURS[cls])
    r = rng.uniform(7, 11)
    cx, cy = rng.uniform(r + 1, s - r - 1, size=2)
    box = (cx - r, cy - r, cx + r, cy + r)
    shape = SHAPES[cls]
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif shape == "cross":
        draw.rectangle((cx - r, cy - r / 3, cx + r, cy + r / 3), fill=colour)
        draw.rectangle((cx - r / 3, cy - r, cx + r / 3, cy + r), fill=colour)
    else:
        draw.ellipse(box, outline=colour, width=3)
    return np.asarray(img)


def make_audio(cls: int, rng: np.random.Generator, seconds: float = 1.0,
               tone_span: tuple[float, float] | None = None) -> np.ndarray:
    n = int(SAMPLE_RATE * seconds)
    t = np.arange(n) / SAMPLE_RATE
    f = PITCHES[cls] * rng.uniform(0.97, 1.03)
    tone = np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) + 0.4 * np.sin(4 * np.pi * f * t)
    if tone_span:
        tone[: int(tone_span[0] * SAMPLE_RATE)] = 0
        tone[int(tone_span[1] * SAMPLE_RATE):] = 0
    wave = rng.uniform(0.2, 0.5) * tone + rng.normal(0, 0.15, n)
    return np.clip(wave, -1, 1).astype(np.float32)


def _encode_audio(wave: np.ndarray, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, SAMPLE_RATE, format=fmt, subtype="PCM_16")
    return buf.getvalue()


def make_text(cls: int, rng: np.random.Generator) -> str:
    lang = int(rng.integers(0, 4))
    sentence = TEMPLATES[int(rng.integers(0, len(TEMPLATES)))].format(w=WORDS[cls][lang])
    if rng.random() < 0.5:
        sentence += " " + FILLER[int(rng.integers(0, len(FILLER)))]
    return sentence


def good_sample(key: str, cls: int, rng: np.random.Generator) -> Sample:
    fmt = "JPEG" if rng.random() < 0.7 else "PNG"
    members = {"jpg" if fmt == "JPEG" else "png": _encode_image(make_image(cls, rng), fmt),
               "cls": str(cls).encode()}
    if rng.random() < 0.9:
        text = make_text(cls, rng).encode("utf-8")
        if rng.random() < 0.1:
            members["txt.gz"] = gzip.compress(text, mtime=0)
        else:
            members["txt"] = text
    if rng.random() < 0.9:
        if rng.random() < 0.2:  # a longer clip; only the json segment holds the tone
            start = round(float(rng.uniform(0.1, 0.4)), 3)
            members["wav"] = _encode_audio(make_audio(cls, rng, 1.5, (start, start + 1.0)))
            members["json"] = json.dumps({"start": start, "end": start + 1.0}).encode()
        else:
            fmt = "FLAC" if rng.random() < 0.1 else "WAV"
            members[fmt.lower()] = _encode_audio(make_audio(cls, rng), fmt)
    return Sample(key, members, cls)


def _png_with_header_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels: a decompression bomb to refuse unopened."""
    png = bytearray(_encode_image(np.zeros((1, 1, 3), np.uint8), "PNG"))
    ihdr = struct.pack(">II", width, height) + bytes(png[24:29])
    png[16:29] = ihdr
    png[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(png)


def bad_samples(split: str, rng: np.random.Generator, template: Sample) -> list[tuple[str, Sample]]:
    """(expected drop reason, sample) pairs: one bad member on top of an otherwise good sample."""
    def variant(i: int, **change) -> Sample:
        base = good_sample(f"{split}/bad{i:03d}", int(rng.integers(0, len(CLASSES))), rng)
        members = {**base.members, **{k: v for k, v in change.items() if v is not None}}
        for k in [k for k, v in change.items() if v is None]:
            members.pop(k, None)
        # a changed label member is not that class any more: keep it out of the manifest's histogram
        return Sample(base.key, members, None if "cls" in change else base.label)

    wav = _encode_audio(make_audio(0, rng))
    cases = [
        ("meta_invalid", dict(json=b"{not json")),
        ("label_missing", dict(cls=None)),
        ("label_unknown", dict(cls=b"99")),
        ("label_unknown", dict(cls=b"volcano")),
        ("image_missing", dict(jpg=None, png=None)),
        ("image_undecodable", dict(jpg=rng.bytes(600), png=None)),
        ("image_undecodable", dict(jpg=_encode_image(make_image(0, rng), "JPEG")[:300], png=None)),
        ("image_too_small", dict(png=_encode_image(np.zeros((4, 4, 3), np.uint8), "PNG"), jpg=None)),
        ("image_too_large", dict(png=_png_with_header_size(30_000, 30_000), jpg=None)),
        ("text_invalid_utf8", dict(txt=b"caf\xc3 \xff\xfe broken", **{"txt.gz": None})),
        ("text_empty", dict(txt=b"  \n ", **{"txt.gz": None})),
        ("text_too_long", dict(txt=("sun " * 3000).encode(), **{"txt.gz": None})),
        ("audio_undecodable", dict(wav=wav[: len(wav) // 2], flac=None, json=None)),
        ("audio_undecodable", dict(wav=b"RIFF....WAVEjunk", flac=None, json=None)),
        ("audio_too_short", dict(wav=_encode_audio(make_audio(0, rng, 0.01)), flac=None, json=None)),
        ("audio_silent", dict(wav=_encode_audio(np.zeros(SAMPLE_RATE, np.float32)), flac=None, json=None)),
        ("segment_invalid", dict(wav=wav, flac=None, json=json.dumps({"start": 5.0, "end": 6.0}).encode())),
    ]
    out = [(reason, variant(i, **change)) for i, (reason, change) in enumerate(cases)]
    out.append(("duplicate", Sample(f"{split}/bad{len(cases):03d}", dict(template.members), template.label)))
    return out


def write_demo(out_dir: str | Path, seed: int = 0, scale: float = 1.0, samples_per_shard: int = 200,
               overwrite: bool = False) -> dict:
    """Write the shards, manifest.json and spec.yaml; returns the manifest."""
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    writer = ShardWriter(out_dir, max_samples=samples_per_shard, overwrite=overwrite)
    planted: dict[str, dict[str, int]] = {}
    for split, factor in (("train", 1.0), ("val", 0.25), ("test", 0.25)):
        labels = np.concatenate([np.full(max(2, round(n * factor * scale)), c) for c, n in enumerate(TRAIN_COUNTS)])
        rng.shuffle(labels)
        goods = [good_sample(f"{split}/{i:06d}", int(c), rng) for i, c in enumerate(labels)]
        for s in goods:
            writer.write(split, s)
        if split != "test":  # the test split stays clean: it measures the model, not the cleaner
            counts: dict[str, int] = {}
            for reason, sample in bad_samples(split, rng, goods[0]):
                writer.write(split, sample)
                counts[reason] = counts.get(reason, 0) + 1
            planted[split] = counts
    writer.close()
    manifest = writer.write_manifest(CLASSES, source=f"mmpipe demo-data --seed {seed}", seed=seed, planted=planted)
    atomic_write_text(out_dir / "spec.yaml", demo_spec_yaml(out_dir))
    return manifest


def demo_spec_yaml(out_dir: Path) -> str:
    return f"""\
# The demo job. Validate the data:   mmpipe validate {out_dir}/spec.yaml
# See augmentation:                  mmpipe preview-augment {out_dir}/spec.yaml --out {out_dir}/preview
# Shard paths are relative to this file, so the folder can be moved.
name: demo
data:
  splits:
    train: train/*.tar
    val: val/*.tar
    test: test/*.tar
modalities:
  image: {{required: true, size: [{IMAGE_SIZE}, {IMAGE_SIZE}]}}
  text: {{required: false, max_tokens: 16}}
  audio: {{required: false, sample_rate: {SAMPLE_RATE}, seconds: 1.0}}
label:
  source: cls
  classes: {json.dumps(CLASSES)}
clean:
  dedupe: true
  on_bad_shard: skip
# Train split only: rebalance the long tail, then augment each modality.
rebalance:
  strategy: sqrt
augment:
  image: [{{name: HorizontalFlip, p: 0.5}}, {{name: ColorJitter, p: 0.3}}]
  text: [{{name: RandomCharAug, p: 0.2, params: {{action: swap}}}}]
  audio: [{{name: Gain, p: 0.5}}, {{name: AddGaussianNoise, p: 0.3, params: {{max_amplitude: 0.05}}}}]
"""

"""Real-data example: spoken digits (FSDD recordings) paired with handwritten digits (scikit-learn's load_digits).

For every recording ``{digit}_{speaker}_{index}.wav`` in a folder of FSDD-style recordings (any speakers), write a
row of a ``mmpipe pack`` manifest with:
    audio  the recording itself (real speech, 8 kHz)
    image  a real handwritten digit of the same class from load_digits (8x8, 17 grey levels), upscaled to 32x32 PNG.
           The 1,797 images are divided per class into disjoint train/val/test pools, so no image is shared
           between splits; within its pool each recording draws its image by a seeded hash of its file name.
    text   a short caption that names the digit only some of the time: with probability ``text_informative``
           (default 0.4, seeded per file name) it names the digit in English, Chinese or French ("she said seven",
           "数字七", "le chiffre sept"); otherwise it is a neutral sentence ("a short recording") that carries no
           class information. So text alone cannot exceed about 0.4 + 0.6/10 = 0.46 accuracy.
    label  the digit (class names "0".."9")
    split  ``--split index`` (default, as the FSDD README suggests): takes 0-4 of each speaker and digit are test,
           5-9 val, the rest train. ``--split speaker``: every recording of one held-out speaker is test (default:
           the last in sorted order); the other speakers' takes 5-9 are val, the rest of theirs train, so training
           hears every other voice and validation never hears the test voice. ``--val-speaker V`` (the protocol
           before 2026-12-02) makes all of V's recordings val instead, so training hears one voice fewer.

Usage:
    mmpipe prepare-digits ../shared/data/fsdd/recordings runs/av-digits/raw
    mmpipe pack runs/av-digits/raw/manifest.csv runs/av-digits/shards
    mmpipe train jobs/av-digits.yaml --out runs/av-digits/concat

FSDD is CC BY-SA 4.0 (Zohar Jackson and contributors); anything derived from it keeps that licence.
"""

from __future__ import annotations

import csv
import hashlib
import re
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

NAME = re.compile(r"^(\d)_([A-Za-z0-9-]+)_(\d+)\.wav$")
WORDS = {
    "en": ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
    "zh": ["零", "一", "二", "三", "四", "五", "六", "七", "八", "九"],
    "fr": ["zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf"],
}
INFORMATIVE = {"en": "she said {w}", "zh": "数字{w}", "fr": "le chiffre {w}"}
NEUTRAL = ["a short recording", "someone speaking", "录音片段", "enregistrement audio", "audio clip from the set",
           "recorded at home", "说话的声音", "une voix"]
POOLS = {"train": (0.0, 0.7), "val": (0.7, 0.85), "test": (0.85, 1.0)}


class PrepareError(ValueError):
    pass


def _unit(text: str, salt: str) -> float:
    """A stable uniform [0, 1) number for a file name (same on every machine)."""
    digest = hashlib.blake2b(f"{salt}:{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2 ** 64


def parse_recordings(folder: Path) -> list[tuple[Path, int, str, int]]:
    """(path, digit, speaker, take) for every FSDD-style file; other files are ignored."""
    found = []
    for path in sorted(folder.glob("*.wav")):
        m = NAME.match(path.name)
        if m:
            found.append((path, int(m.group(1)), m.group(2), int(m.group(3))))
    if not found:
        raise PrepareError(f"{folder}: no recordings named like 7_speaker_12.wav")
    return found


def split_of(speaker: str, take: int, mode: str, speakers: list[str], test_speaker: str | None,
             val_speaker: str | None = None) -> str:
    by_take = "test" if take < 5 else "val" if take < 10 else "train"
    if mode == "index":
        return by_take
    if speaker == (test_speaker or speakers[-1]):
        return "test"
    if val_speaker:
        return "val" if speaker == val_speaker else "train"
    return "train" if by_take == "test" else by_take  # a training voice: takes 5-9 val, the rest train


def digit_pools() -> dict[tuple[str, int], np.ndarray]:
    """(split, digit) -> the load_digits images of that digit reserved for that split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pools = {}
    for digit in range(10):
        images = digits.images[digits.target == digit]
        for split, (lo, hi) in POOLS.items():
            pools[(split, digit)] = images[int(lo * len(images)):int(hi * len(images))]
    return pools


def caption(name: str, digit: int, informative: float) -> str:
    if _unit(name, "informative") < informative:
        lang = ["en", "zh", "fr"][int(_unit(name, "lang") * 3)]
        return INFORMATIVE[lang].format(w=WORDS[lang][digit])
    return NEUTRAL[int(_unit(name, "neutral") * len(NEUTRAL))]


def write_digit_png(image8: np.ndarray, path: Path, size: int = 32) -> None:
    grey = (image8 / 16.0 * 255).astype(np.uint8)
    Image.fromarray(grey).resize((size, size), Image.Resampling.BILINEAR).convert("RGB").save(path)


def prepare(recordings: str | Path, out_dir: str | Path, split: str = "index", test_speaker: str | None = None,
            text_informative: float = 0.4, val_speaker: str | None = None) -> Path:
    """Write OUT_DIR/images/*.png, OUT_DIR/audio/*.wav (the recordings, copied: `mmpipe pack` reads media only
    inside the manifest's folder) and OUT_DIR/manifest.csv. Returns the manifest's path."""
    recordings, out_dir = Path(recordings).resolve(), Path(out_dir).resolve()
    rows = parse_recordings(recordings)
    speakers = sorted({r[2] for r in rows})
    if split == "speaker" and len(speakers) < (3 if val_speaker else 2):
        raise PrepareError(f"--split speaker{' --val-speaker' if val_speaker else ''} needs at least "
                           f"{3 if val_speaker else 2} speakers, found {speakers}")
    for option, name in (("--test-speaker", test_speaker), ("--val-speaker", val_speaker)):
        if name and name not in speakers:
            raise PrepareError(f"{option} {name!r} is not among {speakers}")
    if val_speaker and (split != "speaker" or val_speaker == (test_speaker or speakers[-1])):
        raise PrepareError(f"--val-speaker {val_speaker!r} needs --split speaker and another test speaker")
    pools = digit_pools()
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "audio").mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "manifest.csv"
    counts: dict[str, int] = defaultdict(int)
    with manifest.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["key", "split", "label", "audio", "image", "text", "speaker", "take"])
        for path, digit, speaker, take in rows:
            s = split_of(speaker, take, split, speakers, test_speaker, val_speaker)
            pool = pools[(s, digit)]
            image = out_dir / "images" / f"{path.stem}.png"
            write_digit_png(pool[int(_unit(path.name, "image") * len(pool))], image)
            shutil.copyfile(path, out_dir / "audio" / path.name)
            writer.writerow([f"{speaker}/{path.stem.replace('_', '-')}", s, str(digit),
                             f"audio/{path.name}", f"images/{image.name}",
                             caption(path.name, digit, text_informative), speaker, take])
            counts[s] += 1
    return manifest


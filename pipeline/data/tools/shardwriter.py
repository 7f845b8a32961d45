"""Write samples into size-bounded WebDataset tar shards per split, and the dataset's manifest.json.

Members of a sample are written together, sorted by name, with fixed ownership and mtime so the same input gives
byte-identical shards (and sha256s). Each shard is written aside and renamed when complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pipeline.data.stages.contract import base_extension
from pipeline.io import atomic_write_text

MANIFEST_FORMAT = "mmpipe-shards/1"
SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass
class Sample:
    key: str
    members: dict[str, bytes]  # extension (e.g. "jpg", "txt.gz") -> bytes
    label: int | None = None   # class index, for the manifest's histograms only


@dataclass
class ShardInfo:
    path: str  # relative to the dataset folder
    samples: int
    bytes: int
    sha256: str


class _HashingFile(io.RawIOBase):
    """A write-only file that hashes what passes through it (no second read of the shard)."""

    def __init__(self, f, digest):
        self.f, self.digest, self.size = f, digest, 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def write(self, b) -> int:
        self.digest.update(b)
        self.size += len(b)
        return self.f.write(b)


@dataclass
class _OpenShard:
    tmp: Path
    final: Path
    raw: io.BufferedWriter
    out: _HashingFile
    tar: tarfile.TarFile
    samples: int = 0


def clear_previous(out_dir: Path, overwrite: bool) -> None:
    """Refuse to mix with an earlier dataset in ``out_dir`` (stale shards would be globbed in), or remove it."""
    old = sorted(out_dir.glob("*/*-[0-9][0-9][0-9][0-9][0-9][0-9].tar")) if out_dir.is_dir() else []
    manifest = out_dir / "manifest.json"
    if not old and not manifest.exists():
        return
    if not overwrite:
        raise FileExistsError(f"{out_dir} already holds a dataset ({len(old)} shard(s)"
                              f"{', manifest.json' if manifest.exists() else ''}); choose an empty folder or "
                              "overwrite it (--overwrite)")
    for path in old:
        path.unlink()
    manifest.unlink(missing_ok=True)


class ShardWriter:
    """``write(split, sample)`` appends to the split's current shard, starting a new one at the size limits."""

    def __init__(self, out_dir: str | Path, max_bytes: int = 256 * 1024 ** 2, max_samples: int | None = None,
                 overwrite: bool = False):
        self.out_dir = Path(out_dir)
        clear_previous(self.out_dir, overwrite)
        self.max_bytes, self.max_samples = max_bytes, max_samples
        self._open: dict[str, _OpenShard] = {}
        self.shards: dict[str, list[ShardInfo]] = {}
        self.histograms: dict[str, Counter] = {}
        self.member_counts: dict[str, Counter] = {}  # split -> extension -> samples having it
        self._keys: dict[str, set[str]] = {}

    def write(self, split: str, sample: Sample) -> None:
        if not SPLIT_NAME.fullmatch(split):
            raise ValueError(f"split name {split!r}: use letters, digits, '_' and '-' (it names a folder)")
        keys = self._keys.setdefault(split, set())
        if sample.key in keys:
            raise ValueError(f"duplicate sample key {sample.key!r} in split {split!r}")
        if "." in sample.key.rsplit("/", 1)[-1]:
            raise ValueError(f"sample key {sample.key!r} has a dot in its last part (dots start the extension)")
        keys.add(sample.key)
        shard = self._open.get(split) or self._start(split)
        for ext in sorted(sample.members):
            data = sample.members[ext]
            info = tarfile.TarInfo(f"{sample.key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            shard.tar.addfile(info, io.BytesIO(data))
        shard.samples += 1
        self.member_counts.setdefault(split, Counter()).update(base_extension(e) for e in sample.members)
        if sample.label is not None:
            self.histograms.setdefault(split, Counter())[sample.label] += 1
        if shard.out.size >= self.max_bytes or (self.max_samples and shard.samples >= self.max_samples):
            self._finish(split)

    def _start(self, split: str) -> _OpenShard:
        index = len(self.shards.setdefault(split, []))
        final = self.out_dir / split / f"{split}-{index:06d}.tar"
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.tmp")
        raw = open(tmp, "wb")
        out = _HashingFile(raw, hashlib.sha256())
        self._open[split] = shard = _OpenShard(tmp, final, raw, out, tarfile.open(fileobj=out, mode="w"))
        return shard

    def _finish(self, split: str) -> None:
        shard = self._open.pop(split)
        shard.tar.close()
        shard.raw.flush()
        os.fsync(shard.raw.fileno())
        shard.raw.close()
        os.replace(shard.tmp, shard.final)
        rel = shard.final.relative_to(self.out_dir).as_posix()
        self.shards[split].append(ShardInfo(rel, shard.samples, shard.out.size, shard.out.digest.hexdigest()))

    def close(self) -> None:
        for split in list(self._open):
            self._finish(split)

    def manifest(self, classes: list[str], **extra) -> dict:
        splits = {}
        total: Counter = Counter()
        for split, shards in self.shards.items():
            hist = self.histograms.get(split, Counter())
            total.update(hist)
            splits[split] = {
                "samples": sum(s.samples for s in shards),
                "class_histogram": {c: hist.get(i, 0) for i, c in enumerate(classes)},
                "member_counts": dict(sorted(self.member_counts.get(split, Counter()).items())),
                "shards": [vars(s) for s in shards],
            }
        return {
            "format": MANIFEST_FORMAT,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "classes": classes,
            "samples": sum(s["samples"] for s in splits.values()),
            "class_histogram": {c: total.get(i, 0) for i, c in enumerate(classes)},
            "splits": splits,
            **extra,
        }

    def write_manifest(self, classes: list[str], **extra) -> dict:
        manifest = self.manifest(classes, **extra)
        atomic_write_text(self.out_dir / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False))
        return manifest

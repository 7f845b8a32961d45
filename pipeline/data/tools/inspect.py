"""``mmpipe inspect``: counts per class, modality coverage and shard sizes, without Ray.

From manifest.json when the folder has one (instant), else by scanning the shards' tar headers and their small
label members.
"""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from pathlib import Path

import fsspec

from pipeline.data.stages.contract import base_extension, split_member_name
from pipeline.data.shards.check import SHARD_SUFFIXES, ShardError, expand_shards, is_compressed
from pipeline.spec import LabelSpec, ModalitiesSpec


def modality_coverage(member_counts: dict[str, int], samples: int) -> dict[str, float]:
    """Share of samples having each role, with the contract's default extensions."""
    mods = ModalitiesSpec()
    roles = {role: getattr(mods, role).extensions for role in mods.enabled()}
    roles["label"] = LabelSpec().extensions
    roles["meta"] = mods.meta_extensions
    return {role: (sum(member_counts.get(e, 0) for e in exts) / samples if samples else 0.0)
            for role, exts in roles.items()}


def from_manifest(manifest: dict) -> dict:
    splits = {}
    for name, split in manifest.get("splits", {}).items():
        splits[name] = {
            "samples": split["samples"],
            "class_histogram": split.get("class_histogram", {}),
            "modality_coverage": modality_coverage(split.get("member_counts", {}), split["samples"]),
            "shards": [{k: s[k] for k in ("path", "samples", "bytes")} for s in split["shards"]],
        }
    return {"source": "manifest.json", "classes": manifest.get("classes", []), "splits": splits}


def _scan_shard(path: str) -> tuple[int, Counter, Counter, int]:
    """(samples, member extension counts, raw label counts, bytes) of one shard."""
    fs, fpath = fsspec.core.url_to_fs(path)
    keys, exts, labels = set(), Counter(), Counter()
    label_exts = set(LabelSpec().extensions)
    with fs.open(fpath, "rb") as f, tarfile.open(fileobj=f, mode="r|*" if is_compressed(path) else "r:") as tar:
        for info in tar:
            key, ext = split_member_name(info.name) if info.isreg() else (None, None)
            if key is None:
                continue
            keys.add(key)
            exts[base_extension(ext)] += 1
            if base_extension(ext) in label_exts and ext == base_extension(ext) and info.size < 256:
                labels[tar.extractfile(info).read().decode("utf-8", "replace").strip()] += 1
    return len(keys), exts, labels, fs.size(fpath)


def scan(path: str) -> dict:
    is_dir = "://" not in path and Path(path).is_dir()
    patterns = [f"{path.rstrip('/')}/**/*{s}" for s in SHARD_SUFFIXES] if is_dir else [path]
    shards = []
    for p in patterns:
        try:
            shards += expand_shards([p])
        except ShardError:  # a folder may hold only some of the shard suffixes
            if not is_dir:
                raise
    splits: dict[str, dict] = {}
    for shard in sorted(set(shards)):
        name = Path(shard).parent.name or "all"
        split = splits.setdefault(name, {"samples": 0, "_exts": Counter(), "_labels": Counter(), "shards": []})
        try:
            samples, exts, labels, size = _scan_shard(shard)
        except (OSError, EOFError, tarfile.TarError) as e:
            split["shards"].append({"path": shard, "error": f"{type(e).__name__}: {e}"})
            continue
        split["samples"] += samples
        split["_exts"].update(exts)
        split["_labels"].update(labels)
        split["shards"].append({"path": shard, "samples": samples, "bytes": size})
    for split in splits.values():
        exts, labels = split.pop("_exts"), split.pop("_labels")
        split["class_histogram"] = dict(sorted(labels.items(), key=lambda kv: (len(kv[0]), kv[0])))
        split["modality_coverage"] = modality_coverage(exts, split["samples"])
    return {"source": "scan", "classes": [], "splits": splits}


def inspect_path(path: str) -> dict:
    manifest = Path(path) / "manifest.json" if "://" not in path else None
    if manifest is not None and manifest.is_file():
        try:
            return from_manifest(json.loads(manifest.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ShardError(f"{manifest}: not a readable dataset manifest ({e}); "
                             "inspect the shards instead: mmpipe inspect 'DIR/*/*.tar'") from None
    return scan(path)

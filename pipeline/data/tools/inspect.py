"""``mmpipe inspect``: counts per class, modality coverage and shard sizes, without Ray.

From manifest.json when the folder has one (instant), else by scanning the shards' tar headers and their small
label members. A scan (a shard pattern, a split folder) names the classes from the manifest.json beside or one
folder above the shards when there is one, as a spec over those shards would; labels no class matches are listed
apart (``labels_unusable``).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import fsspec

from pipeline.data.shards.manifest import read_manifest
from pipeline.data.stages.clean import parse_label
from pipeline.data.stages.contract import base_extension
from pipeline.data.stages.decode import Rejected
from pipeline.data.shards.check import SHARD_SUFFIXES, ShardError, expand_shards, is_compressed
from pipeline.data.shards.tar import ShardFault, iter_members, iter_samples
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


def _scan_shard(path: str) -> tuple[int, Counter, Counter, int, ShardFault | None]:
    """(samples, member extension counts, raw label counts, bytes, why it is truncated) of one shard, by the
    reader's own member iterator and limits: only label members are read, and only while small. A truncated
    shard counts its complete samples, as the read keeps them; other damage raises ShardFault."""
    fs, fpath = fsspec.core.url_to_fs(path)
    exts, labels = Counter(), Counter()
    label_exts = set(LabelSpec().extensions)
    samples = 0
    want = lambda ext: ext.lower() in label_exts  # noqa: E731  (not .gz labels: a count needs no inflating)
    with fs.open(fpath, "rb") as f:
        members = iter_members(f, want=want, size=None if is_compressed(path) else fs.size(fpath))
        try:
            for sample in iter_samples(members):
                samples += 1
                for ext, data in sample.members.items():
                    exts[base_extension(ext)] += 1
                    if data is not None and len(data) < 256:
                        labels[data.decode("utf-8", "replace").strip()] += 1
        except ShardFault as e:
            if e.reason != "shard_truncated":
                raise
            return samples, exts, labels, fs.size(fpath), e
    return samples, exts, labels, fs.size(fpath), None


def manifest_near(shard: str) -> tuple[str, dict] | None:
    """(path, content) of the manifest.json beside or one folder above ``shard`` (where ``find_manifest`` looks
    for a spec's), when readable and naming classes."""
    parent = shard.rsplit("/", 1)[0] if "/" in shard else "."
    for path in (f"{parent}/manifest.json", f"{parent.rsplit('/', 1)[0]}/manifest.json"):
        try:
            found = read_manifest(path)
        except (OSError, ValueError):
            continue
        if isinstance(found, dict) and found.get("classes"):
            return path, found
    return None


def name_labels(labels: Counter, classes: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Raw label counts -> (counts per class name in class order, counts of labels no class matches)."""
    named, unusable = Counter(), Counter()
    for raw, n in labels.items():
        try:
            named[classes[parse_label(raw, tuple(classes), LabelSpec().format)]] += n
        except Rejected:
            unusable[raw] += n
    return {c: named.get(c, 0) for c in classes}, dict(sorted(unusable.items()))


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
            samples, exts, labels, size, cut = _scan_shard(shard)
        except ShardFault as e:
            split["shards"].append({"path": shard, "reason": e.reason, "error": f"{e.reason}: {e.detail}"})
            continue
        except (OSError, EOFError, ValueError) as e:
            split["shards"].append({"path": shard, "reason": "shard_unreadable", "error": f"{type(e).__name__}: {e}"})
            continue
        split["samples"] += samples
        split["_exts"].update(exts)
        split["_labels"].update(labels)
        entry = {"path": shard, "samples": samples, "bytes": size}
        if cut is not None:
            entry.update(reason=cut.reason, error=f"truncated: {cut.detail}; {samples} complete samples before it")
        split["shards"].append(entry)
    found = manifest_near(sorted(shards)[0]) if shards else None
    classes = [str(c) for c in found[1]["classes"]] if found else []
    for split in splits.values():
        exts, labels = split.pop("_exts"), split.pop("_labels")
        if classes:
            split["class_histogram"], unusable = name_labels(labels, classes)
            if unusable:
                split["labels_unusable"] = unusable
        else:
            split["class_histogram"] = dict(sorted(labels.items(), key=lambda kv: (len(kv[0]), kv[0])))
        split["modality_coverage"] = modality_coverage(exts, split["samples"])
    return {"source": "scan", "classes": classes, **({"classes_from": found[0]} if found else {}), "splits": splits}


def inspect_path(path: str) -> dict:
    manifest = Path(path) / "manifest.json" if "://" not in path else None
    if manifest is not None and manifest.is_file():
        try:
            return from_manifest(json.loads(manifest.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ShardError(f"{manifest}: not a readable dataset manifest ({e}); "
                             "inspect the shards instead: mmpipe inspect 'DIR/*/*.tar'") from None
    return scan(path)

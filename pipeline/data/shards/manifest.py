"""The dataset's manifest.json (written by ``mmpipe pack``/``demo``) and what the spec takes from it: the class
names and, when it describes exactly the spec's shards, the class counts of a split. Files only, no Ray."""

from __future__ import annotations

import json

import fsspec
import numpy as np

from pipeline.spec import JobSpec


class DataError(RuntimeError):
    """The data named by a spec cannot be used (no class names, no readable shards...)."""


def read_manifest(path: str) -> dict:
    """The content of one manifest.json; OSError (FileNotFoundError when absent) or JSONDecodeError if unusable."""
    with fsspec.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def find_manifest(spec: JobSpec) -> tuple[str, dict] | None:
    """(path, content) of the dataset manifest.json: as named in the spec, else beside or one folder above the
    first shard pattern."""
    if spec.data.manifest:  # named explicitly: that file or nothing
        try:
            return spec.data.manifest, read_manifest(spec.data.manifest)
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"data.manifest {spec.data.manifest}: cannot read ({e})") from None
    candidates = []
    for patterns in spec.data.splits.values():
        first = patterns[0]
        parent = first.rsplit("/", 1)[0] if "/" in first else "."
        candidates += [f"{parent}/manifest.json", f"{parent.rsplit('/', 1)[0]}/manifest.json"]
        break
    for path in candidates:
        try:
            return path, read_manifest(path)
        except (FileNotFoundError, OSError):
            continue
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e})") from None
    return None


def resolve_classes(spec: JobSpec, found: tuple[str, dict] | None = None) -> list[str]:
    """label.classes, else the manifest's ``classes``. ``found``: the manifest already found for this spec (the
    data plan's), so it is not read again."""
    if spec.label.classes:
        return list(spec.label.classes)
    found = found if found is not None else find_manifest(spec)
    if found and found[1].get("classes"):
        return [str(c) for c in found[1]["classes"]]
    raise DataError("no class names: set label.classes in the spec, or keep the manifest.json written by "
                    "`mmpipe pack` beside the shards (or name it in data.manifest)")


def manifest_counts(found: tuple[str, dict] | None, split: str, shards: list[str], classes: list[str]
                    ) -> np.ndarray | None:
    """Counts per class of ``split`` from the manifest, or None when it has none or lists other shards than
    ``shards`` (the spec's, expanded)."""
    if not found:
        return None
    path, manifest = found
    entry = manifest.get("splits", {}).get(split)
    if not entry or "class_histogram" not in entry:
        return None
    root = path.rsplit("/", 1)[0]
    listed = {f"{root}/{s['path']}" for s in entry.get("shards", [])}
    if listed != set(shards):
        return None  # the spec reads other shards than the manifest describes
    return np.array([entry["class_histogram"].get(c, 0) for c in classes], dtype=np.int64)

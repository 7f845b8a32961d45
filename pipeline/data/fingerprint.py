"""What identifies the data a spec reads: the dataset manifest's content and the shard listing (name, size,
modification time or ETag). Equal fingerprints mean a retrain would see the same data."""

from __future__ import annotations

import hashlib
import json

import fsspec

from pipeline.data.dataset import find_manifest
from pipeline.data.shards import expand_shards
from pipeline.spec import JobSpec


def _stamp(path: str) -> list:
    fs, p = fsspec.core.url_to_fs(path)
    info = fs.info(p)
    changed = info.get("mtime") or info.get("LastModified") or info.get("ETag") or info.get("etag") or \
        info.get("updated") or info.get("created")
    return [path, info.get("size"), str(changed)]


def shard_listing(patterns: list[str]) -> list[list]:
    """[path, size, changed] of every shard the patterns name."""
    return [_stamp(p) for p in expand_shards(patterns)]


def data_fingerprint(spec: JobSpec, splits: list[str] | None = None) -> dict:
    """{"manifest_sha256", "shards_sha256", "shards"} over ``splits`` (default: all of data.splits)."""
    listing = {name: shard_listing(spec.data.splits[name]) for name in (splits or sorted(spec.data.splits))}
    found = find_manifest(spec)
    manifest_sha = hashlib.sha256(json.dumps(found[1], sort_keys=True).encode()).hexdigest() if found else None
    return {"manifest_sha256": manifest_sha,
            "shards_sha256": hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest(),
            "shards": sum(len(v) for v in listing.values())}

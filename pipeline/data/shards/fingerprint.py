"""What identifies the data a spec reads: the dataset manifest's content and the shard listing (name, size and a
change stamp). Equal fingerprints mean a retrain would see the same data. Workflow steps use it to decide whether
earlier work is still valid; the scheduler's data trigger to decide whether to fire."""

from __future__ import annotations

import hashlib
import json

import fsspec

from pipeline.data.shards.check import expand_shards
from pipeline.data.shards.manifest import find_manifest
from pipeline.spec import JobSpec

# In order of preference: a content-derived stamp (object stores) beats a time (mtime locally).
_STAMP_KEYS = ("ETag", "etag", "md5Hash", "generation", "mtime", "LastModified", "last_modified", "updated",
               "created")


def _stamp(path: str) -> list:
    fs, p = fsspec.core.url_to_fs(path)
    info = fs.info(p)
    stamp = next((info[k] for k in _STAMP_KEYS if info.get(k) is not None), None)
    return [path, info.get("size"), str(stamp)]


def shard_listing(patterns: list[str]) -> list[list]:
    """[path, size, stamp] of every shard the patterns name."""
    return [_stamp(p) for p in expand_shards(patterns)]


def data_fingerprint(spec: JobSpec, splits: list[str] | None = None) -> dict:
    """{"manifest_sha256", "shards_sha256", "shards", "sha256"} over ``splits`` (default: all of data.splits);
    ``sha256`` covers both."""
    listing = {name: shard_listing(spec.data.splits[name]) for name in (splits or sorted(spec.data.splits))}
    found = find_manifest(spec)
    manifest_sha = hashlib.sha256(json.dumps(found[1], sort_keys=True).encode()).hexdigest() if found else None
    shards_sha = hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()
    return {"manifest_sha256": manifest_sha, "shards_sha256": shards_sha,
            "shards": sum(len(v) for v in listing.values()),
            "sha256": hashlib.sha256(f"{manifest_sha}:{shards_sha}".encode()).hexdigest()}

"""The data-driven trigger's fingerprint: what a retrain would read, summarised in one hash.

It covers the dataset manifest's content (when there is one) and every shard of every split with its size and its
change stamp (mtime locally; ETag / md5 / generation on object stores, as fsspec reports them). Touching,
replacing, adding or removing a shard changes it. The listing runs on the scheduler's machine, so that machine
needs read access to the data (credentials for s3:// / gs://).
"""

from __future__ import annotations

import hashlib
import json

import fsspec

from pipeline.spec import JobSpec

# In order of preference: a content-derived stamp beats a time.
_STAMP_KEYS = ("ETag", "etag", "md5Hash", "generation", "mtime", "LastModified", "last_modified", "updated",
               "created")


class TriggerError(RuntimeError):
    """The data could not be listed, so whether it changed is unknown."""


def _stamp(path: str) -> list:
    fs, p = fsspec.core.url_to_fs(path)
    info = fs.info(p)
    stamp = next((info[k] for k in _STAMP_KEYS if info.get(k) is not None), None)
    return [path, info.get("size"), str(stamp)]


def fingerprint(spec: JobSpec) -> str:
    """sha256 hex of the manifest content and the shard listing of every split."""
    from pipeline.data.dataset import find_manifest
    from pipeline.data.shards import expand_shards

    if not spec.data.splits:
        raise TriggerError("the spec lists no data (data.splits is empty): nothing to watch for changes")
    try:
        found = find_manifest(spec)
        listing = {split: [_stamp(p) for p in expand_shards(patterns)]
                   for split, patterns in sorted(spec.data.splits.items())}
    except Exception as e:  # ShardError, DataError, OSError, an object store's own errors: all mean "unknown"
        raise TriggerError(f"cannot list the data: {e}") from e
    manifest = [found[0], json.dumps(found[1], sort_keys=True)] if found else None
    blob = json.dumps({"manifest": manifest, "shards": listing}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()

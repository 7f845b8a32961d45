"""The data-driven trigger's fingerprint: what a retrain would read, summarised in one hash.

It covers the dataset manifest's content (when there is one) and every shard of every split with its size and its
change stamp (mtime locally; ETag / md5 / generation on object stores, as fsspec reports them). Touching,
replacing, adding or removing a shard changes it. The listing runs on the scheduler's machine, so that machine
needs read access to the data (credentials for s3:// / gs://).
"""

from __future__ import annotations

from pipeline.spec import JobSpec


class TriggerError(RuntimeError):
    """The data could not be listed, so whether it changed is unknown."""


def fingerprint(spec: JobSpec) -> str:
    """sha256 hex of the manifest content and the shard listing of every split (pipeline.data.shards.fingerprint)."""
    from pipeline.data.shards.fingerprint import data_fingerprint

    if not spec.data.splits:
        raise TriggerError("the spec lists no data (data.splits is empty): nothing to watch for changes")
    try:
        return data_fingerprint(spec)["sha256"]
    except Exception as e:  # ShardError, DataError, OSError, an object store's own errors: all mean "unknown"
        raise TriggerError(f"cannot list the data: {e}") from e

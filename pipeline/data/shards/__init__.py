"""Shard files: tar members, shard checks, the dataset manifest, data fingerprints. May read files (fsspec,
tarfile) and import ``pipeline.data.stages`` and ``pipeline.spec``; never Ray."""

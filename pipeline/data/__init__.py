"""The data side, in four packages by what they may touch (``docs/architecture.md`` has the whole map):

- ``stages``    pure batch functions (the sample path): NumPy, codecs, augmentation libraries; no Ray, no files.
- ``shards``    tar members, shard checks, manifest, fingerprints: files via fsspec/tarfile; no Ray.
- ``streaming`` Ray Data wiring: the datasource applying the sample path, splits, shared actors. Ray only here.
- ``tools``     pack, demo data, inspect, plots: what CLI commands call; no Ray.
"""

"""Ray Data wiring: the read datasource that applies the sample path, split assembly, the small shared actors
(duplicate index, epoch clock), worker warm-up and label counting. The only part of ``pipeline.data`` that imports
Ray; the logic it runs lives in ``stages`` and ``shards``."""

"""Data stages: contract, shards, clean, align, report, pack, demo. Stages are plain batch functions."""

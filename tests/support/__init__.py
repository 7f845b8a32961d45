"""Helpers shared by test modules, imported as ``support`` (pyproject's pytest ``pythonpath`` puts tests/ on the
path, so this works under every ``--import-mode``): raw batches and tar files built by hand."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parent.parent  # tests/, laid out like pipeline/
ROOT = TESTS.parent  # the repository (jobs/, benchmarks/, cluster.yaml)
FIXTURES = TESTS / "fixtures"


def raw_batch(samples: list[dict[str, bytes]], url: str = "shard-000.tar") -> dict[str, np.ndarray]:
    """What read_webdataset(decoder=None) yields: one object column per member extension, None where absent."""
    columns = sorted({c for s in samples for c in s if c != "__key__"})
    batch = {"__key__": np.array([s.get("__key__", f"s{i:04d}") for i, s in enumerate(samples)], dtype=object),
             "__url__": np.array([url] * len(samples), dtype=object)}
    for c in columns:
        col = np.empty(len(samples), dtype=object)
        col[:] = [s.get(c) for s in samples]
        batch[c] = col
    return batch


def write_tar(path, members: list[tuple[str, bytes]], mode: str = "w") -> None:
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

"""Per-row seeds: a stable 64-bit hash of (seed, epoch, key, copy, salt), the same in every process and run."""

from __future__ import annotations

import hashlib
import random
from contextlib import contextmanager

import numpy as np


def row_seeds(keys, copies, seed: int, epoch: int, salt: str) -> np.ndarray:
    """uint64 seeds, one per row. ``copies`` tells apart repeats of one sample made by oversampling."""
    out = np.empty(len(keys), dtype=np.uint64)
    for i, (key, copy) in enumerate(zip(keys, copies)):
        digest = hashlib.blake2b(f"{seed}\x1f{epoch}\x1f{key}\x1f{copy}\x1f{salt}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "little")
    return out


def row_ids(batch: dict[str, np.ndarray]) -> list[str]:
    """``shard-name/key`` per row: keys often restart in every shard; the folder may move, the name stays."""
    keys = batch["__key__"]
    if "__url__" not in batch:
        return [str(k) for k in keys]
    return [f"{str(u).rsplit('/', 1)[-1]}/{k}" for u, k in zip(batch["__url__"], keys)]


def uniforms(seeds: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) floats derived from the seeds (53 high bits)."""
    return (seeds >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def seed_globals(seed: int) -> None:
    """Seed Python's and NumPy's global generators, which nlpaug and audiomentations draw from (~5 us). Callers
    restore them once per batch with ``globals_restored``: saving and restoring around every row cost ~80 us a
    row, twice per sample."""
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)


@contextmanager
def globals_restored():
    """Python's and NumPy's global generators as they were, on leaving: a stage that reseeds them leaves no trace."""
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)

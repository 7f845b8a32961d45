"""Raw batches straight from a tar stream, shaped exactly like ``read_webdataset(decoder=None)`` output.

Members are grouped into samples by key (contiguous members share a key, as webdataset and Ray require); each batch
holds ``__key__``, ``__url__`` and one object column per member extension, None where a sample lacks it. Reading
this way inside the task that also cleans and aligns keeps raw bytes out of Arrow and the object store.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from pipeline.data.stages.contract import KEY_COLUMN, URL_COLUMN, split_member_name


def tar_samples(stream: BinaryIO, url: str) -> Iterator[dict[str, bytes | str]]:
    """One dict per sample: ``{__key__, __url__, <ext>: bytes, ...}`` (regular members with an extension only)."""
    current: dict | None = None
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for info in tar:
            if not info.isreg():
                continue
            key, ext = split_member_name(info.name)
            if key is None:
                continue
            if current is not None and current[KEY_COLUMN] != key:
                yield current
                current = None
            if current is None:
                current = {KEY_COLUMN: key, URL_COLUMN: url}
            if ext in current:  # check_shard refuses such shards; never let one member silently replace another
                raise ValueError(f"{url}: sample {key!r} has two .{ext} members")
            current[ext] = tar.extractfile(info).read()
    if current is not None:
        yield current


def to_batch(samples: list[dict]) -> dict[str, np.ndarray]:
    """Samples -> object columns, one per member extension in any of them (None where absent)."""
    columns = [KEY_COLUMN, URL_COLUMN] + sorted({c for s in samples for c in s} - {KEY_COLUMN, URL_COLUMN})
    batch = {}
    for c in columns:
        col = np.empty(len(samples), dtype=object)
        col[:] = [s.get(c) for s in samples]
        batch[c] = col
    return batch


def raw_batches(stream: BinaryIO, url: str, size: int) -> Iterator[dict[str, np.ndarray]]:
    """Batches of ``size`` samples (the last may be shorter) from one tar stream."""
    samples: list[dict] = []
    for sample in tar_samples(stream, url):
        samples.append(sample)
        if len(samples) == size:
            yield to_batch(samples)
            samples = []
    if samples:
        yield to_batch(samples)

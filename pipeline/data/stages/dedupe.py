"""Exact-duplicate detection across shards: the first row to claim a content hash owns it.

Claims are idempotent (the same row claiming again gets the same answer), so a dataset that is executed twice,
or a task that Ray retries, makes the same decisions. Memory: one entry (16-byte hash + row id) per distinct
sample of the split; switch ``clean.dedupe`` off for splits too large for that.
"""

from __future__ import annotations

import hashlib


def content_hash(parts: list[bytes | None]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(b"\x00" if part is None else len(part).to_bytes(8, "little") + part)
    return h.hexdigest()


class DuplicateIndex:
    """In-process index; also the body of the Ray actor used when stages run in many processes."""

    def __init__(self) -> None:
        self._owner: dict[str, str] = {}

    def claim(self, hashes: list[str], row_ids: list[str]) -> list[str]:
        """For each (hash, row id), the row id that owns the hash: the row itself unless another claimed first."""
        return [self._owner.setdefault(h, r) for h, r in zip(hashes, row_ids)]

    def __len__(self) -> int:
        return len(self._owner)

"""The split-wide duplicate index as one Ray actor, so every read task of a split claims against the same owner."""

from __future__ import annotations

from pipeline.data.stages.dedupe import DuplicateIndex


class RemoteDuplicateIndex:
    """A DuplicateIndex living in one Ray actor, shared by every task of a split. Picklable into tasks."""

    def __init__(self) -> None:
        import ray

        self._actor = ray.remote(num_cpus=0)(DuplicateIndex).remote()

    def claim(self, hashes: list[str], row_ids: list[str]) -> list[str]:
        import ray

        return ray.get(self._actor.claim.remote(hashes, row_ids))

"""Which epoch the train split is being read for, as seen from Ray Data tasks.

A dataset is built once and re-executed every epoch, so stages cannot take the epoch as a fixed argument. The
trainer sets an ``EpochClock`` (one tiny Ray actor) before each epoch; augment and rebalance tasks read it once
per batch. A plain int works too, for one-off reads and tests.
"""

from __future__ import annotations


class _Clock:
    def __init__(self, epoch: int = 0) -> None:
        self.epoch = epoch

    def set(self, epoch: int) -> None:
        self.epoch = epoch

    def get(self) -> int:
        return self.epoch


class EpochClock:
    """Picklable handle to the shared epoch counter (ended with the run: ``actors.actors_scope``)."""

    def __init__(self, epoch: int = 0) -> None:
        import ray

        from pipeline.data.streaming.actors import owned

        self._actor = owned(ray.remote(num_cpus=0)(_Clock).remote(epoch))

    def set(self, epoch: int) -> None:
        import ray

        ray.get(self._actor.set.remote(epoch))

    def get(self) -> int:
        import ray

        return ray.get(self._actor.get.remote())


def current_epoch(source: "int | EpochClock") -> int:
    return source if isinstance(source, int) else source.get()

"""Warm Ray worker processes for the data path while something slow (Ray Train's start-up) runs.

A fresh Ray worker spends seconds importing pyarrow, Ray Data, the decoders and the augmentation libraries before
its first read task does any work; at training start that sat on the path to the first batch. Tasks started here
do those imports (and build the augmenters) in idle workers, which Ray then reuses for the read tasks.
"""

from __future__ import annotations

from pipeline.spec import JobSpec


def _warm(augment_json: str, modalities_json: str) -> None:
    import pipeline.data.prepared_source  # noqa: F401  (pyarrow, Ray Data, decoders, align)
    from pipeline.data.augment.stage import _cached

    _cached(augment_json, modalities_json)


def warm_data_workers(spec: JobSpec, count: int) -> list:
    """Start ``count`` warm-up tasks without waiting for them; returns their refs."""
    import ray

    task = ray.remote(num_cpus=1)(_warm)
    return [task.remote(spec.augment.model_dump_json(), spec.modalities.model_dump_json()) for _ in range(count)]

"""Warm Ray worker processes for the training data path while Ray Train starts.

A fresh Ray worker spends ~4 s of CPU importing Ray Data, pyarrow, the decoders and the augmentation libraries
(albumentations pulls in torch) before its first read task does any work; at training start that sat on the path
to the first batch. Tasks started here do those imports and build the spec's augmenters in idle workers, which Ray
reuses for the read tasks, if two things hold: the idle workers live until then (``ray_runtime`` keeps idle
workers of our own local instance for a minute), and the runtime environment matches. Ray Train starts its
controller, and so Ray Data's coordinators and read tasks, with ``env_vars`` it propagates from the driver; Ray
reuses a worker only for tasks of the same runtime environment, so the warm-up tasks carry the same one.
"""

from __future__ import annotations

import logging

from pipeline.spec import JobSpec

log = logging.getLogger(__name__)


def _warm(augment_json: str, modalities_json: str) -> str | None:
    """Nobody waits for this: a failure is returned (and only costs the warm-up), never raised."""
    try:
        import pipeline.data.streaming.plan  # noqa: F401  (Ray Data, pyarrow, decoders, sample path, datasource)
        from pipeline.data.stages.augment.stage import _cached

        _cached(augment_json, modalities_json)
    except Exception as e:  # the read task that needs the same will raise it where it matters
        return f"{type(e).__name__}: {e}"
    return None


def train_runtime_env() -> dict | None:
    """The runtime environment Ray Train gives its controller (and so to Ray Data's read tasks); None if this Ray
    version does not expose how it builds it."""
    try:  # Ray Train internals (checked against 2.60's DataParallelTrainer._initialize_and_run_controller)
        from ray.train.v2._internal.constants import (
            DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE,
            RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR,
            get_env_vars_to_propagate,
        )

        env = dict(get_env_vars_to_propagate())
        env.setdefault(RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR, DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE)
    except Exception:  # moved or changed in another Ray version: no warm-up rather than a failed training
        return None
    return {"env_vars": env}


def warm_data_workers(spec: JobSpec, strategy=None, count: int = 1, for_ray_train: bool = True) -> list:
    """Start ``count`` warm-up tasks without waiting for them, scheduled by ``strategy`` (where the run's read
    tasks will run: its reserved data CPUs); returns their refs ([] when it cannot help). ``for_ray_train``: the
    reads will run under Ray Train (its runtime environment); False for a dataset this process iterates itself
    (call it right after ``ray.init``: a cold first pass on 2 CPUs took 10.2 s for 2,048 realistic samples, 7.3 s
    with this started just before it, 2.2 s warm; benchmarks/feeding_compare.py)."""
    import ray

    options = {"scheduling_strategy": strategy} if strategy is not None else {}
    if for_ray_train:
        runtime_env = train_runtime_env()
        if runtime_env is None:
            log.debug("no warm-up of data workers: Ray Train's runtime environment is unknown in this Ray version")
            return []
        options["runtime_env"] = runtime_env
    task = ray.remote(num_cpus=1)(_warm).options(**options)
    return [task.remote(spec.augment.model_dump_json(), spec.modalities.model_dump_json()) for _ in range(count)]

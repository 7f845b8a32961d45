"""Checks of a job spec that need more than its schema: names are looked up in the model's and trainer's
registries (model.fusion, train.optimizer, train.loss), augmentation transforms are built and tried, the search
space is sampled against the schema and the registries. One floor above ``pipeline.spec`` (which imports nothing
of the pipeline), so every user-supplied spec enters through ``load_job`` / ``job_from_dict``."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from pipeline.spec import (AugmentSpec, JobSpec, ModalitiesSpec, SpecError, _resolve_local_paths, _validated,
                           read_spec_file)


@functools.lru_cache(maxsize=1)
def registries() -> dict[str, list[str]]:
    """{kind: names} for the spec fields checked against a registry (the validation context of ``_validated``).
    Imported here, not in pipeline.spec, so loading the schema alone needs no torch."""
    from pipeline.model.fusion import fusion_names
    from pipeline.model.losses import LOSSES
    from pipeline.train.optim import OPTIMIZERS

    return {"fusion": fusion_names(), "optimizer": list(OPTIMIZERS), "loss": list(LOSSES)}


def _transform_problems(spec: JobSpec) -> list[tuple[str, str]]:
    """Augmentation transforms are built and tried once here, so a bad name or parameter fails at load time.
    Device ops (augment.backend: device) are looked up in pipeline/model/augment.DEVICE_OPS instead."""
    if spec.augment.runs_on("device"):
        from pipeline.model.augment import check_device_ops

        return check_device_ops(spec.augment, spec.modalities)
    if not spec.augment.runs_on("cpu"):
        return []
    return _checked(spec.augment.model_dump_json(), spec.modalities.model_dump_json())


@functools.lru_cache(maxsize=32)
def _checked(augment_json: str, modalities_json: str) -> list[tuple[str, str]]:
    # Trying transforms costs seconds (library imports); the same sections need trying once per process.
    from pipeline.data.stages.augment.stage import check_transforms

    spec = JobSpec(augment=AugmentSpec.model_validate_json(augment_json),
                   modalities=ModalitiesSpec.model_validate_json(modalities_json))
    return check_transforms(spec)


def spec_problems(spec: JobSpec, raw: dict[str, Any], source: str) -> list[tuple[str, str]]:
    """Every cross-check problem as (field path, message)."""
    problems = _transform_problems(spec)
    if spec.tune.search_space:
        from pipeline.tune.space import problems as space_problems

        problems += space_problems(raw, spec.tune.search_space, lambda r: _validated(r, source, registries()))
    return problems


def job_from_dict(raw: dict[str, Any], source: str = "<spec>", base: Path | None = None) -> JobSpec:
    """Schema, registry names and cross-checks; every problem at once, naming its field."""
    spec = _validated(raw, source, registries())
    problems = spec_problems(spec, raw, source)
    if problems:
        raise SpecError("\n".join([f"{source}: {len(problems)} problem(s) in the job spec:"] +
                                   [f"  - {path}: {msg}" for path, msg in problems]))
    return _resolve_local_paths(spec, base or Path.cwd())


def load_job(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Read, override and fully check a YAML job spec (what every command does with a user's spec)."""
    raw, source, base = read_spec_file(path, overrides)
    return job_from_dict(raw, source, base)

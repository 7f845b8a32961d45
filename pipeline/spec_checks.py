"""Checks of a job spec that need more than its schema: names are looked up in the registries' tables
(model.fusion, train.optimizer, train.loss, augmentation transforms: ``pipeline/spec_names.py``, no torch or library
import, so these answer in about a second), the search space is sampled against the schema and the registries, and
with ``deep`` (the default) augmentation transforms are built and tried (seconds: the libraries load). One floor
above ``pipeline.spec`` (which imports nothing of the pipeline), so every user-supplied spec enters through
``load_job`` / ``job_from_dict``; the command line loads specs shallow and runs ``deep_problems`` before it reads
data."""

from __future__ import annotations

import difflib
import functools
from pathlib import Path
from typing import Any

from pipeline.spec import (AugmentSpec, JobSpec, ModalitiesSpec, SpecError, _resolve_local_paths, _validated,
                           read_spec_file)


@functools.lru_cache(maxsize=1)
def registries() -> dict[str, list[str]]:
    """{kind: names} for the spec fields checked against a registry (the validation context of ``_validated``),
    from the static tables that tests keep equal to the registries."""
    from pipeline.spec_names import FUSIONS, LOSSES, OPTIMIZERS

    return {"fusion": list(FUSIONS), "optimizer": list(OPTIMIZERS), "loss": list(LOSSES)}


def _transform_names(spec: JobSpec) -> list[tuple[str, str]]:
    """Unknown transform names (augment.backend: cpu), with close matches, from the static table; and transforms
    listed for a disabled modality."""
    from pipeline.spec_names import LIBRARIES, TRANSFORMS

    if not spec.augment.runs_on("cpu"):
        return []
    problems = []
    for role in ("image", "text", "audio"):
        specs = getattr(spec.augment, role)
        if specs and getattr(spec.modalities, role) is None:
            problems.append((f"augment.{role}", f"{role} transforms listed but modalities.{role} is disabled"))
            continue
        for i, t in enumerate(specs):
            if t.name not in TRANSFORMS[role]:
                close = difflib.get_close_matches(t.name, TRANSFORMS[role], n=3)
                hint = f"did you mean {', '.join(close)}?" if close else \
                    f"see the {LIBRARIES[role]} documentation for names"
                problems.append((f"augment.{role}.{i}",
                                 f"unknown {LIBRARIES[role]} transform {t.name!r} ({hint})"))
    return problems


# device ops that work on the built-in encoders' own inputs: log-mel features (audio), the hash/bytes ids (text)
_BUILT_IN_INPUT_OPS = {"audio": ("TimeMasking", "FrequencyMasking"), "text": ("TokenReplace",)}


def hf_problems(spec: JobSpec) -> list[tuple[str, str]]:
    """model.hf: each folder a local model folder for an enabled modality, the transformers package installed,
    the text model long enough for modalities.text.max_tokens, the audio model at modalities.audio.sample_rate,
    and no device op that needs the built-in encoder's input."""
    from pipeline.hf_local import INSTALL, HFError, folder_problem, installed, read_json, text_positions

    problems = []
    for modality, folder in spec.model.hf.folders().items():
        field = f"model.hf.{modality}"
        section = getattr(spec.modalities, modality)
        if section is None:
            problems.append((field, f"modalities.{modality} is disabled"))
            continue
        problem = folder_problem(folder) or (None if installed() else f"needs the transformers package: {INSTALL}")
        if problem:
            problems.append((field, problem))
            continue
        try:
            config, pre = read_json(folder, "config.json"), read_json(folder, "preprocessor_config.json")
            positions = text_positions(folder) if modality == "text" else None
        except HFError as e:
            problems.append((field, str(e)))
            continue
        if positions and section.max_tokens > positions:
            problems.append(("modalities.text.max_tokens", f"{section.max_tokens} tokens, but the model of {field} "
                                                           f"takes at most {positions}"))
        rate = pre.get("sampling_rate")
        if modality == "audio" and rate and rate != section.sample_rate:
            problems.append(("modalities.audio.sample_rate", f"{section.sample_rate}, but the model of {field} "
                                                             f"expects {rate} Hz audio"))
        if spec.augment.runs_on("device"):
            for i, op in enumerate(getattr(spec.augment, modality)):
                if op.name in _BUILT_IN_INPUT_OPS.get(modality, ()):
                    problems.append((f"augment.{modality}.{i}", f"device op {op.name} works on the built-in "
                                                                f"{modality} encoder's input, not {field}'s"))
    return problems


def deep_problems(spec: JobSpec) -> list[tuple[str, str]]:
    """Augmentation transforms are built and tried, so a bad parameter fails before any data is read (seconds:
    the libraries load). Device ops (augment.backend: device) are looked up in pipeline/model/augment.DEVICE_OPS."""
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


def check_deep(spec: JobSpec, source: str = "<spec>") -> None:
    """``deep_problems`` as one SpecError naming each field (for a spec loaded with ``deep=False``)."""
    _raise(deep_problems(spec), source)


def _raise(problems: list[tuple[str, str]], source: str) -> None:
    if problems:
        raise SpecError("\n".join([f"{source}: {len(problems)} problem(s) in the job spec:"] +
                                   [f"  - {path}: {msg}" for path, msg in problems]))


def spec_problems(spec: JobSpec, raw: dict[str, Any], source: str, deep: bool = True) -> list[tuple[str, str]]:
    """Every cross-check problem as (field path, message); ``deep``: transforms built and tried too."""
    problems = _transform_names(spec)
    if deep and not problems:  # a wrong name is reported once, from the table
        problems = list(deep_problems(spec))  # a copy: the result is cached
    if spec.tune.search_space:
        from pipeline.tune.space import problems as space_problems

        problems += space_problems(raw, spec.tune.search_space, lambda r: _validated(r, source, registries()))
    return problems


def job_from_dict(raw: dict[str, Any], source: str = "<spec>", base: Path | None = None,
                  deep: bool = True) -> JobSpec:
    """Schema, registry names and cross-checks; every problem at once, naming its field. ``deep=False``: no
    transform is built (no torch or augmentation library loads); ``check_deep`` does that part later."""
    spec = _resolve_local_paths(_validated(raw, source, registries()), base or Path.cwd())
    # model.hf folders are checked once resolved against the spec file's folder
    _raise(spec_problems(spec, raw, source, deep) + hf_problems(spec), source)
    return spec


def load_job(path: str | Path, overrides: list[str] | None = None, deep: bool = True) -> JobSpec:
    """Read, override and check a YAML job spec (what every command does with a user's spec)."""
    raw, source, base = read_spec_file(path, overrides)
    return job_from_dict(raw, source, base, deep)

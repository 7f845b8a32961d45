"""A trained model back from the checkpoint dict training writes (best.pt): weights, classes, resolved spec."""

from __future__ import annotations

import io
from pathlib import Path


def read_checkpoint(source: bytes | str | Path):
    """What a checkpoint file (or its bytes) holds, on CPU. The one place checkpoints are read: never unpickles
    (``weights_only=True``), so a crafted file cannot run code."""
    import torch

    file = io.BytesIO(source) if isinstance(source, bytes) else source
    return torch.load(file, weights_only=True, map_location="cpu")


def load_model(source: bytes | str | Path, origin: str = "<checkpoint>"):
    """(model in eval mode on CPU, its JobSpec, class names)."""
    return model_from_state(read_checkpoint(source), origin)


def model_from_state(state: dict, origin: str = "<checkpoint>"):
    """``load_model`` of a checkpoint already read (``read_checkpoint``)."""
    from pipeline.model.classifier import MultimodalClassifier
    from pipeline.spec import spec_from_dict

    spec = spec_from_dict(state["spec"], source=origin)
    classes = list(state["classes"])
    model = MultimodalClassifier(spec, len(classes))
    model.load_state_dict(state["model"])
    return model.eval(), spec, classes


class InitError(ValueError):
    """model.init_from names weights that cannot start this model."""


def part_of(name: str) -> str:
    """The init part a parameter name belongs to: encoders, or fusion (the fusion and its classifier head)."""
    return "encoders" if name.startswith("encoders.") else "fusion"


def load_matching(model, weights: dict, parts, origin: str, heads: frozenset[str] = frozenset()) -> dict:
    """Load into ``model`` the tensors of ``weights`` (name -> tensor) that belong to ``parts`` and match a tensor
    of the model by name and shape. Returns {"loaded": [names], "shape_mismatch": ["name: (src) vs (model)"],
    "missing": [names of the model's ``parts`` the source lacks], "unused": [source names not in the model]},
    and "task_layout": the names of ``heads`` (the task heads, when the source's label.tasks layout differs from
    this model's) left as initialised. Raises InitError when nothing matched."""
    own = model.state_dict()
    skipped = sorted(k for k in weights if k in heads and part_of(k) in parts)
    wanted = {k: v for k, v in weights.items() if part_of(k) in parts and k not in heads}
    loaded = {k: v for k, v in wanted.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    report = {
        "loaded": sorted(loaded),
        "shape_mismatch": sorted(f"{k}: {tuple(v.shape)} in {origin} vs {tuple(own[k].shape)} in this model"
                                 for k, v in wanted.items() if k in own and k not in loaded),
        "missing": sorted(k for k in own if part_of(k) in parts and k not in wanted and k not in heads),
        "unused": sorted(k for k in wanted if k not in own),
        "task_layout": skipped,
    }
    if not loaded:
        detail = "; ".join(report["shape_mismatch"][:5]) or f"no tensor names in common (source has e.g. " \
                                                              f"{', '.join(sorted(weights)[:3]) or 'nothing'})"
        raise InitError(f"model.init_from {origin}: no {' or '.join(parts)} weights match this model ({detail})")
    model.load_state_dict(loaded, strict=False)
    return report


def describe_init(report: dict, origin: str) -> str:
    """One paragraph for the log: what was loaded, and every tensor that was not."""
    lines = [f"init_from {origin}: loaded {len(report['loaded'])} tensors"]
    for key, what in (("shape_mismatch", "shapes differ"),
                      ("task_layout", "task heads of another label.tasks layout (tasks, order or classes): left as "
                                      "initialised"),
                      ("missing", "not in the source: left as initialised"),
                      ("unused", "in the source, not in this model")):
        if report.get(key):
            lines.append(f"  {what} ({len(report[key])}): " + ", ".join(report[key]))
    return "\n".join(lines)

"""model.init_from: where the starting weights come from, and the model set-up that uses them (loaded parts, the
optimizer's groups for model.pretrained_lr_scale and model.freeze).

    RUN_DIR                      a pretrain run (pretrained.pt), a train run (best.pt), or a workflow run
                                 (steps' outputs: pretrain/pretrained.pt, else train/best.pt)
    REGISTRY[:VERSION|@ALIAS]    a registered model (model.pt)
    FILE                         any of those files

Every file is read with ``weights_only=True``: nothing is unpickled.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.model.checkpoint import InitError, describe_init, load_matching, read_checkpoint
from pipeline.spec import JobSpec
from pipeline.tasks import further_layout

RUN_FILES = ("pretrained.pt", "best.pt", "pretrain/pretrained.pt", "train/best.pt")


def _read(source: bytes | Path) -> tuple[dict, list | None]:
    state = read_checkpoint(source)
    weights = state.get("model", state) if isinstance(state, dict) else None
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise InitError("holds no weights (expected a checkpoint written by mmpipe: pretrained.pt, best.pt)")
    return weights, _heads_layout(state)


def _heads_layout(state: dict) -> list | None:
    """The source's further task heads, [[name, [classes]], ...] in logits order: its recorded layout (best.pt,
    state.pt), else from its spec (best.pt written before the layout was); None when it has no classifier heads
    to speak of (pretrained.pt, a bare state dict)."""
    if isinstance(state.get("tasks"), list):
        return [[name, list(classes)] for name, classes in state["tasks"][1:]]
    if isinstance(state.get("spec"), dict) and "classes" in state:
        return further_layout(state["spec"].get("label"))
    return None


def init_weights(ref: str) -> tuple[dict[str, torch.Tensor], str]:
    """(name -> tensor, where they came from) for a model.init_from value."""
    weights, origin, _ = init_source(ref)
    return weights, origin


def init_source(ref: str) -> tuple[dict[str, torch.Tensor], str, list | None]:
    """``init_weights`` and the source's task heads (``_heads_layout``)."""
    path = Path(ref)
    if path.is_dir():
        for name in RUN_FILES:
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise InitError(f"model.init_from {ref}: a folder without {', '.join(RUN_FILES)}")
    if path.is_file():
        try:
            weights, layout = _read(path)
            return weights, str(path), layout
        except InitError as e:
            raise InitError(f"model.init_from {path}: {e}") from None
        except Exception as e:  # noqa: BLE001 - torch's error for a corrupt file or one that needs unpickling
            raise InitError(f"model.init_from {path}: cannot be loaded ({type(e).__name__}: {str(e)[:200]})") \
                from None
    from pipeline.registry import ModelRef, Registry, RegistryError

    try:
        ref_ = ModelRef.parse(ref)
        registry = Registry(ref_.registry)
        version = registry.resolve(ref_)
        weights, layout = _read(registry.model_bytes(version))
        return weights, f"{registry.uri}:{version}", layout
    except RegistryError as e:
        raise InitError(f"model.init_from {ref}: neither a file, a run folder nor a registry reference ({e})") \
            from None


def prepare_transfer(model: torch.nn.Module, spec: JobSpec, say=print) -> set[str]:
    """Load model.init_from into ``model`` (the parts model.init_parts names) and freeze model.freeze's encoders;
    returns the names of the pretrained parameters, loaded or model.hf's (for their lr scale)."""
    m = spec.model
    loaded: set[str] = set()
    if m.init_from:
        weights, origin, layout = init_source(m.init_from)
        own = further_layout(spec.label.model_dump(mode="json"))
        # heads of other tasks, or of the same in another order, have the same total width: load by layout, not
        # by shape, or a reordered label.tasks would start each task on another's head
        heads = model.head_names() if layout is not None and layout != own and hasattr(model, "head_names") \
            else frozenset()
        report = load_matching(model, weights, m.init_parts, origin, heads)
        say(describe_init(report, origin))
        loaded = set(report["loaded"])
    if m.hf.folders():  # model.hf weights are pretrained too: model.pretrained_lr_scale applies to them
        from pipeline.model.hf_encoders import hf_weight_names

        loaded |= hf_weight_names(model)
    frozen = [k for k in m.frozen_epochs() if k in getattr(model, "encoders", {})]
    if frozen and hasattr(model, "set_frozen"):
        model.set_frozen(frozen)
    return loaded

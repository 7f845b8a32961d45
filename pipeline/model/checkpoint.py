"""A trained model back from the checkpoint dict training writes (best.pt): weights, classes, resolved spec."""

from __future__ import annotations

import io
from pathlib import Path


def load_model(source: bytes | str | Path, origin: str = "<checkpoint>"):
    """(model in eval mode on CPU, its JobSpec, class names). Never unpickles: ``weights_only=True``."""
    import torch

    from pipeline.model.classifier import MultimodalClassifier
    from pipeline.spec import spec_from_dict

    file = io.BytesIO(source) if isinstance(source, bytes) else source
    state = torch.load(file, map_location="cpu", weights_only=True)
    spec = spec_from_dict(state["spec"], source=origin)
    classes = list(state["classes"])
    model = MultimodalClassifier(spec, len(classes))
    model.load_state_dict(state["model"])
    return model.eval(), spec, classes

"""Host -> device options of the training loop, without Ray: what iter_torch_batches is asked for, and
``train.compile`` training the same parameters as the eager model."""

import pytest
import torch

from pipeline.model.classifier import MultimodalClassifier
from pipeline.spec import JobSpec, TrainSpec
from pipeline.train.loop import compiled, device_feed
from pipeline.train.optim import apply_gradients, lr_schedule, make_optimizer


def test_batches_are_prefetched_to_the_device_and_pinned_only_for_cuda():
    assert device_feed(torch.device("cpu"), 2) == {"device": torch.device("cpu"), "prefetch_batches": 2,
                                                   "pin_memory": False}
    assert device_feed(torch.device("cuda", 0), 3)["pin_memory"] is True
    assert TrainSpec().prefetch_batches == 2 and TrainSpec().compile is False


def test_compile_off_is_the_model_itself():
    model = torch.nn.Linear(2, 2)
    assert compiled(model, False) is model


def _spec() -> JobSpec:
    return JobSpec.model_validate({
        "name": "compile", "data": {"splits": {"train": "x/*.tar"}},
        "modalities": {"image": {"size": [16, 16]}, "text": {"max_tokens": 8}, "audio": {"sample_rate": 8000,
                                                                                          "seconds": 0.25}},
        "label": {"classes": ["a", "b", "c"]}, "model": {"hidden": 16, "dropout": 0.0}})


def _batch(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    n = 8
    return {"image": torch.randint(0, 256, (n, 16, 16, 3), generator=g, dtype=torch.uint8),
            "text": torch.randint(2, 100, (n, 8), generator=g), "audio": torch.randn(n, 2000, generator=g) * 0.1,
            **{f"present_{m}": torch.ones(n, dtype=torch.bool) for m in ("image", "text", "audio")},
            "label": torch.randint(0, 3, (n,), generator=g)}


def test_compiled_training_steps_move_the_same_weights_as_eager_ones():
    """Dynamo traces the whole model (every encoder, fusion, masks) and trains it like eager mode. Inductor's own
    code generation is left out here: it took ~2.5 min on 2 CPU cores (the GPU check runs it)."""
    spec = _spec()
    runs = {}
    for mode in (False, True):
        torch.manual_seed(0)
        model = MultimodalClassifier(spec, 3)
        model.train()
        forward = compiled(model, mode, backend="aot_eager")
        t = TrainSpec(lr=0.01, epochs=1)
        optimizer = make_optimizer(t, model.parameters())
        scheduler = lr_schedule(t, optimizer, 3)
        for step in range(3):
            batch = _batch(step)
            loss = torch.nn.functional.cross_entropy(forward(batch), batch["label"])
            apply_gradients(loss, model, optimizer, scheduler, None)
        runs[mode] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert runs[True].keys() == runs[False].keys()  # checkpoints of a compiled run load into an eager model
    moved = [k for k in runs[True] if runs[True][k].is_floating_point()]
    for key in moved:
        torch.testing.assert_close(runs[True][key], runs[False][key], rtol=1e-3, atol=1e-4, msg=key)

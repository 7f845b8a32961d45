"""Every fusion in the registry with every subset of modalities present: forward, backward, no leak."""

import itertools

import pytest
import torch

from pipeline.model.fusion import FUSIONS, UNIMODAL, build_fusion
from support.models import MODS, batch, make

SUBSETS = [s for r in (1, 2, 3) for s in itertools.combinations(MODS, r)]


@pytest.mark.parametrize("fusion", sorted(FUSIONS))
@pytest.mark.parametrize("present", SUBSETS, ids="+".join)
def test_fusion_forward_backward_and_no_leak(fusion, present):
    model = make(fusion)
    model.train()
    logits = model(batch(present))
    assert logits.shape == (4, 5) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.fusion.parameters())
    # absent modalities must not leak: other values in their inputs give the same output
    model.eval()
    a, b = batch(present, seed=1), batch(present, seed=2)
    for m in MODS:
        if m in present:
            b[m] = a[m]
    with torch.no_grad():
        assert torch.allclose(model(a), model(b), atol=1e-5)


@pytest.mark.parametrize("fusion", sorted(UNIMODAL))
def test_unimodal_baselines_use_one_encoder(fusion):
    own = UNIMODAL[fusion]
    model = make(fusion)
    assert list(model.encoders) == [own]
    model.eval()
    a, b = batch(MODS, seed=1), batch(MODS, seed=2)  # every modality present in both
    with torch.no_grad():
        assert torch.allclose(model(a), model({**b, own: a[own]}), atol=1e-5)  # the other modalities are ignored
        assert not torch.allclose(model(a), model(b), atol=1e-3)  # its own is what it reads
    model.train()
    model(a).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoders[own].parameters())


def test_modality_dropout_never_hides_everything():
    model = make("concat", modality_dropout=0.9)
    present = {m: torch.ones(64, dtype=torch.bool) for m in MODS}
    dropped = model._drop_modalities(present)
    assert (torch.stack(list(dropped.values()), 1).sum(1) >= 1).all()
    assert torch.stack(list(dropped.values()), 1).float().mean() < 0.6


def test_unknown_fusion_suggests():
    with pytest.raises(ValueError, match="did you mean low_rank"):
        build_fusion("lowrank", ["image"], 8, 2, 0.0)


def test_text_gru_encoder():
    model = make("text_only", text_encoder="gru")
    gru = model.encoders["text"].rnn
    assert isinstance(gru, torch.nn.GRU)
    model(batch(("text",))).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
               for p in gru.parameters())  # the GRU is on the path from the tokens to the logits


def test_init_from_loads_matching_weights_and_lists_the_rest(tmp_path):
    from pipeline.model.checkpoint import InitError, load_matching

    source = make("concat")
    target = make("late")  # another fusion: its fusion weights have other shapes
    torch.nn.init.zeros_(target.encoders["image"].net[0].weight)
    report = load_matching(target, source.state_dict(), ["encoders", "fusion"], "best.pt")
    assert torch.equal(target.encoders["image"].net[0].weight, source.encoders["image"].net[0].weight)
    assert report["shape_mismatch"] or report["unused"]  # concat's head does not fit late's
    assert all(k.startswith("encoders.") or k.startswith("fusion.") for k in report["loaded"])
    encoders_only = load_matching(make("concat"), source.state_dict(), ["encoders"], "best.pt")
    assert encoders_only["loaded"] and all(k.startswith("encoders.") for k in encoders_only["loaded"])
    with pytest.raises(InitError, match="no encoders weights match"):
        load_matching(target, {"unrelated": torch.zeros(1)}, ["encoders"], "other.pt")

"""The contrastive objective without Ray: known answers, masks, gradients, and the pretraining model."""

import math

import pytest
import torch

from pipeline.model.contrastive import ContrastiveModel, encoder_state, pair_loss
from pipeline.model.views import augmented_view
from pipeline.spec import spec_from_dict
from support.models import MODS, batch, make


def _scale(temperature):
    return torch.tensor(1.0 / temperature)


def test_perfectly_aligned_pairs_at_low_temperature_cost_nearly_nothing():
    z = torch.eye(6)  # orthogonal embeddings, identical in both modalities
    on = torch.ones(6, dtype=torch.bool)
    loss, n = pair_loss(z, z.clone(), on, on, _scale(0.01))
    assert n == 6 and loss.item() < 1e-6


def test_unrelated_pairs_cost_log_batch_size():
    """Every column equally similar: the loss is exactly log(B) in both directions."""
    z = torch.ones(8, 4)
    on = torch.ones(8, dtype=torch.bool)
    loss, _ = pair_loss(z, z.clone(), on, on, _scale(0.1))
    assert loss.item() == pytest.approx(math.log(8), rel=1e-5)


def test_swapped_pairs_cost_much_more_than_aligned_ones():
    z = torch.eye(4)
    on = torch.ones(4, dtype=torch.bool)
    aligned, _ = pair_loss(z, z, on, on, _scale(0.1))
    swapped, _ = pair_loss(z, z[[1, 0, 3, 2]], on, on, _scale(0.1))
    assert swapped.item() > 5 and aligned.item() < 1e-3


def test_absent_modalities_are_neither_rows_nor_negatives():
    g = torch.Generator().manual_seed(0)
    za, zb = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    pa = torch.tensor([1, 1, 1, 1, 0, 1], dtype=torch.bool)
    pb = torch.tensor([1, 1, 1, 1, 1, 0], dtype=torch.bool)
    loss, n = pair_loss(za, zb, pa, pb, _scale(0.2))
    assert n == 4  # rows 4 (a absent) and 5 (b absent) are not pairs
    # whatever stands in for an absent modality changes nothing: it is never a negative
    zb2 = zb.clone()
    zb2[5] = 100.0
    za2 = za.clone()
    za2[4] = -3.0
    assert pair_loss(za2, zb2, pa, pb, _scale(0.2))[0].item() == pytest.approx(loss.item(), rel=1e-5)
    # a present modality of an incomplete sample is a negative for the others
    zb3 = zb.clone()
    zb3[4] = za[0] * 10
    assert pair_loss(za, zb3, pa, pb, _scale(0.2))[0].item() > loss.item() + 0.1


def test_no_pair_gives_a_zero_that_still_has_a_gradient():
    za = torch.randn(3, 4, requires_grad=True)
    zb = torch.randn(3, 4, requires_grad=True)
    loss, n = pair_loss(za, zb, torch.tensor([1, 0, 1], dtype=torch.bool), torch.tensor([0, 1, 0], dtype=torch.bool),
                        _scale(0.1))
    assert n == 0 and loss.item() == 0.0
    loss.backward()
    assert za.grad is not None and torch.equal(za.grad, torch.zeros_like(za))


def _spec(**pretrain):
    return spec_from_dict({"model": {"hidden": 16, "dropout": 0.0},
                           "modalities": {"image": {"size": [16, 16]}, "text": {"max_tokens": 8, "vocab_size": 300},
                                          "audio": {"sample_rate": 4000, "seconds": 0.25}},
                           "pretrain": {"projection_dim": 8, **pretrain}})


def test_the_model_trains_every_encoder_and_the_temperature():
    torch.manual_seed(0)
    model = ContrastiveModel(_spec())
    loss, parts = model(batch(tuple(MODS), n=6))
    assert set(parts) == {"image-text", "image-audio", "text-audio"}
    loss.backward()
    for m in MODS:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoders[m].parameters()), m
    assert model.log_scale.grad is not None and model.log_scale.grad != 0


def test_single_modality_samples_learn_from_two_views():
    torch.manual_seed(0)
    model = ContrastiveModel(_spec())
    b = batch(("image", "audio"), n=6)
    b["present_audio"][:3] = False  # rows 0-2: image alone
    loss, parts = model(b)
    assert "image-views" in parts and "audio-views" not in parts
    assert parts["image-views"] > 0
    no_views = ContrastiveModel(_spec(view_weight=0.0))
    assert "image-views" not in no_views(b)[1]


def test_a_fixed_temperature_is_not_learnt():
    model = ContrastiveModel(_spec(learn_temperature=False, temperature=0.5))
    assert not model.log_scale.requires_grad
    assert model.log_scale.exp().item() == pytest.approx(2.0)


def test_pretrained_encoders_load_into_a_classifier_by_name():
    torch.manual_seed(1)
    pretrained = encoder_state(ContrastiveModel(_spec()))
    classifier = make("concat")
    missing, unexpected = classifier.load_state_dict(pretrained, strict=False)
    assert not unexpected and all(not k.startswith("encoders.") for k in missing)


@pytest.mark.parametrize("modality", MODS)
def test_views_change_the_input_but_keep_its_shape_and_type(modality):
    torch.manual_seed(0)
    x = batch(tuple(MODS), n=4)[modality]
    view = augmented_view(modality, x)
    assert view.shape == x.shape and view.dtype == x.dtype and not torch.equal(view, x)
    if modality == "text":
        assert torch.equal(view[:, 0], x[:, 0])  # never an all-padding row

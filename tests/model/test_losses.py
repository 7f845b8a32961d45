"""The train.loss table: every entry computes, β, γ and τ come from the train section, unknown names raise."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from pipeline.model.losses import LOSSES, class_balanced_weights, focal_loss, make_loss
from pipeline.spec import TrainSpec

COUNTS = np.array([1000, 300, 90, 25])


def logits_and_target(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 4, generator=g, requires_grad=True), torch.randint(0, 4, (8,), generator=g)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_computes_a_finite_scalar_with_gradients(name):
    logits, target = logits_and_target()
    loss = make_loss(TrainSpec(loss=name), COUNTS)(logits, target)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_unknown_loss_raises_with_suggestions():
    with pytest.raises(ValueError, match="unknown loss 'focall' \\(did you mean focal"):
        make_loss(TrainSpec(loss="focall"), COUNTS)  # the schema alone accepts any name; the table does not


def test_class_balanced_weights():
    w = class_balanced_weights([1000, 10], 0.999)
    assert w[1] > w[0] and torch.isclose(w.mean(), torch.tensor(1.0))


def test_focal_takes_gamma_and_beta_from_the_train_section():
    logits, target = logits_and_target()
    ce = F.cross_entropy(logits, target)
    plain = make_loss(TrainSpec(loss="focal", focal_gamma=0.0, class_balanced_beta=None), COUNTS)
    assert torch.isclose(plain(logits, target), ce)  # γ = 0 and no class weights: cross-entropy
    focused = make_loss(TrainSpec(loss="focal", focal_gamma=2.0, class_balanced_beta=None), COUNTS)
    assert torch.isclose(focused(logits, target), focal_loss(logits, target, 2.0)) and focused(logits, target) < ce
    weighted = make_loss(TrainSpec(loss="focal", focal_gamma=2.0, class_balanced_beta=0.99), COUNTS)
    assert torch.isclose(weighted(logits, target),
                         focal_loss(logits, target, 2.0, class_balanced_weights(COUNTS, 0.99)))


def test_weighted_ce_takes_beta_from_the_train_section():
    logits, target = logits_and_target()
    for beta in (0.9, 0.999):
        expected = F.cross_entropy(logits, target, weight=class_balanced_weights(COUNTS, beta))
        assert torch.isclose(make_loss(TrainSpec(loss="weighted_ce", class_balanced_beta=beta), COUNTS)(
            logits, target), expected)
    default = make_loss(TrainSpec(loss="weighted_ce"), COUNTS)(logits, target)
    beta = TrainSpec().class_balanced_beta
    assert torch.isclose(default, F.cross_entropy(logits, target, weight=class_balanced_weights(COUNTS, beta)))


def test_weighted_ce_without_beta_is_a_spec_error():
    with pytest.raises(ValidationError, match="class_balanced_beta"):
        TrainSpec(loss="weighted_ce", class_balanced_beta=None)


def test_logit_adjusted_uses_the_prior_seen_and_tau():
    logits, target = logits_and_target()
    zeros = torch.zeros(8, dtype=torch.long)
    uniform = make_loss(TrainSpec(loss="logit_adjusted", logit_tau=1.0), [1, 1, 1, 1])
    assert torch.isclose(uniform(logits, target), F.cross_entropy(logits, target))  # uniform prior: plain CE
    skewed = make_loss(TrainSpec(loss="logit_adjusted", logit_tau=1.0), [97, 1, 1, 1])
    assert skewed(logits, zeros) < F.cross_entropy(logits, zeros)
    off = make_loss(TrainSpec(loss="logit_adjusted", logit_tau=0.0), [97, 1, 1, 1])
    assert torch.isclose(off(logits, zeros), F.cross_entropy(logits, zeros))  # τ = 0: no adjustment


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_unlabelled_rows_count_for_nothing(name):
    """train.label_fraction marks rows -1: every loss is the loss of the labelled rows alone; none labelled -> 0
    with a gradient (every DDP rank runs the same backward)."""
    t = TrainSpec(loss=name)
    loss = make_loss(t, [10, 20, 30])
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=g, requires_grad=True)
    target = torch.tensor([0, -1, 2, -1, 1, 1])
    labelled = target >= 0
    assert loss(logits, target).item() == pytest.approx(loss(logits[labelled], target[labelled]).item(), rel=1e-6)
    none = loss(logits, torch.full((6,), -1))
    none.backward()
    assert none.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))

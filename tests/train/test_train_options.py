"""Each training option does what the spec says, tested on the functions train_loop runs (no Ray): every optimizer,
the warm-up schedule, gradient clipping, early stopping and its resume from a checkpoint file."""

import math

import pytest
import torch

from pipeline.spec import TrainSpec
from pipeline.train.loop import EarlyStopping, checkpoint_state, resume
from pipeline.train.optim import OPTIMIZERS, apply_gradients, lr_schedule, make_optimizer

SETTINGS = {"lr": 0.05, "weight_decay": 0.01, "momentum": 0.8}

# name -> (torch class, the settings it must carry beyond lr and weight_decay)
EXPECTED = {
    "sgd": (torch.optim.SGD, {"momentum": 0, "nesterov": False}),
    "momentum": (torch.optim.SGD, {"momentum": 0.8, "nesterov": False}),
    "nesterov": (torch.optim.SGD, {"momentum": 0.8, "nesterov": True}),
    "adam": (torch.optim.Adam, {}),
    "adamw": (torch.optim.AdamW, {}),
    "nadam": (torch.optim.NAdam, {}),
    "adadelta": (torch.optim.Adadelta, {}),
    "rmsprop": (torch.optim.RMSprop, {"momentum": 0.8}),
}


def tiny_model(seed=0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def tiny_loss(model, scale=1.0, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
    return scale * torch.nn.functional.cross_entropy(model(x), y)


def lrs_used(t: TrainSpec, steps_per_epoch: int) -> list[float]:
    """The learning rate each optimizer step of a whole run uses."""
    model = tiny_model()
    optimizer = make_optimizer(t, model.parameters())
    scheduler = lr_schedule(t, optimizer, steps_per_epoch)
    used = []
    for _ in range(t.epochs * steps_per_epoch):
        used.append(optimizer.param_groups[0]["lr"])
        apply_gradients(tiny_loss(model), model, optimizer, scheduler, t.grad_clip)
    return used


# ---------------------------------------------------------------- optimizers

@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_each_optimizer_is_the_right_class_with_the_specs_settings(name):
    cls, extra = EXPECTED[name]  # a new OPTIMIZERS entry needs its expectation here
    optimizer = make_optimizer(TrainSpec(optimizer=name, **SETTINGS), tiny_model().parameters())
    assert type(optimizer) is cls
    group = optimizer.param_groups[0]
    assert group["lr"] == SETTINGS["lr"] and group["weight_decay"] == SETTINGS["weight_decay"]
    for key, value in extra.items():
        assert group[key] == value, key


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_each_optimizer_step_changes_the_weights_and_lowers_the_loss(name):
    model = tiny_model()
    t = TrainSpec(optimizer=name, lr=0.5 if name == "adadelta" else 0.01)  # Adadelta's steps are tiny at lr 1e-2
    optimizer = make_optimizer(t, model.parameters())
    scheduler = lr_schedule(t, optimizer, steps_per_epoch=100)
    before = [p.detach().clone() for p in model.parameters()]
    first = tiny_loss(model).item()
    for _ in range(20):
        apply_gradients(tiny_loss(model), model, optimizer, scheduler, None)
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert tiny_loss(model).item() < first


def test_unknown_optimizer_raises_instead_of_falling_back():
    with pytest.raises(ValueError, match="unknown optimizer 'rmsporp' \\(did you mean rmsprop"):
        make_optimizer(TrainSpec(optimizer="rmsporp"), tiny_model().parameters())


# ---------------------------------------------------------------- warm-up and schedule

def test_warmup_ramps_linearly_to_lr_then_decays_on_a_cosine():
    lr = 0.1
    used = lrs_used(TrainSpec(optimizer="sgd", lr=lr, epochs=4, warmup_epochs=2), steps_per_epoch=5)
    warmup = 10  # 2 epochs x 5 steps
    for k in range(warmup):
        assert used[k] == pytest.approx(lr * (k + 1) / warmup)  # step k of the warm-up: lr * (k + 1) / W
    assert used[warmup] == pytest.approx(lr)  # the cosine starts at lr ...
    for k in range(warmup, 20):
        assert used[k] == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * (k - warmup) / 10)))
    assert all(a >= b for a, b in zip(used[warmup:], used[warmup + 1:]))  # ... and only falls


def test_no_warmup_starts_at_full_lr_and_fractional_epochs_round_down_to_steps():
    assert lrs_used(TrainSpec(optimizer="sgd", lr=0.1, epochs=2), steps_per_epoch=5)[0] == pytest.approx(0.1)
    used = lrs_used(TrainSpec(optimizer="sgd", lr=0.1, epochs=2, warmup_epochs=0.5), steps_per_epoch=5)
    assert used[:3] == pytest.approx([0.05, 0.1, 0.1])  # 0.5 x 5 steps = 2 warm-up steps


# ---------------------------------------------------------------- gradient clipping

def grad_norm(model) -> float:
    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()


@pytest.mark.parametrize("clip", [None, 0.5])
def test_gradient_clipping_caps_the_global_norm_before_the_step(clip):
    model = tiny_model()
    t = TrainSpec(optimizer="sgd", lr=0.1, grad_clip=clip)
    optimizer = make_optimizer(t, model.parameters())
    scheduler = lr_schedule(t, optimizer, steps_per_epoch=10)
    before = [p.detach().clone() for p in model.parameters()]
    apply_gradients(tiny_loss(model, scale=100.0), model, optimizer, scheduler, t.grad_clip)
    norm = grad_norm(model)
    if clip is None:
        assert norm > 5.0  # the loss is scaled so the raw norm is well above the cap
    else:
        assert norm <= clip + 1e-5 and norm == pytest.approx(clip, rel=1e-4)
    # plain SGD moved each weight by lr x the gradient left on it: the clipped one was used
    for b, p in zip(before, model.parameters()):
        assert torch.allclose(b - p.detach(), 0.1 * p.grad, atol=1e-6)


# ---------------------------------------------------------------- early stopping and resume

def epochs_until_stop(stopper: EarlyStopping, values: list[float]) -> int | None:
    for epoch, value in enumerate(values):
        if stopper.update({stopper.metric: value}):
            return epoch
    return None


def test_early_stopping_stops_after_patience_epochs_without_improvement():
    # best at epoch 1; epochs 2 and 3 do not beat it (equal is not better) -> stop after epoch 3
    assert epochs_until_stop(EarlyStopping("val.macro_f1", 2), [0.5, 0.6, 0.6, 0.55, 0.9]) == 3
    # an improvement resets the count
    assert epochs_until_stop(EarlyStopping("val.macro_f1", 2), [0.5, 0.4, 0.6, 0.5, 0.7, 0.6, 0.6]) == 6
    # a loss metric improves downwards; NaN never improves
    assert epochs_until_stop(EarlyStopping("val.loss", 2), [1.0, 0.9, 0.95, 0.91]) == 3
    assert epochs_until_stop(EarlyStopping("val.loss", 1), [1.0, float("nan")]) == 1
    # no patience: never stops, but still tracks the best
    never = EarlyStopping("val.macro_f1", None)
    assert epochs_until_stop(never, [0.5, 0.4, 0.3, 0.2]) is None and never.best == 0.5


def make_run(t: TrainSpec, seed=0):
    model = tiny_model(seed)
    optimizer = make_optimizer(t, model.parameters())
    return model, optimizer, lr_schedule(t, optimizer, steps_per_epoch=2)


def test_resume_continues_the_patience_count(tmp_path):
    t = TrainSpec(optimizer="adam", epochs=10, early_stopping_patience=3)
    model, optimizer, scheduler = make_run(t)
    stopper = EarlyStopping(t.early_stopping_metric, t.early_stopping_patience)
    history = []
    for epoch, value in enumerate([0.5, 0.7, 0.6, 0.65]):  # best 0.7 at epoch 1, then two stale epochs
        for _ in range(2):
            apply_gradients(tiny_loss(model), model, optimizer, scheduler, None)
        stop = stopper.update({"val.macro_f1": value})
        history.append({"epoch": epoch, "val.macro_f1": value})
    assert not stop and stopper.stale == 2
    torch.save(checkpoint_state(model, optimizer, scheduler, stopper, epoch, history, stop, classes=["a", "b"]),
               tmp_path / "state.pt")

    # a fresh worker: new model, optimizer, schedule and stopper, then the checkpoint file
    model2, optimizer2, scheduler2 = make_run(t, seed=1)
    stopper2 = EarlyStopping(t.early_stopping_metric, t.early_stopping_patience)
    state = torch.load(tmp_path / "state.pt", map_location="cpu", weights_only=True)
    start, history2 = resume(state, model2, optimizer2, scheduler2, stopper2, t.epochs)
    assert start == 4 and history2 == history
    assert (stopper2.best, stopper2.stale) == (0.7, 2)
    assert stopper2.update({"val.macro_f1": 0.69})  # the third stale epoch overall stops (a restarted count would not)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))
    assert scheduler2.last_epoch == scheduler.last_epoch == 8
    assert optimizer2.param_groups[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"])
    exp_avg = next(iter(optimizer.state_dict()["state"].values()))["exp_avg"]
    assert torch.equal(next(iter(optimizer2.state_dict()["state"].values()))["exp_avg"], exp_avg)


def test_resume_after_an_early_stop_trains_no_further(tmp_path):
    t = TrainSpec(epochs=10, early_stopping_patience=1)
    model, optimizer, scheduler = make_run(t)
    stopper = EarlyStopping(t.early_stopping_metric, t.early_stopping_patience)
    assert epochs_until_stop(stopper, [0.5, 0.4]) == 1
    torch.save(checkpoint_state(model, optimizer, scheduler, stopper, 1, [], True), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", map_location="cpu", weights_only=True)
    assert resume(state, *make_run(t), EarlyStopping(t.early_stopping_metric, 1), t.epochs)[0] == t.epochs

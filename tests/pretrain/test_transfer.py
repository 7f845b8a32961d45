"""model.init_from, model.freeze and model.pretrained_lr_scale, on the functions train_loop runs (no Ray)."""

import math

import pytest
import torch

from pipeline.model.checkpoint import InitError
from pipeline.model.classifier import MultimodalClassifier
from pipeline.spec import SpecError, spec_from_dict
from pipeline.train.optim import apply_gradients, freeze_groups, lr_schedule, make_optimizer, param_groups
from pipeline.train.transfer import init_weights, prepare_transfer
from support.models import MODS, batch

MODEL = {"fusion": "concat", "hidden": 16, "dropout": 0.0}
MODALITIES = {"image": {"size": [16, 16]}, "text": {"max_tokens": 8, "vocab_size": 300},
              "audio": {"sample_rate": 4000, "seconds": 0.25}}


def spec(**model):
    return spec_from_dict({"model": {**MODEL, **model}, "modalities": MODALITIES,
                           "train": {"epochs": 4, "lr": 0.01, "optimizer": "adamw", "weight_decay": 0.1}})


def classifier(s, seed=0):
    torch.manual_seed(seed)
    return MultimodalClassifier(s, 5)


def one_step(model, optimizer, scheduler, seed=0):
    b = batch(tuple(MODS), n=6, seed=seed)
    loss = torch.nn.functional.cross_entropy(model(b), torch.arange(6) % 5)
    apply_gradients(loss, model, optimizer, scheduler, grad_clip=1.0)


def build(s, loaded=frozenset()):
    model = classifier(s)
    groups = param_groups(model, s.train.lr, set(loaded), s.model.pretrained_lr_scale, s.model.frozen_epochs())
    optimizer = make_optimizer(s.train, groups)
    return model, optimizer, lr_schedule(s.train, optimizer, steps_per_epoch=2)


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_a_frozen_encoder_does_not_change_and_the_rest_does():
    s = spec(freeze={"image": True})
    model, optimizer, scheduler = build(s)
    assert freeze_groups(optimizer, scheduler, 0) == ["frozen.image"]
    model.set_frozen(["image"])
    before_image, before_audio = snapshot(model.encoders["image"]), snapshot(model.encoders["audio"])
    model.train()
    assert not model.encoders["image"].training and model.encoders["audio"].training  # BatchNorm stats fixed
    for step in range(2):
        one_step(model, optimizer, scheduler, seed=step)
    after_image = snapshot(model.encoders["image"])
    assert all(torch.equal(before_image[k], after_image[k]) for k in before_image)  # weights and BN statistics
    assert any(not torch.equal(before_audio[k], v) for k, v in snapshot(model.encoders["audio"]).items())


def test_freeze_for_k_epochs_then_fine_tune():
    s = spec(freeze={"audio": 2})
    model, optimizer, scheduler = build(s)
    for epoch in range(4):
        frozen = freeze_groups(optimizer, scheduler, epoch)
        model.set_frozen([g.split(".", 1)[1] for g in frozen])
        before = snapshot(model.encoders["audio"])
        model.train()
        one_step(model, optimizer, scheduler, seed=epoch)
        changed = any(not torch.equal(before[k], v) for k, v in snapshot(model.encoders["audio"]).items())
        assert frozen == (["frozen.audio"] if epoch < 2 else []) and changed == (epoch >= 2), epoch


def test_pretrained_weights_get_their_own_learning_rate():
    s = spec(pretrained_lr_scale=0.1)
    model = classifier(s)
    loaded = {k for k, _ in model.named_parameters() if k.startswith("encoders.")}
    groups = {g["name"]: g for g in param_groups(model, 0.01, loaded, 0.1)}
    assert set(groups) == {"new", "pretrained"}
    assert groups["new"]["lr"] == pytest.approx(0.01) and groups["pretrained"]["lr"] == pytest.approx(0.001)
    assert {id(p) for p in groups["pretrained"]["params"]} == {id(p) for k, p in model.named_parameters()
                                                               if k in loaded}
    optimizer = make_optimizer(s.train, list(groups.values()))
    scheduler = lr_schedule(s.train, optimizer, 2)
    freeze_groups(optimizer, scheduler, 0)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01, 0.001])  # "new" first: train's lr


def test_init_from_a_run_folder_a_file_and_a_registry(tmp_path):
    from pipeline.registry import Registry

    source = classifier(spec(), seed=5)
    state = {"model": source.state_dict(), "classes": list("abcde"), "spec": spec().model_dump(mode="json")}
    run = tmp_path / "run"
    run.mkdir()
    torch.save(state, run / "best.pt")
    registry = Registry(str(tmp_path / "registry"))
    version = registry.register((run / "best.pt").read_bytes(), "", {"name": "x"}, "run-1")
    for ref in (str(run), str(run / "best.pt"), f"{registry.uri}:{version}"):
        target = classifier(spec(init_from=ref))
        loaded = prepare_transfer(target, spec(init_from=ref), say=lambda _: None)
        assert loaded and torch.equal(target.encoders["text"].embed.weight, source.encoders["text"].embed.weight)
        assert not torch.equal(target.fusion.state_dict()[next(iter(target.fusion.state_dict()))],
                               source.fusion.state_dict()[next(iter(source.fusion.state_dict()))])  # encoders only


def test_init_from_reports_shape_mismatches_and_refuses_nothing_matching(tmp_path):
    small = classifier(spec(hidden=8))
    torch.save({"model": small.state_dict()}, tmp_path / "small.pt")
    said = []
    prepare_transfer(classifier(spec()), spec(init_from=str(tmp_path / "small.pt")), say=said.append)
    assert "shapes differ" in said[0] and "encoders.text.embed.weight: (300, 8) in" in said[0]
    torch.save({"model": {"encoders.text.embed.weight": torch.zeros(3, 3)}}, tmp_path / "none.pt")
    with pytest.raises(InitError, match=r"no encoders weights match.*\(3, 3\) in .*none.pt vs \(300, 16\)"):
        prepare_transfer(classifier(spec()), spec(init_from=str(tmp_path / "none.pt")), say=said.append)
    with pytest.raises(InitError, match="neither a file"):
        init_weights(str(tmp_path / "missing.pt"))
    torch.save({"model": {"a": [1, 2]}}, tmp_path / "odd.pt")
    with pytest.raises(InitError, match="holds no weights"):
        init_weights(str(tmp_path / "odd.pt"))


def test_init_parts_fusion_loads_the_head_too(tmp_path):
    source = classifier(spec(), seed=7)
    torch.save({"model": source.state_dict()}, tmp_path / "best.pt")
    s = spec(init_from=str(tmp_path / "best.pt"), init_parts=["encoders", "fusion"])
    target = classifier(s)
    loaded = prepare_transfer(target, s, say=lambda _: None)
    assert any(k.startswith("fusion.") for k in loaded)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in target.state_dict().items())


def test_spec_fields_and_the_old_name():
    with pytest.raises(SpecError, match="model.pretrained is now model.init_from"):
        spec_from_dict({"model": {"pretrained": "x/best.pt"}})
    assert spec_from_dict({"model": {"pretrained": None}}).model.init_from is None  # specs dumped before the rename
    with pytest.raises(SpecError, match="freeze"):
        spec_from_dict({"model": {"freeze": {"video": True}}})
    with pytest.raises(SpecError, match="freeze.audio"):
        spec_from_dict({"model": {"freeze": {"audio": 0}}})
    s = spec_from_dict({"model": {"freeze": {"audio": 3, "image": True, "text": False}}})
    assert s.model.frozen_epochs() == {"audio": 3.0, "image": math.inf}
    with pytest.raises(SpecError, match="label_fraction"):
        spec_from_dict({"train": {"label_fraction": 0}})


def test_freezing_without_pretrained_weights_is_warned_about():
    from pipeline.spec import spec_warnings

    assert any("randomly initialised" in w for w in spec_warnings(spec_from_dict({"model": {"freeze": {"audio": 2}}})))
    for quiet in ({"model": {"freeze": {"audio": 2}, "init_from": "runs/pre"}},
                  {"model": {"freeze": {"audio": 2}}, "workflow": {"steps": ["pretrain", "train"]}}):
        assert not any("randomly initialised" in w for w in spec_warnings(spec_from_dict(quiet)))

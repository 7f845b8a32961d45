"""model.hf: Hugging Face encoders from local folders. Every model here is a tiny random configuration written by the
test into tmp_path (tests/support/hf_models.py): nothing is downloaded."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
import torch
import yaml

from pipeline.data.stages.tokenize import HF_SHIFT, tokenize_batch
from pipeline.hf_local import HFError, load_model, load_tokenizer
from pipeline.model.checkpoint import load_model as load_checkpoint
from pipeline.model.classifier import MultimodalClassifier
from pipeline.model.hf_encoders import HFEncoder, ddp_options
from pipeline.spec import SpecError, TextSpec, spec_from_dict
from pipeline.spec_checks import job_from_dict, load_job
from pipeline.train.optim import apply_gradients, freeze_groups, lr_schedule, make_optimizer, param_groups
from pipeline.train.transfer import prepare_transfer
from support.hf_models import audio_folder, image_folder, text_folder

pytest.importorskip("transformers")  # the mmpipe[hf] extra; the test extra installs it

MODALITIES = {"image": {"size": [20, 20]}, "text": {"max_tokens": 12}, "audio": {"sample_rate": 16000, "seconds": 0.5}}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {"text": str(text_folder(root / "text")), "image": str(image_folder(root / "image", size=16)),
            "audio": str(audio_folder(root / "audio"))}


def make_spec(folders, **model):
    return spec_from_dict({"model": {"hidden": 16, "dropout": 0.0, "hf": folders, **model},
                           "modalities": MODALITIES})


def make_batch(texts, folder, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = tokenize_batch({"text_raw": np.array(texts, dtype=object)}, TextSpec(max_tokens=12), folder)["text"]
    return {"image": torch.randint(0, 256, (n, 20, 20, 3), dtype=torch.uint8, generator=g),
            "text": torch.as_tensor(ids), "audio": torch.randn(n, 8000, generator=g),
            "label": torch.arange(n) % 3, **{f"present_{m}": torch.ones(n, dtype=torch.bool) for m in MODALITIES}}


TEXTS = ["我们看到了太阳", "une photo de la forêt ce matin", "вот лес вечером", "look at that moon!"]


# ---------------------------------------------------------------- the spec

def _problems(tmp_path, model: dict, modalities: dict | None = None, **extra) -> str:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({"model": model, "modalities": modalities or MODALITIES, **extra}))
    with pytest.raises(SpecError) as err:
        load_job(spec_file, deep=False)
    return str(err.value)


def test_spec_errors_name_the_field(folders, tmp_path):
    assert "model.hf.vidoe: unknown field" in _problems(tmp_path, {"hf": {"vidoe": folders["image"]}})
    msg = _problems(tmp_path, {"hf": {"text": str(tmp_path / "nowhere")}})
    assert "model.hf.text" in msg and "nowhere is not a folder" in msg and "nothing is downloaded" in msg
    (tmp_path / "empty").mkdir()
    assert "model.hf.image" in _problems(tmp_path, {"hf": {"image": "empty"}}) and "no config.json" in \
        _problems(tmp_path, {"hf": {"image": "empty"}})
    assert "model.hf.audio: modalities.audio is disabled" in _problems(
        tmp_path, {"hf": {"audio": folders["audio"]}}, {**MODALITIES, "audio": None})
    # the tiny BERT has 64 positions; the wav2vec2 expects 16 kHz
    assert "modalities.text.max_tokens: 100 tokens, but the model of model.hf.text takes at most 64" in \
        _problems(tmp_path, {"hf": {"text": folders["text"]}}, {**MODALITIES, "text": {"max_tokens": 100}})
    assert "modalities.audio.sample_rate: 8000, but the model of model.hf.audio expects 16000 Hz" in \
        _problems(tmp_path, {"hf": {"audio": folders["audio"]}},
                  {**MODALITIES, "audio": {"sample_rate": 8000, "seconds": 0.5}})
    assert "augment.text.0: device op TokenReplace works on the built-in text encoder's input" in _problems(
        tmp_path, {"hf": {"text": folders["text"]}},
        augment={"backend": "device", "text": [{"name": "TokenReplace"}]})


def test_relative_folders_resolve_against_the_spec_file(folders, tmp_path):
    (tmp_path / "models").mkdir()
    text_folder(tmp_path / "models" / "bert")
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({"model": {"hf": {"text": "models/bert"}}, "modalities": MODALITIES}))
    spec = load_job(spec_file, deep=False)
    assert spec.model.hf.text == str(tmp_path / "models" / "bert")
    assert spec.model.hf.folders() == {"text": str(tmp_path / "models" / "bert")}
    assert ddp_options(spec) == {"parallel_strategy_kwargs": {"find_unused_parameters": True}}
    assert ddp_options(job_from_dict({})) == {}


def test_missing_package_and_missing_folder_are_clear_errors(folders, tmp_path, monkeypatch):
    with pytest.raises(HFError, match=r"model.hf.image: .*nowhere is not a folder"):
        load_model(str(tmp_path / "nowhere"), "model.hf.image")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    with pytest.raises(HFError, match=r"model.hf.text: cannot load a model from .*broken"):
        load_model(str(tmp_path / "broken"), "model.hf.text")
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(HFError, match=r"model.hf.audio needs the transformers package: pip install 'mmpipe\[hf\]'"):
        load_model(folders["audio"], "model.hf.audio")
    assert "needs the transformers package: pip install 'mmpipe[hf]'" in _problems(
        tmp_path, {"hf": {"audio": folders["audio"]}})


# ---------------------------------------------------------------- tokenize

def test_the_folder_tokenizer_makes_the_ids_and_unicode_survives(folders):
    tokenizer = load_tokenizer(folders["text"])
    batch = {"text_raw": np.array([*TEXTS, "", "zzz"], dtype=object),
             "present_text": np.array([True, True, True, True, False, True])}
    ids = tokenize_batch(batch, TextSpec(max_tokens=12), folders["text"])["text"]
    assert ids.shape == (6, 12) and ids.dtype == np.int64
    unk = tokenizer.unk_token_id + HF_SHIFT
    # Chinese: one token per character, each in the vocabulary, between [CLS] and [SEP]
    row = ids[0][ids[0] > 0] - HF_SHIFT
    assert tokenizer.convert_ids_to_tokens(row.tolist()) == ["[CLS]", *"我们看到了太阳", "[SEP]"]
    assert not (ids[:4] == unk).any()
    assert tokenizer.convert_ids_to_tokens((ids[1][ids[1] > 0] - HF_SHIFT).tolist())[5] == "forêt"
    assert (ids[4] == 0).all()  # absent text: all padding
    assert (ids[5][:3] == [tokenizer.cls_token_id + 1, unk, tokenizer.sep_token_id + 1]).all()
    long = tokenize_batch({"text_raw": np.array(["sun " * 40], dtype=object)}, TextSpec(max_tokens=12),
                          folders["text"])["text"]
    assert (long > 0).all() and long[0, -1] == tokenizer.sep_token_id + 1  # truncated to max_tokens


def test_a_broken_folder_file_and_offset_positions_are_spec_errors(tmp_path):
    """A half-copied config.json is a problem naming the field and the file; a RoBERTa-style model (positions
    numbered from pad_token_id + 1) takes 2 tokens fewer than max_position_embeddings says."""
    from transformers import RobertaConfig

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"model_type": "bert", "hidden', encoding="utf-8")
    msg = _problems(tmp_path, {"hf": {"text": "broken"}})
    assert "model.hf.text" in msg and "config.json is not valid JSON" in msg
    RobertaConfig(max_position_embeddings=514, pad_token_id=1).save_pretrained(tmp_path / "roberta")
    assert "modalities.text.max_tokens: 513 tokens, but the model of model.hf.text takes at most 512" in _problems(
        tmp_path, {"hf": {"text": "roberta"}}, {**MODALITIES, "text": {"max_tokens": 513}})


@pytest.mark.parametrize("variant", ["no pad token", "pads on the left"])
def test_any_tokenizer_gives_right_padded_ids(tmp_path, variant):
    """GPT-2-like tokenizers have no pad token (padding to max_length raised inside the read task) and some pad on
    the left: the ids are placed here, right-padded with 0, either way."""
    from support.hf_models import bert_tokenizer, demo_vocabulary

    text_folder(tmp_path / "tok")  # the model; its tokenizer replaced below
    tokenizer = bert_tokenizer(demo_vocabulary())
    if variant == "no pad token":
        tokenizer.pad_token = None
    else:
        tokenizer.padding_side = "left"
    tokenizer.save_pretrained(tmp_path / "tok")
    loaded = load_tokenizer(str(tmp_path / "tok"))
    assert (loaded.pad_token is None) == (variant == "no pad token")
    ids = tokenize_batch({"text_raw": np.array(["look at that moon!", None], dtype=object)}, TextSpec(max_tokens=12),
                         str(tmp_path / "tok"))["text"]
    row = ids[0][ids[0] > 0] - HF_SHIFT
    assert loaded.convert_ids_to_tokens(row.tolist())[0] == "[CLS]" and (ids[0][:len(row)] > 0).all()
    assert (ids[0][len(row):] == 0).all() and (ids[1] == 0).all()


# ---------------------------------------------------------------- the encoders

def test_forward_shapes_and_outputs_follow_the_input(folders):
    torch.manual_seed(0)
    model = MultimodalClassifier(make_spec(folders), 3).eval()
    assert all(isinstance(model.encoders[m], HFEncoder) for m in MODALITIES)
    a, b = make_batch(TEXTS, folders["text"]), make_batch(TEXTS[::-1], folders["text"], seed=1)
    assert model(a).shape == (4, 3)
    with torch.no_grad():
        for m in MODALITIES:
            out_a, out_b = model.encoders[m](a[m]), model.encoders[m](b[m])
            assert out_a.shape == (4, 16) and torch.isfinite(out_a).all()
            assert not torch.allclose(out_a, out_b, atol=1e-4), m  # a function of its input
            assert not torch.allclose(out_a[0], out_a[1], atol=1e-4), m  # and of each row's own
            assert torch.equal(out_a, model.encoders[m](a[m]))  # eval: deterministic
        # an absent text (all padding) is finite, and the same whatever else is in the batch
        empty = torch.zeros(2, 12, dtype=torch.long)
        assert torch.isfinite(model.encoders["text"](empty)).all()


def test_image_encoder_reads_the_preprocessor_config(folders):
    encoder = MultimodalClassifier(make_spec({"image": folders["image"]}), 3).encoders["image"]
    assert encoder.size == (16, 16)  # 20 x 20 inputs resized to the model's 16 x 16
    assert encoder.mean.flatten().tolist() == [0.5, 0.5, 0.5] and encoder.std.flatten().tolist() == [0.5] * 3


def _step(model, spec, batch):
    pretrained = prepare_transfer(model, spec, say=lambda _: None)
    optimizer = make_optimizer(spec.train, param_groups(model, spec.train.lr, pretrained,
                                                        spec.model.pretrained_lr_scale, spec.model.frozen_epochs()))
    scheduler = lr_schedule(spec.train, optimizer, 10)
    frozen = freeze_groups(optimizer, scheduler, 0)
    model.set_frozen([g.split(".", 1)[1] for g in frozen])
    model.train()
    loss = torch.nn.functional.cross_entropy(model(batch), batch["label"])
    apply_gradients(loss, model, optimizer, scheduler, None)
    return optimizer, pretrained


def test_frozen_hf_encoder_is_feature_extraction_and_its_head_learns(folders):
    spec = make_spec({"text": folders["text"]}, freeze={"text": True})
    torch.manual_seed(0)
    model = MultimodalClassifier(spec, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer, _ = _step(model, spec, make_batch(TEXTS, folders["text"]))
    text = model.encoders["text"]
    assert not text.backbone.training  # eval mode: no dropout, fixed statistics
    assert all(p.grad is None for p in text.backbone.parameters())  # no backward through it at all
    after = model.state_dict()
    backbone = [k for k in after if k.startswith("encoders.text.backbone.")]
    assert backbone and all(torch.equal(before[k], after[k]) for k in backbone)
    assert not torch.equal(before["encoders.text.head.weight"], after["encoders.text.head.weight"])
    assert not torch.equal(before["encoders.image.net.0.weight"], after["encoders.image.net.0.weight"])
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["frozen.text"]["lr"] == 0 and \
        {id(p) for p in groups["frozen.text"]["params"]} == {id(p) for p in text.backbone.parameters()}


def test_pretrained_lr_scale_applies_to_the_hf_weights(folders):
    spec = make_spec({"text": folders["text"], "audio": folders["audio"]}, pretrained_lr_scale=0.1)
    torch.manual_seed(0)
    model = MultimodalClassifier(spec, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer, pretrained = _step(model, spec, make_batch(TEXTS, folders["text"]))
    hf = {n for n, _ in model.named_parameters() if ".backbone." in n}
    assert pretrained == hf and hf
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["pretrained"]["lr"] == pytest.approx(0.1 * groups["new"]["lr"])
    assert {id(p) for p in groups["pretrained"]["params"]} == {id(p) for n, p in model.named_parameters() if n in hf}
    # fine-tuned: the backbone moved, with gradients
    moved = [n for n in hf if not torch.equal(before[n], model.state_dict()[n])]
    assert "encoders.text.backbone.embeddings.word_embeddings.weight" in moved


def test_checkpoint_round_trip_keeps_the_hf_weights(folders):
    spec = make_spec(folders)
    torch.manual_seed(0)
    model = MultimodalClassifier(spec, 3)
    with torch.no_grad():  # weights unlike the folder's: the checkpoint, not the folder, must give them back
        model.encoders["text"].backbone.embeddings.word_embeddings.weight.add_(1.0)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "spec": spec.model_dump(mode="json"), "classes": ["a", "b", "c"]}, buf)
    again, spec_again, classes = load_checkpoint(buf.getvalue())  # weights_only=True
    assert spec_again.model.hf == spec.model.hf and classes == ["a", "b", "c"]
    batch = make_batch(TEXTS, folders["text"])
    with torch.no_grad():
        assert torch.allclose(model.eval()(batch), again(batch))


def test_contrastive_pretraining_trains_the_hf_encoders_too(folders):
    from pipeline.model.contrastive import ContrastiveModel

    torch.manual_seed(0)
    model = ContrastiveModel(make_spec({"text": folders["text"], "image": folders["image"]}))
    loss, parts = model(make_batch(TEXTS, folders["text"]))
    loss.backward()
    assert torch.isfinite(loss) and {"image-text", "image-audio", "text-audio"} <= set(parts)
    assert model.encoders["text"].backbone.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert model.encoders["image"].backbone.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0


def test_hf_problems_come_with_the_others_at_once(tmp_path):
    msg = _problems(tmp_path, {"hf": {"text": "nowhere"}},
                    augment={"backend": "cpu", "image": [{"name": "HorizontalFlipp"}]})
    assert "2 problem(s)" in msg and "augment.image.0: unknown" in msg and "model.hf.text" in msg


def test_other_architectures_a_cnn_and_a_roberta_with_pad_id_1(tmp_path):
    from transformers import ResNetConfig, ResNetModel, RobertaConfig, RobertaModel

    from support.hf_models import bert_tokenizer, demo_vocabulary

    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])).save_pretrained(tmp_path / "cnn")
    vocabulary = demo_vocabulary()
    RobertaModel(RobertaConfig(vocab_size=len(vocabulary), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=40, pad_token_id=1)
                 ).save_pretrained(tmp_path / "roberta")
    bert_tokenizer(vocabulary).save_pretrained(tmp_path / "roberta")
    model = MultimodalClassifier(make_spec({"image": str(tmp_path / "cnn"), "text": str(tmp_path / "roberta")}), 3)
    a, b = make_batch(TEXTS, str(tmp_path / "roberta")), make_batch(TEXTS[::-1], str(tmp_path / "roberta"), seed=1)
    with torch.no_grad():
        for m in ("image", "text"):  # the CNN's (B, C, h, w) states pooled over space
            out_a, out_b = model.eval().encoders[m](a[m]), model.encoders[m](b[m])
            assert out_a.shape == (4, 16) and torch.isfinite(out_a).all() and not torch.allclose(out_a, out_b)

"""Augmentation stage without Ray: each family changes what it should, keeps shapes; seeded per (seed, epoch, key)."""

import numpy as np
import pytest

from pipeline.data.stages.augment.stage import augment_batch
from pipeline.data.stages.tokenize import encode_batch, tokenize_batch
from pipeline.spec import SpecError, TextSpec
from pipeline.spec_checks import job_from_dict as spec_from_dict

TEXTS = ["the quick brown fox", "一只敏捷的狐狸跳过了懒狗", "Быстрая лиса", ""]


def aligned_batch(n=4):
    rng = np.random.default_rng(0)
    t = np.arange(8000) / 8000
    audio = np.stack([0.3 * np.sin(2 * np.pi * 440 * t)] * n).astype(np.float32)
    present_text = np.array([bool(s) for s in TEXTS[:n]])
    return {
        "__key__": np.array([f"k{i}" for i in range(n)], dtype=object),
        "image": rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8),
        "audio": audio * np.array([1, 1, 1, 0], dtype=np.float32)[:n, None],
        "text_raw": np.array(TEXTS[:n], dtype=object),
        "text": encode_batch([s or None for s in TEXTS[:n]], TextSpec(max_tokens=24)),
        "label": np.arange(n) % 2,
        "present_image": np.array([True, True, True, False])[:n],
        "present_audio": np.array([True, True, True, False])[:n],
        "present_text": present_text,
    }


def spec(**augment):
    raw = {"modalities": {"image": {"size": [16, 16]}, "text": {"max_tokens": 24},
                          "audio": {"sample_rate": 8000, "seconds": 1.0}},
           "augment": {"seed": 7, **augment}}
    return spec_from_dict(raw)


def run(s, batch, epoch=0):
    return augment_batch(batch, s.augment, s.modalities, epoch)


def test_image_family_changes_only_images_and_keeps_shape():
    batch = aligned_batch()
    batch["image"][3] = 0
    out = run(spec(image=[{"name": "HorizontalFlip", "p": 1.0}]), batch)
    assert out["image"].shape == batch["image"].shape and out["image"].dtype == np.uint8
    assert np.array_equal(out["image"][:3], batch["image"][:3, :, ::-1])
    assert not out["image"][3].any()  # absent image stays zeros
    assert out["audio"] is batch["audio"] and out["text"] is batch["text"]


def test_crop_defaults_to_aligned_size():
    batch = aligned_batch()
    out = run(spec(image=[{"name": "RandomResizedCrop", "p": 1.0, "params": {"scale": [0.3, 0.5]}}]), batch)
    assert out["image"].shape == (4, 16, 16, 3)
    assert not np.array_equal(out["image"][0], batch["image"][0])


def test_audio_family_changes_audio_keeps_length_and_dtype():
    batch = aligned_batch()
    out = run(spec(audio=[{"name": "Gain", "p": 1.0, "params": {"min_gain_db": -12, "max_gain_db": -6}},
                          {"name": "TimeStretch", "p": 1.0, "params": {"leave_length_unchanged": False}}]), batch)
    assert out["audio"].shape == batch["audio"].shape and out["audio"].dtype == np.float32
    assert np.abs(out["audio"][:3]).max() < np.abs(batch["audio"][:3]).max()
    assert np.isfinite(out["audio"]).all() and not out["audio"][3].any()


def test_text_family_keeps_unicode_valid_and_leaves_tokenizing_to_the_next_stage():
    batch = aligned_batch()
    out = run(spec(text=[{"name": "RandomCharAug", "p": 1.0, "params": {"action": "swap"}},
                         {"name": "RandomWordAug", "p": 1.0, "params": {"action": "swap"}}]), batch)
    texts = list(out["text_raw"])
    assert texts[0] != TEXTS[0] and texts[3] == ""
    for text in texts:
        assert text.encode("utf-8").decode("utf-8") == text and "\ufffd" not in text
    assert any("\u4e00" <= ch <= "\u9fff" for ch in texts[1])  # Chinese survives as Chinese
    assert "text" not in out  # the ids of the text before augmentation would be stale
    s = spec()
    assert np.array_equal(tokenize_batch(out, s.modalities.text)["text"],
                          encode_batch([t or None for t in texts], TextSpec(max_tokens=24)))
    assert out["image"] is batch["image"]


def test_seeded_per_epoch_and_key():
    s = spec(image=[{"name": "RandomResizedCrop", "p": 1.0}, {"name": "ColorJitter", "p": 1.0}],
             audio=[{"name": "AddGaussianNoise", "p": 1.0}],
             text=[{"name": "KeyboardAug", "p": 1.0}])
    batch = aligned_batch()
    a, b, c = run(s, batch, epoch=0), run(s, batch, epoch=0), run(s, batch, epoch=1)
    for col in ("image", "audio", "text_raw"):
        assert np.array_equal(a[col], b[col]), col
        assert not np.array_equal(a[col], c[col]), col
    other_seed = spec(**{**s.augment.model_dump(), "seed": 8})
    assert not np.array_equal(run(other_seed, batch)["image"], a["image"])
    copies = dict(batch, copy=np.array([1, 1, 1, 1]))
    assert not np.array_equal(run(s, copies)["image"], a["image"])  # oversampled copies differ


def test_disabled_augment_is_identity():
    batch = aligned_batch()
    out = run(spec(enabled=False, image=[{"name": "HorizontalFlip", "p": 1.0}]), batch)
    assert out is batch


@pytest.mark.parametrize("augment, expected", [
    ({"image": [{"name": "HorizontalFlp"}]}, "augment.image.0: unknown albumentations transform 'HorizontalFlp' "
                                              "(did you mean HorizontalFlip?)"),
    ({"image": [{"name": "Blur", "params": {"blur_lim": 3}}]}, "augment.image.0: Blur(blur_lim=3, p=1.0)"),
    ({"image": [{"name": "Resize", "params": {"height": 8, "width": 8}}]}, "changes the aligned image"),
    ({"audio": [{"name": "HorizontalFlip"}]}, "augment.audio.0: unknown audiomentations transform"),
    ({"audio": [{"name": "Gain", "params": {"min_gain_db": 3, "max_gain_db": -3}}]}, "augment.audio.0"),
    ({"text": [{"name": "KeyboardAug"}, {"name": "SynonymAug"}]}, "augment.text.1: SynonymAug needs the NLTK"),
    ({"text": [{"name": "RandomWordAug", "params": {"action": "explode"}}]}, "augment.text.0"),
    ({"image": [{"name": "HorizontalFlip", "p": 2}]}, "augment.image.0.p"),
])
def test_spec_errors_name_the_field(augment, expected):
    with pytest.raises(SpecError) as e:
        spec(**augment)
    assert expected in str(e.value)


def test_transforms_for_a_disabled_modality_are_an_error():
    with pytest.raises(SpecError, match="augment.audio: audio transforms listed but modalities.audio is disabled"):
        spec_from_dict({"modalities": {"audio": None}, "augment": {"audio": [{"name": "Gain"}]}})

"""The audio encoder's pieces for voices it has not heard: per-clip normalisation of the log-mel features and
SpecAugment masks (model.spec_augment), on real FSDD clips (tests/fixtures/fsdd)."""

import numpy as np
import pytest
import soundfile as sf
import torch

from pipeline.data.stages.align import fit_audio
from pipeline.model.encoders import AudioEncoder, SpecAugment, band_mask
from pipeline.spec import JobSpec, SpecAugmentSpec, SpecError, spec_from_dict
from support import FIXTURES

MASKS = SpecAugmentSpec(time_masks=2, time_width=20, freq_masks=2, freq_width=8)


def clips(*names: str) -> torch.Tensor:
    """Real recordings at 8 kHz, fitted to 1 s as the sample path does."""
    waves = []
    for name in names:
        wave, rate = sf.read(FIXTURES / "fsdd" / f"{name}.wav", dtype="float32")
        waves.append(fit_audio(wave, rate, 8000, 8000, "start", None))
    return torch.from_numpy(np.stack(waves))


def encoder(masks: SpecAugmentSpec | None = None) -> AudioEncoder:
    torch.manual_seed(0)
    return AudioEncoder(hidden=16, sample_rate=8000, width=4, masks=masks)


def test_features_are_normalised_per_clip_and_invariant_to_gain():
    enc = encoder()
    wave = clips("3_jackson_0", "1_theo_7", "0_nicolas_12")
    feats = enc.features(wave)
    assert feats.shape == (3, 126, 40)
    assert torch.allclose(feats.mean(dim=(1, 2)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(feats.std(dim=(1, 2)), torch.ones(3), atol=1e-3)
    # a quiet speaker and a loud one: 40 dB quieter or 12 dB louder gives the same features
    for gain in (0.01, 4.0):
        assert torch.allclose(enc.features(wave * gain), feats, atol=2e-3), gain
    # per clip: a row's features do not depend on the rest of the batch
    assert torch.allclose(enc.features(wave[1:2] * 0.01), feats[1:2], atol=2e-3)


def test_band_mask_draws_bands_within_their_bounds():
    g = torch.Generator().manual_seed(1)
    mask = band_mask(500, 126, count=1, max_width=20, generator=g)
    widths = mask.sum(1)
    assert widths.max() <= 20 and widths.min() == 0 and len(set(widths.tolist())) > 10
    # one band: the masked positions are contiguous
    for row in mask[:50]:
        hit = torch.nonzero(row).flatten()
        assert len(hit) == 0 or hit[-1] - hit[0] + 1 == len(hit)
    assert band_mask(4, 10, count=3, max_width=50, generator=g).shape == (4, 10)  # width capped at the axis
    assert not band_mask(4, 10, count=0, max_width=5).any() and not band_mask(4, 10, count=2, max_width=0).any()


def test_spec_augment_masks_only_in_train_mode_and_repeats_with_the_seed():
    feats = encoder().features(clips("3_jackson_0", "1_theo_7", "2_nicolas_0", "0_theo_12"))
    augment = SpecAugment(MASKS)
    augment.eval()
    assert torch.equal(augment(feats), feats)
    augment.train()
    first = augment(feats, torch.Generator().manual_seed(7))
    again = augment(feats, torch.Generator().manual_seed(7))
    other = augment(feats, torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)
    masked = (first == 0) & (feats != 0)
    assert masked.any(dim=(1, 2)).all()            # every clip has some masked features
    assert masked.float().mean() < 0.6             # ... but far from all
    torch.manual_seed(3)                           # without a generator: torch's RNG, which training seeds
    seeded = augment(feats)
    torch.manual_seed(3)
    assert torch.equal(augment(feats), seeded)
    assert torch.equal(SpecAugment(SpecAugmentSpec()).train()(feats), feats)  # no masks listed: unchanged


def test_encoder_masks_while_training_and_evaluates_unchanged():
    wave = clips("3_jackson_0", "1_theo_7", "2_nicolas_0", "0_theo_12")
    plain, masked = encoder(), encoder(MASKS)
    assert masked.state_dict().keys() == plain.state_dict().keys()  # no new weights: old checkpoints load
    plain.eval(), masked.eval()
    with torch.no_grad():
        assert torch.equal(masked(wave), plain(wave))
    plain.train(), masked.train()
    torch.manual_seed(0)
    with torch.no_grad():
        assert not torch.allclose(masked(wave), plain(wave))


def test_spec_augment_fields_are_validated_with_their_path():
    spec = JobSpec.model_validate({"model": {"spec_augment": {"time_masks": 2, "freq_width": 4}}})
    assert spec.model.spec_augment.time_masks == 2 and spec.model.spec_augment.time_width == 20
    assert JobSpec().model.spec_augment.time_masks == 0  # off unless asked for
    with pytest.raises(SpecError, match=r"model\.spec_augment\.time_masks: .*greater than or equal to 0"):
        spec_from_dict({"model": {"spec_augment": {"time_masks": -1}}})
    with pytest.raises(SpecError, match=r"model\.spec_augment\.freq_widht: unknown field \(did you mean freq_width"):
        spec_from_dict({"model": {"spec_augment": {"freq_widht": 4}}})

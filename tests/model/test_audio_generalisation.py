"""The audio encoder's pieces for voices it has not heard: per-clip normalisation of the log-mel features,
SpecAugment masks (model.spec_augment) and vocal-tract-length perturbation (model.vtlp), on real FSDD clips
(tests/fixtures/fsdd)."""

import numpy as np
import pytest
import soundfile as sf
import torch

from pipeline.data.stages.align import fit_audio
from pipeline.model.encoders import VTLP, AudioEncoder, SpecAugment, band_mask, normalise, warp_sources
from pipeline.spec import JobSpec, SpecAugmentSpec, SpecError, VTLPSpec, spec_from_dict
from support import FIXTURES

MASKS = SpecAugmentSpec(time_masks=2, time_width=20, freq_masks=2, freq_width=8)


def clips(*names: str) -> torch.Tensor:
    """Real recordings at 8 kHz, fitted to 1 s as the sample path does."""
    waves = []
    for name in names:
        wave, rate = sf.read(FIXTURES / "fsdd" / f"{name}.wav", dtype="float32")
        waves.append(fit_audio(wave, rate, 8000, 8000, "start", None))
    return torch.from_numpy(np.stack(waves))


def encoder(masks: SpecAugmentSpec | None = None, vtlp: VTLPSpec | None = None, norm: str = "clip") -> AudioEncoder:
    torch.manual_seed(0)
    return AudioEncoder(hidden=16, sample_rate=8000, width=4, masks=masks, vtlp=vtlp, norm=norm)


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


def test_vtlp_warp_is_piecewise_linear_and_keeps_zero_and_nyquist():
    source = warp_sources(torch.tensor([0.8, 1.0, 1.25]), 129, boundary=0.8)
    assert source.shape == (3, 129)
    assert torch.equal(source[:, 0], torch.zeros(3)) and torch.allclose(source[:, -1], torch.full((3,), 128.0))
    assert (source[:, 1:] > source[:, :-1]).all()                      # monotone: no bin read twice
    assert torch.allclose(source[1], torch.arange(129.0))              # factor 1: the identity
    # below the boundary output bin f reads bin f / a: a formant at bin 40 appears at 40 a
    assert torch.allclose(source[0, 32], torch.tensor(40.0)) and torch.allclose(source[2, 50], torch.tensor(40.0))


def test_vtlp_moves_a_spectral_peak_by_the_drawn_factor_only_while_training():
    power = torch.zeros(64, 3, 129)
    power[:, :, 40] = 1.0                                              # one peak at bin 40 in every clip and frame
    vtlp = VTLP(VTLPSpec(warp=0.2)).train()
    warped = vtlp(power, torch.Generator().manual_seed(5))
    assert torch.equal(warped, vtlp(power, torch.Generator().manual_seed(5)))    # seeded: repeats
    peak = warped[:, 0].argmax(1).float()
    assert ((peak >= 40 * 0.8 - 1) & (peak <= 40 * 1.2 + 1)).all()
    assert peak.min() < 36 and peak.max() > 44                         # shorter and longer vocal tracts drawn
    assert torch.equal(warped[:, 0], warped[:, 2])                     # one factor per clip, every frame alike
    assert torch.equal(vtlp.eval()(power), power)
    assert torch.equal(VTLP(VTLPSpec()).train()(power), power)         # warp 0 (the default): unchanged


def test_encoder_warps_real_clips_while_training_and_evaluates_unchanged():
    wave = clips("3_jackson_0", "1_theo_7", "2_nicolas_0", "0_theo_12")
    plain, warped = encoder(), encoder(vtlp=VTLPSpec(warp=0.15))
    assert warped.state_dict().keys() == plain.state_dict().keys()   # no new weights: old checkpoints load
    plain.eval(), warped.eval()
    assert torch.equal(warped.features(wave), plain.features(wave))
    warped.train()
    torch.manual_seed(1)
    feats = warped.features(wave)
    assert not torch.allclose(feats, plain.features(wave), atol=1e-2)
    assert torch.allclose(feats.mean(dim=(1, 2)), torch.zeros(4), atol=1e-4)  # still normalised per clip


def test_vtlp_fields_are_validated_with_their_path():
    assert JobSpec().model.vtlp.warp == 0.0                            # off unless asked for
    assert JobSpec.model_validate({"model": {"vtlp": {"warp": 0.1}}}).model.vtlp.boundary == 0.8
    with pytest.raises(SpecError, match=r"model\.vtlp\.warp: .*less than or equal to 0\.4"):
        spec_from_dict({"model": {"vtlp": {"warp": 0.5}}})
    with pytest.raises(SpecError, match=r"model\.vtlp\.boundary: .*less than 1"):
        spec_from_dict({"model": {"vtlp": {"boundary": 1.0}}})


def test_band_normalisation_removes_a_fixed_spectral_tilt():
    logmel = torch.randn(3, 126, 40)
    tilt = torch.linspace(-2.0, 2.0, 40)                               # a voice or channel's fixed EQ, per band
    for norm in ("band", "band_mean"):
        assert torch.allclose(normalise(logmel + tilt, norm), normalise(logmel, norm), atol=1e-5), norm
    assert not torch.allclose(normalise(logmel + tilt, "clip"), normalise(logmel, "clip"), atol=0.1)
    feats = normalise(logmel, "band")
    assert torch.allclose(feats.mean(1), torch.zeros(3, 40), atol=1e-5)
    assert torch.allclose(feats.std(1), torch.ones(3, 40), atol=1e-3)
    assert torch.allclose(normalise(logmel, "band_mean").std(dim=(1, 2)), torch.ones(3), atol=1e-3)


def test_band_normalised_encoder_on_real_clips_keeps_its_weights_and_gain_invariance():
    wave = clips("3_jackson_0", "1_theo_7", "0_nicolas_12")
    plain, band = encoder(), encoder(norm="band")
    assert band.state_dict().keys() == plain.state_dict().keys()       # no new weights: checkpoints load either way
    feats = band.features(wave)
    assert torch.allclose(feats.mean(1), torch.zeros(3, 40), atol=1e-3)
    assert torch.allclose(band.features(wave * 0.01), feats, atol=2e-3)
    # pre-emphasis (about +20 dB from low to high bands) moves band-normalised features less than clip-normalised
    tilted = torch.cat([wave[:, :1], wave[:, 1:] - 0.9 * wave[:, :-1]], 1)
    moved = {n: (e.features(tilted) - e.features(wave)).abs().mean() for n, e in (("clip", plain), ("band", band))}
    assert moved["band"] < 0.85 * moved["clip"], moved


def test_audio_norm_is_validated_with_its_path():
    assert JobSpec().model.audio_norm == "clip"                        # the whole-clip normalisation by default
    with pytest.raises(SpecError, match=r"model\.audio_norm: .*'clip', 'band' or 'band_mean'"):
        spec_from_dict({"model": {"audio_norm": "bands"}})

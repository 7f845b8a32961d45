"""Test-time BatchNorm adaptation (model.adapt_batchnorm, pipeline/model/adapt.py) and the audio encoder's band
BatchNorm (model.audio_band_batchnorm), on real FSDD clips (tests/fixtures/fsdd): the statistics a scored set
gets, what stays untouched, and the two places that use it without Ray (trainer.evaluate, predict's adapted
checkpoint)."""

import io

import numpy as np
import pytest
import soundfile as sf
import torch

from pipeline.data.stages.align import fit_audio
from pipeline.model.adapt import adapt_batchnorm, batchnorms
from pipeline.model.checkpoint import load_model, read_checkpoint
from pipeline.model.classifier import MultimodalClassifier
from pipeline.predict import adapted_checkpoint
from pipeline.spec import spec_from_dict
from pipeline.train.trainer import evaluate
from support import FIXTURES

CLASSES = [str(d) for d in range(4)]


def spec(**model):
    return spec_from_dict({"model": {"fusion": "audio_only", "hidden": 16, "audio_width": 4, **model},
                           "modalities": {"audio": {"sample_rate": 8000, "seconds": 1.0}}})


def classifier(**model) -> MultimodalClassifier:
    torch.manual_seed(0)
    return MultimodalClassifier(spec(**model), len(CLASSES))


def speaker_clips(speaker: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(waves (N, 8000), digit labels) of one fixture speaker's recordings."""
    waves, labels = [], []
    for path in sorted((FIXTURES / "fsdd").glob(f"*_{speaker}_*.wav")):
        wave, rate = sf.read(path, dtype="float32")
        waves.append(fit_audio(wave, rate, 8000, 8000, "start", None))
        labels.append(int(path.name.split("_")[0]))
    return torch.from_numpy(np.stack(waves)), torch.tensor(labels)


def batches(waves: torch.Tensor, labels: torch.Tensor, sizes: list[int]) -> list[dict]:
    out, start = [], 0
    for n in sizes:
        out.append({"audio": waves[start:start + n], "present_audio": torch.ones(n, dtype=torch.bool),
                    "label": labels[start:start + n]})
        start += n
    assert start == len(waves)
    return out


def test_adapted_statistics_are_the_scored_sets_and_the_model_is_untouched():
    model = classifier(audio_band_batchnorm=True, spec_augment={"time_masks": 2, "freq_masks": 2},
                       vtlp={"warp": 0.2}, dropout=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    waves, labels = speaker_clips("theo")
    # unequal batches: each counts by its rows, so the mean is exactly the set's
    adapted = adapt_batchnorm(model, batches(waves, labels, [9, 2, 1]))
    enc = adapted.encoders["audio"]
    assert not adapted.training and not any(m.training for m in adapted.modules())
    with torch.no_grad():  # the features as they reach the band BatchNorm (they have no weights)
        feats = classifier().encoders["audio"].features(waves)       # (N, frames, mels)
    assert torch.allclose(enc.band_bn.running_mean, feats.mean(dim=(0, 1)), atol=1e-4)
    # SpecAugment, VTLP and dropout stayed off: a second adaptation is the same to the last bit
    again = adapt_batchnorm(model, batches(waves, labels, [9, 2, 1]))
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), adapted.state_dict().values()))
    # only BatchNorm statistics moved; the weights (and the model adapted from) are unchanged
    changed = {k for k, v in adapted.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    assert {k for k in changed if "band_bn" in k} and {k for k in changed if ".net." in k}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_band_batchnorm_is_absent_unless_asked():
    assert spec().model.audio_band_batchnorm is False and spec().model.adapt_batchnorm is False
    assert not [k for k in classifier().state_dict() if "band_bn" in k]  # older checkpoints load unchanged
    names = [k for k in classifier(audio_band_batchnorm=True).state_dict() if "band_bn" in k]
    assert names == ["encoders.audio.band_bn.running_mean", "encoders.audio.band_bn.running_var",
                     "encoders.audio.band_bn.num_batches_tracked"]


def test_adaptation_fails_clearly_with_nothing_to_adapt():
    model = classifier()
    with pytest.raises(ValueError, match="no rows"):
        adapt_batchnorm(model, [])
    for bn in batchnorms(model):
        bn.track_running_stats = False
    with pytest.raises(ValueError, match="without running statistics"):
        adapt_batchnorm(model, [])
    with pytest.raises(ValueError, match="no BatchNorm"):
        adapt_batchnorm(torch.nn.Linear(2, 2), [])


class FakeDataset:
    """What trainer.evaluate reads of a Ray dataset, over in-memory batches."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def select_columns(self, columns):
        return FakeDataset([{c: b[c] for c in columns} for b in self.rows])

    def iter_torch_batches(self, batch_size, drop_last):
        return iter(self.rows)


def trained_on(waves, labels) -> MultimodalClassifier:
    """A few steps on one voice, so that the BatchNorm statistics are that voice's."""
    model = classifier(audio_band_batchnorm=True)
    opt = torch.optim.AdamW(model.parameters(), 0.01)
    model.train()
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(batches(waves, labels, [len(waves)])[0]), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_evaluate_adapts_a_copy_when_the_spec_says_so():
    train_waves, train_labels = speaker_clips("jackson")
    keep = train_labels < 4
    model = trained_on(train_waves[keep], train_labels[keep])
    waves, labels = speaker_clips("nicolas")
    keep = labels < 4
    test = FakeDataset(batches(waves[keep], labels[keep], [5, int(keep.sum()) - 5]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = evaluate(model, test, spec(audio_band_batchnorm=True), CLASSES, "test")
    adapted = evaluate(model, test, spec(audio_band_batchnorm=True, adapt_batchnorm=True), CLASSES, "test")
    assert plain["test.confusion"] != adapted["test.confusion"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    expected = adapt_batchnorm(model, test.rows)
    with torch.no_grad():
        pred = torch.cat([expected(b).argmax(1) for b in test.rows])
    confusion = np.zeros((4, 4), dtype=int)
    for t, p in zip(labels[keep].tolist(), pred.tolist()):
        confusion[t, p] += 1
    assert adapted["test.confusion"] == confusion.tolist()


class FakeSplit:
    """What predict's adaptation pass reads: numpy batches with drop_reason ("" = kept)."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def iter_batches(self, batch_size, batch_format):
        return iter(self.rows)


def test_predict_adapts_on_the_kept_rows_only():
    model = classifier(audio_band_batchnorm=True)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "classes": CLASSES,
                "spec": spec(audio_band_batchnorm=True, adapt_batchnorm=True).model_dump(mode="json")}, buffer)
    waves, _ = speaker_clips("theo")
    loud = torch.randn(2, 8000) * 5.0           # rejected rows: they must not count
    rows = [{"audio": np.concatenate([waves[:6].numpy(), loud.numpy()]),
             "present_audio": np.ones(8, dtype=bool), "label": np.full(8, -1),
             "drop_reason": np.array([""] * 6 + ["decode_error"] * 2, dtype=object)},
            {"audio": waves[6:].numpy(), "present_audio": np.ones(len(waves) - 6, dtype=bool),
             "label": np.full(len(waves) - 6, -1), "drop_reason": np.array([""] * (len(waves) - 6), dtype=object)}]
    out = adapted_checkpoint(buffer.getvalue(), FakeSplit(rows), batch_size=8)
    state = read_checkpoint(out)                # weights_only=True
    assert state["classes"] == CLASSES
    expected = adapt_batchnorm(model, [{"audio": waves[:6], "present_audio": torch.ones(6, dtype=torch.bool)},
                                       {"audio": waves[6:], "present_audio": torch.ones(len(waves) - 6,
                                                                                        dtype=torch.bool)}])
    for k, v in expected.state_dict().items():
        assert torch.allclose(state["model"][k].float(), v.float()), k
    reloaded, _, _ = load_model(out)
    assert torch.equal(reloaded.encoders["audio"].band_bn.running_mean,
                       expected.encoders["audio"].band_bn.running_mean)

"""Pitch and tempo augmentation (audiomentations PitchShift, TimeStretch) through the spec's augment.audio list, on
a real FSDD recording: what each does to the voice, seeded per row, length kept, bad settings named at spec load."""

import numpy as np
import pytest
import soundfile as sf

from pipeline.data.stages.align import fit_audio
from pipeline.data.stages.augment.stage import augment_batch
from pipeline.spec import SpecError
from pipeline.spec_checks import job_from_dict
from support import FIXTURES

RATE = 8000


def recording(name: str = "3_jackson_0") -> np.ndarray:
    wave, rate = sf.read(FIXTURES / "fsdd" / f"{name}.wav", dtype="float32")
    return fit_audio(wave, rate, RATE, RATE, "start", None)


def batch_of(wave: np.ndarray, n: int = 3) -> dict:
    return {"__key__": np.array([f"k{i}" for i in range(n)], dtype=object), "audio": np.stack([wave] * n),
            "label": np.zeros(n, dtype=np.int64), "present_audio": np.ones(n, dtype=bool)}


def augment(audio: list[dict], batch: dict, epoch: int = 0) -> np.ndarray:
    spec = job_from_dict({"modalities": {"image": None, "text": None, "audio": {"sample_rate": RATE}},
                          "augment": {"seed": 3, "audio": audio}})
    return augment_batch(batch, spec.augment, spec.modalities, epoch)["audio"]


def centroid(wave: np.ndarray) -> float:
    """Spectral centroid in Hz: where the voice's energy sits."""
    power = np.abs(np.fft.rfft(wave)) ** 2
    return float((np.fft.rfftfreq(len(wave), 1 / RATE) * power).sum() / power.sum())


def voiced_seconds(wave: np.ndarray) -> float:
    """From the start to the last 20 ms frame within 30 dB of the loudest one."""
    frames = np.abs(wave[: len(wave) // 160 * 160]).reshape(-1, 160).max(1)
    return (np.flatnonzero(frames > frames.max() * 10 ** (-30 / 20))[-1] + 1) * 0.02


def test_pitch_shift_moves_the_voice_up_or_down_and_keeps_the_length():
    wave = recording()
    up = augment([{"name": "PitchShift", "p": 1.0, "params": {"min_semitones": 5, "max_semitones": 5}}],
                 batch_of(wave))
    down = augment([{"name": "PitchShift", "p": 1.0, "params": {"min_semitones": -5, "max_semitones": -5}}],
                   batch_of(wave))
    assert up.shape == down.shape == (3, RATE) and up.dtype == np.float32
    assert centroid(up[0]) > 1.2 * centroid(wave) and centroid(down[0]) < 0.85 * centroid(wave)
    assert abs(voiced_seconds(up[0]) - voiced_seconds(wave)) <= 0.06  # same duration


def test_time_stretch_changes_the_tempo_within_the_aligned_length():
    wave = recording()
    assert voiced_seconds(wave) < 0.7  # room to slow down inside the 1 s window
    fast = augment([{"name": "TimeStretch", "p": 1.0, "params": {"min_rate": 1.25, "max_rate": 1.25,
                                                                  "leave_length_unchanged": False}}], batch_of(wave))
    slow = augment([{"name": "TimeStretch", "p": 1.0, "params": {"min_rate": 0.8, "max_rate": 0.8,
                                                                  "leave_length_unchanged": False}}], batch_of(wave))
    assert fast.shape == slow.shape == (3, RATE)
    assert voiced_seconds(fast[0]) < 0.9 * voiced_seconds(wave) < voiced_seconds(wave) < \
        0.95 * voiced_seconds(slow[0])


def test_pitch_and_tempo_are_seeded_per_row_and_epoch():
    chain = [{"name": "PitchShift", "p": 0.8, "params": {"min_semitones": -4, "max_semitones": 4}},
             {"name": "TimeStretch", "p": 0.5, "params": {"min_rate": 0.8, "max_rate": 1.25}}]
    batch = batch_of(recording(), n=6)
    first, again, later = augment(chain, batch), augment(chain, batch), augment(chain, batch, epoch=1)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, later)
    assert len({row.tobytes() for row in first}) > 3  # rows differ: each has its own draw


@pytest.mark.parametrize("transform, expected", [
    ({"name": "PitchShift", "params": {"min_semitones": 4, "max_semitones": -4}},
     "augment.audio.0: PitchShift(min_semitones=4, max_semitones=-4, p=1.0): min_semitones must not be greater"),
    ({"name": "PitchShift", "params": {"semitones": 3}}, "augment.audio.0: PitchShift(semitones=3, p=1.0)"),
    ({"name": "TimeStretch", "params": {"min_rate": 0.01}}, "augment.audio.0: TimeStretch(min_rate=0.01"),
    ({"name": "PitchShift", "params": {"method": "rubberband"}}, 'method must be set to either'),
    ({"name": "TimeStrech"}, "unknown audiomentations transform 'TimeStrech' (did you mean TimeStretch"),
])
def test_bad_pitch_and_tempo_settings_are_named_at_spec_load(transform, expected):
    with pytest.raises(SpecError) as e:
        job_from_dict({"modalities": {"audio": {"sample_rate": RATE}}, "augment": {"audio": [transform]}})
    assert expected in str(e.value)

"""Device augmentation (augment.backend: device) on the CPU: the same ops a GPU runs, seeded per row, shapes and
dtypes kept, p honoured, absent modalities untouched; the seed stage; the spec checks; a training step with it;
the channels-last image encoder under 2-process DDP. GPU tests skip without CUDA."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from support import raw_batch
from pipeline.data.stages.augment.device_seeds import SEED_COLUMN, seed_batch
from pipeline.data.stages.config import StageConfig
from pipeline.data.stages.path import prepare_batch
from pipeline.model.augment import DEVICE_OPS, FEATURE_MASK, FEATURE_OPS, DeviceAugment, Draws, device_augmenter
from pipeline.model.classifier import MultimodalClassifier, input_columns, train_columns
from pipeline.model.encoders import ImageEncoder, audio_feature_shape
from pipeline.spec import AugmentSpec, SpecError, TransformSpec, spec_from_dict
from pipeline.spec_checks import job_from_dict

MODALITIES = {"image": {"size": [24, 32]}, "text": {"max_tokens": 12, "vocab_size": 300},
              "audio": {"sample_rate": 4000, "seconds": 0.5}}
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def job(image=(), audio=(), text=(), **augment):
    ops = {role: [t if isinstance(t, dict) else {"name": t, "p": 1.0} for t in names]
           for role, names in (("image", image), ("audio", audio), ("text", text))}
    return spec_from_dict({"augment": {"backend": "device", **ops, **augment}, "modalities": MODALITIES})


def synthetic(n=6, seed=0, present=None):
    """A batch as the training loop holds it, seeds from the data path's stage (epoch 0)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(2, 300, (n, 12), generator=g)
    tokens[:, 9:] = 0                                                  # right padding
    present = present if present is not None else torch.ones(n, dtype=torch.bool)
    batch = {"image": torch.randint(0, 256, (n, 24, 32, 3), dtype=torch.uint8, generator=g),
             "audio": 0.3 * torch.randn(n, 2000, generator=g), "text": tokens,
             "present_image": present, "present_audio": present, "present_text": present}
    for m in ("image", "audio", "text"):                               # absent modalities are zeros (align)
        batch[m] = torch.where(present.reshape(-1, *[1] * (batch[m].dim() - 1)), batch[m], 0)
    keys = np.array([f"k{i}" for i in range(n)], dtype=object)
    seeds = seed_batch({"__key__": keys}, AugmentSpec(seed=seed), epoch=0)[SEED_COLUMN]
    return {**batch, SEED_COLUMN: torch.from_numpy(seeds)}


def augmenter(spec):
    return DeviceAugment(spec.augment, spec.modalities)


ALL = [(role, name) for role, ops in DEVICE_OPS.items() for name in ops]
MOVING = {"Affine": {"rotate": 20, "scale": [0.8, 1.2], "translate_percent": 0.1}}  # its defaults move nothing


# ---------------------------------------------------------------------------------------------- seeds and draws

def test_seed_stage_is_per_key_epoch_and_copy_and_repeats():
    batch = {"__key__": np.array(["a", "b", "a"], dtype=object), "__url__": np.array(["x/s.tar"] * 3, dtype=object),
             "copy": np.array([0, 0, 1])}
    one = seed_batch(batch, AugmentSpec(seed=3), epoch=1)[SEED_COLUMN]
    assert one.dtype == np.int64 and len(set(one.tolist())) == 3      # each key and copy its own seed
    assert np.array_equal(one, seed_batch(batch, AugmentSpec(seed=3), epoch=1)[SEED_COLUMN])
    assert not np.array_equal(one, seed_batch(batch, AugmentSpec(seed=3), epoch=2)[SEED_COLUMN])
    assert not np.array_equal(one, seed_batch(batch, AugmentSpec(seed=4), epoch=1)[SEED_COLUMN])


def test_draws_are_uniform_and_independent_per_stream_and_row():
    seeds = torch.from_numpy(np.random.default_rng(0).integers(-2**63, 2**63 - 1, 20000, dtype=np.int64))
    draws = Draws(seeds)
    u, v = draws.uniform(1), draws.uniform(2)
    assert u.dtype == torch.float32 and 0 <= u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.005
    assert abs(torch.corrcoef(torch.stack([u, v]))[0, 1].item()) < 0.03
    grid = draws.uniform(3, 64)                                         # (rows, n): rows and columns independent
    assert grid.shape == (20000, 64) and abs(grid.mean().item() - 0.5) < 0.005
    assert torch.equal(Draws(seeds[5:6]).uniform(3, 64)[0], grid[5])   # a row's draws ignore the other rows
    normal = draws.normal(4, 16)
    assert abs(normal.mean().item()) < 0.02 and abs(normal.std().item() - 1) < 0.02


# ---------------------------------------------------------------------------------------------- every op

@pytest.mark.parametrize("role,name", ALL)
def test_each_op_keeps_shapes_and_dtypes_repeats_per_seed_and_changes_something(role, name):
    augment = augmenter(job(**{role: [{"name": name, "p": 1.0, "params": MOVING.get(name, {})}]}))
    batch = synthetic()
    out, again = augment(batch), augment(synthetic())
    for column in ("image", "audio", "text"):
        assert out[column].shape == batch[column].shape and out[column].dtype == batch[column].dtype
        assert torch.equal(out[column], again[column])                 # same key and epoch: same output
    if name in FEATURE_OPS:
        mask = out[FEATURE_MASK]
        assert mask.dtype == torch.bool and tuple(mask.shape[1:]) == audio_feature_shape(4000, 2000)
        assert torch.equal(mask, again[FEATURE_MASK]) and mask.any()
    else:
        assert not torch.equal(out[role], batch[role])
    half = augmenter(job(**{role: [{"name": name, "p": 0.5, "params": MOVING.get(name, {})}]}))       # other seeds: another augmentation
    first, other = synthetic(n=32), synthetic(n=32, seed=1)
    ours, theirs = half(first), half({**other, role: first[role]})
    assert any(not torch.equal(ours[c], theirs[c]) for c in (role, FEATURE_MASK) if c in ours)


@pytest.mark.parametrize("role,name", ALL)
def test_absent_modalities_stay_zeros(role, name):
    present = torch.tensor([True, False, True, False, False, True])
    batch = synthetic(present=present)
    out = augmenter(job(**{role: [name]}))(batch)
    for column in ("image", "audio", "text"):
        assert not out[column][~present].any()                          # absent rows: still all zeros
        assert torch.equal(out[column][~present], batch[column][~present])
    if FEATURE_MASK in out:
        assert not out[FEATURE_MASK][~present].any()


def test_a_rows_augmentation_does_not_depend_on_the_rest_of_the_batch():
    augment = augmenter(job(image=["RandomResizedCrop", "ColorJitter"], audio=["AddGaussianNoise", "Shift"],
                            text=["TokenDropout", "TokenSwap"]))
    whole = augment(synthetic())
    alone = augment({k: v[2:3] for k, v in synthetic().items()})
    for column in ("image", "audio", "text"):
        assert torch.equal(whole[column][2:3], alone[column])


@pytest.mark.parametrize("role,name,p", [("image", "HorizontalFlip", 0.3), ("audio", "PolarityInversion", 0.7),
                                         ("text", "TokenReplace", 0.5)])
def test_probability_p_is_honoured(role, name, p):
    n = 4000
    spec = job(**{role: [{"name": name, "p": p, **({"params": {"rate": 1.0}} if role == "text" else {})}]})
    batch = synthetic(n=n)
    out = augmenter(spec)(batch)
    changed = (out[role] != batch[role]).flatten(1).any(1).float().mean().item()
    assert abs(changed - p) < 4 * math.sqrt(p * (1 - p) / n)            # 4 sigma of a binomial proportion


def test_p_zero_and_disabled_augmentation_change_nothing():
    batch = synthetic()
    out = augmenter(job(image=[{"name": "ColorJitter", "p": 0.0}]))(batch)
    assert torch.equal(out["image"], batch["image"])
    assert device_augmenter(job(image=["ToGray"], enabled=False).augment, job().modalities, ["image"]) is None
    assert device_augmenter(AugmentSpec(image=[TransformSpec(name="HorizontalFlip")]), job().modalities,
                            ["image"]) is None                          # backend cpu: the data path augments


# ---------------------------------------------------------------------------------------------- what the ops do

def test_image_ops_do_what_their_names_say():
    batch = synthetic()
    image = batch["image"]
    assert torch.equal(augmenter(job(image=["HorizontalFlip"]))(batch)["image"], image.flip(2))
    assert torch.equal(augmenter(job(image=["VerticalFlip"]))(batch)["image"], image.flip(1))
    grey = augmenter(job(image=["ToGray"]))(batch)["image"].int()
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    whole = {"name": "RandomResizedCrop", "p": 1.0, "params": {"scale": [1, 1], "ratio": [4 / 3, 4 / 3]}}
    assert (augmenter(job(image=[whole]))(batch)["image"].int() - image.int()).abs().float().mean() < 1.0
    identity = {"name": "Affine", "p": 1.0}                             # the defaults move nothing
    assert (augmenter(job(image=[identity]))(batch)["image"].int() - image.int()).abs().max() <= 1
    half = {"name": "Affine", "p": 1.0, "params": {"scale": 0.5}}       # zoomed out: zero border
    small = augmenter(job(image=[half]))(batch)["image"]
    assert not small[:, :4].any() and not small[:, :, :6].any()
    dark = {"name": "ColorJitter", "p": 1.0, "params": {"brightness": [0.5, 0.5], "contrast": 0, "saturation": 0,
                                                        "hue": 0}}
    darker = augmenter(job(image=[dark]))(batch)["image"].float()
    assert torch.allclose(darker, (image.float() * 0.5).round(), atol=1.0)
    blurred = augmenter(job(image=["GaussianBlur"]))(batch)["image"].float()
    assert blurred.diff(dim=2).abs().mean() < image.float().diff(dim=2).abs().mean() / 2


def test_audio_ops_do_what_their_names_say():
    batch = synthetic()
    wave = batch["audio"]
    assert torch.equal(augmenter(job(audio=["PolarityInversion"]))(batch)["audio"], -wave)
    gain = {"name": "Gain", "p": 1.0, "params": {"min_gain_db": -6, "max_gain_db": 6}}
    ratio = augmenter(job(audio=[gain]))(batch)["audio"].abs().sum(1) / wave.abs().sum(1)
    assert ((ratio >= 10 ** (-6 / 20) - 1e-4) & (ratio <= 10 ** (6 / 20) + 1e-4)).all() and ratio.std() > 0.05
    rolled = augmenter(job(audio=["Shift"]))(batch)["audio"]
    for row, out in zip(wave, rolled):                                  # rollover: a rotation of the clip
        assert any(torch.equal(torch.roll(row, s), out) for s in range(-1000, 1001))
    no_roll = {"name": "Shift", "p": 1.0, "params": {"min_shift": 0.25, "max_shift": 0.25, "rollover": False}}
    shifted = augmenter(job(audio=[no_roll]))(batch)["audio"]
    assert not shifted[:, :500].any() and torch.equal(shifted[:, 500:], wave[:, :1500])
    noisy = augmenter(job(audio=["AddGaussianNoise"]))(batch)["audio"] - wave
    assert 0.001 * 0.8 < noisy.std(1).min() and noisy.std(1).max() < 0.015 * 1.2
    for name, axis, width in (("TimeMasking", 2, 5), ("FrequencyMasking", 1, 3)):
        op = {"name": name, "p": 1.0, "params": {"max_width": width}}
        mask = augmenter(job(audio=[op]))(synthetic(n=300))[FEATURE_MASK]
        band = mask.any(axis)                                           # the masked frames (or mel bins) per row
        assert band.sum(1).max() == width and band.sum(1).min() == 0   # widths 0..max_width
        assert (mask.sum((1, 2)) == band.sum(1) * mask.shape[axis]).all()  # whole frames / bins masked


def test_text_ops_do_what_their_names_say():
    batch = synthetic(n=200)
    tokens = batch["text"]
    dropped = augmenter(job(text=[{"name": "TokenDropout", "p": 1.0, "params": {"rate": 0.3}}]))(batch)["text"]
    for row, out in zip(tokens.tolist(), dropped.tolist()):
        kept = [t for t in out if t]
        assert kept and len(kept) < 9 or kept == row[:9]               # fewer tokens (never none)
        it = iter(row)
        assert all(t in it for t in kept)                               # a subsequence: order kept
        assert out[len(kept):] == [0] * (12 - len(kept))                # moved up, padding after
    swapped = augmenter(job(text=[{"name": "TokenSwap", "p": 1.0, "params": {"rate": 0.5}}]))(batch)["text"]
    assert torch.equal(swapped.sort(1).values, tokens.sort(1).values) and not torch.equal(swapped, tokens)
    assert not swapped[:, 9:].any()                                     # padding never swapped in
    replaced = augmenter(job(text=[{"name": "TokenReplace", "p": 1.0, "params": {"rate": 1.0}}]))(batch)["text"]
    assert ((replaced[:, :9] >= 2) & (replaced[:, :9] < 300)).all() and not replaced[:, 9:].any()
    bytes_spec = spec_from_dict({"augment": {"backend": "device", "text": [{"name": "TokenReplace", "p": 1.0,
                                                                           "params": {"rate": 1.0}}]},
                                 "modalities": {**MODALITIES, "text": {"tokenizer": "bytes", "max_tokens": 12}}})
    assert augmenter(bytes_spec)(batch)["text"].max() < 2 + 256       # the bytes tokenizer's ids


# ---------------------------------------------------------------------------------------------- the spec

def test_spec_checks_name_the_field_and_the_problem():
    with pytest.raises(SpecError) as e:
        job_from_dict({"augment": {"backend": "device",
                                   "image": [{"name": "HorizontalFlip"}, {"name": "Afine"},
                                             {"name": "Affine", "params": {"shear": 5}}],
                                   "audio": [{"name": "Gain", "params": {"min_gain_db": 6, "max_gain_db": -6}}],
                                   "text": [{"name": "TokenDropout", "params": {"rate": 1.5}}]},
                       "modalities": MODALITIES})
    message = str(e.value)
    assert "4 problem(s)" in message
    assert "augment.image.1: unknown device op 'Afine' for image (did you mean Affine" in message
    assert "augment.image.2: Affine: parameter(s) shear not supported on the device" in message
    assert "augment.audio.0: Gain: min_gain_db/max_gain_db must be" in message
    assert "augment.text.0: TokenDropout: rate must be a number in [0, 1]" in message
    with pytest.raises(SpecError, match="augment.audio: audio ops listed but modalities.audio is disabled"):
        job_from_dict({"augment": {"backend": "device", "audio": [{"name": "Gain"}]},
                       "modalities": {**MODALITIES, "audio": None}})
    with pytest.raises(SpecError, match="backend"):
        job_from_dict({"augment": {"backend": "gpu"}})


def test_backend_switch_and_the_columns_training_reads():
    spec = job(image=["HorizontalFlip"])
    assert spec.augment.runs_on("device") and not spec.augment.runs_on("cpu")
    assert train_columns(spec) == [*input_columns(spec), SEED_COLUMN]
    cpu = spec_from_dict({"augment": {"image": [{"name": "HorizontalFlip"}]}, "modalities": MODALITIES})
    assert cpu.augment.runs_on("cpu") and train_columns(cpu) == input_columns(cpu)


# ---------------------------------------------------------------------------------------------- training with it

def _members(i: int) -> dict:
    rng = np.random.default_rng(i)
    png, wav = io.BytesIO(), io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(png, "PNG")
    sf.write(wav, (0.4 * np.sin(np.arange(2000) * 0.05 * (i + 1))).astype(np.float32), 4000, format="WAV")
    members = {"png": png.getvalue(), "wav": wav.getvalue(), "txt": f"样本 {i} 的文字 words".encode(),
               "cls": str(i % 2).encode()}
    return members if i % 3 else {k: v for k, v in members.items() if k != "wav"}  # some samples lack audio


def test_training_steps_with_the_device_backend_on_prepared_batches():
    spec = job(image=["HorizontalFlip", "RandomResizedCrop", "ColorJitter"],
               audio=["Gain", "Shift", "TimeMasking", "FrequencyMasking"], text=["TokenDropout", "TokenReplace"],
               seed=7)
    cfg = StageConfig.from_spec(spec, ["a", "b"])
    prepared = prepare_batch(raw_batch([_members(i) for i in range(8)]), cfg)
    assert not prepared["present_audio"].all()
    torch.manual_seed(0)
    model = MultimodalClassifier(spec, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    augment = device_augmenter(spec.augment, spec.modalities, ["image", "text", "audio"])
    for epoch in range(2):                                              # the loop's steps: to device, augment, fit
        host = seed_batch(prepared, spec.augment, epoch)
        batch = {c: torch.as_tensor(host[c]) for c in train_columns(spec)}
        batch = augment(batch)
        assert batch[FEATURE_MASK].any() and not batch[FEATURE_MASK][~batch["present_audio"]].any()
        loss = torch.nn.functional.cross_entropy(model(batch), batch["label"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
    model.eval()                                                        # the mask reaches the log-mel features
    plain = {c: torch.as_tensor(prepared[c]) for c in input_columns(spec)}
    with torch.no_grad():
        assert not torch.allclose(model(plain), model({**plain, FEATURE_MASK: batch[FEATURE_MASK]}))


# ---------------------------------------------------------------------------------------------- channels-last, DDP

def _ddp_worker(rank: int, port: int, out):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    encoder = ImageEncoder(8, 4)
    model = torch.nn.parallel.DistributedDataParallel(encoder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            model(torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)).sum().backward()
    mismatched = [n for n, p in encoder.named_parameters() if p.grad is not None and p.grad.stride() != p.stride()]
    if rank == 0:
        out.put(([str(w.message)[:60] for w in caught if "stride" in str(w.message)], mismatched))
    dist.destroy_process_group()


def test_image_encoder_is_channels_last_and_ddp_sees_matching_gradient_strides():
    import socket

    import torch.multiprocessing as mp

    encoder = ImageEncoder(8, 4)
    convs = [m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    mp.spawn(_ddp_worker, args=(port, out), nprocs=2)
    stride_warnings, mismatched = out.get()
    assert stride_warnings == [] and mismatched == []


# ---------------------------------------------------------------------------------------------- on a GPU

@CUDA
def test_on_cuda_the_same_seeds_give_the_cpu_augmentation():
    spec = job(image=["HorizontalFlip", "Affine", "ColorJitter"], audio=["Gain", "Shift", "TimeMasking"],
               text=["TokenDropout", "TokenSwap", "TokenReplace"])
    batch = synthetic()
    cpu = augmenter(spec)(batch)
    gpu = augmenter(spec)({k: v.cuda() for k, v in batch.items()})
    for column in ("text", FEATURE_MASK):
        assert torch.equal(cpu[column], gpu[column].cpu())
    assert (cpu["image"].int() - gpu["image"].cpu().int()).abs().float().mean() < 0.5
    assert torch.allclose(cpu["audio"], gpu["audio"].cpu(), atol=1e-5)

"""Augmentation on the training device (``augment.backend: device``): batched torch ops, run in each training worker
after the batch reaches its device (the GPU with scaling.use_gpu, else the CPU). One call per op per batch,
parameters drawn per sample; an op with probability ``p`` is computed for the whole batch and kept where the
sample's draw says so. docs/device-augment.md lists the names, their parameters and the CPU transform each mirrors.

Randomness: each row's draws come from its ``augment_seed`` (the data path's seed_batch stage: (augment.seed, epoch,
key, copy)) through an integer hash, the same on every device, so a rerun repeats every augmentation whatever the
batch composition, and the CPU tests see what a GPU does. Rows whose modality is absent are left as they are (zeros).

    image  uint8 (B, H, W, 3)  -> uint8, same shape          (kornia for the warps, hue and blur)
    audio  float32 (B, N)      -> float32, same shape; SpecAugment masks as ``audio_feature_mask`` bool
                                  (B, frames, mels), applied by the audio encoder to its log-mel features
    text   int64 (B, L)        -> int64, same shape (ids, 0 = padding)
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from pipeline.data.stages.augment.device_seeds import SEED_COLUMN
from pipeline.data.stages.tokenize import FIRST_ID
from pipeline.model.encoders import audio_feature_shape
from pipeline.spec import AugmentSpec, ModalitiesSpec

FEATURE_MASK = "audio_feature_mask"
_M32 = 0xFFFFFFFF


class DeviceOpError(ValueError):
    """A device op spec that cannot be used; the message says why, the caller adds the field path."""


# ---------------------------------------------------------------------------------------------- per-row draws

def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for x in [0, 2**32), in int64 without overflow (16-bit halves of c)."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32) of int64 values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


class Draws:
    """Uniform numbers per row from its seed: ``uniform(stream)`` (B,), ``uniform(stream, n)`` (B, n); each stream
    (an op's index and the draw's number) is independent of the others and of the other rows."""

    def __init__(self, seeds: torch.Tensor):
        self._lo, self._hi = seeds & _M32, (seeds >> 32) & _M32

    def _keys(self, stream: int) -> torch.Tensor:
        return _hash32(self._lo ^ _hash32(self._hi ^ _hash32(torch.tensor(stream & _M32, device=self._lo.device))))

    def uniform(self, stream: int, n: int | None = None) -> torch.Tensor:
        keys = self._keys(stream)
        if n is not None:
            index = torch.arange(n, device=keys.device, dtype=torch.int64)
            keys = _hash32((keys[:, None] + _mul32(index, 0x9E3779B9)[None]) & _M32)
        return (_hash32(keys) >> 8).float() * (1.0 / (1 << 24))  # 24 bits: exact in float32, in [0, 1)

    def normal(self, stream: int, n: int) -> torch.Tensor:
        u1, u2 = self.uniform(stream, n), self.uniform(stream + 1, n)  # Box-Muller
        return torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos(2.0 * math.pi * u2)


def _between(u: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    return bounds[0] + (bounds[1] - bounds[0]) * u


# ---------------------------------------------------------------------------------------------- parameters

def _pair(name: str, value, symmetric: bool = False) -> tuple[float, float]:
    """A (low, high) range; one number means (-v, v) when ``symmetric``, else the fixed value (v, v)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (-abs(value), abs(value)) if symmetric else (float(value), float(value))
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) and value[0] <= value[1]:
        return float(value[0]), float(value[1])
    raise DeviceOpError(f"{name} must be a number or a [low, high] pair with low <= high, not {value!r}")


def _jitter(name: str, value) -> tuple[float, float]:
    """ColorJitter's convention: v -> (max(0, 1 - v), 1 + v)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return max(0.0, 1.0 - value), 1.0 + value
    return _pair(name, value)


def _number(name: str, value, low: float = 0.0, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise DeviceOpError(f"{name} must be a number in [{low:g}, {high:g}], not {value!r}")
    return float(value)


@dataclass(frozen=True)
class Context:
    """What ops need to know of the aligned data."""
    image_size: tuple[int, int] | None = None       # (H, W)
    sample_rate: int | None = None
    feature_shape: tuple[int, int] | None = None    # (frames, mels) of the audio encoder's log-mel features
    token_ids: tuple[int, int] | None = None        # [low, high) of real token ids


@dataclass(frozen=True)
class OpDef:
    """One device op: ``defaults`` are its parameters (no others accepted), ``parse`` turns a spec's params into
    what ``apply(x, draws, stream, params, ctx)`` takes; ``mirrors``: the CPU transform it stands for."""
    defaults: dict[str, Any]
    parse: Callable[[dict[str, Any]], dict[str, Any]]
    apply: Callable
    mirrors: str


# ---------------------------------------------------------------------------------------------- image ops
# x: float32 (B, 3, H, W) in [0, 1]

def _grey(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _hflip(x, draws, stream, params, ctx):
    return x.flip(-1)


def _vflip(x, draws, stream, params, ctx):
    return x.flip(-2)


def _resized_crop(x, draws, stream, params, ctx):
    from kornia.geometry.transform import crop_and_resize

    _, _, h, w = x.shape
    area = _between(draws.uniform(stream), params["scale"]) * h * w
    log_ratio = _between(draws.uniform(stream + 1), (math.log(params["ratio"][0]), math.log(params["ratio"][1])))
    ratio = torch.exp(log_ratio)
    cw = torch.sqrt(area * ratio).clamp(1.0, w)
    ch = torch.sqrt(area / ratio).clamp(1.0, h)
    x0 = draws.uniform(stream + 2) * (w - cw)
    y0 = draws.uniform(stream + 3) * (h - ch)
    x1, y1 = x0 + cw - 1, y0 + ch - 1
    boxes = torch.stack([torch.stack([x0, y0], -1), torch.stack([x1, y0], -1),
                         torch.stack([x1, y1], -1), torch.stack([x0, y1], -1)], 1)   # (B, 4, 2) corners (x, y)
    return crop_and_resize(x, boxes, (h, w))


def _affine(x, draws, stream, params, ctx):
    from kornia.geometry.transform import get_affine_matrix2d, warp_affine

    b, _, h, w = x.shape
    angle = _between(draws.uniform(stream), params["rotate"])
    scale = _between(draws.uniform(stream + 1), params["scale"])
    shift = torch.stack([_between(draws.uniform(stream + 2), params["translate_percent"]) * w,
                         _between(draws.uniform(stream + 3), params["translate_percent"]) * h], -1)
    centre = torch.tensor([(w - 1) / 2, (h - 1) / 2], device=x.device).expand(b, 2)
    matrix = get_affine_matrix2d(shift, centre, scale[:, None].expand(b, 2), angle)
    return warp_affine(x, matrix[:, :2], (h, w), padding_mode="zeros")


def _colour_jitter(x, draws, stream, params, ctx):
    from kornia.enhance import adjust_hue

    def per_row(i, bounds):
        return _between(draws.uniform(stream + i), bounds)[:, None, None, None]

    x = (x * per_row(0, params["brightness"])).clamp(0, 1)
    mean = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * per_row(1, params["contrast"]) + mean).clamp(0, 1)
    grey = _grey(x)
    x = ((x - grey) * per_row(2, params["saturation"]) + grey).clamp(0, 1)
    hue = _between(draws.uniform(stream + 3), params["hue"]) * 2 * math.pi  # fraction of the colour circle
    return adjust_hue(x, hue).clamp(0, 1)


def _to_grey(x, draws, stream, params, ctx):
    return _grey(x).expand_as(x)


def _blur(x, draws, stream, params, ctx):
    from kornia.filters import gaussian_blur2d

    sigma = _between(draws.uniform(stream), params["sigma_limit"]).clamp(min=1e-3)
    return gaussian_blur2d(x, params["kernel"], torch.stack([sigma, sigma], -1))


def _blur_params(p: dict) -> dict:
    sigma = _pair("sigma_limit", p["sigma_limit"])
    if sigma[0] <= 0:
        raise DeviceOpError(f"sigma_limit must be > 0, not {p['sigma_limit']!r}")
    limit = p["blur_limit"]
    size = int(_pair("blur_limit", limit)[1]) if limit else 2 * math.ceil(3 * sigma[1]) + 1
    if size < 3 or size % 2 == 0:
        raise DeviceOpError(f"blur_limit must give an odd kernel size >= 3, not {limit!r}")
    return {"sigma_limit": sigma, "kernel": (size, size)}


def _crop_params(p: dict) -> dict:
    scale, ratio = _pair("scale", p["scale"]), _pair("ratio", p["ratio"])
    if not (0 < scale[0] and scale[1] <= 1):
        raise DeviceOpError(f"scale must lie in (0, 1], not {p['scale']!r}")
    if ratio[0] <= 0:
        raise DeviceOpError(f"ratio must be > 0, not {p['ratio']!r}")
    return {"scale": scale, "ratio": ratio}


def _affine_params(p: dict) -> dict:
    scale = _pair("scale", p["scale"])
    if scale[0] <= 0:
        raise DeviceOpError(f"scale must be > 0, not {p['scale']!r}")
    return {"rotate": _pair("rotate", p["rotate"], symmetric=True), "scale": scale,
            "translate_percent": _pair("translate_percent", p["translate_percent"], symmetric=True)}


def _jitter_params(p: dict) -> dict:
    out = {k: _jitter(k, p[k]) for k in ("brightness", "contrast", "saturation")}
    hue = _pair("hue", p["hue"], symmetric=True)
    if not (-0.5 <= hue[0] and hue[1] <= 0.5):
        raise DeviceOpError(f"hue must lie in [-0.5, 0.5] (a fraction of the colour circle), not {p['hue']!r}")
    return {**out, "hue": hue}


def _none(p: dict) -> dict:
    return {}


IMAGE_OPS = {
    "HorizontalFlip": OpDef({}, _none, _hflip, "albumentations HorizontalFlip"),
    "VerticalFlip": OpDef({}, _none, _vflip, "albumentations VerticalFlip"),
    "RandomResizedCrop": OpDef({"scale": (0.08, 1.0), "ratio": (0.75, 4 / 3)}, _crop_params, _resized_crop,
                               "albumentations RandomResizedCrop (output: the aligned size)"),
    "Affine": OpDef({"rotate": 0.0, "scale": 1.0, "translate_percent": 0.0}, _affine_params, _affine,
                    "albumentations Affine (rotate degrees, scale, translate_percent; zero fill)"),
    "ColorJitter": OpDef({"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.2}, _jitter_params,
                         _colour_jitter, "albumentations ColorJitter (fixed order: brightness, contrast, "
                                         "saturation, hue)"),
    "ToGray": OpDef({}, _none, _to_grey, "albumentations ToGray (weighted average)"),
    "GaussianBlur": OpDef({"blur_limit": 0, "sigma_limit": (0.5, 3.0)}, _blur_params, _blur,
                          "albumentations GaussianBlur (one kernel size per op: blur_limit's upper bound, "
                          "or 2*ceil(3*sigma)+1)"),
}


# ---------------------------------------------------------------------------------------------- audio ops
# x: float32 (B, N) waveforms; masks: bool (B, frames, mels)

def _gain(x, draws, stream, params, ctx):
    db = _between(draws.uniform(stream), params["db"])
    return x * torch.pow(10.0, db / 20.0)[:, None]


def _noise(x, draws, stream, params, ctx):
    amplitude = _between(draws.uniform(stream), params["amplitude"])
    return x + amplitude[:, None] * draws.normal(stream + 1, x.shape[1])


def _shift(x, draws, stream, params, ctx):
    n = x.shape[1]
    per_unit = {"fraction": n, "samples": 1, "seconds": ctx.sample_rate}[params["unit"]]
    shift = torch.round(_between(draws.uniform(stream), params["shift"]) * per_unit).long()
    source = torch.arange(n, device=x.device)[None] - shift[:, None]                  # (B, N)
    out = torch.gather(x, 1, source.remainder(n))
    return out if params["rollover"] else out.masked_fill((source < 0) | (source >= n), 0.0)


def _polarity(x, draws, stream, params, ctx):
    return -x


def _band_mask(size: int, length: int, draws: Draws, stream: int, max_width: int) -> torch.Tensor:
    """bool (B, size): one band of width U{0..max_width} at a uniform start, per row."""
    width = torch.floor(draws.uniform(stream) * (min(max_width, size) + 1))
    start = torch.floor(draws.uniform(stream + 1) * (size - width + 1))
    index = torch.arange(size, device=width.device)[None]
    return (index >= start[:, None]) & (index < (start + width)[:, None])


def _time_mask(mask, draws, stream, params, ctx):
    frames, mels = mask.shape[1:]
    return mask | _band_mask(frames, mels, draws, stream, params["max_width"])[:, :, None]


def _frequency_mask(mask, draws, stream, params, ctx):
    frames, mels = mask.shape[1:]
    return mask | _band_mask(mels, frames, draws, stream, params["max_width"])[:, None, :]


def _gain_params(p: dict) -> dict:
    return {"db": _pair("min_gain_db/max_gain_db", [p["min_gain_db"], p["max_gain_db"]])}


def _noise_params(p: dict) -> dict:
    amplitude = _pair("min_amplitude/max_amplitude", [p["min_amplitude"], p["max_amplitude"]])
    if amplitude[0] < 0:
        raise DeviceOpError(f"min_amplitude must be >= 0, not {p['min_amplitude']!r}")
    return {"amplitude": amplitude}


def _shift_params(p: dict) -> dict:
    if p["shift_unit"] not in ("fraction", "samples", "seconds"):
        raise DeviceOpError(f"shift_unit must be fraction, samples or seconds, not {p['shift_unit']!r}")
    if not isinstance(p["rollover"], bool):
        raise DeviceOpError(f"rollover must be true or false, not {p['rollover']!r}")
    return {"shift": _pair("min_shift/max_shift", [p["min_shift"], p["max_shift"]]), "unit": p["shift_unit"],
            "rollover": p["rollover"]}


def _width_params(p: dict) -> dict:
    return {"max_width": int(_number("max_width", p["max_width"], 0))}


AUDIO_OPS = {
    "Gain": OpDef({"min_gain_db": -12.0, "max_gain_db": 12.0}, _gain_params, _gain, "audiomentations Gain"),
    "AddGaussianNoise": OpDef({"min_amplitude": 0.001, "max_amplitude": 0.015}, _noise_params, _noise,
                              "audiomentations AddGaussianNoise"),
    "Shift": OpDef({"min_shift": -0.5, "max_shift": 0.5, "shift_unit": "fraction", "rollover": True},
                   _shift_params, _shift, "audiomentations Shift (no fade)"),
    "PolarityInversion": OpDef({}, _none, _polarity, "audiomentations PolarityInversion"),
}
# SpecAugment: on the audio encoder's log-mel features (masked features are set to the mean); no CPU equivalent.
FEATURE_OPS = {
    "TimeMasking": OpDef({"max_width": 20}, _width_params, _time_mask,
                         "SpecAugment time mask: one band of up to max_width frames"),
    "FrequencyMasking": OpDef({"max_width": 8}, _width_params, _frequency_mask,
                              "SpecAugment frequency mask: one band of up to max_width mel bins"),
}


# ---------------------------------------------------------------------------------------------- text ops
# x: int64 (B, L) token ids, 0 = padding (right-padded)

def _token_dropout(x, draws, stream, params, ctx):
    real = x != 0
    keep = ~real | (draws.uniform(stream, x.shape[1]) >= params["rate"])
    keep = keep | ((keep & real).sum(1, keepdim=True) == 0)          # never drop a whole text
    order = torch.argsort((~(keep & real)).to(torch.int8), dim=1, stable=True)  # kept tokens first, in order
    out = torch.gather(x, 1, order)
    return out.masked_fill(torch.arange(x.shape[1], device=x.device)[None] >= (keep & real).sum(1, keepdim=True), 0)


def _token_swap(x, draws, stream, params, ctx):
    pair = (x[:, :-1] != 0) & (x[:, 1:] != 0)                        # position i and i + 1 both real tokens
    chosen = pair & (draws.uniform(stream, x.shape[1] - 1) < params["rate"])
    chosen[:, 1:] &= ~chosen[:, :-1]                                  # no overlapping swaps
    index = torch.arange(x.shape[1], device=x.device).expand_as(x).clone()
    index[:, :-1] += chosen.long()
    index[:, 1:] -= chosen.long()
    return torch.gather(x, 1, index)


def _token_replace(x, draws, stream, params, ctx):
    low, high = ctx.token_ids
    hit = (x != 0) & (draws.uniform(stream, x.shape[1]) < params["rate"])
    random_ids = low + torch.floor(draws.uniform(stream + 1, x.shape[1]) * (high - low)).long()
    return torch.where(hit, random_ids, x)


def _rate_params(p: dict) -> dict:
    return {"rate": _number("rate", p["rate"], 0.0, 1.0)}


TEXT_OPS = {
    "TokenDropout": OpDef({"rate": 0.1}, _rate_params, _token_dropout,
                          "drop each token with probability rate (never all), the rest moved up"),
    "TokenSwap": OpDef({"rate": 0.1}, _rate_params, _token_swap,
                       "swap neighbouring tokens, each position with probability rate"),
    "TokenReplace": OpDef({"rate": 0.1}, _rate_params, _token_replace,
                          "replace each token with probability rate by a random id of the tokenizer"),
}

DEVICE_OPS: dict[str, dict[str, OpDef]] = {"image": IMAGE_OPS, "audio": {**AUDIO_OPS, **FEATURE_OPS},
                                           "text": TEXT_OPS}


# ---------------------------------------------------------------------------------------------- building

@dataclass(frozen=True)
class BoundOp:
    name: str
    op: OpDef
    p: float
    params: dict[str, Any]
    stream: int       # the first of this op's draw streams (the p draw is stream - 1)


def bind(role: str, spec) -> tuple[OpDef, dict[str, Any]]:
    """(the op, its parsed parameters) for one TransformSpec of ``role``; DeviceOpError names what is wrong."""
    ops = DEVICE_OPS[role]
    if spec.name not in ops:
        close = difflib.get_close_matches(spec.name, list(ops), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise DeviceOpError(f"unknown device op {spec.name!r} for {role} ({hint}device ops: {', '.join(ops)}; "
                            "docs/device-augment.md)")
    op = ops[spec.name]
    unknown = sorted(set(spec.params) - set(op.defaults))
    if unknown:
        accepted = ", ".join(op.defaults) or "none"
        raise DeviceOpError(f"{spec.name}: parameter(s) {', '.join(unknown)} not supported on the device "
                            f"(accepted: {accepted})")
    try:
        return op, op.parse({**op.defaults, **spec.params})
    except DeviceOpError as e:
        raise DeviceOpError(f"{spec.name}: {e}") from None


def _present(batch: dict, role: str, like: torch.Tensor) -> torch.Tensor:
    """The role's presence as a mask broadcastable to ``like``."""
    present = batch[f"present_{role}"].bool()
    return present.reshape(-1, *([1] * (like.dim() - 1)))


class DeviceAugment:
    """``augment(batch) -> batch`` for torch batches on any device: image, audio and text augmented where present,
    ``audio_feature_mask`` added when SpecAugment ops are listed. ``columns``: what it needs besides the model's
    inputs (the per-row seeds)."""

    columns = [SEED_COLUMN]

    def __init__(self, augment: AugmentSpec, modalities: ModalitiesSpec, roles: list[str] | None = None):
        roles = roles or modalities.enabled()
        self.ctx = context(modalities)
        self.ops: dict[str, list[BoundOp]] = {}
        for salt, role in enumerate(("image", "audio", "text")):
            specs = getattr(augment, role) if role in roles else []
            bound = []
            for i, spec in enumerate(specs):
                op, params = bind(role, spec)
                bound.append(BoundOp(spec.name, op, spec.p, params, (salt << 20) + (i << 8) + 1))
            self.ops[role] = bound

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        draws = Draws(batch[SEED_COLUMN])
        out = dict(batch)
        if self.ops.get("image"):
            image = batch["image"]
            x = image.permute(0, 3, 1, 2).float() / 255.0                       # (B, 3, H, W), channels-last
            x = self._run(self.ops["image"], x, draws)
            augmented = (x * 255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
            out["image"] = torch.where(_present(batch, "image", image), augmented, image)
        wave_ops = [b for b in self.ops.get("audio", []) if b.name in AUDIO_OPS]
        mask_ops = [b for b in self.ops.get("audio", []) if b.name in FEATURE_OPS]
        if wave_ops:
            wave = batch["audio"]
            out["audio"] = torch.where(_present(batch, "audio", wave), self._run(wave_ops, wave, draws), wave)
        if mask_ops:
            frames, mels = self.ctx.feature_shape
            empty = torch.zeros(len(batch[SEED_COLUMN]), frames, mels, dtype=torch.bool, device=batch["audio"].device)
            out[FEATURE_MASK] = self._run(mask_ops, empty, draws) & _present(batch, "audio", empty)
        if self.ops.get("text"):
            tokens = batch["text"]
            out["text"] = torch.where(_present(batch, "text", tokens), self._run(self.ops["text"], tokens, draws),
                                      tokens)
        return out

    def _run(self, ops: list[BoundOp], x: torch.Tensor, draws: Draws) -> torch.Tensor:
        for b in ops:
            chosen = draws.uniform(b.stream - 1) < b.p
            y = b.op.apply(x, draws, b.stream, b.params, self.ctx)
            x = torch.where(chosen.reshape(-1, *([1] * (x.dim() - 1))), y, x)
        return x


def context(modalities: ModalitiesSpec) -> Context:
    image, audio, text = modalities.image, modalities.audio, modalities.text
    token_ids = None
    if text:
        token_ids = (FIRST_ID, FIRST_ID + 256) if text.tokenizer == "bytes" else (FIRST_ID, text.vocab_size)
    return Context(
        image_size=tuple(image.size) if image else None,
        sample_rate=audio.sample_rate if audio else None,
        feature_shape=audio_feature_shape(audio.sample_rate, audio.num_samples) if audio else None,
        token_ids=token_ids)


def device_augmenter(augment: AugmentSpec, modalities: ModalitiesSpec, roles: list[str]) -> DeviceAugment | None:
    """The training loop's augmenter for the model's modalities ``roles``; None unless augment.backend is device."""
    return DeviceAugment(augment, modalities, roles) if augment.runs_on("device") else None


def check_device_ops(augment: AugmentSpec, modalities: ModalitiesSpec) -> list[tuple[str, str]]:
    """(field path, problem) for every device op that is unknown, has bad parameters or a disabled modality."""
    problems = []
    for role in ("image", "audio", "text"):
        specs = getattr(augment, role)
        if specs and getattr(modalities, role) is None:
            problems.append((f"augment.{role}", f"{role} ops listed but modalities.{role} is disabled"))
            continue
        for i, spec in enumerate(specs):
            try:
                bind(role, spec)
            except DeviceOpError as e:
                problems.append((f"augment.{role}.{i}", str(e)))
    return problems

"""Align: cleaned values -> fixed shapes, a presence mask per modality, and ``keep_rows`` to drop marked rows.

In:  the output of ``clean_batch``.
Out: ``image`` uint8 (B, H, W, 3) · ``text_raw`` str (the cleaned text; the tokenize stage makes its ids after
     augmentation) · ``audio`` float32 (B, N) · ``label`` int64 (B,)
     ``present_<modality>`` bool (B,) for each enabled modality · ``__key__``, ``__url__``, ``drop_reason``,
     ``drop_detail`` str. Absent or dropped modalities are zeros (text: "") with present = False.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import soxr
from PIL import Image

from pipeline.data.stages.config import StageConfig
from pipeline.data.stages.contract import KEY_COLUMN, URL_COLUMN
from pipeline.data.stages.decode import Rejected


def _bilinear(rgb: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """Bilinear resize. Under a 2x downscale (what is left after a reduced-scale JPEG decode) or when enlarging,
    OpenCV's bilinear is ~2x faster than PIL's and equal to it within a level or two; past 2x only PIL's
    antialiased filter avoids aliasing."""
    h, w = rgb.shape[:2]
    if out_w * 2 > w and out_h * 2 > h:
        return cv2.resize(np.ascontiguousarray(rgb), (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    return np.asarray(Image.fromarray(rgb).resize((out_w, out_h), Image.Resampling.BILINEAR))


def resize_image(rgb: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """uint8 (h, w, 3) -> uint8 (H, W, 3) by ``crop`` (cover then centre-crop), ``stretch`` or ``pad`` (letterbox)."""
    out_h, out_w = size
    h, w = rgb.shape[:2]
    if (h, w) == (out_h, out_w):
        return rgb
    if mode == "stretch":
        return _bilinear(rgb, out_w, out_h)
    if mode == "crop":
        # Resize only the centred region that survives the crop (a very thin image must not be scaled whole).
        scale = max(out_h / h, out_w / w)
        box_w, box_h = min(w, max(1, round(out_w / scale))), min(h, max(1, round(out_h / scale)))
        left, top = (w - box_w) // 2, (h - box_h) // 2
        return _bilinear(rgb[top:top + box_h, left:left + box_w], out_w, out_h)
    scale = min(out_h / h, out_w / w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = np.zeros((out_h, out_w, 3), dtype=np.uint8)
    top, left = (out_h - new_h) // 2, (out_w - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = _bilinear(rgb, new_w, new_h)
    return canvas


def segment_bounds(meta: dict) -> tuple[float, float] | None:
    """(start, end) seconds from ``start``/``end`` or the first of ``segments`` ([s, e] or {start, end})."""
    if "segments" in meta:
        segs = meta["segments"]
        if not isinstance(segs, list) or not segs:
            raise Rejected("segment_invalid", "segments must be a non-empty list")
        first = segs[0]
        if isinstance(first, dict):
            start, end = first.get("start", 0.0), first.get("end")
        elif isinstance(first, list) and len(first) == 2:
            start, end = first
        else:
            raise Rejected("segment_invalid", f"segment {first!r:.60} is neither [start, end] nor {{start, end}}")
    elif "start" in meta or "end" in meta:
        start, end = meta.get("start", 0.0), meta.get("end")
    else:
        return None
    try:
        start = float(start)
        end = math.inf if end is None else float(end)
    except (TypeError, ValueError):
        raise Rejected("segment_invalid", f"start/end not numbers: {start!r}, {end!r}") from None
    if not 0 <= start < end:
        raise Rejected("segment_invalid", f"need 0 <= start < end, got {start}, {end}")
    return start, end


def fit_audio(wave: np.ndarray, rate: int, target_rate: int, n: int, crop: str,
              bounds: tuple[float, float] | None) -> np.ndarray:
    """(frames, channels) at ``rate`` -> mono float32 (n,) at ``target_rate``: segment, resample, crop or pad."""
    mono = wave.mean(axis=1, dtype=np.float32) if wave.ndim == 2 else wave.astype(np.float32)
    if bounds:
        first = int(bounds[0] * rate)
        last = len(mono) if math.isinf(bounds[1]) else min(len(mono), int(math.ceil(bounds[1] * rate)))
        if first >= len(mono) or last <= first:
            raise Rejected("segment_invalid", f"segment {bounds} outside the {len(mono) / rate:.3f}s clip")
        mono = mono[first:last]
    # Keep only the window that survives the final crop before resampling: a long clip at a low rate must not
    # be upsampled whole (memory), and work on the rest is wasted.
    window = int(math.ceil(n * rate / target_rate)) + 32
    if len(mono) > window:
        start = (len(mono) - window) // 2 if crop == "center" else 0
        mono = mono[start:start + window]
    if rate != target_rate:
        mono = soxr.resample(mono, rate, target_rate).astype(np.float32, copy=False)
    if len(mono) >= n:
        start = (len(mono) - n) // 2 if crop == "center" else 0
        return mono[start:start + n]
    return np.pad(mono, (0, n - len(mono)))


def aligned_row_bytes(mods, roles: list[str] | None = None) -> int:
    """Bytes of one row's arrays as the sample path emits them (a ModalitiesSpec): uint8 image, float32 audio,
    int64 token ids (the tokenize stage's), label and presence flags; ``roles``: only these modalities (default:
    all enabled). Strings (keys, raw text) are left out."""
    size = 8 + 3
    if mods.image and (roles is None or "image" in roles):
        size += mods.image.size[0] * mods.image.size[1] * 3
    if mods.audio and (roles is None or "audio" in roles):
        size += mods.audio.num_samples * 4
    if mods.text and (roles is None or "text" in roles):
        size += mods.text.max_tokens * 8
    return size


def align_batch(batch: dict[str, np.ndarray], cfg: StageConfig) -> dict[str, np.ndarray]:
    n = len(batch[KEY_COLUMN])
    reasons, details = batch["drop_reason"].copy(), batch["drop_detail"].copy()
    out: dict[str, np.ndarray] = {KEY_COLUMN: batch[KEY_COLUMN], URL_COLUMN: batch[URL_COLUMN],
                                  "label": batch["label"], **{t.column: batch[t.column] for t in cfg.tasks}}
    mods = cfg.modalities
    if mods.image:
        images = np.zeros((n, *mods.image.size, 3), dtype=np.uint8)
        for i, rgb in enumerate(batch["image"]):
            if rgb is not None and not reasons[i]:
                images[i] = resize_image(rgb, mods.image.size, cfg.align.image_resize)
        out["image"] = images
    if mods.audio:
        audio = np.zeros((n, mods.audio.num_samples), dtype=np.float32)
        for i, wave in enumerate(batch["audio"]):
            if wave is None or reasons[i]:
                continue
            try:
                bounds = segment_bounds(batch["meta"][i]) if cfg.align.use_segments else None
                audio[i] = fit_audio(wave, int(batch["audio_rate"][i]), mods.audio.sample_rate,
                                     mods.audio.num_samples, cfg.align.audio_crop, bounds)
            except Rejected as r:
                reasons[i], details[i] = r.reason, r.detail
            except Exception as e:  # drop this sample, not the batch
                reasons[i], details[i] = "sample_error", f"audio align: {type(e).__name__}: {str(e)[:200]}"
        out["audio"] = audio
    if mods.text:  # "" where absent or dropped: kept as a string for augmentation, tokenized after it
        texts = batch["text"]
        out["text_raw"] = np.array([t if t is not None and not reasons[i] else "" for i, t in enumerate(texts)],
                                   dtype=object)
    kept = np.array([not r for r in reasons], dtype=bool)
    for role in cfg.enabled:
        present = np.array([v is not None for v in batch[role]], dtype=bool) & kept
        out[f"present_{role}"] = present
        if role != "text":  # text_raw is already "" there
            out[role][~present] = 0  # a row dropped after decoding must not carry data
    out["drop_reason"], out["drop_detail"] = reasons, details
    return out


def keep_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Only the kept rows, without the drop columns: what training sees."""
    kept = np.array([not r for r in batch["drop_reason"]], dtype=bool)
    if kept.all():  # the usual case: no copy of ~200 KB a row
        return {k: v for k, v in batch.items() if k not in ("drop_reason", "drop_detail")}
    return {k: v[kept] for k, v in batch.items() if k not in ("drop_reason", "drop_detail")}

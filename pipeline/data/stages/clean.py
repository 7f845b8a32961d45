"""Clean: decode and validate every sample of a raw batch; mark each bad one with a drop reason.

In:  the raw columns of ``read_webdataset(decoder=None)`` — ``__key__``, ``__url__`` and one bytes column per
     member extension (None where a sample lacks it).
Out: one row per input row (nothing is lost here), with decoded values and ``drop_reason`` ("" = kept):
     ``image``  object: uint8 (H, W, 3) or None          ``text``  object: str or None
     ``audio``  object: float32 (frames, channels) or None  ``audio_rate`` int64
     ``meta``   object: dict                             ``label`` int64 (-1 when unknown)
     ``drop_reason``, ``drop_detail``  object: str
"""

from __future__ import annotations

import json
import re
from typing import Protocol

import numpy as np

from pipeline.data.stages.config import StageConfig
from pipeline.data.stages.contract import KEY_COLUMN, URL_COLUMN, Member, pick_members
from pipeline.data.stages.decode import Rejected, decode_audio, decode_image, decode_text
from pipeline.data.stages.dedupe import content_hash

# Every reason a sample can be dropped, in the order the report lists them.
DROP_REASONS = (
    "meta_invalid", "label_missing", "label_unknown",
    "image_missing", "text_missing", "audio_missing", "no_modality",
    "image_undecodable", "image_too_small", "image_too_large",
    "text_undecodable", "text_invalid_utf8", "text_empty", "text_too_long",
    "audio_undecodable", "audio_too_short", "audio_silent",
    "segment_invalid", "duplicate", "sample_error",
)


class Duplicates(Protocol):
    def claim(self, hashes: list[str], row_ids: list[str]) -> list[str]: ...


def _object_column(values: list) -> np.ndarray:
    col = np.empty(len(values), dtype=object)
    col[:] = values
    return col


def parse_meta(member: Member) -> dict:
    if not member.present:
        return {}
    if member.error:
        raise Rejected("meta_invalid", member.error)
    try:
        meta = json.loads(member.data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Rejected("meta_invalid", f"json member: {e}") from None
    if not isinstance(meta, dict):
        raise Rejected("meta_invalid", f"json member is a {type(meta).__name__}, not an object")
    return meta


_INDEX = re.compile(r"-?[0-9]+")


def parse_label(raw: object, classes: tuple[str, ...], fmt: str = "auto") -> int:
    """A class index or a class name (bytes, str or int) -> index into ``classes``.

    ``auto``: an integer is an index, anything else a name; ``index``/``name``: only that reading.
    """
    if raw is None:
        raise Rejected("label_missing")
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Rejected("label_unknown", "label member is not UTF-8") from None
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise Rejected("label_unknown", f"label of type {type(raw).__name__}")
    text = str(raw).lstrip("\ufeff").strip()
    if not text:
        raise Rejected("label_missing", "empty label")
    if fmt != "name" and _INDEX.fullmatch(text):
        index = int(text)
        if 0 <= index < len(classes):
            return index
        raise Rejected("label_unknown", f"index {index} outside 0..{len(classes) - 1}")
    if fmt != "index" and text in classes:
        return classes.index(text)
    if fmt == "index":
        raise Rejected("label_unknown", f"{text[:60]!r} is not a class index (label.format is 'index')")
    raise Rejected("label_unknown", f"{text[:60]!r} is not one of the {len(classes)} classes")


def label_value(label_member: Member, meta: dict, cfg: StageConfig) -> object:
    if cfg.label.source == "json":
        return meta.get(cfg.label.json_key)
    if label_member.error:
        raise Rejected("label_unknown", label_member.error)
    return label_member.data


def _decode_member(role: str, member: Member, cfg: StageConfig):
    if member.error:
        raise Rejected(f"{role}_undecodable", member.error)
    c = cfg.clean
    if role == "image":
        h, w = cfg.modalities.image.size
        return decode_image(member.data, c.min_image_side, c.max_image_pixels, draft_size=(w, h))
    if role == "text":
        return decode_text(member.data, c.max_text_chars)
    return decode_audio(member.data, c.min_audio_seconds, c.silence_peak)


def _clean_row(i: int, members: dict[str, list[Member]], meta_members: list[Member], label_members: list[Member],
               cfg: StageConfig) -> tuple[dict, int, list[bytes | None]]:
    """Decoded values, label index and the content parts to hash, for row ``i``; raises Rejected."""
    meta = parse_meta(meta_members[i])
    try:
        label = parse_label(label_value(label_members[i], meta, cfg), cfg.classes, cfg.label.format)
    except Rejected:
        if cfg.labels_required:
            raise
        label = -1
    row = {role: members[role][i] for role in cfg.enabled}
    for role, member in row.items():
        if getattr(cfg.modalities, role).required and not member.present:
            raise Rejected(f"{role}_missing", f"required {role} member absent")
    if not any(m.present for m in row.values()):
        raise Rejected("no_modality", "no image, text or audio member")
    decoded = {role: _decode_member(role, m, cfg) if m.present else None for role, m in row.items()}
    decoded["meta"] = meta
    meta_bytes = meta_members[i].data if meta_members[i].present else None
    return decoded, label, [str(label).encode(), meta_bytes] + [row[r].data for r in cfg.enabled]


def clean_batch(batch: dict[str, np.ndarray], cfg: StageConfig, duplicates: Duplicates | None = None
                ) -> dict[str, np.ndarray]:
    keys = [str(k) for k in batch[KEY_COLUMN]]
    urls = [str(u) for u in batch[URL_COLUMN]] if URL_COLUMN in batch else [""] * len(keys)
    n = len(keys)
    members = {role: pick_members(batch, getattr(cfg.modalities, role).extensions) for role in cfg.enabled}
    meta_members = pick_members(batch, cfg.modalities.meta_extensions)
    label_members = pick_members(batch, cfg.label.extensions)

    values: dict[str, list] = {"image": [None] * n, "text": [None] * n, "audio": [None] * n, "meta": [{}] * n}
    rates = np.zeros(n, dtype=np.int64)
    labels = np.full(n, -1, dtype=np.int64)
    reasons, details = [""] * n, [""] * n
    hashes: dict[int, str] = {}
    for i in range(n):
        try:
            decoded, labels[i], parts = _clean_row(i, members, meta_members, label_members, cfg)
        except Rejected as r:
            reasons[i], details[i] = r.reason, r.detail
            continue
        except Exception as e:  # a decoder bug or an input no check foresaw: drop this sample, not the batch
            reasons[i], details[i] = "sample_error", f"{type(e).__name__}: {str(e)[:200]}"
            continue
        for name, value in decoded.items():
            if name == "audio" and value is not None:
                value, rates[i] = value
            values[name][i] = value
        hashes[i] = content_hash(parts)

    if duplicates is not None and hashes:
        rows = list(hashes)
        row_ids = [f"{urls[i]}::{keys[i]}" for i in rows]
        for i, row_id, owner in zip(rows, row_ids, duplicates.claim([hashes[i] for i in rows], row_ids)):
            if owner != row_id:
                reasons[i], details[i] = "duplicate", f"same content as {owner}"
                values["image"][i] = values["text"][i] = values["audio"][i] = None

    return {
        KEY_COLUMN: _object_column(keys), URL_COLUMN: _object_column(urls),
        **{name: _object_column(v) for name, v in values.items()},
        "audio_rate": rates, "label": labels,
        "drop_reason": _object_column(reasons), "drop_detail": _object_column(details),
    }

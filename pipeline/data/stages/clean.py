"""Clean: decode and validate every sample of a raw batch; mark each bad one with a drop reason.

In:  the raw columns of ``read_webdataset(decoder=None)`` — ``__key__``, ``__url__`` and one bytes column per
     member extension (None where a sample lacks it).
Out: one row per input row (nothing is lost here), with decoded values and ``drop_reason`` ("" = kept):
     ``image``  object: uint8 (H, W, 3) or None          ``text``  object: str or None
     ``audio``  object: float32 (frames, channels) or None  ``audio_rate`` int64
     ``meta``   object: dict                             ``label`` int64 (-1 when unknown)
     ``label_<task>`` int64 per further task (label.tasks; -1 when the sample has no such label)
     ``drop_reason``, ``drop_detail``  object: str           ``content_hash`` object: str ("" when none)
Duplicates: within the split (``duplicate``: a ``Duplicates`` index decides which copy is kept) and, for the train
split with ``clean.cross_split_duplicates: drop_from_train``, content that another split holds
(``duplicate_of_eval``: every copy, checked before the in-split claim, so no copy of it claims the content).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np

from pipeline.data.stages.config import StageConfig
from pipeline.data.stages.contract import (DROP_COLUMN, KEY_COLUMN, URL_COLUMN, Member, pick_member,
                                           role_columns)
from pipeline.data.stages.decode import Rejected, decode_audio, decode_image, decode_text, text_byte_limit
from pipeline.data.stages.dedupe import HASH_COLUMN, ContentSet, content_hash

# Every reason a sample can be dropped, in the order the report lists them.
DROP_REASONS = (
    "member_too_large", "meta_invalid", "label_missing", "label_unknown",
    "image_missing", "text_missing", "audio_missing", "no_modality",
    "image_undecodable", "image_too_small", "image_too_large",
    "text_undecodable", "text_invalid_utf8", "text_empty", "text_too_long",
    "audio_undecodable", "audio_too_short", "audio_too_long", "audio_too_many_channels", "audio_silent",
    "segment_invalid", "duplicate", "duplicate_of_eval", "sample_error",
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


def task_labels(batch: dict[str, np.ndarray], columns: dict[str, list[str]], i: int, meta: dict,
                cfg: StageConfig) -> list[int]:
    """Row ``i``'s label index for each further task (label.tasks); -1 where the sample has none (that task's
    loss is masked; the data report counts it per task as ``missing``). A value that is not one of the task's
    classes raises Rejected("label_unknown") naming the task (kept as -1 when labels are not required)."""
    out = []
    for task in cfg.tasks:
        try:  # a member that could not be read counts as a bad label: -1 too when labels are not required
            if task.source == "json":
                raw = meta.get(task.json_key)
            else:
                member = pick_member(batch, columns[task.column], i, cfg.clean.max_member_bytes)
                if member.error:
                    raise Rejected("label_unknown", member.error)
                raw = member.data
            out.append(parse_label(raw, task.classes, task.format))
        except Rejected as r:
            if r.reason == "label_missing" or not (cfg.labels_required and cfg.further_required):
                out.append(-1)
            else:
                raise Rejected(r.reason, f"task {task.name}: {r.detail}") from None
    return out


def _decode_member(role: str, member: Member, cfg: StageConfig):
    if member.error:
        raise Rejected(member.reason or f"{role}_undecodable", member.error)
    c = cfg.clean
    if role == "image":
        h, w = cfg.modalities.image.size
        return decode_image(member.data, c.min_image_side, min(c.max_image_pixels, c.max_decoded_batch_bytes // 3),
                            draft_size=(w, h))
    if role == "text":
        return decode_text(member.data, c.max_text_chars)
    return decode_audio(member.data, c.min_audio_seconds, c.silence_peak, c.max_audio_seconds,
                        c.max_audio_channels, c.max_decoded_batch_bytes)


def _member_limits(role: str, cfg: StageConfig) -> tuple[int, str]:
    """(bytes a .gz member of ``role`` may inflate to, the reason when it inflates past them)."""
    if role == "text":
        return min(cfg.clean.max_member_bytes, text_byte_limit(cfg.clean.max_text_chars)), "text_too_long"
    return cfg.clean.max_member_bytes, "member_too_large"


def _sample_parts(i: int, batch: dict[str, np.ndarray], columns: dict[str, list[str]], cfg: StageConfig
                  ) -> tuple[dict, list[int], dict[str, Member], list[bytes | None]]:
    """Meta, label index per task (primary first), each enabled role's member and the content parts to hash, for
    row ``i``, nothing decoded; raises Rejected. ``columns``: each role's member columns (``_columns``); members
    are opened here, one row at a time."""
    dropped = batch[DROP_COLUMN][i] if DROP_COLUMN in batch else None
    if dropped:  # the tar reader could not hold the sample whole
        reason, _, detail = str(dropped).partition(": ")
        raise Rejected(reason, detail)
    limit = cfg.clean.max_member_bytes
    meta_member = pick_member(batch, columns["meta"], i, limit)
    meta = parse_meta(meta_member)
    try:
        label = parse_label(label_value(pick_member(batch, columns["label"], i, limit), meta, cfg), cfg.classes,
                            cfg.label.format)
    except Rejected:
        if cfg.labels_required:
            raise
        label = -1
    labels = [label, *task_labels(batch, columns, i, meta, cfg)]
    row = {role: pick_member(batch, columns[role], i, *_member_limits(role, cfg)) for role in cfg.enabled}
    for role, member in row.items():
        if getattr(cfg.modalities, role).required and not member.present:
            raise Rejected(f"{role}_missing", f"required {role} member absent")
    if not any(m.present for m in row.values()):
        raise Rejected("no_modality", "no image, text or audio member")
    meta_bytes = meta_member.data if meta_member.present else None
    # the label(s) are part of the content: the same sample with another label is no duplicate
    label_part = str(label if not cfg.tasks else labels).encode()
    return meta, labels, row, [label_part, meta_bytes] + [row[r].data for r in cfg.enabled]


def _clean_row(i: int, batch: dict[str, np.ndarray], columns: dict[str, list[str]], cfg: StageConfig
               ) -> tuple[dict, list[int], list[bytes | None]]:
    """Decoded values, label index per task and the content parts to hash, for row ``i``; raises Rejected."""
    meta, label, row, parts = _sample_parts(i, batch, columns, cfg)
    decoded = {role: _decode_member(role, m, cfg) if m.present else None for role, m in row.items()}
    decoded["meta"] = meta
    return decoded, label, parts


class _Chunk:
    """Cleaned rows of one chunk of a batch, and the decoded bytes they hold."""

    def __init__(self, label_columns: tuple[str, ...] = ("label",)) -> None:
        self.label_columns = label_columns  # label, then label_<task> per further task
        self.keys, self.urls, self.reasons, self.details, self.rates, self.labels = [], [], [], [], [], []
        self.values: dict[str, list] = {"image": [], "text": [], "audio": [], "meta": []}
        self.hashes: dict[int, str] = {}
        self.held = 0

    def add(self, key: str, url: str, i: int, batch: dict[str, np.ndarray], columns: dict[str, list[str]],
            cfg: StageConfig) -> None:
        row = len(self.keys)
        self.keys.append(key)
        self.urls.append(url)
        reason = detail = ""
        decoded, labels, rate = {}, [-1] * (1 + len(cfg.tasks)), 0
        try:
            decoded, labels, parts = _clean_row(i, batch, columns, cfg)
            self.hashes[row] = content_hash(parts)
        except Rejected as r:
            reason, detail = r.reason, r.detail
        except Exception as e:  # a decoder bug or an input no check foresaw: drop this sample, not the batch
            reason, detail = "sample_error", f"{type(e).__name__}: {str(e)[:200]}"
        if decoded.get("audio") is not None:
            decoded["audio"], rate = decoded["audio"]
        for name, column in self.values.items():
            value = decoded.get(name, {} if name == "meta" else None)
            column.append(value)
            self.held += value.nbytes if isinstance(value, np.ndarray) else len(value) if isinstance(value, str) else 0
        self.reasons.append(reason)
        self.details.append(detail)
        self.labels.append(labels)
        self.rates.append(rate)

    def _label_arrays(self) -> np.ndarray:
        """(tasks, rows) int64: one row of label indices per label column."""
        return np.array(self.labels, dtype=np.int64).reshape(-1, len(self.label_columns)).T

    def _drop(self, i: int, reason: str, detail: str) -> None:
        self.reasons[i], self.details[i] = reason, detail
        self.labels[i] = [-1] * len(self.label_columns)  # a dropped row's labels are -1, as for any other reason
        self.values["image"][i] = self.values["text"][i] = self.values["audio"][i] = None

    def finish(self, duplicates: Duplicates | None, eval_content: ContentSet | None = None
               ) -> dict[str, np.ndarray]:
        rows = list(self.hashes)
        if eval_content is not None and rows:
            held_by = eval_content.where([self.hashes[i] for i in rows])
            for i, split in zip(rows, held_by):
                if split is not None:
                    self._drop(i, "duplicate_of_eval", f"same content as a sample of split {split!r}")
            rows = [i for i, split in zip(rows, held_by) if split is None]
        if duplicates is not None and rows:
            row_ids = [f"{self.urls[i]}::{self.keys[i]}" for i in rows]
            for i, row_id, owner in zip(rows, row_ids, duplicates.claim([self.hashes[i] for i in rows], row_ids)):
                if owner != row_id:
                    self._drop(i, "duplicate", f"same content as {owner}")
        return {
            KEY_COLUMN: _object_column(self.keys), URL_COLUMN: _object_column(self.urls),
            **{name: _object_column(v) for name, v in self.values.items()},
            "audio_rate": np.array(self.rates, dtype=np.int64),
            **dict(zip(self.label_columns, self._label_arrays())),
            "drop_reason": _object_column(self.reasons), "drop_detail": _object_column(self.details),
            HASH_COLUMN: _object_column([self.hashes.get(i, "") for i in range(len(self.keys))]),
        }


def _columns(batch: dict[str, np.ndarray], cfg: StageConfig) -> dict[str, list[str]]:
    """Each role's member columns in ``batch`` (enabled modalities, meta, label), in extension order."""
    columns = {role: role_columns(list(batch), getattr(cfg.modalities, role).extensions) for role in cfg.enabled}
    columns["meta"] = role_columns(list(batch), cfg.modalities.meta_extensions)
    columns["label"] = role_columns(list(batch), cfg.label.extensions)
    for task in cfg.tasks:
        if task.source == "cls":
            columns[task.column] = role_columns(list(batch), list(task.extensions))
    return columns


def clean_chunks(batch: dict[str, np.ndarray], cfg: StageConfig, duplicates: Duplicates | None = None,
                 eval_content: ContentSet | None = None) -> Iterator[dict[str, np.ndarray]]:
    """``clean_batch`` in consecutive chunks of rows, each holding about ``clean.max_decoded_batch_bytes`` of
    decoded values at most (a chunk ends after the row that reaches it; one row alone is held under that limit by
    the decoders). Together the chunks hold every row, in order."""
    keys = [str(k) for k in batch[KEY_COLUMN]]
    urls = [str(u) for u in batch[URL_COLUMN]] if URL_COLUMN in batch else [""] * len(keys)
    columns = _columns(batch, cfg)
    label_columns = cfg.label_columns
    chunk = _Chunk(label_columns)
    for i, (key, url) in enumerate(zip(keys, urls)):
        chunk.add(key, url, i, batch, columns, cfg)
        if chunk.held >= cfg.clean.max_decoded_batch_bytes and i < len(keys) - 1:
            yield chunk.finish(duplicates, eval_content)
            chunk = _Chunk(label_columns)
    yield chunk.finish(duplicates, eval_content)


def hash_batch(batch: dict[str, np.ndarray], cfg: StageConfig) -> dict[str, np.ndarray]:
    """The content hash of every row that would get one in clean, nothing decoded (rows rejected before decoding
    are left out): what another split's train rows are checked against. A row that passes here but fails to
    decode adds a hash no train row can match (its identical copy fails to decode too)."""
    columns = _columns(batch, cfg)
    hashes = []
    for i in range(len(batch[KEY_COLUMN])):
        try:
            hashes.append(content_hash(_sample_parts(i, batch, columns, cfg)[3]))
        except Exception:  # Rejected, or an input no check foresaw: clean drops it before hashing too
            continue
    return {HASH_COLUMN: _object_column(hashes)}


def concat_batches(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Batches with the same columns -> one, rows in order."""
    if len(batches) == 1:
        return batches[0]
    return {c: np.concatenate([b[c] for b in batches]) for c in batches[0]}


def clean_batch(batch: dict[str, np.ndarray], cfg: StageConfig, duplicates: Duplicates | None = None,
                eval_content: ContentSet | None = None) -> dict[str, np.ndarray]:
    """Every row cleaned, at once (the decoded values of the whole batch are held together)."""
    return concat_batches(list(clean_chunks(batch, cfg, duplicates, eval_content)))


def clean_bounded(batch: dict[str, np.ndarray], cfg: StageConfig, duplicates: Duplicates | None = None,
                  then: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
                  eval_content: ContentSet | None = None, content_hashes: bool = False) -> dict[str, np.ndarray]:
    """clean -> ``then`` (align: fixed, small shapes) chunk by chunk, so that no more than one chunk of decoded
    images and waveforms is ever held: a batch of 128 large images costs one chunk, not 128 images.
    ``content_hashes``: keep the ``content_hash`` column (the report path: cross-split duplicates)."""
    def finish(chunk: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = then(chunk) if then else dict(chunk)
        if content_hashes:
            out[HASH_COLUMN] = chunk[HASH_COLUMN]
        else:
            out.pop(HASH_COLUMN, None)
        return out

    return concat_batches([finish(c) for c in clean_chunks(batch, cfg, duplicates, eval_content)])

"""Tokenizers that need no download and never collapse a script to 'unknown'.

``hash``: NFKC-normalised text is split into words (letters/digits/marks of space-separated scripts), single
characters for scripts written without spaces (Han, Hiragana, Katakana, Hangul, Thai, ...) and single punctuation
marks; each piece is hashed (CRC-32, stable across processes and machines) into ``[2, vocab_size)``. Collisions
are possible but rare at the default vocabulary; there is no vocabulary file to ship or to get out of date.

``bytes``: UTF-8 bytes shifted by 2, so every string of every script round-trips exactly.

``model.hf.text`` (a Hugging Face model folder): that folder's own tokenizer, special tokens included, each id
stored + 1 so that 0 stays padding (the encoder subtracts it again; ids > 0 are its attention mask). One int64
column, as for the others: absent text stays all zeros and the device text ops keep working.

Id 0 is padding; id 1 is reserved. ``tokenize_batch`` is the sample path's tokenize stage: it runs once per row,
after text augmentation (align and augment keep the text as a string).
"""

from __future__ import annotations

import re
import unicodedata
import zlib

import numpy as np

from pipeline.spec import TextSpec

PAD_ID = 0
FIRST_ID = 2

# Scripts written without spaces between words: one token per character.
_CHAR_SCRIPTS = (
    "\u2e80-\u2fdf"            # CJK radicals, Kangxi
    "\u3040-\u30ff"            # Hiragana, Katakana
    "\u3100-\u312f\u31a0-\u31bf"  # Bopomofo
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # Han
    "\uac00-\ud7af\u1100-\u11ff"  # Hangul
    "\u0e00-\u0e7f\u0e80-\u0eff\u1000-\u109f\u1780-\u17ff"  # Thai, Lao, Myanmar, Khmer
    "\U00020000-\U0003134f"    # Han extensions
)
_PIECES = re.compile(rf"[{_CHAR_SCRIPTS}]|(?:(?![{_CHAR_SCRIPTS}])[\w\u0300-\u036f])+|[^\w\s]", re.UNICODE)


def hash_pieces(text: str, lowercase: bool = True) -> list[str]:
    text = unicodedata.normalize("NFKC", text)
    if lowercase:
        text = text.lower()
    return _PIECES.findall(text)


def _hash_ids(text: str, vocab_size: int, lowercase: bool) -> list[int]:
    span = vocab_size - FIRST_ID
    return [FIRST_ID + zlib.crc32(p.encode("utf-8")) % span for p in hash_pieces(text, lowercase)]


def _byte_ids(text: str) -> list[int]:
    return [FIRST_ID + b for b in text.encode("utf-8")]


def encode_batch(texts: list[str | None], spec: TextSpec) -> np.ndarray:
    """Token ids ``(B, spec.max_tokens)`` int64 by ``spec.tokenizer``, right-padded with 0 and truncated; None rows
    are all padding."""
    out = np.zeros((len(texts), spec.max_tokens), dtype=np.int64)
    for row, text in enumerate(texts):
        if not text:
            continue
        ids = _hash_ids(text, spec.vocab_size, spec.lowercase) if spec.tokenizer == "hash" else _byte_ids(text)
        ids = ids[:spec.max_tokens]
        out[row, : len(ids)] = ids
    return out


HF_SHIFT = 1  # model.hf.text ids are stored + 1: 0 is padding whatever the tokenizer's pad id


def encode_hf(texts: list[str | None], max_tokens: int, folder: str) -> np.ndarray:
    """Ids ``(B, max_tokens)`` int64 by the tokenizer of the model folder ``folder``, + HF_SHIFT, 0 where its
    attention mask is 0 (padding, None rows)."""
    from pipeline.hf_local import load_tokenizer

    out = np.zeros((len(texts), max_tokens), dtype=np.int64)
    rows = [i for i, t in enumerate(texts) if t]
    if rows:
        # Unpadded, then placed here: right-padded whatever the tokenizer's padding side, and a tokenizer without a
        # pad token (GPT-2-like) works too (padding="max_length" raised for it inside the read task).
        enc = load_tokenizer(folder)([str(texts[i]) for i in rows], max_length=max_tokens, truncation=True,
                                     padding=False)
        for row, ids in zip(rows, enc["input_ids"]):
            out[row, :len(ids)] = np.asarray(ids, dtype=np.int64) + HF_SHIFT
    return out


def tokenize_batch(batch: dict[str, np.ndarray], text: TextSpec, hf_folder: str | None = None
                   ) -> dict[str, np.ndarray]:
    """``text_raw`` (str) -> ``text`` int64 (B, text.max_tokens), placed right after ``text_raw``; rows whose text is
    absent or dropped (``present_text`` False) are all padding. ``hf_folder`` (model.hf.text): its tokenizer makes
    the ids. Never drops a row: every text that decoding let through (valid UTF-8, not empty) has ids, so the data
    report needs no count from here."""
    present = batch["present_text"] if "present_text" in batch else np.ones(len(batch["text_raw"]), dtype=bool)
    texts = [s if p else None for s, p in zip(batch["text_raw"], present)]
    ids = encode_hf(texts, text.max_tokens, hf_folder) if hf_folder else encode_batch(texts, text)
    out: dict[str, np.ndarray] = {}
    for column, values in batch.items():
        if column != "text":  # ids of an earlier text_raw would be stale
            out[column] = values
        if column == "text_raw":
            out["text"] = ids
    return out


def decode_bytes(ids: np.ndarray) -> str:
    """Inverse of the ``bytes`` tokenizer (for tests and debugging)."""
    raw = bytes(int(i) - FIRST_ID for i in ids if i >= FIRST_ID)
    return raw.decode("utf-8", errors="replace")

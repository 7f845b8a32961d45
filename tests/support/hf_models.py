"""Tiny random Hugging Face model folders (model.hf), written by the test itself: nothing is downloaded. Needs the
transformers package (the mmpipe[hf] extra, part of the test extra)."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.data.tools.demo import FILLER, TEMPLATES, WORDS

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def demo_vocabulary() -> list[str]:
    """Every word of the demo's texts, and each Han character alone (BERT splits Han text into characters)."""
    words = {w for row in WORDS for w in row} | set(FILLER)
    words |= {w.strip("!,.，") for t in TEMPLATES for w in t.replace("{w}", " ").split()}
    pieces = set()
    for w in words:
        han = [c for c in w if "\u4e00" <= c <= "\u9fff"]
        pieces |= set(han) if han else {w.lower()}
    return SPECIAL + sorted((pieces | set("!,.，")) - {""})


def bert_tokenizer(vocabulary: list[str]):
    """BERT's WordPiece tokenizer over ``vocabulary`` ([CLS] text [SEP]), built with the tokenizers library (the
    same in transformers 4 and 5); lower-cased, accents kept: 'forêt' and 'йод' stay themselves."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    ids = {w: i for i, w in enumerate(vocabulary)}
    tok = Tokenizer(models.WordPiece(ids, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=False, handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", ids["[CLS]"]),
                                                                       ("[SEP]", ids["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def text_folder(path: Path, vocabulary: list[str] | None = None, hidden: int = 32, positions: int = 64) -> Path:
    """A one-layer BERT and its tokenizer (``bert_tokenizer``)."""
    from transformers import BertConfig, BertModel

    path.mkdir(parents=True, exist_ok=True)
    vocabulary = vocabulary or demo_vocabulary()
    bert_tokenizer(vocabulary).save_pretrained(path)
    config = BertConfig(vocab_size=len(vocabulary), hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=positions)
    BertModel(config).save_pretrained(path)
    return path


def image_folder(path: Path, size: int = 16, hidden: int = 32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> Path:
    """A one-layer ViT on size x size images, with its preprocessor_config.json (mean/std, size)."""
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(image_size=size, patch_size=4, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=2 * hidden)
    ViTModel(config).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(
        {"do_normalize": True, "image_mean": list(mean), "image_std": list(std),
         "size": {"height": size, "width": size}}), encoding="utf-8")
    return path


def audio_folder(path: Path, sampling_rate: int = 16000, hidden: int = 32) -> Path:
    """A one-layer wav2vec2 with a two-layer convolutional front end."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    config = Wav2Vec2Config(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=2 * hidden, conv_dim=(16, 16), conv_stride=(5, 4),
                            conv_kernel=(10, 4), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
                            mask_time_prob=0.0)
    Wav2Vec2Model(config).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(
        {"do_normalize": True, "sampling_rate": sampling_rate, "feature_size": 1}), encoding="utf-8")
    return path

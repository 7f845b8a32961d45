"""Hugging Face ``transformers`` models, tokenizers and preprocessing settings from local folders only (model.hf;
the ``mmpipe[hf]`` extra). Nothing is ever downloaded: the hub is switched offline before ``transformers`` loads and
every load passes ``local_files_only=True``, so a folder that is missing or incomplete is an error naming the spec
field, never a network request.

A folder is what ``save_pretrained`` writes: ``config.json``, the weights (``model.safetensors``), and for text the
tokenizer files, for images and audio optionally ``preprocessor_config.json`` (normalisation, size, sampling rate).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from pathlib import Path

INSTALL = "pip install 'mmpipe[hf]'"


class HFError(ValueError):
    """A model.hf folder or the transformers package is missing or unusable."""


def installed() -> bool:
    return importlib.util.find_spec("transformers") is not None


def folder_problem(folder: str) -> str | None:
    """Why ``folder`` cannot be a model.hf folder, or None."""
    path = Path(folder)
    if not path.is_dir():
        return f"{folder} is not a folder (a local model folder, as save_pretrained writes; nothing is downloaded)"
    if not (path / "config.json").is_file():
        return f"{folder} holds no config.json (a local model folder, as save_pretrained writes)"
    return None


def read_json(folder: str, name: str) -> dict:
    """A JSON object file of the folder ({} when absent): config.json, preprocessor_config.json,
    tokenizer_config.json. A half-copied or foreign file is an HFError naming it, not a traceback."""
    path = Path(folder) / name
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise HFError(f"{path} is not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(content, dict):
        raise HFError(f"{path} holds a JSON {type(content).__name__}, not an object")
    return content


# Models that number positions from pad_token_id + 1 (fairseq's scheme): max_position_embeddings counts those
# skipped ids, so RoBERTa's 514 positions take 512 tokens (513 failed inside the position embedding at training time).
OFFSET_POSITIONS = frozenset({"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "bart", "mbart",
                              "roberta-prelayernorm", "data2vec-text", "xmod", "ibert", "mpnet", "esm"})


def text_positions(folder: str) -> int | None:
    """How many tokens the text model of ``folder`` takes (None when its files do not say): its position count,
    less the offset of models that start counting after the pad id, and no more than the tokenizer's own
    model_max_length when it gives a real one."""
    config = read_json(folder, "config.json")
    positions = config.get("max_position_embeddings")
    if isinstance(positions, int) and config.get("model_type") in OFFSET_POSITIONS:
        positions -= int(config.get("pad_token_id") or 0) + 1
    tokenizer_max = read_json(folder, "tokenizer_config.json").get("model_max_length")
    if isinstance(tokenizer_max, int) and 0 < tokenizer_max < 1_000_000:  # transformers writes 1e30 for "none"
        positions = min(positions, tokenizer_max) if isinstance(positions, int) else tokenizer_max
    return positions if isinstance(positions, int) else None


def _transformers(field: str):
    if not installed():
        raise HFError(f"{field} needs the transformers package: {INSTALL}")
    # Offline before the first import: huggingface_hub reads these once, at import. It may be imported already
    # (albumentations imports it), so its constant is set too.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    # Fast tokenizers otherwise start a thread per core in every read task, on CPUs the plan gave to one task each
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import huggingface_hub.constants
    import transformers

    huggingface_hub.constants.HF_HUB_OFFLINE = True

    # quiet in every worker: no per-load progress bars, no "weights newly initialised" lines
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers


def _checked(folder: str, field: str) -> str:
    problem = folder_problem(folder)
    if problem:
        raise HFError(f"{field}: {problem}")
    return str(Path(folder).resolve())


def load_model(folder: str, field: str):
    """The bare model (``AutoModel``, no task head) of ``folder``, on CPU, in float32."""
    transformers = _transformers(field)
    folder = _checked(folder, field)
    try:
        return transformers.AutoModel.from_pretrained(folder, local_files_only=True, dtype="float32")
    except Exception as e:  # noqa: BLE001 - transformers raises OSError/ValueError/KeyError for bad folders
        raise HFError(f"{field}: cannot load a model from {folder} ({type(e).__name__}: {str(e)[:300]})") from None


@functools.lru_cache(maxsize=4)
def load_tokenizer(folder: str, field: str = "model.hf.text"):
    """The folder's tokenizer (``AutoTokenizer``, a fast one where the folder has it); loaded once per process,
    as the tokenize stage runs batch after batch in the same read worker."""
    transformers = _transformers(field)
    folder = _checked(folder, field)
    try:
        return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise HFError(f"{field}: cannot load a tokenizer from {folder} ({type(e).__name__}: {str(e)[:300]})") \
            from None

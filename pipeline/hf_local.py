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
    """A JSON file of the folder ({} when absent): config.json, preprocessor_config.json."""
    path = Path(folder) / name
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _transformers(field: str):
    if not installed():
        raise HFError(f"{field} needs the transformers package: {INSTALL}")
    # Offline before the first import: huggingface_hub reads these once, at import.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import transformers

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

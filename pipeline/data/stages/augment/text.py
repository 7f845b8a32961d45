"""Text augmentation with nlpaug, on the cleaned text before tokenization.

Character-level (KeyboardAug, OcrAug, RandomCharAug) and word-level (RandomWordAug, SplitAug) augmenters work
offline. Augmenters that need downloaded data (SynonymAug/AntonymAug: NLTK WordNet; WordEmbsAug, TfIdfAug,
SpellingAug: model files; ContextualWordEmbsAug, BackTranslationAug: transformer models) work when that data is
present locally, and otherwise fail at spec load with a message naming what is missing.
"""

from __future__ import annotations

from pipeline.data.stages.augment.build import TransformError, construct, lookup
from pipeline.data.stages.seeds import globals_restored, seed_globals

OFFLINE = ("KeyboardAug", "OcrAug", "RandomCharAug", "RandomWordAug", "SplitAug")
NEEDS_DATA = {
    "SynonymAug": "the NLTK WordNet corpus (pip install nltk; python -m nltk.downloader wordnet omw-1.4)",
    "AntonymAug": "the NLTK WordNet corpus (pip install nltk; python -m nltk.downloader wordnet omw-1.4)",
    "WordEmbsAug": "a local word-embedding file (params.model_path)",
    "TfIdfAug": "a local TF-IDF model folder (params.model_path)",
    "SpellingAug": "a local spelling-error dictionary (params.dict_path)",
    "ContextualWordEmbsAug": "a transformer model available offline (params.model_path) and the transformers package",
    "BackTranslationAug": "translation models available offline and the transformers package",
}
# Sentences every augmenter is tried on at spec load: Latin and Chinese, short and long.
PROBES = ("the quick brown fox jumps over the lazy dog", "一只敏捷的狐狸跳过了懒狗")


def _namespace(name: str | None = None) -> dict:
    """nlpaug's augmenters by name: the character-level module alone when it holds ``name``, since the word-level
    one imports transformers (~4 s on 2 cores, in every Ray worker that builds the demo's RandomCharAug)."""
    import nlpaug.augmenter.char as nac

    if name is not None and _is_transform(vars(nac).get(name)):
        return vars(nac)
    import nlpaug.augmenter.word as naw

    return {**vars(nac), **vars(naw)}


def _is_transform(obj) -> bool:
    from nlpaug.base_augmenter import Augmenter

    return isinstance(obj, type) and issubclass(obj, Augmenter) and obj.__name__.endswith("Aug")


def _one(augmenter, text: str) -> str:
    out = augmenter.augment(text)
    out = out[0] if isinstance(out, list) else out
    return out if isinstance(out, str) and out.strip() else text


def build(specs):
    augmenters = []
    for spec in specs:
        cls = lookup(spec.name, _namespace(spec.name), _is_transform, "nlpaug")
        try:
            augmenters.append((construct(cls, dict(spec.params)), spec.p))
        except TransformError as e:
            raise _missing_data(spec.name, e) from None

    def apply(text: str, seed: int) -> str:
        """Reseeds the global generators: call it inside ``seeds.globals_restored()``."""
        import random

        seed_globals(int(seed))
        for augmenter, p in augmenters:
            if random.random() < p:
                text = _one(augmenter, text)
        return text

    return apply


def _missing_data(name: str, error: Exception) -> TransformError:
    if name in NEEDS_DATA:
        return TransformError(f"{name} needs {NEEDS_DATA[name]}, which is not available here ({error}). "
                              f"Offline text augmenters: {', '.join(OFFLINE)}")
    return TransformError(str(error))


def check(specs) -> None:
    apply = build([s.model_copy(update={"p": 1.0}) for s in specs])
    for probe in PROBES:
        try:
            with globals_restored():
                out = apply(probe, 0)
        except Exception as e:
            raise _missing_data(specs[0].name if len(specs) == 1 else "text augmenter", e) from None
        if not isinstance(out, str):
            raise TransformError(f"returned {type(out).__name__}, not text")

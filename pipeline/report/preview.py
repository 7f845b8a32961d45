"""The run's augmentation preview (``augment_preview.png``): the first train samples before and after the spec's
augmentation, drawn at the end of a run for its report. Read in this process from the first train shard with the
same stage functions as training (clean, align, augment at epoch 1): a few samples, no Ray, about a second."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

PREVIEW_FILE = "augment_preview.png"
PREVIEW_SAMPLES = 4  # rows of the sheet: its drawing is most of the cost (about a second)
READ_AT_MOST = 64  # raw samples read to find PREVIEW_SAMPLES kept ones


def write_augment_preview(spec, classes: list[str], run_dir: Path, n: int = PREVIEW_SAMPLES) -> Path | None:
    """``RUN_DIR/augment_preview.png`` (and its texts in ``augment_preview.json``); None when the spec augments
    nothing on the CPU path or no train sample survives cleaning."""
    import fsspec

    from pipeline.data.shards.check import expand_shards
    from pipeline.data.shards.tar import TarLimits, tar_samples, to_batch
    from pipeline.data.stages.augment.stage import augment_batch
    from pipeline.data.stages.config import StageConfig
    from pipeline.data.stages.path import augments, run_path, sample_path
    from pipeline.data.tools.plots import augment_sheet
    from pipeline.io import atomic_write_text

    if not augments(spec) or "train" not in spec.data.splits:
        return None
    shard = expand_shards(spec.data.splits["train"])[0]
    with fsspec.open(shard, "rb") as stream:
        rows = list(islice(tar_samples(stream, shard, TarLimits.from_clean(spec.clean)), READ_AT_MOST))
    if not rows:
        return None
    before = run_path(to_batch(rows), sample_path(spec, StageConfig.from_spec(spec, classes), "eval"))
    if not len(before["label"]):
        return None
    before = {k: v[:n] for k, v in before.items()}
    after = augment_batch(before, spec.augment, spec.modalities, 1)  # epoch 1's draws
    roles = [m for m in spec.modalities.enabled() if getattr(spec.augment, m)]
    path = augment_sheet(before, after, roles, run_dir / PREVIEW_FILE)
    texts = [{"key": str(k), "before": str(b), "after": str(a)}
             for k, b, a in zip(before["__key__"], before.get("text_raw", []), after.get("text_raw", []))]
    atomic_write_text(run_dir / "augment_preview.json", json.dumps(texts, indent=2, ensure_ascii=False))
    return Path(path)

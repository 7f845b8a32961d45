"""TensorBoard event files for one training (a ``mmpipe train`` run or one Tune trial), written from rank 0.

The writer is tensorboardX: it comes with Ray (no new dependency, no TensorFlow) and writes the same event files
``torch.utils.tensorboard`` would, which itself needs the whole ``tensorboard`` package just to write. Reading them
(``tensorboard --logdir RUN_DIR``) needs ``pip install tensorboard``.

Tags: ``train/loss``, ``val/macro_f1``, ``val/precision.<class>``…, ``lr``; one step per epoch, 1-based.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

TENSORBOARD_DIR = "tensorboard"  # under a run directory (or a tune folder, one sub-folder per trial)
HPARAMS_RUN = "hparams"          # the hyperparameters + final metrics, a sub-run of the training's folder


def tag(metric: str) -> str:
    """``val.precision.cat`` -> ``val/precision.cat``: TensorBoard groups by what comes before the first slash."""
    head, _, rest = metric.partition(".")
    return f"{head}/{rest}" if rest else metric


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


class EpochWriter:
    """One training's event files: ``epoch(...)`` after each epoch, ``hparams(...)`` once at the end."""

    def __init__(self, log_dir: str | Path):
        from tensorboardX import SummaryWriter

        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(str(self.log_dir), flush_secs=10)

    def epoch(self, step: int, metrics: dict, confusion_figure=None) -> None:
        """Every numeric metric of epoch ``step`` (1-based) as a scalar; ``confusion_figure`` (a matplotlib figure
        of the validation confusion matrix) as an image."""
        for name, value in metrics.items():
            number = _number(value)
            if name != "epoch" and number is not None:
                self._writer.add_scalar(tag(name), number, step)
        if confusion_figure is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._writer.add_figure("val/confusion", confusion_figure, step, close=True)
        self._writer.flush()

    def hparams(self, hparams: dict, final: dict) -> None:
        """The trial's hyperparameters beside its final metrics (TensorBoard's HPARAMS tab)."""
        values = {k: (v if isinstance(v, (bool, str, int, float)) else str(v)) for k, v in hparams.items()}
        metrics = {f"hparam/{k}": n for k, v in final.items() if k != "epoch" and (n := _number(v)) is not None}
        self._writer.add_hparams(values, metrics, name=HPARAMS_RUN)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

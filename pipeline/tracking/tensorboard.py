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
    """One training's event files: ``epoch(...)`` after each epoch, ``hparams(...)`` once at the end.

    Each epoch's events are on disk when ``epoch()`` returns, as its checkpoint is about to be: a worker killed
    after that (a failed node, a stop) must not take the epoch out of TensorBoard, since a resumed run carries on
    from the next one. tensorboardX queues events for a background thread and its ``flush()`` does not wait for that
    queue (an image written just before a worker failure was lost: tests/train/test_train.py); only ``close()``
    drains it. So each epoch gets a writer of its own, closed at once: one small event file per epoch, named by
    its step, which TensorBoard reads as one run.
    """

    def __init__(self, log_dir: str | Path):
        self.log_dir = Path(log_dir)

    def _writer(self, suffix: str):
        from tensorboardX import SummaryWriter

        return SummaryWriter(str(self.log_dir), filename_suffix=suffix)

    def epoch(self, step: int, metrics: dict, confusion_figure=None) -> None:
        """Every numeric metric of epoch ``step`` (1-based) as a scalar; ``confusion_figure`` (a matplotlib figure
        of the validation confusion matrix) as an image."""
        writer = self._writer(f".epoch{step}")
        try:
            for name, value in metrics.items():
                number = _number(value)
                if name != "epoch" and number is not None:
                    writer.add_scalar(tag(name), number, step)
            if confusion_figure is not None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    writer.add_figure("val/confusion", confusion_figure, step, close=True)
        finally:
            writer.close()

    def hparams(self, hparams: dict, final: dict) -> None:
        """The trial's hyperparameters beside its final metrics (TensorBoard's HPARAMS tab)."""
        values = {k: (v if isinstance(v, (bool, str, int, float)) else str(v)) for k, v in hparams.items()}
        metrics = {f"hparam/{k}": n for k, v in final.items() if k != "epoch" and (n := _number(v)) is not None}
        writer = self._writer(".hparams")
        try:
            writer.add_hparams(values, metrics, name=HPARAMS_RUN)
        finally:
            writer.close()

    def close(self) -> None:
        """Nothing left open: every call above closed its writer."""

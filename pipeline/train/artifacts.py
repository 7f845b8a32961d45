"""Run-directory artifacts: per-epoch metrics CSV, training-curve PNG, confusion-matrix PNG."""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path

import numpy as np

from pipeline.io import atomic_write_text

CURVE_METRICS = ("loss", "accuracy", "macro_f1")


def write_epochs_csv(path: Path, history: list[dict]) -> None:
    columns = sorted({k for row in history for k in row}, key=lambda k: (k != "epoch", k))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buf.getvalue())


def plot_curves(path: Path, history: list[dict]) -> None:
    from pipeline.data.tools.plots import _pyplot

    plt = _pyplot()
    epochs = [row["epoch"] for row in history]  # 1-based, as epochs.csv holds them
    fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(4 * len(CURVE_METRICS), 3.2))
    for ax, name in zip(axes, CURVE_METRICS):
        for split in ("train", "val"):
            ax.plot(epochs, [row.get(f"{split}.{name}", np.nan) for row in history], marker="o", label=split)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(path: Path, confusion: np.ndarray, classes: list[str], title: str) -> None:
    from pipeline.data.tools.plots import _pyplot

    fig = confusion_figure(confusion, classes, title)
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)


def confusion_figure(confusion, classes: list[str], title: str):
    """A matplotlib figure of ``confusion`` (rows true, columns predicted) with the count in each cell."""
    from pipeline.data.tools.plots import _pyplot

    plt = _pyplot()
    confusion = np.asarray(confusion)
    size = max(4, 0.6 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if confusion[i, j] > confusion.max() / 2 else "black")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # glyphs the default font lacks (CJK class names)
        fig.tight_layout()
    return fig


def write_artifacts(run_dir: Path, history: list[dict], classes: list[str], confusion: np.ndarray,
                    split: str, task_confusions: dict[str, tuple[np.ndarray, list[str]]] | None = None) -> None:
    """``confusion``: the primary task's (confusion.png); ``task_confusions``: task -> (confusion, classes) of each
    further task (label.tasks: confusion_<task>.png)."""
    write_epochs_csv(run_dir / "epochs.csv", history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plot_curves(run_dir / "curves.png", history)
        plot_confusion(run_dir / "confusion.png", confusion, classes, f"confusion matrix ({split})")
        for task, (matrix, names) in (task_confusions or {}).items():
            plot_confusion(run_dir / f"confusion_{task}.png", matrix, names, f"confusion matrix, {task} ({split})")

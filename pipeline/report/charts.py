"""The report's pictures as PNG bytes: the run's own plots when it wrote them, else drawn here from its numbers."""

from __future__ import annotations

import base64
import io
import warnings
from pathlib import Path

CURVES = ("loss", "accuracy", "macro_f1")


def data_uri(png: bytes | None) -> str | None:
    """Inline image: the report is one file and loads nothing from the network."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii") if png else None


def file_png(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() and path.stat().st_size else None


def _png(fig) -> bytes:
    from pipeline.data.tools.plots import _pyplot

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # glyphs missing from the default font for some class names
        fig.savefig(buf, format="png", dpi=90)
    _pyplot().close(fig)
    return buf.getvalue()


def learning_curves(rows: list[dict], x: str = "epoch") -> bytes | None:
    """train/val loss, accuracy and macro-F1 per epoch (1-based)."""
    from pipeline.data.tools.plots import _pyplot

    if not rows:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4 * len(CURVES), 3.0))
    for ax, name in zip(axes, CURVES):
        for split in ("train", "val"):
            points = [(r[x], r[f"{split}.{name}"]) for r in rows
                      if isinstance(r.get(f"{split}.{name}"), (int, float)) and isinstance(r.get(x), (int, float))]
            if points:
                ax.plot(*zip(*points), marker="o", label=split)
        ax.set_title(name)
        ax.set_xlabel(x)
        steps = sorted({r[x] for r in rows if isinstance(r.get(x), (int, float))})
        if len(steps) <= 12:
            ax.set_xticks(steps)  # epochs are whole numbers
        ax.legend()
    fig.tight_layout()
    return _png(fig)


def confusion(matrix, classes: list[str], title: str) -> bytes | None:
    from pipeline.train.artifacts import confusion_figure

    return _png(confusion_figure(matrix, classes, title)) if matrix else None


def class_histograms(report: dict) -> bytes | None:
    """Kept rows per class, one bar group per split."""
    from pipeline.data.tools.plots import _pyplot

    classes, splits = report.get("classes") or [], report.get("splits") or {}
    if not classes or not splits:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(classes) + 2), 3.2))
    width = 0.8 / len(splits)
    for i, (name, split) in enumerate(splits.items()):
        hist = split.get("class_histogram") or {}
        ax.bar([c + (i - (len(splits) - 1) / 2) * width for c in range(len(classes))],
               [hist.get(c, 0) for c in classes], width, label=name)
    ax.set_xticks(range(len(classes)), classes, rotation=30 if len(classes) > 8 else 0)
    ax.set_ylabel("kept rows")
    ax.legend()
    fig.tight_layout()
    return _png(fig)


def rebalance(report: dict) -> bytes | None:
    from pipeline.data.tools.plots import _pyplot

    plan = report.get("rebalance") or {}
    before, after = plan.get("before") or {}, plan.get("expected_after") or {}
    if not before:
        return None
    classes = list(before)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(classes) + 2), 3.2))
    ax.bar([c - 0.2 for c in range(len(classes))], [before[c] for c in classes], 0.4, label="before")
    ax.bar([c + 0.2 for c in range(len(classes))], [after.get(c, 0) for c in classes], 0.4,
           label=f"after {plan.get('strategy', '')} (expected per epoch)")
    ax.set_xticks(range(len(classes)), classes, rotation=30 if len(classes) > 8 else 0)
    ax.set_ylabel("train rows")
    ax.legend()
    fig.tight_layout()
    return _png(fig)

"""PNG figures of the data: class distribution before/after rebalancing, and the augmentation preview sheet."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np


CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "WenQuanYi Micro Hei", "WenQuanYi Zen Hei",
             "Droid Sans Fallback")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Fall back to CJK-capable fonts where installed (e.g. Debian's fonts-noto-cjk); DejaVu has no Han glyphs.
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    plt.rcParams["font.family"] = ["DejaVu Sans"] + [f for f in CJK_FONTS if f in installed]

    return plt


def plot_class_distribution(classes: list[str], before: list[float], after: list[float], title: str,
                            path: str | Path) -> Path:
    plt = _pyplot()
    x = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(classes) + 2), 3.5))
    ax.bar(x - 0.2, before, 0.4, label="before")
    ax.bar(x + 0.2, after, 0.4, label="after rebalancing (expected per epoch)")
    ax.set_xticks(x, classes, rotation=30 if len(classes) > 8 else 0)
    ax.set_ylabel("samples")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing glyphs for some scripts in the default font
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_rebalance(plan: dict, path: str | Path) -> Path:
    """The rebalance plan of a data report (``RebalancePlan.to_dict()``) as bars per class: the classes of the
    task it rebalances (rebalance.task), which the title names when it is not the primary task."""
    task = f" of task {plan['task']}" if plan.get("task") else ""
    return plot_class_distribution(list(plan["before"]), list(plan["before"].values()),
                                   [plan["expected_after"][c] for c in plan["before"]],
                                   f"train classes{task}, rebalance: {plan['strategy']}", path)


def log_spectrogram(wave: np.ndarray, n_fft: int = 256, hop: int = 64) -> np.ndarray:
    """(freq, time) log-magnitude STFT, for display."""
    if len(wave) < n_fft:
        wave = np.pad(wave, (0, n_fft - len(wave)))
    frames = np.lib.stride_tricks.sliding_window_view(wave, n_fft)[::hop] * np.hanning(n_fft)
    return np.log1p(np.abs(np.fft.rfft(frames, axis=1)).T * 10)


def augment_sheet(before: dict[str, np.ndarray], after: dict[str, np.ndarray], roles: list[str],
                  path: str | Path) -> Path:
    """One row per sample: image before/after, spectrogram before/after, text before/after."""
    plt = _pyplot()
    n = len(before["__key__"])
    cols = ([("image", "before"), ("image", "after")] if "image" in roles else []) + \
           ([("audio", "before"), ("audio", "after")] if "audio" in roles else []) + \
           ([("text", "")] if "text" in roles else [])
    warnings.filterwarnings("ignore", message="Glyph .* missing", category=UserWarning)
    fig, axes = plt.subplots(n, len(cols), figsize=(2.6 * len(cols) + (3 if "text" in roles else 0), 2.0 * n),
                             squeeze=False)
    for r in range(n):
        for c, (role, when) in enumerate(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            batch = before if when == "before" else after
            if role == "image":
                ax.imshow(batch["image"][r])
            elif role == "audio":
                ax.imshow(log_spectrogram(batch["audio"][r]), origin="lower", aspect="auto", cmap="magma")
            else:
                ax.axis("off")
                ax.text(0, 0.5, f"{before['text_raw'][r][:60]}\n→ {after['text_raw'][r][:60]}", fontsize=7,
                        va="center", wrap=True)
            if r == 0:
                ax.set_title(f"{role} {when}".strip(), fontsize=9)
        axes[r][0].set_ylabel(str(before["__key__"][r])[-14:], fontsize=7)
    fig.tight_layout()
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

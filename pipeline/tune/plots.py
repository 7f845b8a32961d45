"""Tune plots: the metric of every trial over training time, and the best metric per fusion / optimizer."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np


def trial_best(result, metric: str, mode: str) -> float:
    values = result.metrics_dataframe[metric].dropna() if metric in result.metrics_dataframe else []
    if len(values) == 0:
        return float("nan")
    return float(values.max() if mode == "max" else values.min())


def plot_trial_curves(path: Path, results, metric: str) -> None:
    from pipeline.data.tools.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        df = r.metrics_dataframe
        if df is None or metric not in df or "time_total_s" not in df:
            continue
        label = ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                          for k, v in r.config.items())
        ax.plot(df["time_total_s"], df[metric], marker="o", label=label[:60])
    ax.set_xlabel("training time of the trial (s)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_best_by(path: Path, results, metric: str, mode: str, keys: list[str]) -> None:
    from pipeline.data.tools.plots import _pyplot

    plt = _pyplot()
    keys = keys or ["trial"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        best: dict[str, float] = defaultdict(lambda: float("nan"))
        for i, r in enumerate(results):
            value = trial_best(r, metric, mode)
            group = str(r.config.get(key, i))
            old = best[group]
            if np.isnan(old) or (value > old if mode == "max" else value < old):
                best[group] = value
        names = sorted(best)
        ax.bar(names, [best[n] for n in names])
        ax.set_title(f"best {metric} by {key}")
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

"""Classification metrics that are correct across ranks.

Each rank accumulates a confusion matrix (counts) and its rows' class probabilities; ``all_reduce`` sums the
counts and gathers the probabilities, and every metric is computed from those totals — never an average of
per-rank averages. Definitions follow scikit-learn (tests compare against it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


def metric_mode(name: str) -> str:
    """Whether ``name`` (e.g. val.macro_f1, val.loss) is better high ("max") or low ("min")."""
    return "min" if name.endswith("loss") else "max"


@dataclass
class Accumulator:
    num_classes: int
    confusion: np.ndarray = None  # (C, C): rows true class, columns predicted
    loss_sum: float = 0.0
    rows: int = 0
    probs: list = field(default_factory=list)
    labels: list = field(default_factory=list)

    def __post_init__(self):
        if self.confusion is None:
            self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def add(self, logits: torch.Tensor, labels: torch.Tensor, loss_sum: float) -> None:
        probs = torch.softmax(logits.float(), dim=1).detach().cpu().numpy()
        y = labels.detach().cpu().numpy()
        np.add.at(self.confusion, (y, probs.argmax(1)), 1)
        self.loss_sum += float(loss_sum)
        self.rows += len(y)
        self.probs.append(probs)
        self.labels.append(y)

    def all_reduce(self) -> "Accumulator":
        """Totals over every rank (a no-op without torch.distributed)."""
        probs = np.concatenate(self.probs) if self.probs else np.zeros((0, self.num_classes), np.float32)
        labels = np.concatenate(self.labels) if self.labels else np.zeros(0, np.int64)
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return Accumulator(self.num_classes, self.confusion.copy(), self.loss_sum, self.rows, [probs], [labels])
        counts = torch.tensor(np.append(self.confusion.ravel(), [self.rows]), dtype=torch.float64)
        loss = torch.tensor([self.loss_sum], dtype=torch.float64)
        torch.distributed.all_reduce(counts)
        torch.distributed.all_reduce(loss)
        gathered: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, (probs, labels))
        c = self.num_classes
        return Accumulator(c, counts[:-1].numpy().astype(np.int64).reshape(c, c), float(loss.item()),
                           int(counts[-1].item()), [g[0] for g in gathered], [g[1] for g in gathered])

    def compute(self, classes: list[str], prefix: str) -> dict:
        return classification_metrics(self.confusion, np.concatenate(self.probs) if self.probs else None,
                                      np.concatenate(self.labels) if self.labels else None, classes, prefix,
                                      loss=self.loss_sum / self.rows if self.rows else float("nan"))


def task_metrics(accs: list[Accumulator], tasks, prefix: str) -> dict:
    """Every task's metrics (``tasks``: pipeline.tasks.Task, primary first): the primary's as ``val.macro_f1``, a
    further task's as ``val.<task>.macro_f1``."""
    out = {}
    for acc, task in zip(accs, tasks):
        out.update(acc.compute(list(task.classes), task.prefix(prefix)))
    return out


def classification_metrics(confusion: np.ndarray, probs: np.ndarray | None, labels: np.ndarray | None,
                           classes: list[str], prefix: str, loss: float | None = None) -> dict:
    cm = confusion.astype(np.float64)
    true, pred, hit = cm.sum(1), cm.sum(0), np.diag(cm)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(true > 0, hit / true, 0.0)
        precision = np.where(pred > 0, hit / pred, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    seen = true > 0
    # no labelled row (a task no row of this split has a label of): no score, not a score of 0 (NaN, as AUC;
    # metrics.json and the registry write it as null, early stopping and the best checkpoint skip it)
    none = float("nan")
    out = {
        f"{prefix}.accuracy": float(hit.sum() / cm.sum()) if cm.sum() else none,
        f"{prefix}.balanced_accuracy": float(recall[seen].mean()) if seen.any() else none,
        f"{prefix}.macro_f1": float(f1[seen | (pred > 0)].mean()) if (seen | (pred > 0)).any() else none,
        f"{prefix}.auc": macro_auc(probs, labels, len(classes)),
        f"{prefix}.rows": int(cm.sum()),
    }
    if loss is not None:
        out[f"{prefix}.loss"] = float(loss)
    for i, c in enumerate(classes):
        out[f"{prefix}.precision.{c}"] = float(precision[i])
        out[f"{prefix}.recall.{c}"] = float(recall[i])
    out[f"{prefix}.confusion"] = confusion.astype(int).tolist()
    return out


def macro_auc(probs: np.ndarray | None, labels: np.ndarray | None, num_classes: int) -> float:
    """Macro one-vs-rest ROC-AUC over the classes present in ``labels`` (NaN when fewer than two are, or when a
    score is not finite). Equal to scikit-learn's ``roc_auc_score`` per class (tests/train/test_train.py checks it),
    computed here as the Mann-Whitney statistic: importing sklearn.metrics costs ~1.7 s in every process that
    scores an epoch (each training worker, the driver), more than all of a small run's metrics."""
    present = np.unique(labels) if labels is not None else ()
    if probs is None or len(present) < 2 or not np.isfinite(probs).all():
        return float("nan")
    return float(np.mean([_binary_auc(labels == c, probs[:, c]) for c in present]))


def _binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counting one half: from the positives'
    average ranks (tied scores share the mean of their ranks)."""
    order = np.argsort(score, kind="mergesort")
    ordered = score[order]
    starts = np.r_[True, ordered[1:] != ordered[:-1]]
    first = np.flatnonzero(starts)  # 0-based start of each run of equal scores
    ends = np.r_[first[1:], len(score)]
    ranks = np.empty(len(score))
    ranks[order] = ((first + ends + 1) / 2.0)[np.cumsum(starts) - 1]  # 1-based ranks first+1 .. end, averaged
    n_pos = int(positive.sum())
    n_neg = len(score) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))

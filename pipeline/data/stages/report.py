"""The data report: per split, rows in = rows kept + sum of rows dropped per reason, and where every drop came from;
per pair of splits, the content both hold (cross-split duplicates)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline.console import make_console
from pipeline.data.stages.clean import DROP_REASONS
from pipeline.data.stages.contract import KEY_COLUMN, URL_COLUMN
from pipeline.tasks import PRIMARY_COLUMN, task_column

EXAMPLES_PER_REASON = 5
REPORT_COLUMNS = (KEY_COLUMN, URL_COLUMN, PRIMARY_COLUMN, "drop_reason", "drop_detail")


@dataclass
class SplitReport:
    split: str
    classes: list[str]
    shards: int = 0
    rows_in: int = 0
    rows_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    class_histogram: dict[str, int] = field(default_factory=dict)
    modality_present: dict[str, int] = field(default_factory=dict)
    bad_shards: list[dict] = field(default_factory=list)
    examples: dict[str, list[dict]] = field(default_factory=dict)
    # label.tasks: task -> its classes; per task, kept rows per class and kept rows without its label (masked)
    tasks: dict[str, list[str]] = field(default_factory=dict)
    task_histograms: dict[str, dict[str, int]] = field(default_factory=dict)
    task_missing: dict[str, int] = field(default_factory=dict)
    # False for prediction's input (labels not required): a further task's value that is not one of its classes
    # is kept as -1 too, so its count is of rows "missing_or_unknown", not "missing"
    labels_required: bool = True

    def add_batch(self, batch: dict[str, np.ndarray]) -> None:
        """Count one aligned batch (all rows, dropped ones included)."""
        reasons = batch["drop_reason"]
        kept = np.array([not r for r in reasons], dtype=bool)
        self.rows_in += len(reasons)
        self.rows_kept += int(kept.sum())
        for i in np.flatnonzero(~kept):
            reason = str(reasons[i])
            self.dropped[reason] = self.dropped.get(reason, 0) + 1
            examples = self.examples.setdefault(reason, [])
            if len(examples) < EXAMPLES_PER_REASON:
                examples.append({"key": str(batch[KEY_COLUMN][i]), "shard": str(batch[URL_COLUMN][i]),
                                 "detail": str(batch["drop_detail"][i])})
        _count_classes(self.class_histogram, batch[PRIMARY_COLUMN][kept], self.classes)
        for task, names in self.tasks.items():
            labels = batch[task_column(task)][kept]
            _count_classes(self.task_histograms.setdefault(task, {}), labels, names)
            self.task_missing[task] = self.task_missing.get(task, 0) + int((labels < 0).sum())
        for col in batch:
            if col.startswith("present_"):
                role = col[len("present_"):]
                self.modality_present[role] = self.modality_present.get(role, 0) + int(batch[col].sum())

    def histogram(self, task: str | None = None) -> dict[str, int]:
        """Kept rows per class of the primary task, or of the further task ``task``."""
        return self.class_histogram if task is None else self.task_histograms.get(task, {})

    @property
    def balanced(self) -> bool:
        return self.rows_in == self.rows_kept + sum(self.dropped.values())

    def coverage(self) -> dict[str, float]:
        return {m: (n / self.rows_kept if self.rows_kept else 0.0) for m, n in self.modality_present.items()}

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in ("classes", "tasks", "task_histograms", "task_missing", "labels_required"):
            d.pop(name)
        if self.tasks:  # label.tasks only: a single-task report keeps its old shape
            missing = "missing" if self.labels_required else "missing_or_unknown"
            d["tasks"] = {t: {"class_histogram": {c: self.task_histograms.get(t, {}).get(c, 0) for c in names},
                              missing: self.task_missing.get(t, 0)} for t, names in self.tasks.items()}
        d["dropped"] = {r: self.dropped[r] for r in sorted(self.dropped, key=_reason_order)}
        d["class_histogram"] = {c: self.class_histogram.get(c, 0) for c in self.classes}
        d["modality_coverage"] = self.coverage()
        d["balanced"] = self.balanced
        return d


def _count_classes(histogram: dict[str, int], labels: np.ndarray, classes: list[str]) -> None:
    for label, count in Counter(labels.tolist()).items():
        if label >= 0:  # -1: unlabelled (prediction input, a missing further-task label)
            histogram[classes[label]] = histogram.get(classes[label], 0) + count


def _reason_order(reason: str) -> tuple[int, str]:
    return (DROP_REASONS.index(reason) if reason in DROP_REASONS else len(DROP_REASONS), reason)


@dataclass
class DataReport:
    classes: list[str]
    splits: dict[str, SplitReport] = field(default_factory=dict)
    tasks: dict[str, list[str]] = field(default_factory=dict)  # label.tasks: task -> classes
    rebalance: dict | None = None  # RebalancePlan.to_dict() for the train split
    # CrossSplitFinder.pairs(): per split pair sharing content, {"splits": [a, b], "count", "examples": {a, b}}
    cross_split: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = {"classes": self.classes, "splits": {n: s.to_dict() for n, s in self.splits.items()},
               "cross_split_duplicates": self.cross_split, "rebalance": self.rebalance}
        if self.tasks:
            out["tasks"] = self.tasks
        return out

    def shared(self, split: str, other: str) -> int:
        """Distinct contents ``split`` and ``other`` both hold."""
        return next((p["count"] for p in self.cross_split if set(p["splits"]) == {split, other}), 0)

    def task_warnings(self) -> list[str]:
        """A line per split with kept rows but none labelled for a further task: its head learns nothing there
        (train) or its metrics have no rows (NaN)."""
        return [f"task {task}: no kept row of split {n} has its label; " +
                ("its head is not trained" if n == "train" else f"{n}.{task}.* metrics are NaN")
                for task in self.tasks for n, split in self.splits.items()
                if split.rows_kept and not sum(split.task_histograms.get(task, {}).values())]

    def write_json(self, path: str | Path) -> None:
        from pipeline.io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False))

    def print(self, console: Console | None = None) -> None:
        console = console or make_console()  # off a terminal: no wrapping at 80 columns, no colour codes
        names = list(self.splits)
        summary = Table(title="Data report", title_justify="left")
        summary.add_column("")
        for n in names:
            summary.add_column(n, justify="right")
        summary.add_row("shards", *(str(self.splits[n].shards) for n in names))
        summary.add_row("bad shards", *(str(len(self.splits[n].bad_shards)) for n in names))
        summary.add_row("rows in", *(str(self.splits[n].rows_in) for n in names))
        summary.add_row("rows kept", *(str(self.splits[n].rows_kept) for n in names), style="bold")
        reasons = sorted({r for s in self.splits.values() for r in s.dropped}, key=_reason_order)
        for r in reasons:
            summary.add_row(f"  dropped: {r}", *(str(self.splits[n].dropped.get(r, 0)) for n in names))
        for c in self.classes:
            summary.add_row(f"class {escape(c)}", *(str(self.splits[n].class_histogram.get(c, 0)) for n in names))
        for task, task_classes in self.tasks.items():  # label.tasks: each further task's classes
            for c in task_classes:
                summary.add_row(f"{task} {escape(c)}", *(str(self.splits[n].task_histograms.get(task, {}).get(c, 0))
                                                 for n in names))
            summary.add_row(f"{task} missing (masked)", *(str(self.splits[n].task_missing.get(task, 0))
                                                          for n in names))
        roles = sorted({m for s in self.splits.values() for m in s.modality_present})
        for m in roles:
            summary.add_row(f"{m} present", *(f"{self.splits[n].coverage().get(m, 0):.1%}" for n in names))
        for other in (names if len(names) > 1 else []):
            summary.add_row(f"same content in {other}",
                            *("" if n == other else str(self.shared(n, other)) for n in names))
        console.print(summary)
        if self.rebalance and self.rebalance["strategy"] != "none":
            task = self.rebalance.get("task")  # rebalance.task, when a further task's
            without = f"+ {self.rebalance.get('unlabelled_rows', 0)} rows without a {task} label, each kept once"
            table = Table(title=f"Train classes{f' of task {task}' if task else ''} per epoch, rebalance: "
                                f"{self.rebalance['strategy']}", title_justify="left",
                          caption=without if task else None, caption_justify="left")
            for col in ("class", "before", "expected after", "factor"):
                table.add_column(col, justify="left" if col == "class" else "right")
            for c in self.rebalance["before"]:  # the rebalanced task's classes (rebalance.task)
                table.add_row(escape(c), str(self.rebalance["before"][c]), f"{self.rebalance['expected_after'][c]:.1f}",
                              f"{self.rebalance['factors'][c]:.3f}")
            console.print(table)
        for line in self.task_warnings():
            console.print(f"[yellow]{escape(line)}[/]", highlight=False)
        for n in names:
            for bad in self.splits[n].bad_shards:
                console.print(f"[red]bad shard[/] ({escape(n)}) {escape(bad['path'])}: {escape(bad['error'])}",
                              highlight=False)  # a path or message with [brackets] is text, not markup
        for pair in self.cross_split:
            a, b = pair["splits"]
            examples = "; ".join(f"{s}: " + ", ".join(e["key"] for e in pair["examples"][s]) for s in (a, b))
            console.print(f"[yellow]same content in {escape(a)} and {escape(b)}[/]: {pair['count']} sample(s), "
                          f"e.g. {escape(examples)}", highlight=False)

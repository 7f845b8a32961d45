"""The label tasks of a job: the primary one (the ``label`` section itself) and each of ``label.tasks``, with
their resolved classes, the batch column each label travels in and the infix of their metric names.

A spec without ``label.tasks`` has one task whose column is ``label`` and whose metrics are ``val.macro_f1``, as
before tasks existed; a further task ``speaker`` travels in ``label_speaker`` and is scored as
``val.speaker.macro_f1``. The model's heads are blocks of one logits tensor, in task order (``split_logits``).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.spec import JobSpec, LabelSpec

PRIMARY_COLUMN = "label"


def task_column(name: str) -> str:
    """The batch column of the further task ``name``: ``label_<name>``."""
    return f"{PRIMARY_COLUMN}_{name}"


@dataclass(frozen=True)
class Task:
    name: str
    classes: tuple[str, ...]
    column: str            # the int64 batch column: class index, -1 when unknown (masked)
    infix: str             # "" for the primary task, "<name>." for the others: val.<infix>macro_f1
    weight: float
    source: str
    extensions: tuple[str, ...]
    json_key: str
    format: str
    primary: bool

    def metric(self, split: str, name: str) -> str:
        """``val`` + ``macro_f1`` -> val.macro_f1 (primary) or val.speaker.macro_f1."""
        return f"{split}.{self.infix}{name}"

    def prefix(self, split: str) -> str:
        """What metrics.classification_metrics puts before each name: val, or val.speaker."""
        return f"{split}.{self.infix}".rstrip(".")


def label_tasks(label: LabelSpec, classes: list[str] | tuple[str, ...]) -> tuple[Task, ...]:
    """Every task, the primary first; ``classes``: the primary task's (label.classes or the manifest's)."""
    primary = Task(label.name, tuple(classes), PRIMARY_COLUMN, "", label.weight, label.source,
                   tuple(label.extensions), label.json_key, label.format, True)
    return (primary, *(Task(name, tuple(t.classes), task_column(name), f"{name}.", t.weight, t.source,
                            tuple(t.extensions), t.json_key or name, t.format, False)
                       for name, t in label.tasks.items()))


def spec_tasks(spec: JobSpec, classes: list[str] | tuple[str, ...]) -> tuple[Task, ...]:
    return label_tasks(spec.label, classes)


def label_columns(spec: JobSpec) -> list[str]:
    """The label columns a batch carries: ``label``, then ``label_<task>`` per further task."""
    return [PRIMARY_COLUMN, *(task_column(name) for name in spec.label.tasks)]


def rebalanced_task(tasks: tuple[Task, ...], chosen: str | None) -> Task:
    """The task rebalance.task names (default: the primary)."""
    return next(t for t in tasks if t.name == chosen) if chosen else tasks[0]


def task_layout(tasks: tuple[Task, ...]) -> list[list]:
    """[[name, [classes]], ...] in logits order, the primary first: what state.pt and best.pt record of their
    heads. A reordered label.tasks keeps every width and name but moves the blocks, so this list, not the spec's
    (order-blind) dict, tells whether weights fit."""
    return [[t.name, list(t.classes)] for t in tasks]


def further_layout(label: dict) -> list[list]:
    """The further tasks' part of a layout from a dumped label section (a checkpoint's spec, spec.yaml):
    [[name, [classes]], ...] in label.tasks order."""
    return [[name, list((task or {}).get("classes") or [])] for name, task in ((label or {}).get("tasks") or {}).items()]


def split_logits(logits, tasks: tuple[Task, ...]) -> list:
    """(B, sum of classes) -> one (B, C_t) block per task, in task order."""
    return list(logits.split([len(t.classes) for t in tasks], dim=1)) if len(tasks) > 1 else [logits]


def holdout_task(spec: JobSpec) -> str | None:
    """The task the registry's holdout metric scores, as a version and its promotion decision record it: the
    primary's name with label.tasks, None without (a one-task model's records keep their old shape)."""
    return spec.label.name if spec.label.tasks else None


def holdout_metric_name(metric: str, task: str | None = None) -> str:
    """The registry's holdout metric as people read it: ``macro_f1``, or ``macro_f1 (task digit)`` when the models
    have several tasks (``task``: the primary's name, as the registry records it; None without label.tasks)."""
    return f"{metric} (task {task})" if task else metric

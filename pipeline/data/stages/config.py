"""The slice of the job spec that the data stages need, with the class names resolved."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.spec import AlignSpec, CleanSpec, JobSpec, LabelSpec, ModalitiesSpec
from pipeline.tasks import PRIMARY_COLUMN, Task, label_tasks


@dataclass(frozen=True)
class StageConfig:
    modalities: ModalitiesSpec
    label: LabelSpec
    clean: CleanSpec
    align: AlignSpec
    classes: tuple[str, ...]
    labels_required: bool = True  # False for prediction: unlabelled samples are kept with label -1
    tasks: tuple[Task, ...] = ()  # label.tasks beside the primary (label_tasks(...)[1:]); each a label_<task> column
    hf_text: str | None = None  # model.hf.text: that folder's tokenizer makes the text ids
    # False: a further task's value that is not one of its classes is -1, not a drop, while the primary label
    # stays required (a champion scored on the holdout keeps every row its primary label allows)
    further_required: bool = True

    @classmethod
    def from_spec(cls, spec: JobSpec, classes: list[str] | tuple[str, ...], labels_required: bool = True,
                  further_required: bool = True) -> "StageConfig":
        return cls(spec.modalities, spec.label, spec.clean, spec.align, tuple(classes), labels_required,
                   label_tasks(spec.label, classes)[1:], spec.model.hf.text, further_required)

    @property
    def primary(self) -> Task:
        """The primary task (the label section itself)."""
        return label_tasks(self.label, self.classes)[0]

    @property
    def label_columns(self) -> tuple[str, ...]:
        """The batch's label columns: the primary's, then each further task's (pipeline.tasks.label_columns)."""
        return (PRIMARY_COLUMN, *(t.column for t in self.tasks))

    @property
    def enabled(self) -> list[str]:
        return self.modalities.enabled()

"""One-off reads of a split for callers that hold no DataPlan (a command's single read, tests): each call builds
its own plan. A run that reads the data more than once builds one ``DataPlan`` (streaming/plan.py) and passes it
down instead; the names below stay importable from here for the entry points."""

from __future__ import annotations

from pipeline.data.shards.manifest import DataError, resolve_classes  # noqa: F401  (entry points import them here)
from pipeline.data.streaming.plan import DataPlan, SplitData
from pipeline.data.stages.report import DataReport
from pipeline.spec import JobSpec


def build_split(spec: JobSpec, split: str, classes: list[str], labels_required: bool = True,
                data_plan: DataPlan | None = None) -> SplitData:
    """Every row of ``split`` (dropped ones marked; ``.kept()`` for the rest). ``labels_required=False``
    (prediction) keeps unlabelled samples, with label -1. Raises ShardError/DataError before any read."""
    return (data_plan or DataPlan(spec, classes)).split(split, labels_required)


def validate_splits(spec: JobSpec, splits: list[str] | None = None, data_plan: DataPlan | None = None
                    ) -> DataReport:
    """read -> clean -> align over every split (or ``splits``); the data report."""
    return (data_plan or DataPlan(spec)).validate(splits)

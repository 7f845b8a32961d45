"""Batch inference: shards -> clean -> align -> model (a Ray Data actor pool, the model loaded once per actor) ->
one Parquet file with a row for every input sample.

Samples the data stages reject are not skipped: they get a row with ``status`` = the drop reason (as in the data
report) and no prediction, and they are counted in the prediction report.
"""

from __future__ import annotations

import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import storage
from pipeline.data.stages.contract import KEY_COLUMN, URL_COLUMN
from pipeline.data.stages.report import REPORT_COLUMNS, SplitReport
from pipeline.registry import ModelRef, Registry
from pipeline.spec import PredictSpec
from pipeline.tasks import PRIMARY_COLUMN, split_logits, task_column

SPLIT = "predict"
TEXT_COLUMNS = ("key", "shard", "status", "detail", "pred_class")


class PredictError(RuntimeError):
    pass


@dataclass
class PredictResult:
    out: str
    version: int
    rows: int
    predicted: int
    report: SplitReport


class Predictor:
    """One replica of the model (a Ray Data actor): built once, then fed aligned batches."""

    def __init__(self, model_file: bytes, use_gpu: bool):
        import torch

        from pipeline.model.checkpoint import load_model
        from pipeline.model.classifier import input_columns
        from pipeline.tasks import label_columns, spec_tasks

        self.model, spec, self.classes = load_model(model_file)
        self.tasks = spec_tasks(spec, self.classes)
        self.columns = [c for c in input_columns(spec) if c not in label_columns(spec)]
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model.to(self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        n = len(batch[KEY_COLUMN])
        kept = np.array([not r for r in batch["drop_reason"]], dtype=bool)
        logits = None
        if kept.any():
            inputs = {c: torch.as_tensor(batch[c][kept]).to(self.device) for c in self.columns}
            with torch.no_grad():
                logits = self.model(inputs).float()
        out = {"key": batch[KEY_COLUMN], "shard": batch[URL_COLUMN],
               "status": np.array([r or "ok" for r in batch["drop_reason"]], dtype=object),
               "detail": batch["drop_detail"]}
        blocks = split_logits(logits, self.tasks) if logits is not None else [None] * len(self.tasks)
        for task, block in zip(self.tasks, blocks):  # the primary's columns unprefixed, then <task>.pred_class...
            probs = np.full((n, len(task.classes)), np.nan, dtype=np.float32)
            if block is not None:
                probs[kept] = torch.softmax(block, dim=1).cpu().numpy()
            index = np.where(kept, np.nan_to_num(probs, nan=-1.0).argmax(1), -1).astype(np.int64)
            out[output_column(task, "label_index")] = batch[task.column]
            out[output_column(task, "pred_index")] = index
            out[output_column(task, "pred_class")] = np.array(
                [task.classes[i] if i >= 0 else None for i in index], dtype=object)
            for j, name in enumerate(task.classes):
                out[output_column(task, f"prob_{name}")] = probs[:, j]
        return out


def adapted_checkpoint(model_file: bytes, dataset, batch_size: int) -> bytes:
    """``model.adapt_batchnorm``: the checkpoint ``model_file`` with its BatchNorm statistics recomputed on the
    kept rows of ``dataset`` (the samples to predict; pipeline/model/adapt.py), read on the driver."""
    import io

    import torch

    from pipeline.model.adapt import adapt_batchnorm
    from pipeline.model.checkpoint import model_from_state, read_checkpoint
    from pipeline.model.classifier import input_columns
    from pipeline.tasks import label_columns
    from pipeline.watchdog import progressed

    state = read_checkpoint(model_file)
    model, model_spec, _ = model_from_state(state)
    columns = [c for c in input_columns(model_spec) if c not in label_columns(model_spec)]

    def kept_batches():
        for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
            kept = np.array([not r for r in batch["drop_reason"]], dtype=bool)
            progressed(len(kept))
            if kept.any():
                yield {c: torch.as_tensor(batch[c][kept]) for c in columns}

    state["model"] = adapt_batchnorm(model, kept_batches()).state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def output_column(task, name: str) -> str:
    """A prediction column of ``task``: ``pred_class`` for the primary task, ``speaker.pred_class`` for a
    further one (label.tasks)."""
    return f"{task.infix}{name}"


def predict(model: str, shards: list[str], out: str, batch_size: int | None = None, actors: int | None = None,
            use_gpu: bool | None = None, dedupe: bool = False) -> PredictResult:
    """Predict every sample of ``shards`` with ``model`` (REGISTRY[:VERSION|@ALIAS]) into ``out`` (.parquet).
    ``batch_size``, ``actors``, ``use_gpu``: None takes the spec's predict defaults."""
    defaults = PredictSpec()
    batch_size = defaults.batch_size if batch_size is None else batch_size
    actors = defaults.actors if actors is None else actors
    use_gpu = defaults.use_gpu if use_gpu is None else use_gpu
    # What needs no cluster is checked before Ray starts (~20 s): a wrong --out, or a model reference that names
    # no version, fails at once.
    if not out.endswith(".parquet"):
        raise PredictError(f"--out {out}: the output is one Parquet file; name it *.parquet")
    ref = ModelRef.parse(model)
    registry = Registry(ref.registry)
    version = registry.resolve(ref)
    loaded = registry.load(version)  # a corrupt version fails here, on the driver, with its name

    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from pipeline.data.streaming.actors import actors_scope
    from pipeline.data.streaming.plan import DataPlan, bad_shard_entries
    from pipeline.model.classifier import input_columns
    from pipeline.ray_runtime import ensure_ray
    from pipeline.resources import check_predict, cluster_capacity
    from pipeline.console import PassCount
    from pipeline.watchdog import progressed, watch

    ensure_ray()  # joins or starts Ray unless the caller already has (a workflow step)
    check_predict(actors, use_gpu, *cluster_capacity())  # before any Ray work: replicas beside the reads
    spec = loaded.spec.model_copy(deep=True)
    spec.data.splits = {SPLIT: list(shards)}
    spec.clean.dedupe = dedupe  # every sample gets a prediction unless asked otherwise
    # Every row, unlabelled ones too, carrying only what the Predictor reads (its model's inputs)
    columns = list(dict.fromkeys([*REPORT_COLUMNS, *input_columns(spec)]))
    text_columns = {*TEXT_COLUMNS, *(f"{t}.pred_class" for t in spec.label.tasks)}
    with actors_scope():  # a dedupe index of the read ends with the prediction
        split = DataPlan(spec, loaded.classes).split(SPLIT, labels_required=False, columns=columns)
        report = SplitReport(SPLIT, loaded.classes, shards=len(split.checks),
                             bad_shards=bad_shard_entries(split.checks),
                             tasks={name: list(t.classes) for name, t in spec.label.tasks.items()},
                             labels_required=False)

        model_file = registry.model_bytes(version)
        if spec.model.adapt_batchnorm:  # a first pass over the kept rows: the replicas get the adapted model
            with watch("prediction (BatchNorm adaptation pass)", spec.scaling.stall_timeout_s):
                model_file = adapted_checkpoint(model_file, split.dataset, batch_size)
        ds = split.dataset.map_batches(
            Predictor, fn_constructor_kwargs={"model_file": model_file, "use_gpu": use_gpu},
            compute=ray.data.ActorPoolStrategy(size=actors), batch_size=batch_size, batch_format="numpy",
            num_gpus=1 if use_gpu else 0)

        # Streamed into one Parquet file (memory stays at a few batches), written aside and renamed when complete.
        local_out = storage.local_path(out) if storage.is_local(out) else \
            Path(tempfile.mkdtemp(prefix="mmpipe-predict-")) / Path(out).name  # uploaded whole when complete
        tmp = local_out.with_name(f".{local_out.name}.{uuid.uuid4().hex}.tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        writer, rows, predicted = None, 0, 0
        shown = PassCount("predict", split.expected_rows)
        try:
            with watch("prediction", spec.scaling.stall_timeout_s):  # rows written are its progress
                for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
                    report.add_batch({KEY_COLUMN: batch["key"], URL_COLUMN: batch["shard"],
                                      PRIMARY_COLUMN: batch["label_index"],
                                      **{task_column(t): batch[f"{t}.label_index"] for t in report.tasks},
                                      "drop_reason": np.array([s if s != "ok" else "" for s in batch["status"]],
                                                              dtype=object),
                                      "drop_detail": batch["detail"]})
                    # Text columns typed up front: a first batch of only dropped rows has no class names to infer
                    # from.
                    table = pa.table({k: (pa.array(v.tolist(), pa.string()) if k in text_columns else v)
                                      for k, v in batch.items()})
                    table = table.append_column("model_version",
                                                pa.array([version] * len(batch["key"]), pa.int64()))
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, table.schema)
                    writer.write_table(table.cast(writer.schema))
                    rows += len(batch["key"])
                    predicted += int((batch["pred_index"] >= 0).sum())
                    progressed(len(batch["key"]))
                    shown.add(len(batch["key"]))
            if writer is None:
                raise PredictError(f"no samples in {', '.join(shards)}")
            shown.finish(f" ({predicted:,} predicted)")
            writer.close()
            writer = None
            if storage.is_local(out):
                tmp.replace(local_out)
            else:
                storage.write_bytes(out, tmp.read_bytes())
                tmp.unlink()
        finally:
            if writer is not None:
                writer.close()
            tmp.unlink(missing_ok=True)
    report_uri = out[: -len(".parquet")] + ".report.json"
    storage.write_json(report_uri, {"model": str(ref), "version": version, "rows": rows, "predicted": predicted,
                                    "report": report.to_dict()})
    return PredictResult(out, version, rows, predicted, report)

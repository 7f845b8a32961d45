"""Small run directories as mmpipe writes them (a training, a tune folder, a workflow run), for report and tracking
tests that must not train. The files are the real writers' output where a writer exists (epochs.csv and plots by
pipeline.train.artifacts, spec.yaml by dump_spec); the numbers are made up but consistent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.spec import dump_spec, spec_from_dict
from pipeline.train.artifacts import write_artifacts

CLASSES = ["sun", "moon", "river", "Überfluss", "山"]  # Unicode class names must survive every format


def _history(epochs: int = 3) -> list[dict]:
    rows = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "lr": 0.001 * (epochs - e + 1) / epochs, "train.loss": 1.5 / e, "val.loss": 1.6 / e,
               "train.accuracy": 0.5 + 0.1 * e, "val.accuracy": 0.45 + 0.1 * e, "train.macro_f1": 0.4 + 0.1 * e,
               "val.macro_f1": 0.35 + 0.1 * e, "val.auc": 0.8 + 0.03 * e, "epoch_seconds": 2.0 + e,
               "optimizer_steps": 8 * e, "weights": f"w{e}"}
        row.update({f"val.precision.{c}": 0.5 + 0.05 * i for i, c in enumerate(CLASSES)})
        rows.append(row)
    return rows


def data_report() -> dict:
    def split(rows_in, kept, hist, dropped):
        return {"split": "x", "shards": 2, "rows_in": rows_in, "rows_kept": kept, "dropped": dropped,
                "class_histogram": hist, "modality_present": {"image": kept, "text": kept - 3},
                "bad_shards": [], "examples": {r: [{"key": f"train/bad-{r}", "shard": "/d/train/train-000001.tar",
                                                    "detail": "détail ünïcode 错误"}] for r in dropped},
                "modality_coverage": {"image": 1.0, "text": (kept - 3) / kept}, "balanced": False}
    train_hist = dict(zip(CLASSES, [40, 20, 10, 6, 4]))
    return {"classes": CLASSES,
            "splits": {"train": split(83, 80, train_hist, {"image_undecodable": 2, "duplicate": 1}),
                       "val": split(20, 20, dict(zip(CLASSES, [8, 5, 3, 2, 2])), {})},
            "cross_split_duplicates": [],
            "rebalance": {"strategy": "sqrt", "counts_from": "manifest.json", "before": train_hist,
                          "expected_after": dict(zip(CLASSES, [25.3, 17.9, 12.6, 9.8, 8.0])),
                          "factors": dict(zip(CLASSES, [0.63, 0.89, 1.26, 1.63, 2.0]))}}


def write_train_run(run: Path, epochs: int = 3) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    spec = spec_from_dict({"name": "tiny-run", "label": {"classes": CLASSES}})
    (run / "spec.yaml").write_text(dump_spec(spec), encoding="utf-8")
    history = _history(epochs)
    confusion = np.diag([9, 5, 3, 2, 2]) + np.eye(5, k=1, dtype=int)
    write_artifacts(run, history, CLASSES, confusion, "test")
    metrics = {**history[-1], "test.accuracy": 0.9, "test.balanced_accuracy": 0.85, "test.macro_f1": 0.84,
               "test.auc": 0.97, "test.confusion": confusion.tolist(), "best_epoch": epochs, "epochs_run": epochs,
               "classes": CLASSES}
    for i, c in enumerate(CLASSES):
        metrics[f"test.precision.{c}"], metrics[f"test.recall.{c}"] = 0.9 - 0.05 * i, 0.8 - 0.05 * i
    (run / "metrics.json").write_text(json.dumps(metrics, ensure_ascii=False), encoding="utf-8")
    (run / "data_report.json").write_text(json.dumps(data_report(), ensure_ascii=False), encoding="utf-8")
    return run


def write_tune_run(out: Path) -> Path:
    import csv

    out.mkdir(parents=True, exist_ok=True)
    trials = [("t0001", "concat", "adamw", 0.001, 0.62), ("t0002", "late", "sgd", 0.01, 0.71)]
    with (out / "trials.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["trial_id", "training_iteration", "time_total_s", "config/model.fusion",
                    "config/train.optimizer", "config/train.lr", "val.macro_f1"])
        for tid, fusion, opt, lr, score in trials:
            w.writerow([tid, 3, 12.5, fusion, opt, lr, score])
    for tid, *_ in trials:
        folder = out / "tune" / f"_trainable_{tid}_0_model_fusion=x"
        folder.mkdir(parents=True)
        with (folder / "progress.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["epoch", "train.loss", "val.loss", "val.accuracy", "val.macro_f1"])
            for e in range(1, 4):
                w.writerow([e, 1.2 / e, 1.3 / e, 0.5 + 0.1 * e, 0.4 + 0.1 * e])
    (out / "best.txt").write_text("metric: val.macro_f1 = 0.71\ncheckpoint: /x\n"
                                  "config: {'model.fusion': 'late', 'train.optimizer': 'sgd'}\n", encoding="utf-8")
    (out / "best_spec.yaml").write_text("# best\nmodel:\n  fusion: late\n", encoding="utf-8")
    (out / "data_report.json").write_text(json.dumps(data_report(), ensure_ascii=False), encoding="utf-8")
    return out


def write_workflow_run(run: Path) -> Path:
    """A finished `mmpipe run` directory: validate-data, train, evaluate, register, promote."""
    write_train_run(run / "train")
    (run / "validate-data").mkdir(parents=True)
    (run / "validate-data" / "data_report.json").write_text(json.dumps(data_report(), ensure_ascii=False))
    steps = [("validate-data", 4.2, {"rows_kept": {"train": 80}}), ("train", 31.0, {"best_epoch": 3}),
             ("evaluate", 2.5, {"test.macro_f1": 0.84}), ("register", 0.3, {"version": 2}),
             ("promote", 1.9, {"promoted": True, "version": 2})]
    (run / "steps").mkdir()
    for name, seconds, summary in steps:
        (run / "steps" / f"{name}.json").write_text(json.dumps(
            {"name": name, "status": "succeeded", "seconds": seconds, "summary": summary, "error": None}))
    decision = {"promote": True, "reason": "macro_f1 0.84 beats the champion's 0.80 by more than 0.0",
                "metric": "macro_f1", "challenger": 0.84, "champion": 0.8, "min_improvement": 0.0,
                "challenger_version": 2, "champion_version": 1, "split": "test"}
    (run / "promote").mkdir()
    (run / "promote" / "decision.json").write_text(json.dumps(decision))
    (run / "run.json").write_text(json.dumps(
        {"name": "nightly", "run_id": "abc", "status": "succeeded", "started": "2026-01-01T03:00:00+00:00",
         "ended": "2026-01-01T03:01:00+00:00", "attempt": 1,
         "steps": [{"name": n, "status": "succeeded", "seconds": s, "error": None} for n, s, _ in steps],
         "outcome": {"version": 2, "promoted": True, "decision": decision}}))
    return run

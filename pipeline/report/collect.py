"""Read what a run directory already holds into plain dicts for the report: a training run (metrics.json,
epochs.csv, data_report.json, spec.yaml, plots), a tune folder (trials.csv, best.txt, best_spec.yaml, each trial's
progress.csv) or a workflow run (run.json, steps/*.json and each step's folder). Missing files are left out, so
old or failed runs still give a report of what is there."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from pipeline.report.environment import ENVIRONMENT_FILE


class ReportError(ValueError):
    """The folder is not a run directory mmpipe wrote (the message names it and what was looked for)."""


def kind_of(run_dir: Path) -> str:
    """``workflow``, ``tune`` or ``train``, from the files the run wrote."""
    if (run_dir / "run.json").is_file():
        return "workflow"
    if (run_dir / "trials.csv").is_file() or (run_dir / "tune").is_dir() and (run_dir / "best.txt").is_file():
        return "tune"
    if (run_dir / "metrics.json").is_file() or (run_dir / "epochs.csv").is_file():
        return "train"
    raise ReportError(f"{run_dir}: not an mmpipe run directory (no run.json, trials.csv, metrics.json or "
                      "epochs.csv)")


def read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: not valid JSON ({e})") from None


def read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8", newline="") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def read_text(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.is_file() else None


def _number(text):
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def epochs_one_based(rows: list[dict]) -> list[dict]:
    """epochs.csv from before epochs were numbered from 1 starts at 0: shift those, so the report reads alike."""
    if rows and rows[0].get("epoch") == 0:
        return [{**r, "epoch": r["epoch"] + 1} for r in rows]
    return rows


def per_class(metrics: dict, classes: list[str], split: str) -> list[dict]:
    """Precision, recall and F1 per class of ``split`` from metrics.json's flat keys."""
    rows = []
    for c in classes:
        p, r = metrics.get(f"{split}.precision.{c}"), metrics.get(f"{split}.recall.{c}")
        if p is None or r is None:
            continue
        f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
        rows.append({"class": c, "precision": p, "recall": r, "f1": f1})
    return rows


def further_tasks(metrics: dict, split: str) -> list[dict]:
    """label.tasks beside the primary (metrics.json ``tasks``: name -> classes, the primary first): each one's
    scores on ``split`` (``test.speaker.macro_f1``...) and per-class table."""
    names = list(metrics.get("tasks") or {})[1:]
    return [{"name": name, "classes": metrics["tasks"][name],
             "scores": {k: metrics.get(f"{split}.{name}.{k}") for k in ("accuracy", "balanced_accuracy", "macro_f1",
                                                                          "auc", "rows")},
             "per_class": per_class(metrics, metrics["tasks"][name], f"{split}.{name}")} for name in names]


def training(run_dir: Path) -> dict:
    metrics = read_json(run_dir / "metrics.json") or {}
    raw = read_csv(run_dir / "epochs.csv")
    epochs = epochs_one_based(raw)
    if epochs is not raw and isinstance(metrics.get("best_epoch"), int):  # written when epochs counted from 0
        metrics = {**metrics, "best_epoch": metrics["best_epoch"] + 1}
    classes = metrics.get("classes") or (read_json(run_dir / "data_report.json") or {}).get("classes") or []
    split = "test" if "test.accuracy" in metrics else "val"
    env = read_json(run_dir / ENVIRONMENT_FILE)
    phases = []
    seconds = [r["epoch_seconds"] for r in epochs if isinstance(r.get("epoch_seconds"), (int, float))]
    if seconds:
        phases.append(("training epochs", sum(seconds), f"{len(seconds)} epochs, "
                                                         f"{sum(seconds) / len(seconds):.1f} s each"))
    if env and env.get("started") and env.get("ended"):
        total = env["ended"] - env["started"]
        phases.append(("whole run", total, "start-up, data report, training, test evaluation"))
        if seconds:
            phases.append(("outside the epochs", max(0.0, total - sum(seconds)),
                           "Ray and workers starting, data report, test evaluation, artifacts"))
    return {"metrics": metrics, "epochs": epochs, "renumbered": epochs is not raw, "classes": classes, "split": split,
            "per_class": per_class(metrics, classes, split), "tasks": further_tasks(metrics, split),
            "confusion": metrics.get(f"{split}.confusion"),
            "data_report": read_json(run_dir / "data_report.json"),
            "spec": read_text(run_dir / "spec.yaml"), "environment": env, "phases": phases}


def _trial_progress(tune_dir: Path, trial_id: str) -> list[dict]:
    for folder in sorted(tune_dir.glob(f"*_{trial_id}_*")):
        rows = read_csv(folder / "progress.csv")
        if rows:
            return epochs_one_based(rows)
    return []


def tune(out_dir: Path) -> dict:
    trials = read_csv(out_dir / "trials.csv")
    best_txt = read_text(out_dir / "best.txt") or ""
    best = dict(line.split(": ", 1) for line in best_txt.splitlines() if ": " in line)
    metric = best.get("metric", "").split(" = ")[0] or None
    config_keys = sorted({k for t in trials for k in t if k.startswith("config/")})
    columns = ["trial_id", "training_iteration", "time_total_s"] + config_keys + ([metric] if metric else [])
    best_id = None
    if metric and trials:
        mode_max = not metric.endswith("loss")
        scored = [t for t in trials if isinstance(t.get(metric), (int, float)) and not math.isnan(t[metric])]
        if scored:
            best_id = (max if mode_max else min)(scored, key=lambda t: t[metric])["trial_id"]
    return {"trials": trials, "columns": columns, "metric": metric, "best": best, "best_id": best_id,
            "best_progress": _trial_progress(out_dir / "tune", best_id) if best_id else [],
            "best_spec": read_text(out_dir / "best_spec.yaml"), "data_report": read_json(out_dir / "data_report.json"),
            "phases": [("trials (sum of their training time)",
                        sum(t["time_total_s"] for t in trials if isinstance(t.get("time_total_s"), (int, float))),
                        f"{len(trials)} trials")] if trials else [],
            "environment": read_json(out_dir / ENVIRONMENT_FILE)}


def workflow(run_dir: Path) -> dict:
    run = read_json(run_dir / "run.json") or {}
    steps = []
    for brief in run.get("steps", []):
        manifest = read_json(run_dir / "steps" / f"{brief['name']}.json") or {}
        steps.append({**brief, "summary": manifest.get("summary"), "error": brief.get("error") or
                      manifest.get("error")})
    decision = read_json(run_dir / "promote" / "decision.json") or (run.get("outcome") or {}).get("decision")
    return {"run": run, "steps": steps, "decision": decision, "outcome": run.get("outcome"),
            "phases": [(f"step {s['name']}", s["seconds"], s.get("status") or "")
                       for s in steps if isinstance(s.get("seconds"), (int, float))],
            "environment": read_json(run_dir / ENVIRONMENT_FILE), "spec": read_text(run_dir / "spec.yaml")}

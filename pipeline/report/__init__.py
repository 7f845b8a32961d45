"""The HTML run report: one self-contained file per run (``RUN_DIR/report.html``, images inline, no network).

Built only from files a run already writes, so ``mmpipe report RUN_DIR`` rebuilds it for old run directories too.
A training run shows its data, rebalancing, augmentation preview, learning curves, confusion matrix, per-class
scores, spec and environment; a tune folder adds the trials table and the best trial; a workflow run adds its steps
and the promotion decision (and the report of its train / tune steps). ``publish_run`` is the one call at the end
of ``train``, ``tune`` and ``run``: environment.json, report.html, then MLflow when configured.
"""

from __future__ import annotations

import logging
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

from pipeline.io import atomic_write_text
from pipeline.report import charts, collect
from pipeline.report.collect import ReportError
from pipeline.report.environment import write_environment

log = logging.getLogger(__name__)
REPORT_FILE = "report.html"
__all__ = ["REPORT_FILE", "ReportError", "build_report", "publish_run", "write_report"]


def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("pipeline.report", "templates"),
                             autoescape=True, undefined=jinja2.ChainableUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters["basename"] = lambda p: str(p).rstrip("/").rsplit("/", 1)[-1]
    return env


def _images(folder: Path | None, training: dict | None, tune: dict | None, data_report: dict | None,
            tune_dir: Path | None) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # glyphs missing from matplotlib's default font (CJK class names)
        return _draw(folder, training, tune, data_report, tune_dir)


def _draw(folder, training, tune, data_report, tune_dir) -> dict:
    png = {}
    if data_report:
        png["classes"] = charts.class_histograms(data_report)
        png["rebalance"] = charts.rebalance(data_report)
    if training is not None and folder is not None:
        png["augment"] = charts.file_png(folder / "augment_preview.png")
        # the run's own plot, unless it numbered epochs from 0 (runs before 1-based epochs): redrawn then
        png["curves"] = (None if training["renumbered"] else charts.file_png(folder / "curves.png")) \
            or charts.learning_curves(training["epochs"])
        png["confusion"] = charts.file_png(folder / "confusion.png") or charts.confusion(
            training["confusion"], training["classes"], f"confusion matrix ({training['split']})")
        for task in training["tasks"]:  # label.tasks: confusion_<task>.png
            png[f"confusion_{task['name']}"] = charts.file_png(folder / f"confusion_{task['name']}.png")
    if tune is not None and tune_dir is not None:
        png["trials_curves"] = charts.file_png(tune_dir / "trials_curves.png")
        png["best_by_choice"] = charts.file_png(tune_dir / "best_by_choice.png")
        png["best_curves"] = charts.learning_curves(tune["best_progress"])
    return {k: charts.data_uri(v) for k, v in png.items()}


def build_report(run_dir: str | Path) -> str:
    """The report of ``run_dir`` (a train run, a tune folder or a workflow run) as one HTML string."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such run directory")
    kind = collect.kind_of(run_dir)
    training = tune = workflow = None
    train_dir = tune_dir = None
    if kind == "train":
        train_dir = run_dir
    elif kind == "tune":
        tune_dir = run_dir
    else:
        workflow = collect.workflow(run_dir)
        train_dir = run_dir / "train" if (run_dir / "train" / "metrics.json").is_file() else None
        tune_dir = run_dir / "tune" if (run_dir / "tune" / "trials.csv").is_file() else None
    if train_dir is not None:
        training = collect.training(train_dir)
    if tune_dir is not None:
        tune = collect.tune(tune_dir)
    data_report = (collect.read_json(run_dir / "validate-data" / "data_report.json")
                   or (training or {}).get("data_report") or (tune or {}).get("data_report"))
    if data_report and not data_report.get("rebalance") and training and training.get("data_report"):
        data_report = {**data_report, "rebalance": training["data_report"].get("rebalance")}
    primary = workflow or training or tune
    spec = (workflow or {}).get("spec") or (training or {}).get("spec") or (tune or {}).get("best_spec")
    phases = primary["phases"] + ((training or {}).get("phases", []) if workflow else [])
    nav = [("steps", "steps"), ("promotion", "promotion")] if workflow else []
    nav += [("trials", "trials"), ("best-trial", "best trial")] if tune else []
    nav += [("summary", "summary"), ("curves", "curves"), ("confusion", "confusion"),
            ("per-class", "per class")] if training else []
    nav += [("tasks", "other tasks")] if training and training["tasks"] else []
    nav += [("data", "data"), ("rebalance", "rebalancing")]
    nav += [("augmentation", "augmentation")] if training else []
    nav += [("spec", "spec"), ("environment", "environment")]
    modalities = sorted({m for s in (data_report or {}).get("splits", {}).values()
                         for m in (s.get("modality_coverage") or {})})
    title = (workflow or {}).get("run", {}).get("name") or _spec_name(spec) or run_dir.resolve().name
    return _environment().get_template("report.html.j2").render(
        kind=kind, title=title, run_dir=str(run_dir.resolve()), nav=nav, w=workflow, t=training, tune=tune,
        data_report=data_report, modalities=modalities, spec=spec,
        env=primary.get("environment") or (training or {}).get("environment"), phases=phases,
        images=_images(train_dir, training, tune, data_report, tune_dir),
        written=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def _spec_name(spec_yaml: str | None) -> str | None:
    import yaml

    try:
        found = yaml.safe_load(spec_yaml) if spec_yaml else None
    except yaml.YAMLError:
        return None
    return found.get("name") if isinstance(found, dict) else None


def write_report(run_dir: str | Path) -> Path:
    """Write ``RUN_DIR/report.html`` (aside, then renamed) and return its path."""
    path = Path(run_dir) / REPORT_FILE
    atomic_write_text(path, build_report(run_dir))
    return path


def publish_run(run_dir: str | Path, spec=None, started: float | None = None) -> Path | None:
    """End of a run: environment.json, report.html, and the MLflow run when ``spec.tracking`` (or
    MLFLOW_TRACKING_URI) names a tracking server. A report that cannot be built is logged, never fatal: the run
    itself succeeded. ``started``: unix time the run began (default: when it wrote spec.yaml). A training also gets
its augmentation preview drawn (``preview.py``)."""
    run_dir = Path(run_dir)
    if started is None and (run_dir / "spec.yaml").is_file():
        started = (run_dir / "spec.yaml").stat().st_mtime
    write_environment(run_dir, started, time.time())
    if spec is not None and (run_dir / "metrics.json").is_file():  # a training: what its augmentation does
        try:
            from pipeline.report.preview import write_augment_preview

            write_augment_preview(spec, collect.read_json(run_dir / "metrics.json").get("classes") or [], run_dir)
        except Exception as e:  # noqa: BLE001 - a picture for the report, never the run's failure
            log.warning("could not draw the augmentation preview of %s: %s: %s", run_dir, type(e).__name__, e)
    try:
        report = write_report(run_dir)
    except Exception as e:  # noqa: BLE001 - the report is a view of the run, not part of its result
        log.warning("could not write the run report of %s: %s: %s", run_dir, type(e).__name__, e)
        report = None
    if spec is not None:
        from pipeline.tracking.mlflow_log import TrackingError, log_run, tracking_uri

        if tracking_uri(spec):
            try:
                log_run(run_dir, spec)
            except TrackingError as e:  # the run's own files are complete: say so, and how to log it later
                log.warning("%s. The run is complete; log it later with: mmpipe report %s --mlflow URI", e,
                            run_dir)
    return report

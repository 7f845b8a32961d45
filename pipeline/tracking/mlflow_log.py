"""MLflow: a finished run's resolved spec as params, its per-epoch metrics, and the report and plots as artifacts.

Optional (``pip install 'mmpipe[mlflow]'``, the lightweight mlflow-skinny client). On when ``tracking.mlflow_uri``
is set in the spec, or ``MLFLOW_TRACKING_URI`` in the environment. The MLflow run id goes to
``RUN_DIR/mlflow.json``, which registering the run's model copies into the version's meta.json. MLflow's own file
store (``file:/path``) refuses to start unless ``MLFLOW_ALLOW_FILE_STORE=true``: MLflow keeps it for old setups.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from pipeline.io import atomic_write_text

MLFLOW_FILE = "mlflow.json"  # in the run directory: tracking URI, experiment and run id
ARTIFACTS = ("report.html", "metrics.json", "spec.yaml", "data_report.json", "epochs.csv", "environment.json",
             "best_spec.yaml", "trials.csv", "run.json")
PARAM_LIMIT = 6000  # MLflow refuses longer param values


class TrackingError(RuntimeError):
    """MLflow was asked for but cannot be used (not installed, or the tracking URI refused)."""


def tracking_uri(spec) -> str | None:
    return spec.tracking.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or None


def flatten(obj, prefix: str = "") -> dict[str, str]:
    """The resolved spec as dotted params (``train.lr``: ``0.001``); lists and None as their JSON text."""
    if isinstance(obj, dict) and obj:
        out = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    text = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return {prefix: text[:PARAM_LIMIT]}


def _epoch_metrics(run_dir: Path) -> list[tuple[int, dict]]:
    from pipeline.report.collect import epochs_one_based, read_csv

    rows = epochs_one_based(read_csv(run_dir / "epochs.csv"))
    return [(int(r["epoch"]), {k: float(v) for k, v in r.items() if k != "epoch" and isinstance(v, (int, float))
                               and not isinstance(v, bool) and not math.isnan(v)}) for r in rows]


def _final_metrics(run_dir: Path) -> dict:
    from pipeline.report.collect import read_json

    metrics = read_json(run_dir / "metrics.json") or {}
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and not math.isnan(v)}


def _workflow_tags(run_dir: Path) -> dict[str, str]:
    """A workflow run's status, steps and promotion outcome as tags (run.json; nothing for other runs)."""
    from pipeline.report.collect import read_json

    run = read_json(run_dir / "run.json")
    if not run:
        return {}
    outcome = run.get("outcome") or {}
    tags = {"mmpipe.workflow.status": str(run.get("status")),
            "mmpipe.workflow.steps": ",".join(s.get("name", "") for s in run.get("steps", []))}
    if "version" in outcome:
        tags["mmpipe.registered_version"] = str(outcome["version"])
    if "promoted" in outcome:
        tags["mmpipe.promoted"] = str(bool(outcome["promoted"])).lower()
    return tags


def _key(name: str) -> str:
    # MLflow keys allow word characters (any script) and -. /:; a class name may hold anything else too
    return "".join(c if c.isalnum() or c in "_-. /:" else "_" for c in name)


def log_run(run_dir: str | Path, spec) -> str:
    """Log the finished run in ``run_dir`` to MLflow; returns the MLflow run id (also in RUN_DIR/mlflow.json).
    Re-logging the same run directory continues its MLflow run instead of starting another."""
    try:
        import mlflow
        from mlflow.exceptions import MlflowException
    except ImportError:
        raise TrackingError("tracking.mlflow_uri is set but MLflow is not installed: pip install 'mmpipe[mlflow]'"
                            ) from None
    run_dir = Path(run_dir)
    uri = tracking_uri(spec)
    previous = read_mlflow_file(run_dir)
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        experiment_name = spec.tracking.mlflow_experiment or spec.name
        experiment = client.get_experiment_by_name(experiment_name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(experiment_name)
        logged_epochs = 0
        if previous and previous.get("tracking_uri") == uri:
            run_id, logged_epochs = previous["run_id"], previous.get("epochs_logged", 0)
        else:
            run_id = client.create_run(experiment_id, run_name=run_dir.resolve().name,
                                       tags={"mmpipe.run_dir": str(run_dir.resolve())}).info.run_id
        params = flatten(spec.model_dump(mode="json"))
        from mlflow.entities import Metric, Param

        logged = client.get_run(run_id).data.params
        batch_params = [Param(_key(k), v) for k, v in params.items() if _key(k) not in logged]
        stamp = int(1000 * (run_dir / "spec.yaml").stat().st_mtime) if (run_dir / "spec.yaml").exists() else 0
        epochs = _epoch_metrics(run_dir)
        batch_metrics = [Metric(_key(k), v, stamp, step) for step, row in epochs if step > logged_epochs
                         for k, v in row.items()]
        batch_metrics += [Metric(_key(k), v, stamp, 0) for k, v in _final_metrics(run_dir).items()
                          if k.startswith("test.") or k in ("best_epoch", "epochs_run")]
        for i in range(0, len(batch_params), 100):  # MLflow's batch limits: 100 params, 1000 metrics
            client.log_batch(run_id, params=batch_params[i:i + 100])
        for i in range(0, len(batch_metrics), 1000):
            client.log_batch(run_id, metrics=batch_metrics[i:i + 1000])
        for name in ARTIFACTS:
            if (run_dir / name).is_file():
                client.log_artifact(run_id, str(run_dir / name))
        for png in sorted(run_dir.glob("*.png")):
            client.log_artifact(run_id, str(png), artifact_path="plots")
        for key, value in _workflow_tags(run_dir).items():
            client.set_tag(run_id, key, value)
        client.set_terminated(run_id)
    except MlflowException as e:
        raise TrackingError(f"MLflow at tracking.mlflow_uri={uri!r}: {e.message}") from None
    atomic_write_text(run_dir / MLFLOW_FILE, json.dumps({"tracking_uri": uri, "experiment_id": experiment_id,
                                                         "run_id": run_id,
                                                         "epochs_logged": max([s for s, _ in epochs] or [0])},
                                                        indent=2))
    return run_id


def read_mlflow_file(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / MLFLOW_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def mlflow_run_id(run_dir: str | Path) -> str | None:
    """The MLflow run this run directory was logged as (None when it was not)."""
    found = read_mlflow_file(run_dir)
    return found.get("run_id") if found else None

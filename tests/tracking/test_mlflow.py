"""MLflow against a real local file store: the resolved spec as params, per-epoch metrics, report and plots as
artifacts, and the MLflow run id recorded when the workflow registers the run's model."""

from __future__ import annotations

import json

import pytest

from pipeline.spec import spec_from_dict
from support.run_dirs import CLASSES, write_train_run

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra (pip install 'mmpipe[mlflow]'; in the test extra)")


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow keeps its file store only on request
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return (tmp_path / "mlruns").as_uri()


def _spec(store: str):
    return spec_from_dict({"name": "tiny-run", "label": {"classes": CLASSES}, "train": {"lr": 0.003},
                           "tracking": {"mlflow_uri": store}})


def test_a_finished_run_is_logged_once_with_params_metrics_and_artifacts(tmp_path, store):
    from pipeline.report import publish_run
    from pipeline.tracking.mlflow_log import mlflow_run_id

    run = write_train_run(tmp_path / "run")
    publish_run(run, _spec(store))  # what the end of mmpipe train calls
    run_id = mlflow_run_id(run)
    client = mlflow.MlflowClient(store)
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED"
    assert client.get_experiment(logged.info.experiment_id).name == "tiny-run"
    params = logged.data.params
    assert params["train.lr"] == "0.003" and params["label.classes"] == json.dumps(CLASSES, ensure_ascii=False)
    history = client.get_metric_history(run_id, "val.macro_f1")
    assert [(m.step, round(m.value, 6)) for m in history] == [(1, 0.45), (2, 0.55), (3, 0.65)]
    assert logged.data.metrics["test.macro_f1"] == pytest.approx(0.84)
    assert {"val.precision.Überfluss", "val.precision.山"} <= set(logged.data.metrics)  # Unicode keys kept
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"report.html", "metrics.json", "spec.yaml", "epochs.csv", "data_report.json"} <= top
    assert {a.path for a in client.list_artifacts(run_id, "plots")} == {"plots/curves.png", "plots/confusion.png"}

    publish_run(run, _spec(store))  # `mmpipe report`-like re-publish: the same MLflow run, nothing doubled
    assert mlflow_run_id(run) == run_id
    assert len(client.search_runs([logged.info.experiment_id])) == 1
    assert len(client.get_metric_history(run_id, "val.macro_f1")) == 3


def test_without_a_tracking_uri_nothing_is_logged(tmp_path, store, monkeypatch):
    from pipeline.report import publish_run

    run = write_train_run(tmp_path / "run")
    publish_run(run, spec_from_dict({"name": "x", "label": {"classes": CLASSES}}))
    assert not (run / "mlflow.json").exists() and (run / "report.html").exists()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)  # the environment alone turns it on
    publish_run(run, spec_from_dict({"name": "x", "label": {"classes": CLASSES}}))
    assert json.loads((run / "mlflow.json").read_text())["tracking_uri"] == store


def test_a_refused_store_is_a_warning_and_the_run_can_be_logged_later(tmp_path, monkeypatch, caplog):
    import subprocess
    import sys

    from pipeline.report import publish_run
    from pipeline.tracking.mlflow_log import TrackingError, log_run, mlflow_run_id

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    run = write_train_run(tmp_path / "run")
    store = (tmp_path / "mlruns").as_uri()
    with pytest.raises(TrackingError, match="tracking.mlflow_uri="):
        log_run(run, _spec(store))
    publish_run(run, _spec(store))  # the end of a finished training: its files stand, the failure is said
    assert (run / "report.html").exists() and mlflow_run_id(run) is None
    assert "log it later with: mmpipe report" in caplog.text

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "report", str(run), "--mlflow", store],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    run_id = mlflow_run_id(run)
    assert f"logged to MLflow run {run_id}" in done.stdout
    assert mlflow.MlflowClient(store).get_run(run_id).data.params["name"] == "tiny-run"  # the run's spec.yaml


def test_registering_records_the_mlflow_run_id(tmp_path, store):
    """The workflow's register step copies the train step's MLflow run id into the version's meta.json."""
    import torch

    from pipeline.model.classifier import MultimodalClassifier
    from pipeline.registry import Registry
    from pipeline.tracking.mlflow_log import log_run
    from pipeline.workflow.rundir import RunDir
    from pipeline.workflow.steps import StepContext, register

    raw = {"name": "tiny-run", "label": {"classes": CLASSES}, "registry": {"uri": str(tmp_path / "reg")},
           "modalities": {"image": {"size": [16, 16]}, "text": None, "audio": None},
           "model": {"hidden": 8, "image_width": 4}, "tracking": {"mlflow_uri": store},
           "workflow": {"steps": ["train", "evaluate", "register"]}}
    spec = spec_from_dict(raw)
    run = RunDir(str(tmp_path / "wf"))
    train = write_train_run(tmp_path / "wf" / "train")
    torch.save({"model": MultimodalClassifier(spec, len(CLASSES)).state_dict(), "classes": CLASSES,
                "spec": spec.model_dump(mode="json"), "epoch": 3, "metrics": {}}, train / "best.pt")
    (tmp_path / "wf" / "evaluate").mkdir()
    (tmp_path / "wf" / "evaluate" / "evaluation.json").write_text(json.dumps(
        {"split": "test", "classes": CLASSES, "metrics": {"test.macro_f1": 0.84}}))
    run_id = log_run(train, spec)
    (tmp_path / "reg-step").mkdir()
    version = register(StepContext(spec, run, "wf-1"), tmp_path / "reg-step")["version"]
    assert Registry(str(tmp_path / "reg")).meta(version)["mlflow_run_id"] == run_id


def test_a_workflow_run_is_logged_with_its_report_and_promotion_outcome(tmp_path, store):
    from pipeline.tracking.mlflow_log import mlflow_run_id
    from pipeline.workflow.run import _publish
    from pipeline.workflow.rundir import RunDir
    from support.run_dirs import write_workflow_run

    run = write_workflow_run(tmp_path / "wf")
    _publish(RunDir(str(run)), _spec(store))  # what the end of a successful `mmpipe run` calls
    logged = mlflow.MlflowClient(store).get_run(mlflow_run_id(run))
    tags = logged.data.tags
    assert tags["mmpipe.workflow.status"] == "succeeded" and tags["mmpipe.promoted"] == "true"
    assert tags["mmpipe.registered_version"] == "2" and "train" in tags["mmpipe.workflow.steps"]
    top = {a.path for a in mlflow.MlflowClient(store).list_artifacts(logged.info.run_id)}
    assert {"report.html", "run.json", "environment.json"} <= top

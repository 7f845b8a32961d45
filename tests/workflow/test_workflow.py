"""`mmpipe run` end to end on the demo data with real Ray training: resume after train, champion/challenger both
ways, predictions that agree with the evaluation, failed steps recorded without half-written outputs."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

import pyarrow.parquet as pq
import pytest

from pipeline.predict import predict
from pipeline.spec import load_spec
from pipeline.registry import Registry
from pipeline.workflow.run import WorkflowFailed, run_workflow

pytestmark = pytest.mark.ray


def _spec(demo_dir, registry, *overrides):
    # a small model without augmentation: 4 epochs at lr 0.003 still clearly beat 1 at lr 1e-5 (the promotion test);
    # one training worker: what is tested here is the workflow (DDP: tests/train/test_train.py), and each worker
    # process costs ~5 s of start-up on 2 cores
    return load_spec(demo_dir / "spec.yaml", [f"registry.uri={registry}", "train.batch_size=32", "model.hidden=32",
                                              "augment.enabled=false", "scaling.num_workers=1", *overrides])


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def workflows(ray_session, demo_dir, tmp_path_factory):
    """Two runs into one registry: a weak model first (becomes champion: there is none), then a stronger one
    that was interrupted after training and resumed."""
    from pipeline.train import trainer

    from support.actors import live_actors, settled

    root = tmp_path_factory.mktemp("workflows")
    registry = root / "registry"
    actors_before = settled(live_actors(), 5)
    scored: list[str] = []  # the split of every evaluation of a model (training's test, the evaluate step's)
    evaluate = trainer.evaluate
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer, "evaluate", lambda model, ds, spec, classes, prefix:
                      (scored.append(prefix), evaluate(model, ds, spec, classes, prefix))[1])
        weak = run_workflow(_spec(demo_dir, registry, "train.epochs=1", "train.lr=0.00001"), str(root / "weak"),
                            say=lambda m: None)

    strong_dir = root / "strong"
    strong = _spec(demo_dir, registry, "train.epochs=4", "train.lr=0.003")
    interrupted = strong.model_copy(deep=True)
    interrupted.workflow.steps = ["validate-data", "train"]
    run_workflow(interrupted, str(strong_dir), say=lambda m: None)
    best_before = _sha(strong_dir / "train" / "best.pt")
    said: list[str] = []
    resumed = run_workflow(strong, str(strong_dir), say=said.append)
    actors = (actors_before, settled(actors_before))
    return {"actors": actors, "root": root, "registry": Registry(str(registry)), "weak": weak, "resumed": resumed, "said": said,
            "best_before": best_before, "strong_dir": strong_dir, "demo_dir": demo_dir, "weak_scored": scored}


def test_one_run_scores_its_model_on_the_test_split_once(workflows):
    """Training scores best.pt on test; the evaluate step of the same run takes those metrics, unchanged."""
    assert workflows["weak_scored"] == ["test"]
    weak = workflows["root"] / "weak"
    trained = json.loads((weak / "train" / "metrics.json").read_text())
    evaluation = json.loads((weak / "evaluate" / "evaluation.json").read_text())
    assert evaluation["split"] == "test" and evaluation["confusion"] == trained["test.confusion"]
    assert evaluation["metrics"] == {k: v for k, v in trained.items()
                                     if k.startswith("test.") and k != "test.confusion"}


def test_workflows_leave_no_actors_of_theirs_alive(workflows):
    """Three workflow runs later (validate, train, evaluate, register, promote), the live actors of ours (dataset
    actors, heartbeats, Train and Tune actors) are back at what they were before (docs/liveness.md)."""
    from support.actors import leftovers

    before, after = workflows["actors"]
    # Ray Train's SIGINT handler holds its controller's handle: left installed after fit(), one TrainController +
    # SplitCoordinator pair outlived the runs (pipeline/watchdog.py puts the handler from before back).
    assert leftovers(after, before) == {}


def test_a_run_interrupted_after_train_resumes_without_retraining(workflows):
    run = workflows["resumed"]
    assert run["status"] == "succeeded" and run["attempt"] == 2
    status = {s["name"]: s["status"] for s in run["steps"]}
    assert status == {"validate-data": "skipped (done earlier)", "train": "skipped (done earlier)",
                      "evaluate": "succeeded", "register": "succeeded", "promote": "succeeded"}
    assert _sha(workflows["strong_dir"] / "train" / "best.pt") == workflows["best_before"]
    assert any("train: done in an earlier attempt, skipped" in m for m in workflows["said"])
    manifest = json.loads((workflows["strong_dir"] / "steps" / "evaluate.json").read_text())
    assert manifest["status"] == "succeeded" and manifest["outputs"] == ["evaluation.json"]
    took = datetime.fromisoformat(manifest["ended"]) - datetime.fromisoformat(manifest["started"])
    assert manifest["inputs"]["train.outputs"] and manifest["seconds"] <= took.total_seconds() + 1.0
    assert not list(workflows["strong_dir"].glob("*.partial"))


def test_promotion_decided_both_ways(workflows, demo_dir):
    reg = workflows["registry"]
    weak, strong = workflows["weak"]["outcome"], workflows["resumed"]["outcome"]
    assert (weak["version"], weak["promoted"]) == (1, True)
    assert weak["decision"]["reason"] == "no champion yet"
    assert strong["version"] == 2
    d = strong["decision"]
    weak_score = reg.meta(1)["metrics"]["test.macro_f1"]
    assert d["champion"] == pytest.approx(weak_score)  # the champion re-scored on the same holdout
    assert d["challenger"] == pytest.approx(reg.meta(2)["metrics"]["test.macro_f1"])
    assert d["challenger"] > d["champion"] and strong["promoted"] is True
    assert reg.alias("champion") == 2 and reg.decision(2)["promote"] is True

    # The weak run again, now demanding a margin: only promote re-runs (its inputs changed), version 1 is
    # re-decided against champion 2 and stays out.
    again = run_workflow(_spec(demo_dir, reg.uri, "train.epochs=1", "train.lr=0.00001",
                               "registry.min_improvement=0.01"), str(workflows["root"] / "weak"),
                         say=lambda m: None)
    status = {s["name"]: s["status"] for s in again["steps"]}
    assert status["train"].startswith("skipped") and status["register"].startswith("skipped")
    assert status["promote"] == "succeeded"
    o = again["outcome"]
    assert o["version"] == 1 and o["promoted"] is False
    assert o["decision"]["champion_version"] == 2 and o["decision"]["challenger"] < o["decision"]["champion"]
    assert reg.alias("champion") == 2
    assert len(reg.versions()) == 2  # the resumed registration did not add a version

    # The strong run again under a margin it cannot meet: champion 2's own decision was taken under another rule,
    # so it is decided again against the champion it replaced (1), and 1 gets its place back; with the first
    # rule again, 2 wins again. The alias history records each move.
    strong_again = lambda margin: run_workflow(  # noqa: E731
        _spec(demo_dir, reg.uri, "train.epochs=4", "train.lr=0.003", f"registry.min_improvement={margin}"),
        str(workflows["strong_dir"]), say=lambda m: None)["outcome"]
    o = strong_again(0.99)
    assert (o["version"], o["promoted"], o["decision"]["min_improvement"]) == (2, False, 0.99)
    assert o["decision"]["champion_version"] == 1 and "does not beat" in o["decision"]["reason"]
    assert reg.alias("champion") == 1 and reg.decision(2)["min_improvement"] == 0.99
    o = strong_again(0.0)
    assert (o["version"], o["promoted"], o["decision"]["champion_version"]) == (2, True, 1)
    assert [(e["previous"], e["version"]) for e in reg.alias_events("champion")] == [(None, 1), (1, 2), (2, 1),
                                                                                      (1, 2)]


def test_predictions_agree_with_the_evaluation(workflows, tmp_path):
    reg, demo_dir = workflows["registry"], workflows["demo_dir"]
    out = tmp_path / "pred.parquet"
    result = predict(f"{reg.uri}@champion", [str(demo_dir / "test" / "*.tar")], str(out), batch_size=64)
    table = pq.read_table(out).to_pandas()
    evaluation = json.loads((workflows["strong_dir"] / "evaluate" / "evaluation.json").read_text())
    ok = table[table.status == "ok"]
    assert result.version == 2 and len(table) == result.rows == result.report.rows_in
    assert len(ok) == evaluation["metrics"]["test.rows"]
    assert (ok.pred_index == ok.label_index).mean() == pytest.approx(evaluation["metrics"]["test.accuracy"])
    probs = ok[[f"prob_{c}" for c in evaluation["classes"]]].to_numpy()
    assert probs.sum(1) == pytest.approx(1.0, abs=1e-5)
    assert (ok.pred_class == [evaluation["classes"][i] for i in ok.pred_index]).all()


def test_bad_samples_are_reported_in_predictions(workflows, tmp_path):
    """The val split has planted bad samples: each gets a row with its drop reason, none vanishes."""
    reg, demo_dir = workflows["registry"], workflows["demo_dir"]
    out = tmp_path / "val.parquet"
    result = predict(f"{reg.uri}:1", [str(demo_dir / "val" / "*.tar")], str(out))
    table = pq.read_table(out).to_pandas()
    planted = json.loads((demo_dir / "manifest.json").read_text())["planted"]["val"]
    dropped = table[table.status != "ok"]
    assert len(table) == result.report.rows_in
    assert dropped.pred_class.isna().all() and (dropped.pred_index == -1).all()
    # label problems do not stop a prediction (labels are not needed to predict); duplicates are predicted too
    for reason in set(planted) - {"label_missing", "label_unknown", "duplicate"}:
        assert (dropped.status == reason).sum() >= 1, reason
    assert (table.status == "ok").sum() == result.predicted
    report = json.loads((tmp_path / "val.report.json").read_text())
    assert report["report"]["rows_in"] == len(table) and report["version"] == 1


def test_failed_step_is_recorded_and_leaves_no_outputs(workflows, tmp_path):
    spec = load_spec(workflows["demo_dir"] / "spec.yaml", [
        "workflow.steps=[predict]", f"predict.model={workflows['registry'].uri}:99",
        f"predict.shards={workflows['demo_dir'] / 'test' / '*.tar'}", f"predict.out={tmp_path / 'p.parquet'}"])
    with pytest.raises(WorkflowFailed, match="no complete version 99"):
        run_workflow(spec, str(tmp_path / "run"), say=lambda m: None)
    manifest = json.loads((tmp_path / "run" / "steps" / "predict.json").read_text())
    assert manifest["status"] == "failed" and "version 99" in manifest["error"]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"
    assert not (tmp_path / "run" / "predict").exists() and not (tmp_path / "p.parquet").exists()


def test_run_directory_on_an_fsspec_uri(workflows, tmp_path):
    """A predict workflow whose run directory is a memory:// URI: manifests and outputs land there."""
    from pipeline import storage

    uri = "memory://mmpipe-tests/run-predict"
    spec = load_spec(workflows["demo_dir"] / "spec.yaml", [
        "workflow.steps=[predict]", f"predict.model={workflows['registry'].uri}@champion",
        f"predict.shards={workflows['demo_dir'] / 'test' / '*.tar'}", f"predict.out={tmp_path / 'p.parquet'}"])
    run = run_workflow(spec, uri, say=lambda m: None)
    assert run["status"] == "succeeded"
    assert storage.read_json(f"{uri}/steps/predict.json")["status"] == "succeeded"
    assert storage.read_json(f"{uri}/predict/predict_report.json")["version"] == 2
    report = storage.read_bytes(f"{uri}/report.html").decode()  # reported from the local cache, uploaded beside
    assert "<html" in report.lower() and "predict" in report and storage.exists(f"{uri}/environment.json")
    again = run_workflow(spec, uri, say=lambda m: None)
    assert again["steps"][0]["status"].startswith("skipped")


def test_missing_shards_fail_the_first_step_with_a_record(demo_dir, tmp_path):
    """Listing the data happens before the step runs; a missing shard is still that step's recorded failure."""
    spec = load_spec(demo_dir / "spec.yaml", [f"data.splits.train={tmp_path / 'nowhere' / '*.tar'}"])
    with pytest.raises(WorkflowFailed, match="validate-data failed: ShardError"):
        run_workflow(spec, str(tmp_path / "run"), say=lambda m: None)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "failed" and run["steps"][0]["name"] == "validate-data"
    assert "nowhere" in run["steps"][0]["error"]

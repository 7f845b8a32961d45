"""label.tasks end to end on real data: the FSDD fixture (digit as the primary task, the speaker from the packed
meta json as a second): a real Ray Train run and prediction with its model, rebalancing by the speaker, and a
workflow that registers, promotes and predicts (each test ~40-50 s)."""

import csv
import json

import numpy as np
import pytest

from pipeline.data.tools.pack import pack_manifest
from pipeline.examples.av_digits import prepare
from pipeline.spec import load_spec
from support import FIXTURES, ROOT

SPEAKERS = ["jackson", "nicolas", "theo"]
TWO_TASKS = ["label.name=digit", f"label.tasks={{speaker: {{classes: {json.dumps(SPEAKERS)}, weight: 0.5}}}}",
             "train.epochs=3", "train.batch_size=4", "train.lr=0.003", "model.hidden=16",
             "scaling.num_workers=1", "augment.enabled=false"]


@pytest.fixture(scope="module")
def fsdd_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdd")
    packed = pack_manifest(prepare(FIXTURES / "fsdd", out / "raw"), out / "shards", progress=False)
    assert packed.skipped == []
    return out / "shards"


@pytest.fixture(scope="module")
def fsdd_unknown_speakers(tmp_path_factory):
    """The FSDD fixture with two of jackson's train samples packed without a speaker (no key in their meta json):
    kept, their speaker masked."""
    out = tmp_path_factory.mktemp("fsdd-unknown-speakers")
    manifest = prepare(FIXTURES / "fsdd", out / "raw")
    with manifest.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in [r for r in rows if r["split"] == "train" and r["speaker"] == "jackson"][:2]:
        row["speaker"] = ""  # pack leaves an empty cell out of the meta json
    with manifest.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    packed = pack_manifest(manifest, out / "shards", progress=False)
    assert packed.skipped == []
    return out / "shards"


def _speaker_rebalanced(shards) -> list[str]:
    return [f"data.splits.{s}={shards}/{s}/*.tar" for s in ("train", "val", "test")] + TWO_TASKS + \
        ["rebalance.strategy=oversample", "rebalance.task=speaker"]


@pytest.mark.slow
def test_two_tasks_train_score_and_predict(ray_session, fsdd_shards, tmp_path):
    from pipeline.data.stages.config import StageConfig
    from pipeline.data.stages.path import prepare_batch
    from pipeline.data.shards.tar import tar_samples, to_batch
    from pipeline.data.stages.tokenize import tokenize_batch
    from pipeline.predict import Predictor
    from pipeline.train.trainer import run_training

    splits = [f"data.splits.{s}={fsdd_shards}/{s}/*.tar" for s in ("train", "val", "test")]
    spec = load_spec(ROOT / "jobs" / "av-digits.yaml", splits + TWO_TASKS)
    run = tmp_path / "run"
    result = run_training(spec, run)

    m = json.loads((run / "metrics.json").read_text())
    assert m["tasks"] == {"digit": ["0", "1", "2", "3"], "speaker": SPEAKERS}
    for split in ("val", "test"):
        for name in ("accuracy", "macro_f1", "loss", "auc"):  # the primary task's names as without tasks
            assert f"{split}.{name}" in m and f"{split}.speaker.{name}" in m, (split, name)
        assert m[f"{split}.rows"] == m[f"{split}.speaker.rows"] == 12  # every sample has its speaker
    assert np.array(m["test.speaker.confusion"]).shape == (3, 3) and np.array(m["test.confusion"]).shape == (4, 4)
    assert result.metrics["test.speaker.macro_f1"] == m["test.speaker.macro_f1"]
    with (run / "epochs.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and {"train.speaker.loss", "val.speaker.macro_f1", "val.macro_f1"} <= set(rows[0])
    assert (run / "confusion.png").stat().st_size > 0 and (run / "confusion_speaker.png").stat().st_size > 0
    html = (run / "report.html").read_text(encoding="utf-8")
    assert '<section id="tasks">' in html and 'alt="confusion matrix, speaker"' in html
    assert "Task speaker (kept rows)" in html  # the data section's counts per task
    report = json.loads((run / "data_report.json").read_text())
    assert report["tasks"] == {"speaker": SPEAKERS}
    train = report["splits"]["train"]
    assert train["tasks"]["speaker"] == {"class_histogram": {s: 4 for s in SPEAKERS}, "missing": 0}

    # prediction: one column set per task, from the model file as the registry stores it (test rows as the data
    # path prepares them for prediction: every row, labels not required)
    predictor = Predictor((run / "best.pt").read_bytes(), use_gpu=False)
    cfg = StageConfig.from_spec(spec, m["classes"], labels_required=False)
    rows = [row for shard in sorted((fsdd_shards / "test").glob("*.tar"))
            for row in tar_samples(shard.open("rb"), str(shard))]
    batch = tokenize_batch(prepare_batch(to_batch(rows), cfg), spec.modalities.text)
    out = predictor(batch)
    assert {"pred_class", "prob_0", "speaker.pred_class", "speaker.prob_theo", "speaker.label_index"} <= set(out)
    assert set(out["speaker.pred_class"]) <= set(SPEAKERS) and (out["speaker.label_index"] >= 0).all()
    probs = np.stack([out[f"speaker.prob_{s}"] for s in SPEAKERS], 1)
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    accuracy = (out["speaker.pred_index"] == out["speaker.label_index"]).mean()
    assert accuracy == pytest.approx(m["test.speaker.accuracy"], abs=1e-6)  # the same model, the same rows


def test_rebalancing_by_the_speaker_counts_its_classes_in_a_label_pass(ray_session, fsdd_shards):
    from pipeline.data.streaming.plan import DataPlan

    splits = [f"data.splits.{s}={fsdd_shards}/{s}/*.tar" for s in ("train", "val", "test")]
    spec = load_spec(ROOT / "jobs" / "av-digits.yaml", splits + TWO_TASKS + ["rebalance.strategy=oversample",
                                                                          "rebalance.task=speaker"])
    data = DataPlan(spec)
    counts, source = data.class_counts()
    assert (counts.tolist(), source) == ([4, 4, 4], "label pass (speaker)")  # not the manifest's digit counts
    assert data.rebalance.classes == SPEAKERS and data.rebalance.factors == [1.0, 1.0, 1.0]
    rows = data.train_dataset(columns=["label", "label_speaker", "copy"]).take_all()
    assert sorted(r["label_speaker"] for r in rows) == [0] * 4 + [1] * 4 + [2] * 4


def test_an_epoch_rebalanced_by_the_speaker_counts_the_rows_without_one(ray_session, fsdd_unknown_speakers):
    """The epoch the learning-rate schedule is sized for (rows_per_epoch) is the epoch that streams: the rows
    without a speaker come once each beside the oversampled ones (counted apart, they ended the schedule early)."""
    from pipeline.data.streaming.plan import DataPlan

    data = DataPlan(load_spec(ROOT / "jobs" / "av-digits.yaml", _speaker_rebalanced(fsdd_unknown_speakers)))
    counts, source = data.class_counts()
    assert (counts.tolist(), data.unlabelled_rows(), source) == ([2, 4, 4], 2, "label pass (speaker)")
    plan = data.rebalance
    assert plan.factors == [2.0, 1.0, 1.0] and plan.rows_per_epoch == 14.0  # 4 + 4 + 4 + 2
    rows = data.train_dataset(columns=["label", "label_speaker"]).take_all()
    assert len(rows) == plan.rows_per_epoch and sum(r["label_speaker"] < 0 for r in rows) == 2


def test_validate_out_plots_the_speakers_when_it_rebalances_them(ray_session, fsdd_unknown_speakers, tmp_path):
    """mmpipe validate --out with rebalance.task=speaker: the plot has the speaker's 3 classes (the digit has 4)."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    out = tmp_path / "r.json"
    args = ["validate", str(ROOT / "jobs" / "av-digits.yaml"), "--out", str(out), "--split", "train"]
    for value in _speaker_rebalanced(fsdd_unknown_speakers):
        args += ["--set", value]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rebalance = json.loads(out.read_text(encoding="utf-8"))["rebalance"]
    assert rebalance["task"] == "speaker" and rebalance["unlabelled_rows"] == 2
    assert rebalance["before"] == {"jackson": 2, "nicolas": 4, "theo": 4}
    assert (tmp_path / "r_classes.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_a_two_task_workflow_registers_promotes_and_predicts_naming_the_primary_task(ray_session, fsdd_shards,
                                                                                     tmp_path):
    import pyarrow.parquet as pq

    from pipeline.registry import Registry
    from pipeline.workflow.run import run_workflow

    splits = [f"data.splits.{s}={fsdd_shards}/{s}/*.tar" for s in ("train", "val", "test")]
    registry = tmp_path / "registry"
    out = tmp_path / "predictions.parquet"
    spec = load_spec(ROOT / "jobs" / "av-digits.yaml", splits + TWO_TASKS + [
        "train.epochs=1", f"registry.uri={registry}", f"predict.model={registry}@champion",
        f"predict.shards={fsdd_shards}/test/*.tar", f"predict.out={out}",
        "workflow.steps=[train, evaluate, register, promote, predict]"])
    run_workflow(spec, str(tmp_path / "run"), say=lambda m: None)
    evaluation = json.loads((tmp_path / "run" / "evaluate" / "evaluation.json").read_text())
    assert {"test.macro_f1", "test.speaker.macro_f1"} <= set(evaluation["metrics"])
    reg = Registry(str(registry))
    assert reg.meta(1)["task"] == "digit" and "test.speaker.accuracy" in reg.meta(1)["metrics"]
    assert reg.decision(1)["task"] == "digit" and reg.decision(1)["promote"]
    table = pq.read_table(out).to_pydict()
    assert len(table["key"]) == 12 and set(table["speaker.pred_class"]) <= set(SPEAKERS)
    assert table["speaker.label_index"] == [SPEAKERS.index(k.split("/")[0]) for k in table["key"]]
    report = json.loads(out.with_name("predictions.report.json").read_text())
    assert report["report"]["tasks"]["speaker"]["class_histogram"] == {s: 4 for s in SPEAKERS}


def test_primary_class_counts_leave_out_rows_dropped_for_an_unknown_further_label(ray_session, fsdd_shards):
    """theo is no speaker class here: his train rows are dropped (label_unknown), so the digit counts rebalancing,
    the loss and the epoch's length are sized by come from a label pass over every task, not from the manifest
    (which counts them), and equal what validate's plan reads from the kept rows."""
    from pipeline.data.streaming.plan import DataPlan, kept_counts

    splits = [f"data.splits.{s}={fsdd_shards}/{s}/*.tar" for s in ("train", "val", "test")]
    two = [f"label.tasks={{speaker: {{classes: {json.dumps(SPEAKERS[:2])}}}}}" if a.startswith("label.tasks=")
           else a for a in TWO_TASKS]
    data = DataPlan(load_spec(ROOT / "jobs" / "av-digits.yaml", splits + two + ["rebalance.strategy=oversample"]))
    counts, source = data.class_counts()
    assert source == "label pass" and counts.sum() == 8  # 12 train rows, theo's 4 dropped
    report = data.validate(["train"]).splits["train"]
    assert report.dropped == {"label_unknown": 4}
    assert kept_counts(report, data.tasks[0]) == (counts.tolist(), 0)

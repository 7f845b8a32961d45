"""Training on Ray Train: a real 2-worker CPU DDP run, recovery from a worker failure, metrics, GPU (skips)."""

import csv
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, precision_score, recall_score, \
    roc_auc_score

from pipeline.spec import load_spec
from pipeline.train.metrics import Accumulator
from support.runs import assert_resumed, epoch_rows

FAST = ["train.epochs=6", "train.batch_size=16", "train.lr=0.003", "model.hidden=32"]


def test_metrics_equal_scikit_learn_on_fixed_predictions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    logits = torch.randn(300, 4) + 1.5 * torch.nn.functional.one_hot(torch.tensor(y), 4)
    acc = Accumulator(4)
    for part in np.array_split(np.arange(300), 3):  # as if from three ranks / batches
        acc.add(logits[part], torch.tensor(y[part]), 0.0)
    m = acc.all_reduce().compute(list("abcd"), "test")
    pred, probs = logits.argmax(1).numpy(), torch.softmax(logits, 1).numpy()
    assert m["test.accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["test.balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["test.macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["test.auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    for i, c in enumerate("abcd"):
        assert m[f"test.precision.{c}"] == pytest.approx(precision_score(y, pred, labels=[i], average="macro"))
        assert m[f"test.recall.{c}"] == pytest.approx(recall_score(y, pred, labels=[i], average="macro"))
    assert np.array_equal(np.array(m["test.confusion"]).sum(1), np.bincount(y, minlength=4))



def test_auc_equals_scikit_learn_with_tied_scores_and_an_absent_class():
    from pipeline.train.metrics import macro_auc

    rng = np.random.default_rng(1)
    for n in (2, 7, 40, 301):
        y = rng.integers(0, 3, n)  # class 3 of 4 never occurs: left out of the macro mean, as sklearn's ovr does
        y[:2] = [0, 1]
        probs = rng.random((n, 4)).round(1)  # tenths: many tied scores
        expected = np.mean([roc_auc_score(y == c, probs[:, c]) for c in np.unique(y)])
        assert macro_auc(probs, y, 4) == pytest.approx(expected, abs=1e-12)
    assert np.isnan(macro_auc(probs, np.zeros(n, int), 4))  # one class: undefined
    probs[0, 0] = np.nan
    assert np.isnan(macro_auc(probs, y, 4))  # a diverged model's scores: undefined, not a crash

@pytest.mark.slow
def test_two_worker_ddp_run_learns_recovers_from_a_worker_failure_and_writes_artifacts(ray_session, demo_dir,
                                                                                     tmp_path, monkeypatch):
    """One 6-epoch DDP run (one Train run serves both claims: a run costs ~25 s of start-up on 2 cores) whose last
    rank dies once as epoch 4 starts, after epoch 3's checkpoint: Ray Train restarts the worker group, which resumes
    from that checkpoint."""
    from ray.util.state import list_actors

    from pipeline.data.shards import manifest
    from pipeline.data.streaming import plan
    from pipeline.train.trainer import run_training

    # One training reads manifest.json once and checks each split's shards once (its data plan's), however many
    # times it reads the splits (rebalance counts, val, test, the data report).
    manifest_reads, checked = [], []
    read, check = manifest.read_manifest, plan.check_shards
    monkeypatch.setattr(manifest, "read_manifest", lambda path: (read(path), manifest_reads.append(path))[0])
    monkeypatch.setattr(plan, "check_shards", lambda paths, **kw: (checked.append(paths), check(paths, **kw))[1])

    spec = load_spec(demo_dir / "spec.yaml", FAST + ["model.fusion=gated", "train.loss=logit_adjusted",
                                                      "scaling.max_failures=1"])
    marker = tmp_path / "failed-once"
    result = run_training(spec, tmp_path / "run", inject_failure={"epoch": 3, "marker": str(marker)})
    assert marker.exists()  # the failure happened
    assert manifest_reads == [str(demo_dir / "manifest.json")]
    split_of = {path: name for name in ("train", "val", "test") for path in map(str, (demo_dir / name).glob("*"))}
    assert sorted(split_of[paths[0]] for paths in checked) == ["test", "train", "val"]
    m = result.metrics
    assert m["test.macro_f1"] > 0.5, m  # chance is ~0.17 for 6 classes
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert m["val.rows"] == report["splits"]["val"]["rows_kept"]  # every validation row counted once
    assert m["test.rows"] == report["splits"]["test"]["rows_kept"]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("test.accuracy", "test.balanced_accuracy", "test.macro_f1", "test.auc", "test.confusion",
                "test.recall.meadow"):
        assert key in saved
    rows = list(csv.DictReader((tmp_path / "run" / "epochs.csv").open()))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 7))  # 1-based, and epoch 3 not repeated...
    assert_resumed(rows, from_epoch=3)  # ...epoch 4 started from its checkpoint's weights and optimizer steps
    # every epoch scored each val row once: ranks split val by batch index, so both must see the same batches in
    # the same order (with prefetch threads reordering them, 1 epoch in 2 runs scored 50 of 65 rows)
    assert [int(r["val.rows"]) for r in rows] == [report["splits"]["val"]["rows_kept"]] * 6
    assert 1 <= m["best_epoch"] <= 6 and m["epochs_run"] == 6
    assert float(rows[-1]["lr"]) > 0  # the lr the last epoch trained with, not the schedule's 0.0 after it
    for name in ("curves.png", "confusion.png", "spec.yaml", "environment.json"):
        assert (tmp_path / "run" / name).stat().st_size > 0
    # the killed attempt's TensorBoard events survive it (each epoch's are on disk before its checkpoint)
    _assert_tensorboard(tmp_path / "run" / "tensorboard", rows)
    from pipeline.watchdog import state_address  # this instance's, not whichever one runs beside it

    actors = {a.class_name for a in list_actors(address=state_address(), limit=10_000)}  # dead ones included
    assert "TrainController" in actors and "PreemptionWatcher" not in actors  # ray_runtime.LOCAL_WORKER_ENV
    html = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert 'id="curves"' in html and 'id="confusion"' in html and html.count("data:image/png;base64,") >= 4
    best = torch.load(result.best_checkpoint, weights_only=True)
    assert best["classes"] == m["classes"] and "fusion.gate.weight" in best["model"]


def _assert_tensorboard(folder, rows):
    """The event files hold every epoch's metrics (as epochs.csv has them) and the confusion matrix images, read
    back with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0}).Reload()
    for tag, column in (("val/macro_f1", "val.macro_f1"), ("train/loss", "train.loss"), ("lr", "lr"),
                        ("val/recall.meadow", "val.recall.meadow")):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [int(r["epoch"]) for r in rows], tag
        assert [s.value for s in scalars] == pytest.approx([float(r[column]) for r in rows], rel=1e-5), tag
    assert [i.step for i in events.Images("val/confusion")] == [int(r["epoch"]) for r in rows]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_forward_backward():
    from support.models import batch, make

    model = make("attention").cuda()
    b = {k: v.cuda() for k, v in batch(("image", "text", "audio"), n=8).items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(b)
    assert logits.dtype == torch.bfloat16
    logits.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_resuming_with_other_settings_is_refused(tmp_path):
    from pipeline.spec import dump_spec, spec_from_dict
    from pipeline.train.trainer import TrainError, check_resumable

    old = spec_from_dict({"train": {"lr": 0.01, "epochs": 2}})
    (tmp_path / "ray" / "train").mkdir(parents=True)
    (tmp_path / "spec.yaml").write_text(dump_spec(old))
    check_resumable(spec_from_dict({"train": {"lr": 0.01, "epochs": 5}}), tmp_path, "train")  # more epochs: fine
    with pytest.raises(TrainError, match="train.lr"):
        check_resumable(spec_from_dict({"train": {"lr": 0.02}}), tmp_path, "train")
    with pytest.raises(TrainError, match="model.fusion"):
        check_resumable(spec_from_dict({"train": {"lr": 0.01}, "model": {"fusion": "late"}}), tmp_path, "train")


def test_a_field_added_to_the_spec_later_keeps_old_runs_resumable(tmp_path):
    import yaml

    from pipeline.spec import dump_spec, spec_from_dict
    from pipeline.train.trainer import TrainError, check_resumable

    written = yaml.safe_load(dump_spec(spec_from_dict({"train": {"lr": 0.01}})))
    del written["model"]["dropout"], written["train"]["weight_decay"]  # as a spec.yaml from before those fields
    (tmp_path / "ray" / "train").mkdir(parents=True)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(written))
    check_resumable(spec_from_dict({"train": {"lr": 0.01}}), tmp_path, "train")  # defaults: same run
    with pytest.raises(TrainError, match="model.dropout"):
        check_resumable(spec_from_dict({"train": {"lr": 0.01}, "model": {"dropout": 0.3}}), tmp_path, "train")


def test_metric_names_are_checked():
    from pipeline.spec import SpecError, spec_from_dict

    with pytest.raises(SpecError, match="train.early_stopping_metric: Value error, must be train.<name> or val"):
        spec_from_dict({"train": {"early_stopping_metric": "val.f1"}})
    with pytest.raises(SpecError, match="tune.metric"):
        spec_from_dict({"tune": {"metric": "macro_f1"}})


@pytest.mark.ray
def test_too_few_rows_for_a_step_is_refused(ray_session, demo_dir, tmp_path):
    from pipeline.train.trainer import TrainError, run_training

    with pytest.raises(TrainError, match="fewer than train.batch_size=4096"):
        run_training(load_spec(demo_dir / "spec.yaml", ["train.batch_size=4096"]), tmp_path / "run")

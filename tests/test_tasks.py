"""label.tasks without Ray: the spec's rules, each stage's label columns (clean, rebalance, label fraction, the
data report), the summed loss with masked rows, the heads' logits blocks and the per-task metric names."""

import io
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from support import raw_batch
from pipeline.data.stages.config import StageConfig
from pipeline.data.stages.label_fraction import label_fraction_batch
from pipeline.data.stages.path import prepare_batch, sample_path
from pipeline.data.stages.rebalance import rebalance_batch
from pipeline.data.stages.report import DataReport, SplitReport
from pipeline.model.classifier import MultimodalClassifier, input_columns
from pipeline.model.losses import make_task_loss
from pipeline.spec import SpecError, spec_from_dict
from pipeline.tasks import holdout_metric_name, holdout_task, label_columns, spec_tasks, split_logits
from pipeline.train.metrics import Accumulator, task_metrics

pytestmark = pytest.mark.fast

CLASSES = ["cat", "dog", "猫"]
SPEAKERS = ["ann", "bo", "李"]
TWO = {"modalities": {"image": {"size": [16, 24]}, "text": {"max_tokens": 12},
                      "audio": {"sample_rate": 8000, "seconds": 0.5}},
       "label": {"name": "animal", "tasks": {"speaker": {"classes": SPEAKERS, "format": "name", "weight": 0.5}}}}


def two_task(**extra):
    raw = json.loads(json.dumps(TWO))
    for section, values in extra.items():
        raw.setdefault(section, {}).update(values)
    return spec_from_dict(raw)


def good(**extra) -> dict:
    """A sample every stage keeps: image, text, audio and primary label (cat)."""
    img, audio = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (30, 20), (200, 10, 10)).save(img, format="PNG")
    sf.write(audio, 0.5 * np.sin(np.arange(4000) / 3).astype(np.float32), 8000, format="WAV", subtype="PCM_16")
    return {"png": img.getvalue(), "txt": b"a small cat", "wav": audio.getvalue(), "cls": b"0", **extra}


def meta(**fields) -> bytes:
    return json.dumps(fields, ensure_ascii=False).encode()


# ------------------------------------------------------------------ spec

def test_a_spec_without_tasks_has_one_task_with_the_old_names():
    spec = spec_from_dict({})
    (task,) = spec_tasks(spec, CLASSES)
    assert (task.name, task.column, task.metric("val", "macro_f1"), task.prefix("val")) == \
        ("label", "label", "val.macro_f1", "val")
    assert label_columns(spec) == ["label"] and input_columns(spec)[-1] == "label"
    assert holdout_task(spec) is None and holdout_metric_name("macro_f1", holdout_task(spec)) == "macro_f1"


def test_further_tasks_get_their_column_metric_names_and_classes():
    spec = two_task()
    primary, speaker = spec_tasks(spec, CLASSES)
    assert primary.primary and primary.name == "animal" and primary.metric("val", "auc") == "val.auc"
    assert (speaker.column, speaker.json_key, speaker.classes, speaker.weight) == \
        ("label_speaker", "speaker", tuple(SPEAKERS), 0.5)
    assert speaker.metric("val", "macro_f1") == "val.speaker.macro_f1"
    assert label_columns(spec) == ["label", "label_speaker"]
    assert holdout_metric_name("macro_f1", holdout_task(spec)) == "macro_f1 (task animal)"


@pytest.mark.parametrize("label, message", [
    ({"tasks": {"speaker": {}}}, r"label.tasks.speaker.classes: Field required"),
    ({"tasks": {"Speaker": {"classes": ["a", "b"]}}}, r"task name 'Speaker'"),
    ({"tasks": {"macro_f1": {"classes": ["a", "b"]}}}, r"task name 'macro_f1' is reserved"),
    ({"tasks": {"label": {"classes": ["a", "b"]}}}, r"task 'label' is the primary task's name"),
    ({"tasks": {"s": {"classes": ["a"]}}}, r"label.tasks.s.classes: .*at least 2 classes"),
    ({"tasks": {"s": {"classes": ["a", "b"], "weight": 0}}}, r"label.tasks.s.weight"),
    ({"tasks": {"s": {"source": "cls", "classes": ["a", "b"]}}}, r"source cls needs extensions"),
    ({"tasks": {"s": {"source": "cls", "extensions": ["cls"], "classes": ["a", "b"]}}},
     r"label.tasks.s.extensions \['cls'\] are also label.extensions"),
    ({"tasks": {"s": {"extensions": ["spk"], "classes": ["a", "b"]}}}, r"extensions are for source cls"),
    ({"tasks": {"s": {"source": "cls", "extensions": ["wav"], "classes": ["a", "b"]}}},
     r"label.tasks.s extensions \['wav'\] are also audio extensions"),
    ({"tasks": {"s": {"classes": ["a", "b"], "head": "mlp"}}}, r"label.tasks.s.head: unknown field"),
])
def test_bad_tasks_are_refused_naming_the_field(label, message):
    with pytest.raises(SpecError, match=message):
        spec_from_dict({"label": label})


def test_rebalance_task_must_name_a_task_and_suit_the_loss():
    assert two_task(rebalance={"strategy": "oversample", "task": "speaker"}).rebalance.task == "speaker"
    with pytest.raises(SpecError, match=r"rebalance.task: unknown task 'speakr' \(did you mean speaker\?\)"):
        two_task(rebalance={"task": "speakr"})
    with pytest.raises(SpecError, match=r"train.loss=logit_adjusted weighs the primary task's classes"):
        two_task(rebalance={"strategy": "sqrt", "task": "speaker"}, train={"loss": "logit_adjusted"})
    with pytest.raises(SpecError, match=r"train.loss=weighted_ce weighs the primary task's classes"):
        two_task(rebalance={"task": "speaker"}, train={"loss": "weighted_ce"})
    assert two_task(rebalance={"task": "animal"}, train={"loss": "weighted_ce"}).rebalance.task == "animal"


# ------------------------------------------------------------------ data path

def test_clean_reads_each_task_masks_a_missing_one_and_drops_an_unknown_one():
    cfg = StageConfig.from_spec(two_task(), CLASSES)
    out = prepare_batch(raw_batch([good(json=meta(speaker="李")), good(cls=b"1", json=meta(speaker="bo")),
                                   good(cls=b"2"),                               # no speaker: masked
                                   good(json=meta(speaker="zed")),               # not a speaker: dropped
                                   good(json=meta(speaker=1))]), cfg)            # format name: 1 is no name
    assert out["label"].tolist()[:3] == [0, 1, 2]
    assert out["label_speaker"].tolist()[:3] == [2, 1, -1]
    assert list(out["drop_reason"]) == ["", "", "", "label_unknown", "label_unknown"]
    assert out["drop_detail"][3].startswith("task speaker: 'zed' is not one of the 3 classes")
    # prediction (labels not required): an unknown further label is kept as -1, not dropped
    lenient = StageConfig.from_spec(two_task(), CLASSES, labels_required=False)
    out = prepare_batch(raw_batch([good(json=meta(speaker="zed"))]), lenient)
    assert list(out["drop_reason"]) == [""] and out["label_speaker"].tolist() == [-1]


def test_an_unreadable_cls_task_member_drops_the_sample_in_training_and_is_unknown_in_prediction():
    import gzip

    spec = spec_from_dict({**TWO, "label": {"tasks": {"mood": {"source": "cls", "extensions": ["mood"],
                                                                "classes": ["calm", "loud"]}}}})
    samples = [good(**{"mood.gz": b"not gzip at all"}), good(**{"mood.gz": gzip.compress(b"loud")})]
    out = prepare_batch(raw_batch(samples), StageConfig.from_spec(spec, CLASSES))
    assert list(out["drop_reason"]) == ["label_unknown", ""] and out["label_mood"][1] == 1
    assert out["drop_detail"][0].startswith("task mood: member .mood.gz: ")  # named once, as a bad value is
    # prediction (labels not required): kept with the task's label unknown (-1), as a corrupt primary label is
    out = prepare_batch(raw_batch(samples), StageConfig.from_spec(spec, CLASSES, labels_required=False))
    assert list(out["drop_reason"]) == ["", ""] and out["label_mood"].tolist() == [-1, 1]


def test_a_cls_task_reads_its_own_member_and_its_label_is_part_of_the_content():
    spec = spec_from_dict({**TWO, "label": {"tasks": {"mood": {"source": "cls", "extensions": ["mood"],
                                                                "classes": ["calm", "loud"]}}}})
    cfg = StageConfig.from_spec(spec, CLASSES)
    out = prepare_batch(raw_batch([good(mood=b"loud"), good(mood=b"0"), good(mood=b"calm")]), cfg)
    assert out["label_mood"].tolist() == [1, 0, 0]
    assert out["content_hash"][1] == out["content_hash"][2]  # index 0 is the class calm: the same sample
    assert out["content_hash"][0] != out["content_hash"][1]  # another mood: not a duplicate


def test_a_single_task_batch_carries_only_the_label_column():
    cfg = StageConfig.from_spec(spec_from_dict(TWO | {"label": {}}), CLASSES)
    out = prepare_batch(raw_batch([good()]), cfg)
    assert [c for c in out if c.startswith("label")] == ["label"]


def test_rebalance_by_a_further_task_uses_its_column_and_keeps_unlabelled_rows_once():
    batch = {"__key__": np.array([f"k{i}" for i in range(6)], dtype=object),
             "__url__": np.array(["s.tar"] * 6, dtype=object),
             "label": np.array([0, 0, 0, 0, 0, 0]), "label_speaker": np.array([0, 1, 1, -1, 1, 0])}
    out = rebalance_batch(batch, np.array([3.0, 0.0]), seed=0, epoch=0, column="label_speaker")
    assert sorted(out["__key__"].tolist()) == ["k0"] * 3 + ["k3"] + ["k5"] * 3
    spec = two_task(rebalance={"strategy": "oversample", "task": "speaker"})
    stage = next(s for s in sample_path(spec, StageConfig.from_spec(spec, CLASSES), "train", factors=[1, 1, 1])
                 if s.name == "rebalance")
    assert stage.args["column"] == "label_speaker"


def test_the_label_pass_counts_rows_without_the_rebalanced_tasks_label_into_the_epoch():
    """rebalance.task on a further task: its rows without that label still stream, once each, so an epoch (and
    the learning-rate schedule's steps) has them too."""
    from pipeline.data.streaming.counts import label_counts_batch
    from pipeline.data.streaming.plan import kept_counts, plan_rebalance

    spec = two_task(rebalance={"strategy": "oversample", "task": "speaker"})
    cfg = StageConfig.from_spec(spec, CLASSES)
    speaker = spec_tasks(spec, CLASSES)[1]
    batch = raw_batch([good(json=meta(speaker="ann")), good(json=meta(speaker="ann")), good(json=meta(speaker="bo")),
                       good(), good(json=meta(other=1)),         # no speaker: kept, masked
                       good(json=meta(speaker="zed")),           # not a speaker: dropped
                       good(cls=None, json=meta(speaker="bo"))])  # no primary label: dropped
    counted = label_counts_batch(batch, cfg, speaker)
    assert counted["counts"].tolist() == [[2, 1, 0]]
    assert (counted["unlabelled"].tolist(), counted["invalid"].tolist()) == ([2], [2])
    plan = plan_rebalance(spec, SPEAKERS, [2, 1, 0], "label pass (speaker)", unlabelled=2)
    assert plan.expected == [2.0, 2.0, 0.0] and plan.rows_per_epoch == 6.0  # not 4: the 2 unlabelled rows too
    assert plan.to_dict()["task"] == "speaker" and plan.to_dict()["unlabelled_rows"] == 2
    # the primary task: a row without its label is dropped, none is unlabelled, and the row clean drops for its
    # unknown speaker (zed) is not counted either: the counts are of the rows training streams
    primary = label_counts_batch(batch, cfg)
    assert primary["counts"].tolist() == [[5, 0, 0]] and primary["unlabelled"].tolist() == [0]
    assert primary["invalid"].tolist() == [2]
    alone = plan_rebalance(two_task(rebalance={"strategy": "oversample"}), CLASSES, [6, 0, 0], "manifest.json")
    assert alone.rows_per_epoch == 6.0 and "task" not in alone.to_dict()
    # the data report's counts (validate, tune): the kept rows per class and those without the label
    report = SplitReport("train", CLASSES, tasks={"speaker": SPEAKERS})
    report.add_batch({"__key__": np.array(list("abc"), dtype=object), "__url__": np.array(["s"] * 3, dtype=object),
                      "label": np.array([0, 0, 0]), "label_speaker": np.array([1, -1, 1]),
                      "drop_reason": np.array([""] * 3, dtype=object), "drop_detail": np.array([""] * 3, dtype=object)})
    assert kept_counts(report, speaker) == ([0, 2, 0], 1)
    assert kept_counts(report, spec_tasks(spec, CLASSES)[0]) == ([3, 0, 0], 0)


def test_pretraining_neither_rebalances_nor_counts_a_further_task():
    from pipeline.train.pretrain import pretrain_spec

    spec = pretrain_spec(two_task(rebalance={"strategy": "oversample", "task": "speaker"}))
    assert (spec.rebalance.strategy, spec.rebalance.task) == ("none", None)  # no label pass for the speaker


def test_the_rebalance_plot_and_table_show_the_rebalanced_tasks_classes(tmp_path):
    from io import StringIO

    from PIL import Image
    from rich.console import Console

    from pipeline.data.streaming.plan import plan_rebalance
    from pipeline.data.tools.plots import plot_rebalance

    spec = two_task(rebalance={"strategy": "oversample", "task": "speaker"})
    plan = plan_rebalance(spec, SPEAKERS, [2, 1, 4], "kept rows", unlabelled=3).to_dict()
    png = plot_rebalance(plan, tmp_path / "r_classes.png")  # the speaker's 3 classes; the primary task has 4
    assert Image.open(png).size[0] > 0
    report = DataReport(CLASSES + ["cow"], tasks={"speaker": SPEAKERS}, rebalance=plan)
    buf = StringIO()
    report.print(Console(file=buf, width=200))
    shown = " ".join(buf.getvalue().split())  # the title and caption may wrap
    assert "Train classes of task speaker per epoch, rebalance: oversample" in shown
    assert "+ 3 rows without a speaker label, each kept once" in shown


def test_label_fraction_unlabels_every_task_of_a_row_together():
    n = 400
    batch = {"__key__": np.array([f"k{i}" for i in range(n)], dtype=object),
             "__url__": np.array(["s.tar"] * n, dtype=object),
             "label": np.zeros(n, np.int64), "label_speaker": np.ones(n, np.int64)}
    out = label_fraction_batch(batch, 0.3, seed=1, columns=("label", "label_speaker"))
    assert np.array_equal(out["label"] < 0, out["label_speaker"] < 0)
    assert 0.2 < (out["label"] >= 0).mean() < 0.4


def test_the_data_report_counts_each_task_and_its_missing_labels():
    report = SplitReport("train", CLASSES, tasks={"speaker": SPEAKERS})
    report.add_batch({"__key__": np.array(["a", "b", "c", "d"], dtype=object),
                      "__url__": np.array(["s"] * 4, dtype=object), "label": np.array([0, 1, 1, -1]),
                      "label_speaker": np.array([2, -1, 0, 0]),
                      "drop_reason": np.array(["", "", "", "label_missing"], dtype=object),
                      "drop_detail": np.array([""] * 4, dtype=object)})
    d = report.to_dict()
    assert d["tasks"] == {"speaker": {"class_histogram": {"ann": 1, "bo": 0, "李": 1}, "missing": 1}}
    assert d["class_histogram"] == {"cat": 1, "dog": 2, "猫": 0} and report.balanced
    assert "tasks" not in SplitReport("train", CLASSES).to_dict()  # a single task: the old shape
    whole = DataReport(CLASSES, {"train": report}, tasks={"speaker": SPEAKERS})
    assert whole.to_dict()["tasks"] == {"speaker": SPEAKERS}
    from io import StringIO

    from rich.console import Console

    buf = StringIO()
    whole.print(Console(file=buf, width=200))
    assert "speaker 李" in buf.getvalue() and "speaker missing (masked)" in buf.getvalue()


# ------------------------------------------------------------------ model, loss, metrics

def test_the_heads_are_blocks_of_one_logits_tensor():
    spec = two_task()
    model = MultimodalClassifier(spec, len(CLASSES)).eval()
    single = MultimodalClassifier(spec_from_dict({**TWO, "label": {}}), len(CLASSES))
    batch = {"image": torch.zeros(2, 16, 24, 3, dtype=torch.uint8), "text": torch.zeros(2, 12, dtype=torch.long),
             "audio": torch.zeros(2, 4000), **{f"present_{m}": torch.ones(2) for m in ("image", "text", "audio")}}
    logits = model(batch)
    assert logits.shape == (2, 6) and single(batch).shape == (2, 3)
    blocks = split_logits(logits, spec_tasks(spec, CLASSES))
    assert [b.shape[1] for b in blocks] == [3, 3]
    # only the last layer grows: every other weight has the single-task shape
    grown = {k for k, v in model.state_dict().items() if v.shape != single.state_dict()[k].shape}
    assert grown == {"fusion.mlp.4.weight", "fusion.mlp.4.bias"}


def test_the_loss_is_the_weighted_sum_of_each_tasks_loss_over_its_labelled_rows():
    torch.manual_seed(0)
    spec = two_task(train={"loss": "ce"})
    loss = make_task_loss(spec.train, [1, 1, 1], [1.0, 0.5])
    a, b = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    ya, yb = torch.tensor([0, 1, 2, 0]), torch.tensor([1, -1, -1, 2])
    total, parts = loss([a, b], [ya, yb])
    ce = torch.nn.functional.cross_entropy
    assert parts[0].item() == pytest.approx(ce(a, ya).item())
    assert parts[1].item() == pytest.approx(ce(b[[0, 3]], yb[[0, 3]]).item())
    assert total.item() == pytest.approx(parts[0].item() + 0.5 * parts[1].item())
    total.backward()
    assert b.grad[1].abs().sum() == 0 and b.grad[0].abs().sum() > 0  # a masked row moves nothing
    # no row of a task labelled: that task adds 0 and the others still train
    total, parts = loss([a, b], [ya, torch.full((4,), -1)])
    assert parts[1].item() == 0 and total.item() == pytest.approx(parts[0].item())


def test_task_metrics_name_the_further_tasks_and_score_only_their_labelled_rows():
    from pipeline.train.loop import score

    spec = two_task()
    tasks = spec_tasks(spec, CLASSES)
    accs = [Accumulator(3), Accumulator(3)]
    logits = torch.tensor([[5., 0, 0, 0, 5, 0], [0, 5., 0, 0, 0, 5], [0, 0, 5., 5, 0, 0]])
    score(accs, logits, {"label": torch.tensor([0, 1, 2]), "label_speaker": torch.tensor([1, -1, 1])}, tasks)
    m = task_metrics(accs, tasks, "val")
    assert m["val.accuracy"] == 1.0 and m["val.rows"] == 3
    assert m["val.speaker.rows"] == 2 and m["val.speaker.accuracy"] == 0.5
    assert "val.speaker.precision.李" in m and "val.speaker.confusion" in m and "val.precision.猫" in m


# ------------------------------------------------------------------ what people read

def test_the_epoch_line_the_report_and_the_promotion_name_the_further_tasks():
    from pipeline.progress import epoch_line
    from pipeline.report.collect import further_tasks
    from pipeline.workflow.champion import decide

    m = {"train.loss": 1.0, "train.accuracy": 0.5, "val.loss": 0.9, "val.accuracy": 0.6, "val.macro_f1": 0.55,
         "val.speaker.macro_f1": 0.7, "val.speaker.loss": 0.3, "val.precision.cat": 0.1}
    assert epoch_line({"epoch": 0, "epochs": 2, "metrics": m}).endswith("macro-F1 0.550 | speaker macro-F1 0.700")
    metrics = {"tasks": {"animal": CLASSES, "speaker": SPEAKERS}, "test.speaker.macro_f1": 0.8,
               "test.speaker.precision.bo": 1.0, "test.speaker.recall.bo": 0.5, "test.macro_f1": 0.1}
    (task,) = further_tasks(metrics, "test")
    assert task["name"] == "speaker" and task["scores"]["macro_f1"] == 0.8
    assert task["per_class"] == [{"class": "bo", "precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3)}]
    assert further_tasks({"classes": CLASSES, "test.macro_f1": 0.1}, "test") == []  # one task: nothing more
    decision = decide("macro_f1", 0.9, 0.8, 0.0, task="animal")
    assert decision["task"] == "animal" and "on macro_f1 (task animal) (0.9000 vs 0.8000)" in decision["reason"]
    assert "task" not in decide("loss", 0.5, 0.6, 0.0) and decide("loss", 0.5, 0.6, 0.0, task="a")["promote"]


def test_a_further_tasks_metric_cannot_drive_early_stopping_or_tune():
    for field in ("train.early_stopping_metric", "tune.metric"):
        section, name = field.split(".")
        with pytest.raises(SpecError, match=rf"{field}: .*a further task's \(label.tasks\) cannot"):
            two_task(**{section: {name: "val.speaker.macro_f1"}})


def test_a_run_resumes_only_with_the_tasks_it_was_trained_with(tmp_path):
    import yaml

    from pipeline.spec import dump_spec
    from pipeline.train.trainer import TrainError, check_resumable

    written = yaml.safe_load(dump_spec(spec_from_dict({})))
    for key in ("name", "weight", "tasks"):  # a run from before label.tasks existed
        del written["label"][key]
    (tmp_path / "ray" / "train").mkdir(parents=True)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(written))
    check_resumable(spec_from_dict({}), tmp_path, "train")
    with pytest.raises(TrainError, match=r"label.tasks"):
        check_resumable(spec_from_dict({"label": TWO["label"]}), tmp_path, "train")


def test_a_pretraining_resumes_when_only_the_labels_changed(tmp_path):
    """Pretraining ignores labels: a changed label section (or its tasks) must not refuse its resume."""
    from pipeline.spec import dump_spec
    from pipeline.train.pretrain import pretrain_spec
    from pipeline.train.trainer import TrainError, check_resumable

    (tmp_path / "ray" / "pretrain").mkdir(parents=True)
    (tmp_path / "spec.yaml").write_text(dump_spec(pretrain_spec(spec_from_dict({}))), encoding="utf-8")
    relabelled = pretrain_spec(spec_from_dict({"label": TWO["label"]}))
    check_resumable(relabelled, tmp_path, "pretrain", sections=("model", "train"))
    with pytest.raises(TrainError, match=r"model.hidden"):  # the model still counts
        check_resumable(pretrain_spec(spec_from_dict({"label": TWO["label"], "model": {"hidden": 8}})), tmp_path,
                        "pretrain", sections=("model", "train"))
    with pytest.raises(TrainError, match=r"label.name, label.tasks"):  # a classifier's training: labels count
        check_resumable(relabelled, tmp_path, "pretrain")


@pytest.mark.parametrize("key, dist", [
    ("rebalance.task", {"choice": ["animal", "speaker"]}),
    ("label.tasks.speaker.weight", {"uniform": [0.1, 1.0]}),
    ("label.weight", {"choice": [0.5, 1.0]}),
    ("rebalance", {"choice": [{"strategy": "sqrt", "task": "speaker"}]}),
])
def test_tune_may_not_search_what_every_trial_shares(key, dist):
    """The class counts and the val set (with its label columns) are computed once for all trials."""
    from pipeline.spec_checks import job_from_dict

    def tune(space: dict):
        return job_from_dict({**TWO, "tune": {"search_space": space}}, deep=False)

    with pytest.raises(SpecError, match=rf"tune.search_space.{key}: the search space may not change "
                                        r"(label|rebalance.task): the class counts"):
        tune({key: dist})
    assert tune({"rebalance.strategy": {"choice": ["none", "sqrt"]}}).tune.search_space


@pytest.mark.parametrize("strategy", ["oversample", "undersample", "sqrt"])
def test_rebalancing_a_task_without_labelled_train_rows_names_the_task(strategy):
    from pipeline.data.shards.manifest import DataError
    from pipeline.data.streaming.plan import plan_rebalance

    spec = two_task(rebalance={"strategy": strategy, "task": "speaker"})
    with pytest.raises(DataError, match=r"rebalance.task speaker: task 'speaker' has no labelled train rows"):
        plan_rebalance(spec, SPEAKERS, [0, 0, 0], "label pass (speaker)", unlabelled=4)


def test_a_task_without_labelled_rows_scores_nan_not_zero():
    import math

    metrics = task_metrics([Accumulator(3), Accumulator(3)], spec_tasks(two_task(), CLASSES), "val")
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "auc"):
        assert math.isnan(metrics[f"val.speaker.{name}"]), name
    assert metrics["val.speaker.rows"] == 0


def test_the_data_report_prints_class_names_as_text_and_warns_of_a_task_without_labels():
    from rich.console import Console

    classes = ["[red]", "dog", "猫"]
    report = DataReport(classes, tasks={"speaker": SPEAKERS},
                        rebalance={"strategy": "oversample", "before": {"[red]": 2, "dog": 0, "猫": 0},
                                   "expected_after": {"[red]": 2.0, "dog": 0.0, "猫": 0.0},
                                   "factors": {"[red]": 1.0, "dog": 0.0, "猫": 0.0}})
    for split in ("train", "val"):
        report.splits[split] = SplitReport(split, classes, tasks={"speaker": SPEAKERS})
        report.splits[split].add_batch({
            "__key__": np.array(["a", "b"], dtype=object), "__url__": np.array(["s", "s"], dtype=object),
            "label": np.array([0, 0]), "label_speaker": np.array([-1, -1] if split == "train" else [0, -1]),
            "drop_reason": np.array(["", ""], dtype=object), "drop_detail": np.array(["", ""], dtype=object)})
    console = Console(record=True, width=200)
    report.print(console)
    text = console.export_text()
    assert "class [red]" in text and text.count("[red]") >= 2  # the summary row and the rebalance table
    assert report.task_warnings() == ["task speaker: no kept row of split train has its label; its head is not "
                                      "trained"]
    assert "task speaker: no kept row of split train" in text


@pytest.mark.parametrize("label, field", [
    ({"classes": ["1", "2", "3"]}, "label.format"),
    ({"tasks": {"stars": {"classes": ["1", "2", "3", "4", "5"]}}}, "label.tasks.stars.format"),
])
def test_format_auto_with_integer_class_names_is_refused_naming_the_field(label, field):
    with pytest.raises(SpecError, match=field.replace(".", r"\.") + " is auto"):
        spec_from_dict({"label": label})


def test_integer_class_names_load_with_an_explicit_format_or_when_they_are_their_own_index():
    from pipeline.data.stages.clean import parse_label

    stars = spec_from_dict({"label": {"tasks": {"stars": {"classes": list("12345"), "format": "name"}}}})
    classes = tuple(stars.label.tasks["stars"].classes)
    assert [parse_label(v, classes, "name") for v in ("1", 3, "5")] == [0, 2, 4]  # not [1, 3, -1]
    assert spec_from_dict({"label": {"classes": list("0123")}}).label.format == "auto"  # "3" is index 3 either way


def test_a_row_dropped_as_a_duplicate_carries_label_minus_one_in_every_task():
    from pipeline.data.stages.dedupe import DuplicateIndex

    cfg = StageConfig.from_spec(two_task(), CLASSES, labels_required=False)  # prediction's reading
    same = good(json=meta(speaker="bo"))
    out = prepare_batch(raw_batch([same, same]), cfg, duplicates=DuplicateIndex())
    assert list(out["drop_reason"]) == ["", "duplicate"]
    assert out["label"].tolist() == [0, -1] and out["label_speaker"].tolist() == [1, -1]


def test_prediction_names_its_task_count_missing_or_unknown():
    def report(labels_required):
        split = SplitReport("predict", CLASSES, tasks={"speaker": SPEAKERS}, labels_required=labels_required)
        split.add_batch({"__key__": np.array(["a"], dtype=object), "__url__": np.array(["s"], dtype=object),
                         "label": np.array([0]), "label_speaker": np.array([-1]),
                         "drop_reason": np.array([""], dtype=object), "drop_detail": np.array([""], dtype=object)})
        return split.to_dict()["tasks"]["speaker"]

    assert report(False) == {"class_histogram": {s: 0 for s in SPEAKERS}, "missing_or_unknown": 1}
    assert report(True) == {"class_histogram": {s: 0 for s in SPEAKERS}, "missing": 1}


# ------------------------------------------------------------------ the heads' order (label.tasks order)

THREE = {"speaker": {"classes": SPEAKERS, "format": "name"}, "mood": {"classes": ["calm", "loud", "odd"]}}


def ordered(*names, **model):
    return spec_from_dict({**TWO, "model": {"hidden": 16, **model},
                           "label": {"name": "animal", "tasks": {n: THREE[n] for n in names}}})


def test_resuming_with_label_tasks_reordered_is_refused_naming_label_tasks(tmp_path):
    from pipeline.spec import dump_spec
    from pipeline.train.loop import EarlyStopping, resume
    from pipeline.tasks import task_layout
    from pipeline.train.trainer import TrainError, check_resumable

    (tmp_path / "ray" / "train").mkdir(parents=True)
    (tmp_path / "spec.yaml").write_text(dump_spec(ordered("speaker", "mood")), encoding="utf-8")
    check_resumable(ordered("speaker", "mood"), tmp_path, "train")  # the same order resumes
    with pytest.raises(TrainError, match=r"label\.tasks"):
        check_resumable(ordered("mood", "speaker"), tmp_path, "train")
    # the checkpoint itself records the layout, and the loop refuses another
    state = {"tasks": task_layout(spec_tasks(ordered("speaker", "mood"), CLASSES))}
    with pytest.raises(ValueError, match=r"label\.tasks changed"):
        resume(state, None, None, None, EarlyStopping("val.macro_f1", None), 3,
               task_layout(spec_tasks(ordered("mood", "speaker"), CLASSES)))


def test_init_from_a_model_with_label_tasks_reordered_leaves_the_heads_and_says_so(tmp_path):
    from pipeline.tasks import task_layout
    from pipeline.train.transfer import prepare_transfer

    source_spec = ordered("speaker", "mood")
    torch.manual_seed(1)
    source = MultimodalClassifier(source_spec, len(CLASSES))
    torch.save({"model": source.state_dict(), "classes": CLASSES, "spec": source_spec.model_dump(mode="json"),
                "tasks": task_layout(spec_tasks(source_spec, CLASSES))}, tmp_path / "best.pt")
    init = {"init_from": str(tmp_path / "best.pt"), "init_parts": ["encoders", "fusion"]}
    for names, heads_loaded in ((("speaker", "mood"), True), (("mood", "speaker"), False)):
        torch.manual_seed(2)
        target_spec = ordered(*names, **init)
        target = MultimodalClassifier(target_spec, len(CLASSES))
        said = []
        prepare_transfer(target, target_spec, say=said.append)
        heads = target.head_names()
        assert heads and all(n.startswith("fusion.") for n in heads)
        own, src = target.state_dict(), source.state_dict()
        assert all(torch.equal(own[n], src[n]) == heads_loaded for n in heads), names
        assert all(torch.equal(own[n], src[n]) for n in own if n not in heads)  # the rest loads either way
        assert ("task heads of another label.tasks layout" in said[0]) != heads_loaded


def test_the_workflow_fingerprint_sees_label_tasks_reordered():
    from pipeline.workflow.steps import step_inputs

    a, b = ordered("speaker", "mood"), ordered("mood", "speaker")
    assert a.label.tasks == b.label.tasks  # equal as dicts: order-blind
    for step in ("train", "evaluate"):
        assert step_inputs(a, step, {}) != step_inputs(b, step, {}), step


def test_holdout_scoring_requires_only_the_primary_label():
    spec = two_task()
    samples = [good(json=meta(speaker="zed")),            # a speaker this model does not know: -1, kept
               good(cls=None, json=meta(speaker="bo"))]   # no primary label: dropped
    holdout = prepare_batch(raw_batch(samples), StageConfig.from_spec(spec, CLASSES, further_required=False))
    assert list(holdout["drop_reason"]) == ["", "label_missing"] and holdout["label_speaker"].tolist() == [-1, -1]
    training = prepare_batch(raw_batch(samples), StageConfig.from_spec(spec, CLASSES))
    assert list(training["drop_reason"]) == ["label_unknown", "label_missing"]


def test_promotion_refuses_to_compare_scores_over_other_holdout_rows():
    from pipeline.workflow.steps import WorkflowError, _same_rows

    _same_rows({"test.rows": 40}, {"test.rows": 40}, "test", 1, 2)
    with pytest.raises(WorkflowError, match=r"champion version 1 was scored on 38 rows of test, the new version 2 "
                                            r"on 40"):
        _same_rows({"test.rows": 38}, {"test.rows": 40}, "test", 1, 2)

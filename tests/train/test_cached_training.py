"""Training with data.cache: the train split read and cleaned once, before Ray Train starts; every epoch trains on
the kept rows, and the run's data report is the one the streaming run writes."""

import csv
import json

import pytest

from pipeline.data.streaming.plan import DataPlan
from pipeline.spec import load_spec

pytestmark = pytest.mark.slow


def test_a_cached_training_reads_the_shards_once_and_reports_the_same_data(ray_session, demo_dir, tmp_path,
                                                                          monkeypatch):
    from pipeline.data.streaming import cache
    from pipeline.train.trainer import run_training

    passes = []
    real = cache.cache_pass
    monkeypatch.setattr("pipeline.data.streaming.plan.cache_pass",
                        lambda *a, **kw: (passes.append(a[1]), real(*a, **kw))[1])
    overrides = ["train.epochs=2", "train.batch_size=16", "model.hidden=32", "rebalance.strategy=sqrt",
                 "augment.image=[{name: HorizontalFlip, p: 0.5}]"]
    spec = load_spec(demo_dir / "spec.yaml", overrides + ["data.cache=true"])
    result = run_training(spec, tmp_path / "run")
    assert passes == ["data cache: train"]  # once for the run, not per epoch
    epochs = list(csv.DictReader((tmp_path / "run" / "epochs.csv").open()))
    assert [int(r["epoch"]) for r in epochs] == [1, 2] and result.metrics["epochs_run"] == 2
    report = json.loads((tmp_path / "run" / "data_report.json").read_text(encoding="utf-8"))
    streamed = DataPlan(load_spec(demo_dir / "spec.yaml", overrides)).validate().to_dict()
    assert report["splits"] == streamed["splits"]  # rows in, kept, dropped per reason: as without the cache
    assert report["rebalance"]["expected_after"] == DataPlan(spec).rebalance.to_dict()["expected_after"]

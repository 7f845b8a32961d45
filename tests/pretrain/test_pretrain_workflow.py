"""Pretraining end to end through the real CLI on the tiny demo data (its own process and Ray: cluster): `mmpipe run
jobs/pretrain.yaml` runs validate-data -> pretrain (2 DDP workers: negatives gathered across them) -> train from the
pretrained encoders (image frozen for its first epoch, half the labels) -> evaluate."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch

import support

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_run_pretrain_then_train_from_it(tiny_demo, tmp_path):
    data = tiny_demo
    args = [f"data.splits.{s}={data}/{s}/*.tar" for s in ("train", "val", "test")]
    args += [f"workflow.run_dir={tmp_path / 'run'}", "pretrain.epochs=1", "train.epochs=2", "train.batch_size=16",
             "model.hidden=32", "augment.enabled=false", "train.label_fraction=0.5"]
    base = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(support.ROOT / "jobs" / "pretrain.yaml"),
                           *[a for v in args for a in ("--set", v)]], capture_output=True, text=True, timeout=900,
                          env={**base, "NO_COLOR": "1", "COLUMNS": "200"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = tmp_path / "run"
    pretrained = torch.load(run / "pretrain" / "pretrained.pt", weights_only=True)
    assert pretrained["model"] and all(k.startswith("encoders.") for k in pretrained["model"])
    pre_rows = list(csv.DictReader((run / "pretrain" / "epochs.csv").open(encoding="utf-8")))
    assert len(pre_rows) == 1 and float(pre_rows[0]["train.loss"]) > 0 and "train.loss.image-text" in pre_rows[0]
    assert "init_from" in done.stdout and "loaded" in done.stdout  # the driver says what it loaded
    rows = list(csv.DictReader((run / "train" / "epochs.csv").open(encoding="utf-8")))
    # half the labels: the train metrics count only the labelled rows of an epoch
    assert len(rows) == 2 and 0 < float(rows[0]["train.rows"]) < 0.8 * float(rows[0]["optimizer_steps"]) * 16 * 2

"""`mmpipe pretrain` again into the same run directory resumes from its latest checkpoint (the sixth way to resume):
told apart from a restart by the optimizer step count and the weights fingerprint each epoch row carries."""

from __future__ import annotations

import pytest

from support.runs import assert_resumed, epoch_rows

pytestmark = pytest.mark.slow


def test_pretraining_again_into_its_run_directory_resumes(ray_session, tiny_demo, tmp_path):
    from pipeline.spec_checks import load_job
    from pipeline.train.pretrain import run_pretraining

    small = ["train.batch_size=16", "model.hidden=32", "augment.enabled=false", "scaling.num_workers=1"]
    first = run_pretraining(load_job(tiny_demo / "spec.yaml", [*small, "pretrain.epochs=1"]), tmp_path / "run")
    assert [int(r["epoch"]) for r in first.history] == [1]
    again = run_pretraining(load_job(tiny_demo / "spec.yaml", [*small, "pretrain.epochs=2"]), tmp_path / "run")
    rows = epoch_rows(tmp_path / "run")
    assert [int(r["epoch"]) for r in rows] == [1, 2] and len(again.history) == 2
    assert rows[0]["weights"] == str(first.history[0]["weights"])  # epoch 1 is the first run's, carried over
    assert_resumed(rows, from_epoch=1)

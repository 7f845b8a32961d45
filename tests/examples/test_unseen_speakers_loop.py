"""benchmarks/unseen_speakers_loop.py (the in-process exploration loop, no Ray) on the 36-clip FSDD fixture: one
fold, one epoch, with VTLP and the product's audiomentations augmentation; its splits are prepare-digits'."""

import json
import os
import subprocess
import sys

from support import FIXTURES, ROOT


def test_one_fold_holds_out_the_speaker_and_reports_best_and_last(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "unseen_speakers_loop.py"), str(FIXTURES / "fsdd"),
         "--speakers", "theo", "--epochs", "1", "--variants", "2", "--cache", str(tmp_path / "cache"),
         "--set", "train.batch_size=8", "--set", "model.vtlp.warp=0.1", "--out", str(tmp_path / "out.jsonl")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    fold = json.loads((tmp_path / "out.jsonl").read_text())
    # theo held out (12 clips); jackson's and nicolas' take 7 val, their takes 0 and 12 train
    assert (fold["speaker"], fold["train"], fold["val"], fold["test"]) == ("theo", 16, 8, 12)
    assert fold["best_epoch"] == 1 and fold["seed"] == 0
    for key in ("test_f1_best", "test_f1_last", "adabn_best", "adabn_last"):  # adabn: AdaBN on the test voice
        assert 0 <= fold[key] <= 1, key
    assert list((tmp_path / "cache").glob("variants-*.npy"))  # augmented copies drawn once, then reused
    assert "test_f1_best: mean" in done.stderr and "adabn_best: mean" in done.stderr

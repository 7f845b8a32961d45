"""benchmarks/fewer_labels.py --quick on the 36-clip FSDD fixture: scratch, pretraining and fine-tuning each run one
epoch and the table comes out (no figure is asserted: the measurement is in docs/av-digits.md)."""

import os
import subprocess
import sys

import pytest

import support

pytestmark = [pytest.mark.cluster, pytest.mark.slow]  # the script starts its own Ray


def test_fewer_labels_quick_prints_its_table(tmp_path):
    for args in (["prepare-digits", str(support.FIXTURES / "fsdd"), str(tmp_path / "raw")],
                 ["pack", str(tmp_path / "raw" / "manifest.csv"), str(tmp_path / "shards")]):
        done = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    done = subprocess.run([sys.executable, str(support.ROOT / "benchmarks" / "fewer_labels.py"),
                           str(tmp_path / "shards"), "--quick", "--label-fraction", "0.5",
                           "--runs", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(support.ROOT)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| (a) scratch |" in done.stdout and "| (b) pretrained (1 pretrain epochs" in done.stdout
    assert (tmp_path / "runs" / "pretrain-1" / "pretrained.pt").is_file()

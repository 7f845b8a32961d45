"""Smoke tests: each benchmark's --quick mode runs to the end and prints its ratios. No timing is asserted (timings
on a shared CI machine mean nothing); the figures themselves are in docs/benchmarks.md."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.slow]  # each script starts its own Ray

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_loader_compare_quick_prints_both_loaders_and_the_ratio():
    out = run("loader_compare.py", "--quick")
    assert "\nray " in out and "\ndataloader " in out
    assert "ratio ray/dataloader: " in out


def test_memory_flat_quick_prints_growth_ratios():
    out = run("memory_flat.py", "--quick")
    assert "growth 4x / 1x: peak RSS " in out and "object store " in out


def test_first_batch_quick_reaches_a_training_worker():
    out = run("first_batch.py", "--quick")
    assert "run 1 mmpipe: first training batch after " in out and "run 1 bare: first training batch after " in out
    assert "time to first training batch: median " in out
    assert "bare Ray Train + Ray Data, same scaling: median " in out and "ratio mmpipe/bare " in out


def test_gpu_feeding_quick():
    import torch

    if torch.cuda.is_available():
        assert "ratio" in run("gpu_feeding.py", "--quick")
        return
    assert "no CUDA GPU" in run("gpu_feeding.py", "--quick")
    out = run("gpu_feeding.py", "--quick", "--cpu")  # the same code path, on the CPU and labelled so
    assert "CPU ONLY" in out and "64 px, 2 CPUs: synthetic " in out and " ratio " in out


def test_hostile_memory_quick_prints_both_corpora_and_the_ratios():
    out = run("hostile_memory.py", "--quick")
    assert "\nclean: validate " in out and "\nhostile: validate " in out
    assert "ratio hostile/clean: peak RSS " in out and " wall time " in out

"""Smoke tests: each benchmark's --quick mode runs to the end and prints its ratios. No timing is asserted (timings
on a shared CI machine mean nothing); the figures themselves are in docs/benchmarks.md."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.slow]  # each script starts its own Ray

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(BENCH.parent)})  # installed or not
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_loader_compare_quick_prints_both_loaders_and_the_ratio():
    out = run("loader_compare.py", "--quick")
    assert "\nray " in out and "\ndataloader " in out and "\none process " in out
    assert "ratio ray/dataloader: " in out and "ratio ray/(one process x 2): " in out
    assert "[--quick: one pass, not a measurement]" in out


def test_memory_flat_quick_prints_growth_ratios():
    out = run("memory_flat.py", "--quick")
    assert "growth 4x / 1x: peak RSS " in out and "object store " in out
    assert "\n   1x " in out and "\n   4x " in out  # a row per size


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


def test_augment_throughput_quick_prints_every_configuration():
    out = run("augment_throughput.py", "--quick")
    assert "[--quick: no warm-up, one pass: not a measurement]" in out and "rows/epoch" in out
    for name in ("align only", "align + rebalance(sqrt)", "align + rebalance(sqrt) + augment"):
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        rows, ray_rate, ratio, local_rate = line[len(name):].split()
        assert int(rows) > 0 and float(ray_rate) > 0 and float(local_rate) > 0, line


def test_tune_schedulers_quick_prints_both_schedulers():
    out = run("tune_schedulers.py", "--quick")
    assert "| scheduler | trials | trial-epochs |" in out
    assert "\n| fifo | 1 | 1 | " in out and "\n| asha | 1 | 1 | " in out  # 1 trial x 1 epoch each


def test_av_digits_compare_quick_prints_its_table(tmp_path):
    fixture = Path(__file__).parent / "fixtures" / "fsdd"
    for args in (["prepare-digits", str(fixture), str(tmp_path / "raw")],
                 ["pack", str(tmp_path / "raw" / "manifest.csv"), str(tmp_path / "shards")]):
        done = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = run("av_digits_compare.py", str(tmp_path / "shards"), "--quick", "--runs", str(tmp_path / "runs"))
    assert "| model | test accuracy |" in out and "| image_only |" in out


def test_decode_compare_quick_prints_both_decoders_ratios_and_the_pixel_difference():
    out = run("decode_compare.py", "--quick")
    for size in ("683x512", "1024x768"):
        line = next(l for l in out.splitlines() if l.startswith(size))
        assert "mmpipe " in line and "(decoded at 1/2)" in line and "opencv full decode + resize " in line
        assert "ratio mmpipe/opencv " in line and "mean abs diff vs full-size decode " in line


def test_device_augment_quick_prints_both_backends_and_the_gpu_line():
    import torch

    out = run("device_augment.py", "--quick")
    assert "albumentations " in out and "device backend on CPU " in out and "ratio device/albumentations " in out
    assert ("images/s (" in out) if torch.cuda.is_available() else ("no CUDA GPU" in out)


def test_feeding_compare_quick_prints_every_loader_first_and_warm():
    out = run("feeding_compare.py", "--quick")
    assert "source 256x256 JPEG" in out and "\nmmpipe " in out and "\ncached " in out and "\nby hand " in out
    assert "ratio mmpipe/by hand (warm): " in out and "mmpipe first pass / warm: " in out
    assert "ratio cached/by hand (warm): " in out and "cached first pass / warm: " in out

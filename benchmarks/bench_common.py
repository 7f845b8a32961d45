"""Shared by the benchmark scripts: demo data, a local Ray of our own, the machine line, and a quietness check.

Timings taken while other Ray or pytest processes share the cores are not comparable; every script prints what
``busy_processes`` found so a reader can tell.
"""

from __future__ import annotations

import atexit
import os
import platform
import shutil
import statistics
import tempfile
from pathlib import Path

import ray

from pipeline.data.tools.demo import write_demo


def scratch_dir(prefix: str) -> Path:
    """A temporary folder removed when this process exits (demo data at 10x is ~200 MB)."""
    out = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    return out


def demo_data(scale: float, seed: int = 0) -> Path:
    """Demo shards + spec.yaml at ``scale`` (1.0: 1,092 train samples in 6 shards of 200)."""
    out = scratch_dir(f"mmpipe-bench-{scale:g}-")
    write_demo(out, seed=seed, scale=scale)
    return out


def start_ray(cpus: int) -> None:
    """A local Ray instance of our own (never an existing cluster), without dashboard or progress bars."""
    import logging

    ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level=logging.ERROR)
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def busy_processes() -> list[str]:
    """Other pytest runs and Ray workers on this machine that are not ours (their CPU use skews timings)."""
    import psutil

    mine = {os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))}
    found = []
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
        except (psutil.Error, TypeError):
            continue
        if p.info["pid"] in mine:
            continue
        if "pytest" in cmd or cmd.startswith("ray::"):
            found.append(f"{p.info['pid']} {cmd[:60]}")
    return found


def machine_line(cpus: int) -> str:
    import psutil
    import torch

    return (f"machine: {platform.machine()}, {psutil.cpu_count()} cores ({cpus} used), "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, Python {platform.python_version()}, "
            f"Ray {ray.__version__}, torch {torch.__version__}")


def quiet_line() -> str:
    """Other pytest/ray:: processes and how busy the CPUs were over 2 s, before this benchmark started anything."""
    import psutil

    busy, cpu = busy_processes(), psutil.cpu_percent(interval=2.0)
    verdict = "quiet" if cpu < 15 else "NOT quiet: absolute figures are inflated, ratios less reliable"
    return (f"other load at start: {len(busy)} foreign pytest/ray:: processes, CPUs {cpu:.0f}% busy over 2 s "
            f"-> {verdict}")


def timed(batches) -> tuple[int, float]:
    """(rows, seconds) to drain an iterator of batches."""
    import time

    start = time.perf_counter()
    rows = sum(len(b["label"]) for b in batches)
    return rows, time.perf_counter() - start


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")

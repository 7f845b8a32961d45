"""A tune of N trials (default 8) on this machine's Ray, or on a cluster: wall time, trials completed, and the CPU
time of data tasks against training workers (issue 20: trials must never starve their own data).

    python benchmarks/tune_scale.py [--trials 8] [--cpus 2] [--scale 0.25]       # a local instance of --cpus CPUs
    RAY_ADDRESS=127.0.0.1:6379 python benchmarks/tune_scale.py --trials 8         # a `ray start` cluster

Two-node 4-CPU cluster on one machine (what docs/benchmarks.md reports):

    ray start --head --num-cpus 2 --node-ip-address 127.0.0.1 --port 6379
    ray start --address 127.0.0.1:6379 --num-cpus 2
    RAY_ADDRESS=127.0.0.1:6379 python benchmarks/tune_scale.py
    ray stop

CPU utilisation is measured per process from /proc: the CPU seconds of every Ray worker process of this job, split
by what it ran (read tasks "ReadPreparedShards"/"_warm" = data; "RayTrainWorker" = training), over wall time x CPUs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import psutil

from pipeline.data.tools.demo import write_demo
from pipeline.ray_runtime import ensure_ray
from pipeline.spec_checks import load_job
from pipeline.tune.runner import run_tune

SPACE = ("tune.search_space={model.fusion: {grid: [concat, late, gated, sum]}, "
         "train.optimizer: {grid: [adamw, sgd]}}")


class CpuSampler(threading.Thread):
    """Every second: CPU seconds of Ray worker processes, by role (their process title names what runs)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.cpu = {"data": 0.0, "training": 0.0, "other": 0.0}
        self._last: dict[int, tuple[str, float]] = {}
        self.stop = threading.Event()

    @staticmethod
    def _role(title: str) -> str | None:
        if not title.startswith("ray::"):
            return None
        if "ReadPreparedShards" in title or "_warm" in title or "SplitCoordinator" in title:
            return "data"
        if "RayTrainWorker" in title:
            return "training"
        return "other"

    def run(self):
        while not self.stop.wait(1.0):
            for p in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
                try:
                    role = self._role(" ".join(p.info["cmdline"] or []))
                    if role is None:
                        continue
                    used = p.info["cpu_times"].user + p.info["cpu_times"].system
                except (psutil.Error, TypeError, AttributeError):
                    continue
                previous = self._last.get(p.info["pid"], (role, used))[1]
                self.cpu[role] += max(0.0, used - previous)
                self._last[p.info["pid"]] = (role, used)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=8, help="grid of 8 (fusion x optimizer) x num_samples")
    ap.add_argument("--cpus", type=int, default=None, help="CPUs of the local instance (default: the machine's)")
    ap.add_argument("--scale", type=float, default=0.25)
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mmpipe-tune-scale-"))
    write_demo(root / "data", seed=0, scale=args.scale)
    ensure_ray(num_cpus=args.cpus)
    import ray

    cpus = ray.cluster_resources().get("CPU", 0)
    spec = load_job(root / "data" / "spec.yaml", [
        SPACE, f"tune.num_samples={max(1, args.trials // 8)}", f"train.epochs={args.epochs}", "tune.scheduler=fifo",
        "train.batch_size=32", "model.hidden=32", "augment.enabled=false"])
    sampler = CpuSampler()
    sampler.start()
    start = time.time()
    error = None
    try:
        result = run_tune(spec, root / "tune")
    except Exception as e:  # noqa: BLE001  (reported: a benchmark of a failure is still a result)
        result, error = None, f"{type(e).__name__}: {str(e)[:300]}"
    wall = time.time() - start
    sampler.stop.set()
    sampler.join(3)
    nodes = len([n for n in ray.nodes() if n["Alive"]])
    print(f"{nodes} node(s), {cpus:g} CPUs, {os.cpu_count()} cores on the machine")
    print(f"trials completed: {result.trials if result else 0} of {args.trials}; wall {wall:.0f} s"
          + (f"; failed: {error}" if error else ""))
    total = wall * cpus
    for role, used in sampler.cpu.items():
        print(f"CPU {role}: {used:.0f} s ({100 * used / total:.0f}% of {cpus:g} CPUs x wall)")


if __name__ == "__main__":
    main()

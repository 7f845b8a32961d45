"""Samples/s of the train-split data path on the demo data: align only, + rebalance, + rebalance + augment.

Configurations run interleaved (A B C A B C ...) after one warm-up pass each, on one local Ray instance; the
median of the timed passes is printed with ratios to "align only". Also the same stages as plain functions in
this one process, without Ray, for reference.

    python benchmarks/augment_throughput.py [--repeats 3] [--scale 1.0] [--cpus 2]
    python benchmarks/augment_throughput.py --quick   # CI smoke run: tiny data, one untimed-warm-up-free pass
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.data.stages.config import StageConfig
from pipeline.data.stages.path import run_path, sample_path
from pipeline.data.streaming.plan import DataPlan
from pipeline.data.tools.demo import write_demo
from pipeline.spec import load_spec

AUGMENT = [
    "augment.image=[{name: HorizontalFlip, p: 0.5}, {name: RandomResizedCrop, p: 0.5, params: {scale: [0.6, 1.0]}},"
    " {name: ColorJitter, p: 0.5}, {name: CoarseDropout, p: 0.3}]",
    "augment.text=[{name: KeyboardAug, p: 0.5}, {name: RandomWordAug, p: 0.5, params: {action: swap}}]",
    "augment.audio=[{name: AddGaussianNoise, p: 0.5}, {name: Gain, p: 0.5}, {name: Shift, p: 0.5}]",
]
CONFIGS = {
    "align only": [],
    "align + rebalance(sqrt)": ["rebalance.strategy=sqrt"],
    "align + rebalance(sqrt) + augment": ["rebalance.strategy=sqrt", *AUGMENT],
}
COLUMNS = ["image", "text", "audio", "label"]


def ray_pass(data: DataPlan) -> tuple[int, float]:
    start = time.perf_counter()
    rows = 0
    for batch in data.train_dataset().select_columns(COLUMNS).iter_batches(
            batch_size=64, batch_format="numpy"):
        rows += len(batch["label"])
    return rows, time.perf_counter() - start


def raw_batches(shards: list[Path], size: int = 128):
    """Raw member batches read in this process (what the Ray read tasks hand the stages)."""
    from pipeline.data.shards.tar import raw_batches as stream_batches

    for shard in shards:
        with open(shard, "rb") as f:
            yield from stream_batches(f, str(shard), size)


def local_pass(data: DataPlan, shards) -> tuple[int, float]:
    spec = data.spec
    factors = np.array(data.rebalance.factors) if spec.rebalance.strategy != "none" else None
    path = sample_path(spec, StageConfig.from_spec(spec, data.classes), "train", factors=factors)
    start = time.perf_counter()
    rows = 0
    for raw in raw_batches(shards):
        batch = run_path(raw, path, epoch=0)
        rows += len(batch["label"])
    return rows, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: --scale 0.05, one pass per configuration, no warm-up (figures meaningless)")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.scale = 1, 0.05

    import ray

    data = Path(tempfile.mkdtemp(prefix="mmpipe-bench-"))
    write_demo(data, seed=0, scale=args.scale)
    specs = {name: load_spec(data / "spec.yaml", sets) for name, sets in CONFIGS.items()}
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    plans = {name: DataPlan(s) for name, s in specs.items()}
    shards = sorted((data / "train").glob("*.tar"))

    for name, spec in specs.items():  # warm-up: worker processes import the augmentation libraries once
        if not args.quick:
            ray_pass(plans[name])
    timings: dict[str, list[float]] = {name: [] for name in specs}
    rows: dict[str, int] = {}
    for _ in range(args.repeats):
        for name, spec in specs.items():
            n, seconds = ray_pass(plans[name])
            rows[name] = n
            timings[name].append(n / seconds)
    local = {name: local_pass(plans[name], shards) for name in specs}

    print(f"machine: {platform.machine()}, {args.cpus} CPUs for Ray, Python {platform.python_version()}")
    print(f"data: demo --scale {args.scale}, train split ({sum(1 for _ in shards)} shards)"
          + (" [--quick: no warm-up, one pass: not a measurement]" if args.quick else ""))
    base = statistics.median(timings["align only"])
    print(f"{'configuration':38} {'rows/epoch':>10} {'Ray samples/s':>14} {'ratio':>6} {'1-process, no Ray':>18}")
    for name in specs:
        med = statistics.median(timings[name])
        n, seconds = local[name]
        print(f"{name:38} {rows[name]:>10} {med:>14.0f} {med / base:>6.2f} {n / seconds:>18.0f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
